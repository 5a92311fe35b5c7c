//! The model repository: a directory of model packages that a server started with
//! `--model-repository` serves, and the way the V2 repository extension changes that set.
//!
//! Layout: each subdirectory of the repository is one model, named after the subdirectory.
//! Either it is a package itself, or its subdirectories named by numbers are its versions
//! (`iris/1`, `iris/2`): the highest serves unless the configuration pins one.
//!
//! Changing the set: in a pre-fork server, what a worker serves is fixed when it loads; a load
//! or unload is a new generation of workers with the new set, started by the master as a
//! reload does, so requests to the other models never fail. The worker that got the call
//! writes it into a mailbox in memory shared with the master and sends the master SIGHUP; the
//! master takes the request when it prepares the reload, and writes the outcome when the
//! reload ends; a new worker that fails to load adds its reason. One request at a time: the
//! mailbox has a lock word holding the requester's pid.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mldeploy_prefork::WorkerHandle;

/// One model of the repository as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryModel {
    /// The subdirectory's name.
    pub name: String,
    /// Its numbered versions, ascending; empty when the subdirectory is the package itself.
    pub versions: Vec<u64>,
}

impl RepositoryModel {
    /// The package directory of the version to serve (`pin`, else the highest).
    pub fn package(
        &self,
        root: &Path,
        pin: Option<&str>,
    ) -> Result<(PathBuf, Option<String>), RepositoryError> {
        let dir = root.join(&self.name);
        match (pin, self.versions.last()) {
            (None, None) => Ok((dir, None)),
            (None, Some(highest)) => Ok((dir.join(highest.to_string()), Some(highest.to_string()))),
            (Some(pin), _) => {
                let version: u64 = pin.parse().map_err(|_| RepositoryError::Version {
                    model: self.name.clone(),
                    version: pin.to_string(),
                })?;
                if !self.versions.contains(&version) {
                    return Err(RepositoryError::Version {
                        model: self.name.clone(),
                        version: pin.to_string(),
                    });
                }
                Ok((dir.join(version.to_string()), Some(version.to_string())))
            }
        }
    }
}

/// What can be wrong with a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepositoryError {
    /// The directory cannot be read.
    Unreadable { path: PathBuf, message: String },
    /// A pinned version does not exist.
    Version { model: String, version: String },
    /// No model of that name in the repository.
    UnknownModel(String),
}

impl std::fmt::Display for RepositoryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RepositoryError::Unreadable { path, message } => {
                write!(f, "model repository {}: {message}", path.display())
            }
            RepositoryError::Version { model, version } => {
                write!(f, "model {model:?} has no version directory {version:?}")
            }
            RepositoryError::UnknownModel(name) => write!(f, "no model named {name:?} in the repository"),
        }
    }
}

impl std::error::Error for RepositoryError {}

/// The models of the repository at `root`, by name.
pub fn scan(root: &Path) -> Result<Vec<RepositoryModel>, RepositoryError> {
    let unreadable =
        |e: std::io::Error| RepositoryError::Unreadable { path: root.to_path_buf(), message: e.to_string() };
    let mut models = Vec::new();
    for entry in std::fs::read_dir(root).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        let mut versions: Vec<u64> = std::fs::read_dir(entry.path())
            .map_err(unreadable)?
            .filter_map(Result::ok)
            .filter(|v| v.path().is_dir())
            .filter_map(|v| v.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        versions.sort_unstable();
        models.push(RepositoryModel { name, versions });
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(models)
}

/// What a repository call asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Serve the model (again, from its files as they are now).
    Load,
    /// Stop serving it.
    Unload,
}

/// The served subset of a repository: every model but those unloaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    unloaded: BTreeSet<String>,
}

impl Selection {
    /// Whether `name` is served.
    pub fn serves(&self, name: &str) -> bool {
        !self.unloaded.contains(name)
    }

    /// The selection after `change` of `name`.
    pub fn with(&self, change: Change, name: &str) -> Selection {
        let mut next = self.clone();
        match change {
            Change::Load => next.unloaded.remove(name),
            Change::Unload => next.unloaded.insert(name.to_string()),
        };
        next
    }
}

