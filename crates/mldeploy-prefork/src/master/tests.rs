//! The master's state machine driven by a fake OS and a fake clock: workers are pids with a
//! private slot, exits and signals are queued by the test, and waiting jumps the clock to the
//! deadline the master asked for.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use super::*;
use crate::sys::SharedMem;

const SECOND: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Spawn(i32),
    Kill(i32, Signal),
    /// A new master started (upgrade), with the pidfile moved aside.
    StartMaster(i32),
    /// The pidfile was put back (the new master failed).
    PidfileRestored,
    /// This master told the one that started it that it serves.
    ReportedReady,
}

#[derive(Default)]
struct FakeState {
    now: Duration,
    last_pid: i32,
    slots: HashMap<i32, Slot>,
    actions: Vec<Action>,
    signals: VecDeque<MasterSignal>,
    /// A worker wrote to the wake pipe: the next wait returns at once.
    woken: bool,
    exits: VecDeque<(i32, Exit)>,
    notified: Vec<String>,
    /// SIGKILL does not end the process at once (uninterruptible sleep).
    sigkill_lingers: bool,
    /// Starting a new master fails (fork or exec).
    new_master_fails_to_start: bool,
}

impl FakeState {
    fn exit(&mut self, pid: i32, exit: Exit) {
        self.exits.push_back((pid, exit));
        self.signals.push_back(MasterSignal::Child);
    }
}

#[derive(Clone, Default)]
struct FakeOs(Rc<RefCell<FakeState>>);

impl Os for FakeOs {
    fn now(&self) -> Duration {
        self.0.borrow().now
    }

    fn new_slot(&mut self, words: usize) -> io::Result<Slot> {
        Ok(Slot::new(SharedMem::private(words)))
    }

    fn new_board(&mut self, seats: usize) -> io::Result<Board> {
        Ok(Board::new(SharedMem::private(seats)))
    }

    fn fork_worker(
        &mut self,
        slot: &Slot,
        _child: &mut dyn FnMut(io::Result<WorkerHandle>) -> i32,
    ) -> io::Result<i32> {
        let mut state = self.0.borrow_mut();
        state.last_pid += 1;
        let pid = 1000 + state.last_pid;
        state.slots.insert(pid, slot.clone());
        state.actions.push(Action::Spawn(pid));
        Ok(pid)
    }

    fn kill(&mut self, pid: i32, signal: Signal) {
        let mut state = self.0.borrow_mut();
        state.actions.push(Action::Kill(pid, signal));
        if signal == Signal::SIGKILL && !state.sigkill_lingers {
            state.exit(pid, Exit::Signal(Signal::SIGKILL as i32));
        }
    }

    fn reap(&mut self) -> Option<(i32, Exit)> {
        self.0.borrow_mut().exits.pop_front()
    }

    fn wait(&mut self, until: Duration) -> Vec<MasterSignal> {
        let mut state = self.0.borrow_mut();
        if state.signals.is_empty() && !state.woken {
            state.now = state.now.max(until);
        }
        state.woken = false;
        state.signals.drain(..).collect()
    }

    fn notify(&mut self, state: &str) {
        self.0.borrow_mut().notified.push(state.to_owned());
    }

    fn random(&mut self) -> u64 {
        7
    }

    fn start_new_master(&mut self, _listeners: &[TcpListener]) -> io::Result<i32> {
        let mut state = self.0.borrow_mut();
        if state.new_master_fails_to_start {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such program"));
        }
        state.last_pid += 1;
        let pid = 1000 + state.last_pid;
        state.actions.push(Action::StartMaster(pid));
        Ok(pid)
    }

    fn new_master_failed(&mut self) -> io::Result<()> {
        self.0.borrow_mut().actions.push(Action::PidfileRestored);
        Ok(())
    }

    fn report_ready(&mut self) -> io::Result<()> {
        self.0.borrow_mut().actions.push(Action::ReportedReady);
        Ok(())
    }
}

#[derive(Clone, Default)]
struct AppRecord {
    configs: Rc<RefCell<VecDeque<Result<SupervisorConfig, String>>>>,
    events: Rc<RefCell<Vec<SupervisorEvent>>>,
    logs_reopened: Rc<Cell<usize>>,
}

struct TestApp(AppRecord);

impl App for TestApp {
    type Error = String;

    fn prepare(&mut self, reload: bool) -> Result<SupervisorConfig, String> {
        assert!(reload, "the first configuration is passed to Master::new");
        self.0.configs.borrow_mut().pop_front().unwrap_or_else(|| Err("no configuration queued".into()))
    }

    fn run_worker(&self, _worker: Worker) -> i32 {
        unreachable!("the fake OS never runs a child")
    }

    fn on_event(&mut self, event: &SupervisorEvent) {
        self.0.events.borrow_mut().push(event.clone());
    }

    fn reopen_logs(&mut self) {
        self.0.logs_reopened.set(self.0.logs_reopened.get() + 1);
    }
}

