//! Spreading connections evenly over the workers.
//!
//! Every worker accepts on the same listening sockets, and the kernel hands a new connection
//! to whichever worker calls `accept` first. A burst of connections (a client pool opening, a
//! load generator starting) then lands mostly on one or two workers: 32 keep-alive
//! connections over 4 workers split 24/7/1/0 or 20/9/3/0 in most runs. The loaded worker's
//! connections then wait in its queue while the others idle: at 32-row predictions on 2
//! cores the p99 was 6-8 ms with such a split and 1-3 ms with an even one (docs/benchmarks.md,
//! "Connections spread over the workers", also for what the even split costs in rate).
//!
//! So the master's workers share a [`Board`]: one word per seated worker holding its pid and
//! how many connections it serves. A worker that holds more than the least loaded one waits a
//! moment before it accepts (see the server's accept loop), which lets that one take the
//! connection. The board only steers: a worker without a seat (more workers than seats, no
//! master) accepts as before, and a stale word (a worker that died) is freed by the master
//! when it reaps that worker.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::sys::SharedMem;

/// Seats on a master's board; workers beyond this many accept without steering.
pub(crate) const SEATS: usize = 64;

/// A seat word: the worker's pid in the high half, its open connections in the low half; 0 is
/// a free seat (no process has pid 0).
fn word(pid: u32, open: u32) -> u64 {
    (u64::from(pid) << 32) | u64::from(open)
}

fn pid_of(word: u64) -> u32 {
    (word >> 32) as u32
}

/// The open connections of a master's workers, in memory they all share.
#[derive(Clone)]
pub(crate) struct Board(Arc<SharedMem>);

impl fmt::Debug for Board {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let taken = self.0.words().iter().filter(|w| w.load(Ordering::Relaxed) != 0).count();
        f.debug_struct("Board").field("taken", &taken).finish()
    }
}

impl Board {
    /// A board in `mem` (zeroed: every seat free).
    pub(crate) fn new(mem: SharedMem) -> Board {
        Board(Arc::new(mem))
    }

    fn words(&self) -> &[AtomicU64] {
        self.0.words()
    }

    /// Take a free seat for `pid`, with no connections; `None` when every seat is taken.
    pub(crate) fn sit(&self, pid: u32) -> Option<Seat> {
        let index = self
            .words()
            .iter()
            .position(|w| w.compare_exchange(0, word(pid, 0), Ordering::AcqRel, Ordering::Relaxed).is_ok())?;
        Some(Seat { board: self.clone(), index, pid })
    }

    /// Free the seat of a process that is gone (the master, after reaping it).
    pub(crate) fn free(&self, pid: u32) {
        for w in self.words() {
            let current = w.load(Ordering::Acquire);
            if current != 0 && pid_of(current) == pid {
                let _ = w.compare_exchange(current, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }
}

/// One worker's place on the board of open connections its master's workers share.
///
/// The worker publishes how many connections it serves ([`Seat::publish`]) and, when a
/// connection waits on the listening socket, asks [`Seat::others_hold_fewer`]: if so it waits a
/// moment so that the less loaded worker takes it. Dropping the seat (or [`Seat::leave`]) frees
/// it.
pub struct Seat {
    board: Board,
    index: usize,
    pid: u32,
}

impl fmt::Debug for Seat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Seat").field("index", &self.index).field("pid", &self.pid).finish()
    }
}

impl Seat {
    fn mine(&self) -> &AtomicU64 {
        &self.board.words()[self.index]
    }

    /// Publish how many connections this worker serves. Does nothing once the seat was left,
    /// so a late update cannot take the seat back.
    pub fn publish(&self, open: usize) {
        let open = u32::try_from(open).unwrap_or(u32::MAX);
        let _ = self.mine().fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
            (pid_of(current) == self.pid).then_some(word(self.pid, open))
        });
    }

    /// Whether another seated worker serves fewer connections than this one: then this one
    /// should let it take the next connection.
    pub fn others_hold_fewer(&self) -> bool {
        let words = self.board.words();
        let mine = words[self.index].load(Ordering::Acquire);
        if pid_of(mine) != self.pid {
            return false;
        }
        let open = mine as u32;
        words.iter().enumerate().any(|(i, w)| {
            let other = w.load(Ordering::Acquire);
            i != self.index && other != 0 && (other as u32) < open
        })
    }

    /// Leave the board (a draining worker accepts no more connections).
    pub fn leave(&self) {
        let _ = self.mine().fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
            (pid_of(current) == self.pid).then_some(0)
        });
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board() -> Board {
        Board::new(SharedMem::private(4))
    }

    #[test]
    fn the_least_loaded_worker_is_seen_by_the_others() {
        let b = board();
        let (one, two) = (b.sit(101).unwrap(), b.sit(102).unwrap());
        assert!(!one.others_hold_fewer() && !two.others_hold_fewer());
        one.publish(3);
        two.publish(2);
        assert!(one.others_hold_fewer());
        assert!(!two.others_hold_fewer());
        two.publish(3);
        assert!(!one.others_hold_fewer() && !two.others_hold_fewer());
    }

    #[test]
    fn a_left_or_freed_seat_steers_nobody_and_is_reused() {
        let b = board();
        let (one, two) = (b.sit(101).unwrap(), b.sit(102).unwrap());
        one.publish(5);
        two.leave();
        two.publish(0);
        assert!(!one.others_hold_fewer(), "a left seat must not count, even after a late publish");
        let three = b.sit(103).unwrap();
        assert!(one.others_hold_fewer());
        b.free(103);
        assert!(!one.others_hold_fewer());
        assert!(!three.others_hold_fewer());
        drop(three);
        drop(one);
        assert!(b.words().iter().all(|w| w.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn a_full_board_seats_nobody_more() {
        let b = board();
        let seats: Vec<Seat> = (1..=4).map(|pid| b.sit(pid).unwrap()).collect();
        assert!(b.sit(5).is_none());
        drop(seats);
        assert!(b.sit(5).is_some());
    }
}
