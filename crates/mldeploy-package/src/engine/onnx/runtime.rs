//! The ONNX Runtime library: where it is, and the one environment a process builds on it.
//!
//! The library comes from the `onnxruntime` wheel of PyPI, which ships it as
//! `onnxruntime/capi/libonnxruntime.so.X.Y.Z`. It is looked for, in this order, at the
//! `onnxruntime` engine setting (a file, or the directory holding it), at `ORT_DYLIB_PATH`, in
//! `$VIRTUAL_ENV/lib/python3*/site-packages` (a directory scan), then by asking
//! `$VIRTUAL_ENV/bin/python3` and `python3` on `PATH` where the package is (a child process
//! that finds the package without importing it; Python is never embedded).
//!
//! Order of calls, which ort requires: `ort::init_from` is the first ort call of the process
//! (any other call before it would make ort load `libonnxruntime.so` from the default search
//! path itself, and panic when that fails), and after a failed `init_from` no ort call is made.
//! ort allows one environment per process, ever: it is built once, on the first load, and
//! shared by every session of the process. This runs only where models load: in a worker, after
//! the fork (an environment starts a thread, which a forked child would not have), or in
//! `mldeploy check`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use ort::environment::Environment;
use ort::logging::{LogLevel, LoggerFunction};

use crate::error::Error;

/// The wheel the tests and the documentation use; ort 2.0.0-rc.15 takes 1.31 and later.
pub(crate) const WHEEL: &str = "onnxruntime==1.31.1";

/// The engine setting naming the library.
pub(crate) const SETTING: &str = "onnxruntime";

/// Prints the paths of the package's libraries, one a line, without importing onnxruntime.
const FIND_WITH_PYTHON: &str = "import importlib.util as u, glob, os\n\
s = u.find_spec('onnxruntime')\n\
if s and s.submodule_search_locations:\n    \
print('\\n'.join(sorted(glob.glob(os.path.join(list(s.submodule_search_locations)[0], 'capi', 'libonnxruntime.so*')))))\n";

/// The process's environment, built on the loaded library.
static RUNTIME: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The process's runtime: loaded and built on the first call with the library `setting` (or
/// found as the module docs say); later calls get the same one (or the same failure).
pub(crate) fn runtime(setting: Option<&str>) -> Result<&'static Environment, Error> {
    let result = RUNTIME.get_or_init(|| start(&find(setting)?));
    result.as_ref().map_err(|m| Error::Runtime(m.clone()))
}

/// A library version, `(X, Y, Z)`.
type Version = (u32, u32, u32);

/// `X.Y.Z` of `libonnxruntime.so.X.Y.Z`.
fn version_of(file: &Path) -> Option<Version> {
    let rest = file.file_name()?.to_str()?.strip_prefix("libonnxruntime.so.")?;
    let mut parts = rest.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next().flatten().unwrap_or(0), parts.next().flatten().unwrap_or(0)))
}

/// The newest `libonnxruntime.so.X.Y.Z` (or a plain `libonnxruntime.so`) among `candidates`.
fn newest(candidates: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    let mut best: Option<(Option<Version>, PathBuf)> = None;
    for path in candidates {
        let plain = path.file_name().is_some_and(|n| n == "libonnxruntime.so");
        let version = version_of(&path);
        if !(plain || version.is_some()) || !path.is_file() {
            continue;
        }
        if best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, path));
        }
    }
    best.map(|(_, path)| path)
}

fn in_dir(dir: &Path) -> Option<PathBuf> {
    newest(std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()))
}

fn in_virtualenv(venv: &Path) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    for entry in std::fs::read_dir(venv.join("lib")).ok()?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("python3") {
            let capi = entry.path().join("site-packages/onnxruntime/capi");
            if let Ok(dir) = std::fs::read_dir(capi) {
                candidates.extend(dir.flatten().map(|e| e.path()));
            }
        }
    }
    newest(candidates)
}

fn via_python(python: &Path) -> Result<PathBuf, String> {
    let out = Command::new(python)
        .args(["-c", FIND_WITH_PYTHON])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{} failed: {}", python.display(), stderr.trim()));
    }
    newest(String::from_utf8_lossy(&out.stdout).lines().map(PathBuf::from))
        .ok_or_else(|| format!("{} has no onnxruntime package", python.display()))
}