fn config(workers: usize) -> SupervisorConfig {
    SupervisorConfig {
        workers,
        threads: 2,
        timeout: Some(30 * SECOND),
        graceful_timeout: 30 * SECOND,
        max_requests: 0,
        max_requests_jitter: 0,
        pidfile: None,
        user: None,
        group: None,
    }
}

struct Harness {
    os: FakeOs,
    app: AppRecord,
    master: Master<FakeOs, TestApp>,
}

impl Harness {
    /// A master that forked its first generation.
    fn start(config: SupervisorConfig) -> Harness {
        let os = FakeOs::default();
        os.0.borrow_mut().now = 1000 * SECOND;
        let app = AppRecord::default();
        let log = Logger::root(slog::Discard, slog::o!());
        let mut master =
            Master::new(os.clone(), TestApp(app.clone()), log, Vec::new(), config, Identity::default());
        master.advance();
        Harness { os, app, master }
    }

    /// A master whose first generation is ready.
    fn running(config: SupervisorConfig) -> Harness {
        let mut harness = Harness::start(config);
        for pid in harness.pids() {
            harness.ready(pid);
        }
        harness.tick();
        assert!(matches!(harness.master.phase, Phase::Running), "all workers ready");
        harness
    }

    fn tick(&mut self) {
        self.master.tick();
    }

    /// Tick until `done` (at most 1000 turns); panics otherwise.
    fn tick_until(&mut self, what: &str, done: impl Fn(&Harness) -> bool) {
        for _ in 0..1000 {
            if done(self) {
                return;
            }
            self.tick();
        }
        panic!("never happened: {what}");
    }

    fn now(&self) -> Duration {
        self.os.0.borrow().now
    }

    fn advance_clock(&self, by: Duration) {
        self.os.0.borrow_mut().now += by;
    }

    /// Pids the master supervises, oldest first.
    fn pids(&self) -> Vec<i32> {
        self.master.workers.iter().map(|w| w.pid).collect()
    }

    fn pids_of_generation(&self, generation: u64) -> Vec<i32> {
        self.master.workers.iter().filter(|w| w.generation == generation).map(|w| w.pid).collect()
    }

    fn worker(&self, pid: i32) -> &WorkerState {
        self.master.workers.iter().find(|w| w.pid == pid).expect("a supervised pid")
    }

    fn slot(&self, pid: i32) -> Slot {
        self.os.0.borrow().slots[&pid].clone()
    }

    /// The worker reports ready (and wakes the master, as the real one does).
    fn ready(&self, pid: i32) {
        let slot = self.slot(pid);
        slot.set_heartbeat(self.now());
        slot.mark_ready();
        self.os.0.borrow_mut().woken = true;
    }

    fn heartbeat(&self, pid: i32) {
        self.slot(pid).set_heartbeat(self.now());
    }

    fn retire(&self, pid: i32) {
        self.slot(pid).mark_retire();
        self.os.0.borrow_mut().woken = true;
    }

    fn exit(&self, pid: i32, exit: Exit) {
        self.os.0.borrow_mut().exit(pid, exit);
    }

    fn signal(&self, signal: MasterSignal) {
        self.os.0.borrow_mut().signals.push_back(signal);
    }

    fn actions(&self) -> Vec<Action> {
        self.os.0.borrow().actions.clone()
    }

    fn signals_sent_to(&self, pid: i32) -> Vec<Signal> {
        (self.actions().into_iter())
            .filter_map(|action| match action {
                Action::Kill(to, signal) if to == pid => Some(signal),
                _ => None,
            })
            .collect()
    }

    fn spawned(&self) -> usize {
        self.actions().iter().filter(|action| matches!(action, Action::Spawn(_))).count()
    }

    fn notified(&self) -> Vec<String> {
        self.os.0.borrow().notified.clone()
    }

    /// Notifications that carry one of systemd's state words, reduced to that word.
    fn states_notified(&self) -> Vec<&'static str> {
        let words = ["READY=1", "RELOADING=1", "STOPPING=1"];
        (self.notified().iter())
            .filter_map(|message| words.into_iter().find(|word| message.lines().any(|line| line == *word)))
            .collect()
    }

    fn events(&self) -> Vec<SupervisorEvent> {
        self.app.events.borrow().clone()
    }

    fn exit_reason(&self, pid: i32) -> Option<RestartReason> {
        self.events().into_iter().find_map(|event| match event {
            SupervisorEvent::WorkerExited { pid: exited, reason } if exited == pid => Some(reason),
            _ => None,
        })
    }

    /// Each finished reload: whether it succeeded, and the generation serving after it.
    fn reloads_finished(&self) -> Vec<(bool, u64)> {
        (self.events().into_iter())
            .filter_map(|event| match event {
                SupervisorEvent::ReloadFinished { ok, serving } => Some((ok, serving)),
                _ => None,
            })
            .collect()
    }

    fn queue_config(&self, config: Result<SupervisorConfig, String>) {
        self.app.configs.borrow_mut().push_back(config);
    }

    fn exited_with(&self) -> Option<i32> {
        match self.master.phase {
            Phase::Exited(code) => Some(code),
            _ => None,
        }
    }
}