// Mailbox layout, in words.
const LOCK: usize = 0;
const STATE: usize = 1;
const OP: usize = 2;
const NAME: usize = 3;
const NAME_WORDS: usize = 1 + 32;
const MESSAGE: usize = NAME + NAME_WORDS;
const MESSAGE_WORDS: usize = 1 + 512;
/// Words of the mailbox.
pub const MAILBOX_WORDS: usize = MESSAGE + MESSAGE_WORDS;

const IDLE: u64 = 0;
const PENDING: u64 = 1;
const TAKEN: u64 = 2;
const DONE_OK: u64 = 3;
const DONE_FAILED: u64 = 4;

/// Text in shared words: a length word, then the bytes.
fn write_text(words: &[AtomicU64], text: &str) {
    let capacity = (words.len() - 1) * 8;
    let mut end = text.len().min(capacity);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = &text.as_bytes()[..end];
    for (word, chunk) in words[1..].iter().zip(bytes.chunks(8)) {
        let mut buf = [0u8; 8];
        buf[..chunk.len()].copy_from_slice(chunk);
        word.store(u64::from_le_bytes(buf), Ordering::Relaxed);
    }
    words[0].store(end as u64, Ordering::Release);
}

fn read_text(words: &[AtomicU64]) -> String {
    let len = (words[0].load(Ordering::Acquire) as usize).min((words.len() - 1) * 8);
    let mut bytes = Vec::with_capacity(len);
    for word in &words[1..] {
        if bytes.len() >= len {
            break;
        }
        bytes.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
    }
    bytes.truncate(len);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The mailbox between the workers and the master, in memory mapped before the fork.
#[derive(Debug, Clone, Copy)]
pub struct Mailbox {
    words: &'static [AtomicU64],
}

/// A request the master took from the mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub change: Change,
    pub name: String,
}

impl Mailbox {
    /// A mailbox in `words` (at least [`MAILBOX_WORDS`], zeroed).
    pub fn new(words: &'static [AtomicU64]) -> Mailbox {
        assert!(words.len() >= MAILBOX_WORDS, "the mailbox needs {MAILBOX_WORDS} words");
        Mailbox { words }
    }

    fn name(&self) -> &[AtomicU64] {
        &self.words[NAME..NAME + NAME_WORDS]
    }

    fn message(&self) -> &[AtomicU64] {
        &self.words[MESSAGE..MESSAGE + MESSAGE_WORDS]
    }

    /// Master: take a pending request, if there is one.
    pub fn take(&self) -> Option<Request> {
        self.words[STATE].compare_exchange(PENDING, TAKEN, Ordering::AcqRel, Ordering::Acquire).ok()?;
        let change = if self.words[OP].load(Ordering::Relaxed) == 1 { Change::Load } else { Change::Unload };
        Some(Request { change, name: read_text(self.name()) })
    }

    /// Master: the request taken is done; `message` says why it failed (unless a worker that
    /// failed to load said it first).
    pub fn finish(&self, ok: bool, message: &str) {
        if self.words[STATE].load(Ordering::Acquire) != TAKEN {
            return;
        }
        if !ok && self.words[MESSAGE].load(Ordering::Acquire) == 0 {
            write_text(self.message(), message);
        }
        self.words[STATE].store(if ok { DONE_OK } else { DONE_FAILED }, Ordering::Release);
    }

    /// Worker: a model failed to load while a request is being carried out: the reason the
    /// request's caller gets (the first one written is kept).
    pub fn report_load_failure(&self, message: &str) {
        if self.words[STATE].load(Ordering::Acquire) == TAKEN
            && self.words[MESSAGE].load(Ordering::Acquire) == 0
        {
            write_text(self.message(), message);
        }
    }
}

/// A worker's link to the master for changing the served set of models.
#[derive(Debug, Clone)]
pub struct RepositoryLink {
    /// The repository directory.
    pub root: PathBuf,
    mailbox: Mailbox,
    worker: WorkerHandle,
}

/// How a repository call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every worker serves the new set.
    Done,
    /// The set is unchanged, for this reason.
    Failed(String),
    /// Another call holds the mailbox past the wait.
    Busy,
}

/// How often a waiting worker looks at the mailbox.
const POLL: Duration = Duration::from_millis(20);