/// Where the library is; the error lists every place looked at and says how to install it.
fn find(setting: Option<&str>) -> Result<PathBuf, String> {
    let given = |what: &str, path: PathBuf| -> Result<PathBuf, String> {
        if path.is_dir() {
            return in_dir(&path)
                .ok_or_else(|| format!("{what}: no libonnxruntime.so* in the directory {}", path.display()));
        }
        if path.is_file() {
            return Ok(path);
        }
        Err(format!("{what}: {} does not exist", path.display()))
    };
    if let Some(path) = setting.filter(|s| !s.is_empty()) {
        return given("the onnxruntime setting", PathBuf::from(path));
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return given("ORT_DYLIB_PATH", PathBuf::from(path));
    }
    let mut tried = vec!["no onnxruntime setting".to_string(), "ORT_DYLIB_PATH unset".to_string()];
    let mut pythons = Vec::new();
    match std::env::var_os("VIRTUAL_ENV").filter(|p| !p.is_empty()).map(PathBuf::from) {
        Some(venv) => {
            if let Some(path) = in_virtualenv(&venv) {
                return Ok(path);
            }
            tried.push(format!("no onnxruntime package under {}", venv.display()));
            pythons.push(venv.join("bin/python3"));
        }
        None => tried.push("VIRTUAL_ENV unset".into()),
    }
    pythons.push(PathBuf::from("python3"));
    for python in pythons {
        match via_python(&python) {
            Ok(path) => return Ok(path),
            Err(e) => tried.push(e),
        }
    }
    Err(format!(
        "the ONNX Runtime library was not found ({}). Install it with `pip install {WHEEL}` in the Python \
         environment mldeploy starts from, or give the library's path with --onnxruntime PATH",
        tried.join("; ")
    ))
}

/// The reason of a failed dlopen is in the error's source, not in its message.
fn load_error(e: &ort::LoadDynamicError) -> String {
    match std::error::Error::source(e) {
        Some(why) if !e.to_string().contains(&why.to_string()) => format!("{e}: {why}"),
        _ => e.to_string(),
    }
}

/// Load the library and build the process's environment.
fn start(library: &Path) -> Result<Environment, String> {
    // ort resolves a relative path against the executable's directory: hand it an absolute one.
    let library = std::fs::canonicalize(library)
        .map_err(|e| format!("the ONNX Runtime library {}: {e}", library.display()))?;
    let builder = ort::init_from(&library).map_err(|e| {
        format!(
            "cannot load the ONNX Runtime library: {} (it needs `pip install {WHEEL}` or later)",
            load_error(&e)
        )
    })?;
    // ONNX Runtime's own warnings and errors go to standard error, one line each; the logger is
    // called from C and must not panic (eprintln! does not, except on a closed stderr, which
    // `let _ = writeln!` avoids).
    let logger: LoggerFunction = Arc::new(|level, category, _id, location, message| {
        if matches!(level, LogLevel::Verbose | LogLevel::Info) {
            return;
        }
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "onnxruntime {level:?} [{category}] {location}: {message}");
    });
    let env = builder
        .with_name("mldeploy")
        .with_telemetry(false)
        .with_logger(logger)
        .build()
        .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", library.display()))?;
    env.set_log_level(LogLevel::Warning);
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_versions_are_read_from_the_file_name() {
        assert_eq!(version_of(Path::new("/x/libonnxruntime.so.1.31.1")), Some((1, 31, 1)));
        assert_eq!(version_of(Path::new("libonnxruntime.so.1.32")), Some((1, 32, 0)));
        assert_eq!(version_of(Path::new("libonnxruntime_providers_shared.so")), None);
    }

    #[test]
    fn a_setting_that_names_nothing_is_refused_with_the_reason() {
        let e = find(Some("/nonexistent/libonnxruntime.so.1.31.1")).unwrap_err();
        assert!(e.contains("onnxruntime setting") && e.contains("does not exist"), "{e}");
        let dir = std::env::temp_dir();
        let e = find(Some(dir.to_str().unwrap())).unwrap_err();
        assert!(e.contains("no libonnxruntime.so*"), "{e}");
    }
}