#[test]
fn forks_the_first_generation_and_is_ready_once_every_worker_is() {
    let mut h = Harness::start(config(3));
    let pids = h.pids();
    assert_eq!(pids.len(), 3);
    let indices: Vec<usize> = pids.iter().map(|&pid| h.worker(pid).index).collect();
    assert_eq!(indices, [0, 1, 2]);
    h.ready(pids[0]);
    h.ready(pids[1]);
    h.tick();
    assert!(matches!(h.master.phase, Phase::Starting));
    assert!(h.states_notified().is_empty(), "no READY=1 before every worker is ready");
    h.ready(pids[2]);
    h.tick();
    assert!(matches!(h.master.phase, Phase::Running));
    assert_eq!(h.states_notified(), ["READY=1"]);
    let ready = &h.notified()[0];
    assert!(ready.contains(&format!("MAINPID={}", std::process::id())), "{ready}");
    assert!(ready.contains("STATUS=3 workers serving"), "{ready}");
    let ready_events = h
        .events()
        .iter()
        .filter(|event| matches!(event, SupervisorEvent::WorkerReady { generation: 0, .. }))
        .count();
    assert_eq!(ready_events, 3);
}

#[test]
fn a_crashed_worker_is_replaced_at_once_at_its_index() {
    let mut h = Harness::running(config(2));
    let (crashed, survivor) = (h.pids()[0], h.pids()[1]);
    let crashed_index = h.worker(crashed).index;
    let crashed_at = h.now();
    h.exit(crashed, Exit::Signal(Signal::SIGKILL as i32));
    h.tick();
    assert_eq!(h.exit_reason(crashed), Some(RestartReason::Crash));
    let pids = h.pids();
    assert_eq!(pids.len(), 2);
    assert!(pids.contains(&survivor));
    let replacement = *pids.iter().find(|&&pid| pid != survivor).expect("a replacement");
    assert_ne!(replacement, crashed);
    assert_eq!(h.worker(replacement).index, crashed_index);
    assert_eq!(h.worker(replacement).generation, 0);
    assert_eq!(h.now(), crashed_at, "the first crash is replaced without delay");
    assert!(h.signals_sent_to(survivor).is_empty());
}

#[test]
fn a_dead_workers_seat_on_the_board_is_freed_when_it_is_reaped() {
    let mut h = Harness::running(config(2));
    let (crashed, survivor) = (h.pids()[0], h.pids()[1]);
    let board = h.slot(survivor).board.expect("workers get the master's board");
    // What the two workers do as they serve: the one that crashes holds fewer connections.
    let _dead = board.sit(crashed as u32).expect("a seat");
    let seat = board.sit(survivor as u32).expect("a seat");
    seat.publish(3);
    assert!(seat.others_hold_fewer());
    h.exit(crashed, Exit::Signal(Signal::SIGKILL as i32));
    h.tick();
    assert!(!seat.others_hold_fewer(), "the survivor must not leave connections to a dead worker");
}

#[test]
fn a_first_generation_boot_failure_stops_the_server() {
    let mut h = Harness::start(config(3));
    let [failed, serving, booting] = h.pids()[..] else { panic!("three workers") };
    h.ready(serving);
    h.tick();
    h.exit(failed, Exit::Code(exit_code::BOOT_FAILURE));
    h.tick();
    assert_eq!(h.exit_reason(failed), Some(RestartReason::BootFailure));
    assert!(matches!(h.master.phase, Phase::Stopping { code: exit_code::BOOT_FAILURE, .. }));
    assert_eq!(h.signals_sent_to(serving), [Signal::SIGTERM], "a serving worker finishes its requests");
    assert_eq!(h.signals_sent_to(booting), [Signal::SIGKILL], "a booting worker serves nothing");
    h.exit(serving, Exit::Code(0));
    h.tick_until("the master exits", |h| h.exited_with().is_some());
    assert_eq!(h.exited_with(), Some(exit_code::BOOT_FAILURE));
    assert_eq!(h.spawned(), 3, "nothing respawned");
    assert_eq!(h.states_notified(), ["STOPPING=1"]);
}

#[test]
fn crashes_in_a_row_are_respawned_with_growing_delays_reset_after_a_quiet_period() {
    let mut h = Harness::running(config(1));
    let crash_and_measure = |h: &mut Harness| {
        let crashed = h.pids()[0];
        let crashed_at = h.now();
        h.exit(crashed, Exit::Code(101));
        h.tick_until("a replacement", |h| h.pids().first().is_some_and(|&pid| pid != crashed));
        let delay = h.now() - crashed_at;
        h.ready(h.pids()[0]);
        h.tick();
        delay
    };
    let delays: Vec<Duration> = (0..6).map(|_| crash_and_measure(&mut h)).collect();
    let ms = Duration::from_millis;
    assert_eq!(delays, [ms(0), ms(100), ms(200), ms(400), ms(800), ms(1600)]);
    h.advance_clock(BACKOFF_RESET);
    for pid in h.pids() {
        h.heartbeat(pid);
    }
    assert_eq!(crash_and_measure(&mut h), Duration::ZERO, "a quiet minute starts a new series");
}