impl RepositoryLink {
    /// A link through `mailbox` to the master of `worker`.
    pub fn new(root: PathBuf, mailbox: Mailbox, worker: WorkerHandle) -> RepositoryLink {
        RepositoryLink { root, mailbox, worker }
    }

    /// Ask the master for `change` of `name` and wait for the outcome, at most `wait`.
    pub async fn request(&self, change: Change, name: &str, wait: Duration) -> Outcome {
        let deadline = Instant::now() + wait;
        let words = self.mailbox.words;
        let me = u64::from(std::process::id());
        loop {
            let holder = words[LOCK].load(Ordering::Acquire);
            let free = holder == 0 || !pid_alive(holder);
            if free && words[LOCK].compare_exchange(holder, me, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                return Outcome::Busy;
            }
            tokio::time::sleep(POLL).await;
        }
        words[OP].store(if change == Change::Load { 1 } else { 2 }, Ordering::Relaxed);
        write_text(self.mailbox.name(), name);
        words[MESSAGE].store(0, Ordering::Relaxed);
        words[STATE].store(PENDING, Ordering::Release);
        let outcome = if self.worker.request_reload() {
            loop {
                match words[STATE].load(Ordering::Acquire) {
                    DONE_OK => break Outcome::Done,
                    DONE_FAILED => break Outcome::Failed(read_text(self.mailbox.message())),
                    _ if Instant::now() >= deadline => {
                        break Outcome::Failed("the master did not finish the change in time".into())
                    }
                    _ => tokio::time::sleep(POLL).await,
                }
            }
        } else {
            Outcome::Failed("this server runs without a master (app_debug): its models cannot change".into())
        };
        words[STATE].store(IDLE, Ordering::Release);
        words[LOCK].store(0, Ordering::Release);
        outcome
    }
}

fn pid_alive(pid: u64) -> bool {
    !Path::new("/proc/self").exists() || Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leak(n: usize) -> &'static [AtomicU64] {
        Box::leak((0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>().into_boxed_slice())
    }

    #[test]
    fn text_round_trips_and_is_cut_at_capacity() {
        let words = leak(4);
        let text = "héllo wörld, longer than 24 bytes";
        write_text(words, text);
        let back = read_text(words);
        assert!(text.starts_with(&back) && back.len() > 20 && back.len() <= 24, "{back:?}");
        write_text(words, "short");
        assert_eq!(read_text(words), "short");
        write_text(words, "");
        assert_eq!(read_text(words), "");
    }

    #[test]
    fn the_master_takes_a_request_once_and_keeps_the_first_failure() {
        let mailbox = Mailbox::new(leak(MAILBOX_WORDS));
        assert_eq!(mailbox.take(), None);
        mailbox.words[OP].store(2, Ordering::Relaxed);
        write_text(mailbox.name(), "iris");
        mailbox.words[STATE].store(PENDING, Ordering::Release);
        assert_eq!(mailbox.take(), Some(Request { change: Change::Unload, name: "iris".into() }));
        assert_eq!(mailbox.take(), None);
        mailbox.report_load_failure("iris: missing file");
        mailbox.report_load_failure("later");
        mailbox.finish(false, "generic");
        assert_eq!(mailbox.words[STATE].load(Ordering::Relaxed), DONE_FAILED);
        assert_eq!(read_text(mailbox.message()), "iris: missing file");
    }

    #[test]
    fn selection_and_versions() {
        let s = Selection::default().with(Change::Unload, "a");
        assert!(!s.serves("a") && s.serves("b"));
        assert!(s.with(Change::Load, "a").serves("a"));
        let m = RepositoryModel { name: "iris".into(), versions: vec![1, 2, 10] };
        let root = Path::new("/r");
        assert_eq!(m.package(root, None).unwrap(), (root.join("iris/10"), Some("10".into())));
        assert_eq!(m.package(root, Some("2")).unwrap(), (root.join("iris/2"), Some("2".into())));
        assert!(m.package(root, Some("3")).is_err());
        let flat = RepositoryModel { name: "wine".into(), versions: vec![] };
        assert_eq!(flat.package(root, None).unwrap(), (root.join("wine"), None));
    }
}