#[test]
fn backoff_delays_are_capped() {
    let mut backoff = Backoff::default();
    let delays: Vec<Duration> = (0..40).map(|_| backoff.failure(SECOND)).collect();
    assert_eq!(delays.last(), Some(&BACKOFF_MAX));
    assert!(delays.windows(2).all(|pair| pair[0] <= pair[1]));
}

/// Tick with every worker but `hung` sending heartbeats, until `hung` gets a signal.
fn tick_until_signalled(h: &mut Harness, hung: i32, heartbeat_hung: bool) {
    h.tick_until("a signal to the hung worker", |h| {
        for pid in h.pids() {
            if pid != hung || heartbeat_hung {
                h.heartbeat(pid);
            }
        }
        !h.signals_sent_to(hung).is_empty()
    });
}

#[test]
fn a_hung_model_call_gets_the_worker_killed_and_replaced() {
    let timeout = 10 * SECOND;
    let mut h = Harness::running(SupervisorConfig { timeout: Some(timeout), ..config(2) });
    let (hung, healthy) = (h.pids()[0], h.pids()[1]);
    let stuck_since = h.now();
    h.slot(hung).claim_busy(0, stuck_since).expect("a free busy word");
    tick_until_signalled(&mut h, hung, true);
    assert_eq!(h.signals_sent_to(hung), [Signal::SIGKILL]);
    assert!(h.now() - stuck_since > timeout, "not before the timeout");
    assert!(h.now() - stuck_since <= timeout + TICK, "within a tick after it");
    h.tick();
    assert_eq!(h.exit_reason(hung), Some(RestartReason::Timeout));
    assert!(h.signals_sent_to(healthy).is_empty());
    let replacement = *h.pids().iter().find(|&&pid| pid != healthy).expect("a replacement");
    assert_ne!(replacement, hung);
    assert_eq!(h.worker(replacement).index, 0);
}

#[test]
fn a_worker_without_heartbeat_is_killed_after_the_timeout() {
    let timeout = 5 * SECOND;
    let mut h = Harness::running(SupervisorConfig { timeout: Some(timeout), ..config(2) });
    let (silent, healthy) = (h.pids()[0], h.pids()[1]);
    let last_beat = h.slot(silent).heartbeat();
    tick_until_signalled(&mut h, silent, false);
    assert_eq!(h.signals_sent_to(silent), [Signal::SIGKILL]);
    assert!(h.now() - last_beat > timeout);
    h.tick();
    assert_eq!(h.exit_reason(silent), Some(RestartReason::Timeout));
    assert!(h.signals_sent_to(healthy).is_empty());
}

#[test]
fn without_timeout_a_silent_busy_worker_is_left_alone() {
    let mut h = Harness::running(SupervisorConfig { timeout: None, ..config(1) });
    let pid = h.pids()[0];
    h.slot(pid).claim_busy(0, h.now()).expect("a free busy word");
    let started = h.now();
    for _ in 0..200 {
        h.tick();
    }
    assert!(h.now() - started > 100 * SECOND, "time passed well beyond any default timeout");
    assert!(h.signals_sent_to(pid).is_empty());
}

#[test]
fn a_worker_that_never_boots_is_killed_and_counts_as_a_boot_failure() {
    let mut h = Harness::start(config(1));
    let pid = h.pids()[0];
    let started = h.now();
    h.tick_until("the master exits", |h| h.exited_with().is_some());
    assert_eq!(h.signals_sent_to(pid), [Signal::SIGKILL]);
    assert!(h.now() - started >= BOOT_TIMEOUT);
    assert_eq!(h.exit_reason(pid), Some(RestartReason::Timeout));
    assert_eq!(h.exited_with(), Some(exit_code::BOOT_FAILURE));
}

#[test]
fn reload_replaces_the_generation_once_every_new_worker_is_ready() {
    let mut h = Harness::running(config(2));
    let old = h.pids();
    h.queue_config(Ok(config(3)));
    h.signal(MasterSignal::Hangup);
    h.tick();
    assert_eq!(h.states_notified(), ["READY=1", "RELOADING=1"]);
    let new = h.pids_of_generation(1);
    assert_eq!(new.len(), 3);
    let indices: Vec<usize> = new.iter().map(|&pid| h.worker(pid).index).collect();
    assert_eq!(indices, [0, 1, 2]);
    h.ready(new[0]);
    h.ready(new[1]);
    h.tick();
    h.tick();
    assert!(old.iter().all(|&pid| h.signals_sent_to(pid).is_empty()), "old serves until all new are ready");
    h.ready(new[2]);
    h.tick();
    for &pid in &old {
        assert_eq!(h.signals_sent_to(pid), [Signal::SIGTERM]);
    }
    assert_eq!(h.states_notified(), ["READY=1", "RELOADING=1", "READY=1"]);
    assert_eq!(h.reloads_finished(), [(true, 1)]);
    for &pid in &old {
        h.exit(pid, Exit::Code(0));
    }
    h.tick();
    for &pid in &old {
        assert_eq!(h.exit_reason(pid), Some(RestartReason::Reload));
    }
    assert_eq!(h.pids(), new);
    assert_eq!(h.spawned(), 5, "the old generation is not respawned");
    assert!(matches!(h.master.phase, Phase::Running));
}

#[test]
fn a_new_generation_that_fails_to_boot_is_abandoned_and_the_old_one_keeps_serving() {
    let mut h = Harness::running(config(2));
    let old = h.pids();
    h.queue_config(Ok(config(2)));
    h.signal(MasterSignal::Hangup);
    h.tick();
    let [booted, failing] = h.pids_of_generation(1)[..] else { panic!("two new workers") };
    h.ready(booted);
    h.tick();
    h.exit(failing, Exit::Code(exit_code::BOOT_FAILURE));
    h.tick();
    assert_eq!(h.exit_reason(failing), Some(RestartReason::BootFailure));
    assert_eq!(h.signals_sent_to(booted), [Signal::SIGTERM], "the new worker that serves stops gracefully");
    assert!(old.iter().all(|&pid| h.signals_sent_to(pid).is_empty()));
    assert_eq!(h.reloads_finished(), [(false, 0)]);
    assert_eq!(h.states_notified(), ["READY=1", "RELOADING=1", "READY=1"]);
    assert!(matches!(h.master.phase, Phase::Running));
    h.exit(booted, Exit::Code(0));
    h.tick();
    assert_eq!(h.pids(), old);
    // The old generation still gets respawned with its own settings.
    h.exit(old[0], Exit::Signal(Signal::SIGSEGV as i32));
    h.tick();
    assert_eq!(h.pids_of_generation(0).len(), 2);
    assert!(h.pids_of_generation(1).is_empty());
}

#[test]
fn a_refused_configuration_keeps_the_old_workers() {
    let mut h = Harness::running(config(2));
    let old = h.pids();
    h.queue_config(Err("invalid TOML".into()));
    h.signal(MasterSignal::Hangup);
    h.tick();
    assert_eq!(h.pids(), old);
    assert_eq!(h.spawned(), 2);
    assert!(old.iter().all(|&pid| h.signals_sent_to(pid).is_empty()));
    assert_eq!(h.reloads_finished(), [(false, 0)]);
    assert_eq!(h.states_notified(), ["READY=1", "RELOADING=1", "READY=1"]);
    let last = h.notified().last().cloned().unwrap_or_default();
    assert!(last.contains("invalid TOML"), "{last}");
}

#[test]
fn a_hup_during_a_reload_starts_another_one_after_it() {
    let mut h = Harness::running(config(1));
    h.queue_config(Ok(config(1)));
    h.queue_config(Ok(config(1)));
    h.signal(MasterSignal::Hangup);
    h.tick();
    h.signal(MasterSignal::Hangup);
    h.tick();
    assert_eq!(h.pids_of_generation(2).len(), 0, "deferred while generation 1 boots");
    h.ready(h.pids_of_generation(1)[0]);
    h.tick();
    h.tick();
    assert_eq!(h.pids_of_generation(2).len(), 1);
    assert_eq!(h.states_notified(), ["READY=1", "RELOADING=1", "READY=1", "RELOADING=1"]);
}

#[test]
fn ttin_and_ttou_add_and_remove_one_worker_but_never_the_last() {
    let mut h = Harness::running(config(2));
    h.signal(MasterSignal::MoreWorkers);
    h.tick();
    let pids = h.pids();
    assert_eq!(pids.len(), 3);
    let added = pids[2];
    assert_eq!(h.worker(added).index, 2);
    h.ready(added);
    h.tick();
    h.signal(MasterSignal::FewerWorkers);
    h.tick();
    assert_eq!(h.signals_sent_to(added), [Signal::SIGTERM], "the highest index goes");
    h.exit(added, Exit::Code(0));
    h.tick();
    assert_eq!(h.exit_reason(added), Some(RestartReason::Scale));
    assert_eq!(h.pids().len(), 2, "not replaced");
    h.signal(MasterSignal::FewerWorkers);
    h.tick();
    let second = pids[1];
    assert_eq!(h.signals_sent_to(second), [Signal::SIGTERM]);
    h.exit(second, Exit::Code(0));
    h.tick();
    h.signal(MasterSignal::FewerWorkers);
    h.tick();
    h.tick();
    assert_eq!(h.pids(), [pids[0]]);
    assert!(h.signals_sent_to(pids[0]).is_empty(), "the last worker stays");
}

#[test]
fn a_retiring_worker_is_stopped_only_once_its_replacement_is_ready() {
    let config = SupervisorConfig { max_requests: 100, max_requests_jitter: 10, ..config(2) };
    let mut h = Harness::running(config);
    let (retiring, other) = (h.pids()[0], h.pids()[1]);
    assert_eq!(h.slot(retiring).max_requests(), 107, "100 + the fake random 7 % 11");
    h.retire(retiring);
    h.tick();
    let replacement = *h.pids().iter().find(|&&pid| pid != retiring && pid != other).expect("a replacement");
    assert_eq!(h.worker(replacement).index, h.worker(retiring).index);
    for _ in 0..5 {
        h.heartbeat(retiring);
        h.heartbeat(other);
        h.heartbeat(replacement);
        h.tick();
    }
    assert!(h.signals_sent_to(retiring).is_empty(), "it serves until its replacement does");
    h.ready(replacement);
    h.tick();
    assert_eq!(h.signals_sent_to(retiring), [Signal::SIGTERM]);
    let actions = h.actions();
    let spawned_at = actions.iter().position(|a| *a == Action::Spawn(replacement));
    let stopped_at = actions.iter().position(|a| *a == Action::Kill(retiring, Signal::SIGTERM));
    assert!(spawned_at < stopped_at);
    h.exit(retiring, Exit::Code(0));
    h.tick();
    assert_eq!(h.exit_reason(retiring), Some(RestartReason::MaxRequests));
    assert_eq!(h.pids().len(), 2);
    assert_eq!(h.spawned(), 3);
    assert!(h.signals_sent_to(other).is_empty());
}

#[test]
fn a_graceful_stop_waits_for_the_workers_then_kills_what_is_left() {
    let graceful_timeout = 20 * SECOND;
    let mut h = Harness::running(SupervisorConfig { graceful_timeout, ..config(3) });
    let [quick, slow, slower] = h.pids()[..] else { panic!("three workers") };
    let stop_at = h.now();
    h.signal(MasterSignal::Terminate);
    h.tick();
    for pid in [quick, slow, slower] {
        assert_eq!(h.signals_sent_to(pid), [Signal::SIGTERM]);
    }
    assert_eq!(h.states_notified(), ["READY=1", "STOPPING=1"]);
    h.exit(quick, Exit::Code(0));
    h.tick();
    h.tick_until("the rest is killed", |h| h.signals_sent_to(slow).len() == 2);
    assert_eq!(h.signals_sent_to(slow), [Signal::SIGTERM, Signal::SIGKILL]);
    assert_eq!(h.signals_sent_to(slower), [Signal::SIGTERM, Signal::SIGKILL]);
    assert_eq!(h.now() - stop_at, graceful_timeout);
    h.tick_until("the master exits", |h| h.exited_with().is_some());
    assert_eq!(h.exited_with(), Some(exit_code::OK));
    assert_eq!(h.spawned(), 3, "nothing respawned while stopping");
    assert_eq!(h.exit_reason(quick), Some(RestartReason::Shutdown));
}

#[test]
fn quit_stops_fast_and_int_during_a_graceful_stop_too() {
    let mut h = Harness::running(config(2));
    let pids = h.pids();
    h.signal(MasterSignal::Quit);
    h.tick();
    assert!(pids.iter().all(|&pid| h.signals_sent_to(pid) == [Signal::SIGQUIT]));

    let mut h = Harness::running(config(2));
    let pids = h.pids();
    h.signal(MasterSignal::Interrupt);
    h.tick();
    assert!(pids.iter().all(|&pid| h.signals_sent_to(pid) == [Signal::SIGTERM]));
    h.signal(MasterSignal::Interrupt);
    h.tick();
    assert!(pids.iter().all(|&pid| h.signals_sent_to(pid) == [Signal::SIGTERM, Signal::SIGQUIT]));
    for &pid in &pids {
        h.exit(pid, Exit::Code(0));
    }
    h.tick_until("the master exits", |h| h.exited_with().is_some());
    assert_eq!(h.exited_with(), Some(exit_code::OK));
    assert_eq!(h.states_notified(), ["READY=1", "STOPPING=1"], "one STOPPING=1");
}

#[test]
fn usr1_reopens_the_application_logs_and_tells_every_worker() {
    let mut h = Harness::running(config(2));
    h.signal(MasterSignal::ReopenLogs);
    h.tick();
    assert_eq!(h.app.logs_reopened.get(), 1);
    for pid in h.pids() {
        assert_eq!(h.signals_sent_to(pid), [Signal::SIGUSR1]);
    }
}

#[test]
fn a_crash_is_reported_in_the_status_line() {
    let mut h = Harness::running(config(2));
    h.exit(h.pids()[0], Exit::Signal(Signal::SIGKILL as i32));
    h.tick();
    let last = h.notified().last().cloned().unwrap_or_default();
    assert_eq!(last, "STATUS=1 of 2 workers serving");
    let replacement = h.pids()[1];
    h.ready(replacement);
    h.tick();
    assert_eq!(h.notified().last().map(String::as_str), Some("STATUS=2 workers serving"));
}

#[test]
fn every_configuration_the_application_accepts_takes_a_generation_number() {
    let mut h = Harness::running(config(1));
    h.queue_config(Err("unreadable".into()));
    h.queue_config(Ok(config(0)));
    h.queue_config(Ok(config(1)));
    for _ in 0..3 {
        h.signal(MasterSignal::Hangup);
        h.tick();
    }
    assert_eq!(h.reloads_finished(), [(false, 0), (false, 0)]);
    let new = h.master.workers.iter().map(|w| w.generation).max();
    assert_eq!(new, Some(2), "generation 1 was accepted by the application, then refused");
}

#[test]
fn workers_lingering_after_sigkill_do_not_make_the_loop_spin() {
    let mut h = Harness::running(SupervisorConfig { graceful_timeout: 10 * SECOND, ..config(1) });
    let pid = h.pids()[0];
    h.os.0.borrow_mut().sigkill_lingers = true;
    h.signal(MasterSignal::Terminate);
    h.tick();
    h.tick_until("the SIGKILL", |h| h.signals_sent_to(pid).contains(&Signal::SIGKILL));
    assert!(h.master.next_wakeup() > h.now(), "the loop sleeps while the killed worker lingers");
    h.exit(pid, Exit::Signal(Signal::SIGKILL as i32));
    h.tick();
    assert_eq!(h.exited_with(), Some(exit_code::OK));
}

impl Harness {
    /// The pid of the last new master started (upgrade).
    fn new_master(&self) -> Option<i32> {
        self.actions().into_iter().rev().find_map(|action| match action {
            Action::StartMaster(pid) => Some(pid),
            _ => None,
        })
    }

    fn new_masters_started(&self) -> usize {
        self.actions().iter().filter(|action| matches!(action, Action::StartMaster(_))).count()
    }

    fn pidfile_restored(&self) -> usize {
        self.actions().iter().filter(|action| **action == Action::PidfileRestored).count()
    }

    /// The new master reports that it serves (through its pipe, as the real one does).
    fn new_master_ready(&self) {
        self.signal(MasterSignal::NewMasterReady);
    }

    fn upgrading(&self) -> Option<i32> {
        match self.master.phase {
            Phase::Upgrading { pid, .. } => Some(pid),
            _ => None,
        }
    }
}

#[test]
fn usr2_hands_over_to_the_new_master_once_it_serves() {
    let mut h = Harness::running(config(2));
    assert!(h.actions().contains(&Action::ReportedReady), "a master tells who started it that it serves");
    let old = h.pids();
    h.signal(MasterSignal::Upgrade);
    h.tick();
    let new_master = h.new_master().expect("a new master started");
    assert_eq!(h.upgrading(), Some(new_master));
    assert_eq!(h.states_notified(), ["READY=1", "RELOADING=1"]);
    // Until it serves, the old generation does, and a crashed worker is still replaced.
    h.exit(old[0], Exit::Signal(Signal::SIGKILL as i32));
    h.tick();
    let serving = h.pids();
    assert_eq!(serving.len(), 2);
    assert!(!serving.contains(&old[0]));
    h.ready(serving[1]);
    h.tick();
    assert!(serving.iter().all(|&pid| h.signals_sent_to(pid).is_empty()));
    h.new_master_ready();
    h.tick();
    for &pid in &serving {
        assert_eq!(h.signals_sent_to(pid), [Signal::SIGTERM], "stopped gracefully");
    }
    let relayed = h.notified().last().cloned().unwrap_or_default();
    assert!(relayed.contains(&format!("MAINPID={new_master}")), "{relayed}");
    assert!(matches!(h.master.phase, Phase::HandedOver));
    // On its way out: a TERM adds nothing, nothing is respawned, systemd hears nothing more.
    h.signal(MasterSignal::Terminate);
    h.tick();
    h.exit(serving[0], Exit::Signal(Signal::SIGSEGV as i32));
    h.exit(serving[1], Exit::Code(0));
    h.tick_until("the master exits", |h| h.exited_with().is_some());
    assert_eq!(h.exited_with(), Some(exit_code::OK));
    assert_eq!(h.states_notified(), ["READY=1", "RELOADING=1", "READY=1"], "no STOPPING=1");
    assert_eq!(h.spawned(), 3);
    assert_eq!(h.pidfile_restored(), 0, "the pidfile stays with the new master");
    assert_eq!(h.new_masters_started(), 1);
}

#[test]
fn a_new_master_that_exits_hangs_or_cannot_start_leaves_the_old_one_serving() {
    let mut h = Harness::running(config(2));
    let old = h.pids();
    let untouched = |h: &Harness| old.iter().all(|&pid| h.signals_sent_to(pid).is_empty());

    // It exits before it is ready.
    h.signal(MasterSignal::Upgrade);
    h.tick();
    let failed = h.new_master().expect("a new master");
    h.exit(failed, Exit::Code(1));
    h.tick();
    assert!(matches!(h.master.phase, Phase::Running));
    assert_eq!(h.pidfile_restored(), 1);
    let last = h.notified().last().cloned().unwrap_or_default();
    assert!(last.starts_with("READY=1") && last.contains("upgrade failed"), "{last}");
    assert!(last.contains("exited with code 1"), "{last}");
    // A late report from it changes nothing.
    h.new_master_ready();
    h.tick();
    assert!(matches!(h.master.phase, Phase::Running));
    assert!(untouched(&h));

    // It never reports ready: killed at the deadline.
    let started = h.now();
    h.signal(MasterSignal::Upgrade);
    h.tick();
    let hung = h.new_master().expect("a second new master");
    assert_ne!(hung, failed);
    h.tick_until("the hung new master is killed", |h| {
        for pid in h.pids() {
            h.heartbeat(pid);
        }
        !h.signals_sent_to(hung).is_empty()
    });
    assert_eq!(h.signals_sent_to(hung), [Signal::SIGKILL]);
    assert!(h.now() - started >= BOOT_TIMEOUT, "not before its workers could have booted");
    assert!(matches!(h.master.phase, Phase::Running));
    assert_eq!(h.pidfile_restored(), 2);
    h.tick();
    assert!(h.master.leaving.is_none(), "reaped");

    // It cannot even be started.
    h.os.0.borrow_mut().new_master_fails_to_start = true;
    h.signal(MasterSignal::Upgrade);
    h.tick();
    assert!(matches!(h.master.phase, Phase::Running));
    let last = h.notified().last().cloned().unwrap_or_default();
    assert!(last.contains("cannot start the new master"), "{last}");
    assert!(untouched(&h));
    assert_eq!(h.pids(), old);
}

#[test]
fn a_second_usr2_during_an_upgrade_is_ignored_and_hup_or_usr2_wait_for_each_other() {
    let mut h = Harness::running(config(1));
    h.signal(MasterSignal::Upgrade);
    h.tick();
    let new_master = h.new_master().expect("a new master");
    h.signal(MasterSignal::Upgrade);
    h.tick();
    assert_eq!(h.new_masters_started(), 1);
    assert_eq!(h.upgrading(), Some(new_master));
    // A HUP waits for the upgrade; as it fails, the reload runs.
    h.queue_config(Ok(config(1)));
    h.signal(MasterSignal::Hangup);
    h.tick();
    assert!(h.pids_of_generation(1).is_empty(), "no reload while upgrading");
    h.exit(new_master, Exit::Code(exit_code::BOOT_FAILURE));
    h.tick();
    h.tick();
    let reloading = h.pids_of_generation(1);
    assert_eq!(reloading.len(), 1, "the deferred reload started");
    // A USR2 waits for the reload.
    h.signal(MasterSignal::Upgrade);
    h.tick();
    assert_eq!(h.new_masters_started(), 1, "no upgrade while reloading");
    h.ready(reloading[0]);
    h.tick();
    h.tick();
    assert_eq!(h.new_masters_started(), 2, "the deferred upgrade started");
    assert_eq!(
        h.states_notified(),
        ["READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1", "RELOADING=1"]
    );
}

#[test]
fn term_during_an_upgrade_stops_the_new_master_too_and_waits_for_it() {
    let mut h = Harness::running(config(2));
    let old = h.pids();
    h.signal(MasterSignal::Upgrade);
    h.tick();
    let new_master = h.new_master().expect("a new master");
    h.signal(MasterSignal::Terminate);
    h.tick();
    assert_eq!(h.signals_sent_to(new_master), [Signal::SIGTERM]);
    for &pid in &old {
        assert_eq!(h.signals_sent_to(pid), [Signal::SIGTERM]);
    }
    assert_eq!(h.pidfile_restored(), 1);
    assert_eq!(h.states_notified(), ["READY=1", "RELOADING=1", "STOPPING=1"]);
    // QUIT makes it fast for the new master too.
    h.signal(MasterSignal::Quit);
    h.tick();
    assert_eq!(h.signals_sent_to(new_master), [Signal::SIGTERM, Signal::SIGQUIT]);
    for &pid in &old {
        h.exit(pid, Exit::Code(0));
    }
    h.tick();
    assert_eq!(h.exited_with(), None, "the new master is still stopping");
    // Its report, if it comes now, hands nothing over.
    h.new_master_ready();
    h.tick();
    assert!(matches!(h.master.phase, Phase::Stopping { .. }));
    h.exit(new_master, Exit::Code(0));
    h.tick();
    assert_eq!(h.exited_with(), Some(exit_code::OK));

    // A new master that does not stop is killed with what is left at the graceful timeout.
    let graceful_timeout = 20 * SECOND;
    let mut h = Harness::running(SupervisorConfig { graceful_timeout, ..config(1) });
    h.signal(MasterSignal::Upgrade);
    h.tick();
    let new_master = h.new_master().expect("a new master");
    let stop_at = h.now();
    h.signal(MasterSignal::Terminate);
    h.tick();
    h.exit(h.pids()[0], Exit::Code(0));
    h.tick_until("the master exits", |h| h.exited_with().is_some());
    assert_eq!(h.signals_sent_to(new_master), [Signal::SIGTERM, Signal::SIGKILL]);
    assert_eq!(h.now() - stop_at, graceful_timeout);
    assert_eq!(h.exited_with(), Some(exit_code::OK));
}
