//! Python models: which command lines need the `mldeploy-python` binary, which Python
//! environment they use, and handing the command over to that binary.
//!
//! `mldeploy` itself never links libpython, so it starts where no Python is installed. A
//! command line that names an ml-deploy interface (`interface.py`, `interface.py:Class`) or an
//! ml-deploy `config.yaml` is handed, unchanged, to `mldeploy-python` (the same command line
//! with an embedded CPython) by `exec`: same process id, nothing bound yet, so pidfiles, systemd
//! and signals see one server. The environment is chosen here in plain Rust, before any
//! interpreter exists, so a wrong Python version is refused before anything starts.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli::Invocation;
use crate::config::Settings;

/// Whether a MODEL argument names a Python interface: `FILE.py` or `FILE.py:ClassName`.
pub fn is_python_interface(model: &Path) -> bool {
    let text = model.to_string_lossy();
    text.ends_with(".py")
        || text.rsplit_once(':').is_some_and(|(file, class)| file.ends_with(".py") && !class.contains('/'))
}

/// Whether these settings serve a Python model.
pub fn needs_python(settings: &Settings) -> bool {
    settings.python.ml_deploy_config.is_some() || settings.server.model.iter().any(|m| is_python_interface(m))
}

/// The settings a command line asks for; `None` when it asks for none (help, version) or they
/// do not load (the command line itself then reports why).
pub fn settings_of(args: impl IntoIterator<Item = OsString>) -> Option<Settings> {
    let args: Vec<OsString> = args.into_iter().collect();
    match crate::cli::parse(args).ok()? {
        Invocation::Serve(source) | Invocation::Check(source) => source.load().ok(),
    }
}

/// A Python environment: a virtualenv, or the prefix of a bare interpreter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonEnv {
    /// The virtualenv's directory (or the interpreter's `sys.prefix`).
    pub root: PathBuf,
    /// Its Python version as the environment states it (`3.11.7`).
    pub version: String,
    /// Its site-packages directory.
    pub site_packages: PathBuf,
    /// A virtualenv made with `--system-site-packages`.
    pub include_system: bool,
    /// The base interpreter's `bin` directory (`home` of `pyvenv.cfg`), if known.
    pub home: Option<PathBuf>,
    /// How it was chosen, for messages (`--python ...`, `VIRTUAL_ENV`, `python3 on PATH`).
    pub source: String,
}

impl PythonEnv {
    /// `major.minor` of its version.
    pub fn major_minor(&self) -> String {
        major_minor(&self.version)
    }
}

/// `3.11` of `3.11.7`.
pub fn major_minor(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// The environment a Python model runs in: `python` (the setting), else `virtual_env`
/// (`$VIRTUAL_ENV`), else the virtualenv whose `python3` comes first on `path` (an activated
/// virtualenv: CPython would adopt it anyway, so it is chosen, and checked, openly). `None`:
/// the interpreter `mldeploy-python` was built with, as installed.
pub fn resolve_env(
    python: Option<&Path>,
    virtual_env: Option<&OsStr>,
    path: Option<&OsStr>,
) -> Result<Option<PythonEnv>, String> {
    if let Some(python) = python {
        let source = format!("--python {}", python.display());
        if python.is_dir() {
            return read_venv(python, &source).map(Some);
        }
        if !python.is_file() {
            return Err(format!("{source}: no such file or directory"));
        }
        // VENV/bin/python names its virtualenv; another python is asked where it lives.
        return match python.parent().and_then(Path::parent).filter(|root| root.join("pyvenv.cfg").is_file()) {
            Some(root) => read_venv(root, &source).map(Some),
            None => ask_interpreter(python, &source).map(Some),
        };
    }
    if let Some(venv) = virtual_env.filter(|v| !v.is_empty()) {
        return read_venv(Path::new(venv), "VIRTUAL_ENV").map(Some);
    }
    let on_path =
        std::env::split_paths(path.unwrap_or_default()).map(|dir| dir.join("python3")).find(|p| p.is_file());
    match on_path.as_ref().and_then(|p| p.parent()).and_then(Path::parent) {
        Some(root) if root.join("pyvenv.cfg").is_file() => read_venv(
            root,
            &format!(
                "the virtualenv of {} (first python3 on PATH)",
                on_path.as_ref().map_or(String::new(), |p| p.display().to_string())
            ),
        )
        .map(Some),
        _ => Ok(None),
    }
}

fn read_venv(root: &Path, source: &str) -> Result<PythonEnv, String> {
    let root = std::fs::canonicalize(root).map_err(|e| format!("{} ({source}): {e}", root.display()))?;
    let text = std::fs::read_to_string(root.join("pyvenv.cfg"))
        .map_err(|_| format!("{} ({source}) is not a virtualenv: it has no pyvenv.cfg", root.display()))?;
    let cfg: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |key: &str| cfg.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    // `python -m venv` writes `version` (3.11+: also `version_info`); virtualenv `version_info`.
    let version = get("version")
        .or_else(|| get("version_info"))
        .ok_or_else(|| format!("{}/pyvenv.cfg names no Python version", root.display()))?;
    let include_system = get("include-system-site-packages").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let site_packages =
        root.join("lib").join(format!("python{}", major_minor(&version))).join("site-packages");
    Ok(PythonEnv {
        home: get("home").map(PathBuf::from),
        root,
        version,
        site_packages,
        include_system,
        source: source.into(),
    })
}

/// A python that is not in a virtualenv: ask it (once, before any worker exists).
fn ask_interpreter(python: &Path, source: &str) -> Result<PythonEnv, String> {
    let script = "import sys, site; print(sys.version.split()[0]); print(sys.prefix); \
                  print((site.getsitepackages() or [''])[0]); print(sys.executable)";
    let out = Command::new(python)
        .args(["-I", "-c", script])
        .output()
        .map_err(|e| format!("{source}: cannot run it: {e}"))?;
    if !out.status.success() {
        return Err(format!("{source}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let [version, prefix, site, executable] = lines[..] else {
        return Err(format!("{source}: unexpected answer {text:?}"));
    };
    Ok(PythonEnv {
        root: PathBuf::from(prefix),
        version: version.to_string(),
        site_packages: PathBuf::from(site),
        include_system: true,
        home: Path::new(executable).parent().map(Path::to_path_buf),
        source: source.into(),
    })
}

/// The environment `settings` choose, from this process's environment variables.
pub fn env_of(settings: &Settings) -> Result<Option<PythonEnv>, String> {
    resolve_env(
        settings.python.python.as_deref(),
        std::env::var_os("VIRTUAL_ENV").as_deref(),
        std::env::var_os("PATH").as_deref(),
    )
}

/// Names of the binary that serves Python models, most specific first.
fn binary_names(env: Option<&PythonEnv>) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(env) = env {
        names.push(format!("mldeploy-python{}", env.major_minor()));
    }
    names.push("mldeploy-python".into());
    names
}

/// Where the `mldeploy-python` binary is: beside this executable, else on `PATH`.
pub fn find_binary(env: Option<&PythonEnv>) -> Option<PathBuf> {
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = beside.into_iter().chain(std::env::split_paths(&path)).collect();
    binary_names(env).iter().find_map(|name| dirs.iter().map(|dir| dir.join(name)).find(|p| p.is_file()))
}

/// `mldeploy`'s first step: when the command line serves a Python model, replace this process
/// by `mldeploy-python` with the same arguments. Returns only when it does not apply (`None`)
/// or the hand-over failed (`Some(message)`).
pub fn hand_over_to_python() -> Option<String> {
    let settings = settings_of(std::env::args_os())?;
    if !needs_python(&settings) {
        return None;
    }
    let env = match env_of(&settings) {
        Ok(env) => env,
        Err(message) => return Some(message),
    };
    let Some(binary) = find_binary(env.as_ref()) else {
        let version =
            env.as_ref().map_or_else(|| "your Python".to_string(), |e| format!("Python {}", e.major_minor()));
        return Some(format!(
            "this command serves a Python model, which needs the mldeploy-python binary built for {version} beside \
             mldeploy or on PATH (cargo build --release -p mldeploy-python with that Python; docs/python-models.md)"
        ));
    };
    let mut command = Command::new(&binary);
    command.args(std::env::args_os().skip(1));
    if let Some(env) = &env {
        // The interpreter starts as ENV/bin/python would: CPython finds its environment through
        // the `python3` it sees first on PATH.
        let mut path = OsString::from(env.root.join("bin"));
        if let Some(old) = std::env::var_os("PATH").filter(|p| !p.is_empty()) {
            path.push(":");
            path.push(old);
        }
        command.env("PATH", path);
        if let Some(lib) = env.home.as_ref().and_then(|home| home.parent()).map(|prefix| prefix.join("lib")) {
            let libpython = lib.join(format!("libpython{}.so.1.0", env.major_minor()));
            if libpython.is_file() {
                // That environment's own libpython, wherever the binary was built.
                let mut dirs = OsString::from(&lib);
                if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|p| !p.is_empty()) {
                    dirs.push(":");
                    dirs.push(old);
                }
                command.env("LD_LIBRARY_PATH", dirs);
            }
        }
    }
    let error = std::os::unix::process::CommandExt::exec(&mut command);
    Some(format!("cannot run {}: {error}", binary.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_interfaces_are_told_from_packages() {
        for yes in ["interface.py", "dir/model.py:MyModel", "/a/b.py"] {
            assert!(is_python_interface(Path::new(yes)), "{yes}");
        }
        for no in ["models/iris", "iris.pyc", "a.py/pkg", "ml_deploy_model.Model"] {
            assert!(!is_python_interface(Path::new(no)), "{no}");
        }
        let mut s = Settings::default();
        assert!(!needs_python(&s));
        s.set("ml_deploy_config", "config.yaml").unwrap();
        assert!(needs_python(&s));
    }

    #[test]
    fn virtualenvs_are_read_from_pyvenv_cfg() {
        let dir = std::env::temp_dir().join(format!("mldeploy-launch-{}", std::process::id()));
        let venv = dir.join("venv");
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        std::fs::write(venv.join("bin/python3"), "").unwrap();
        std::fs::write(
            venv.join("pyvenv.cfg"),
            "home = /opt/py/bin\ninclude-system-site-packages = false\nversion = 3.12.1\n",
        )
        .unwrap();
        let env = resolve_env(Some(&venv), None, None).unwrap().unwrap();
        assert_eq!((env.version.as_str(), env.major_minor().as_str()), ("3.12.1", "3.12"));
        assert!(env.site_packages.ends_with("lib/python3.12/site-packages"));
        assert_eq!(env.home.as_deref(), Some(Path::new("/opt/py/bin")));
        let by_var = resolve_env(None, Some(venv.as_os_str()), None).unwrap().unwrap();
        assert_eq!((by_var.root, by_var.source.as_str()), (env.root.clone(), "VIRTUAL_ENV"));
        let path = std::env::join_paths([dir.join("nothing"), venv.join("bin")]).unwrap();
        let on_path = resolve_env(None, None, Some(&path)).unwrap().unwrap();
        assert_eq!(on_path.root, env.root);
        assert_eq!(resolve_env(None, None, Some(OsStr::new("/nonexistent"))).unwrap(), None);
        let missing = resolve_env(Some(&dir.join("none")), None, None).unwrap_err();
        assert!(missing.contains("no such file"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_versioned_binary_comes_first() {
        let env = PythonEnv {
            root: PathBuf::from("/v"),
            version: "3.11.7".into(),
            site_packages: PathBuf::new(),
            include_system: false,
            home: None,
            source: String::new(),
        };
        assert_eq!(binary_names(Some(&env)), ["mldeploy-python3.11", "mldeploy-python"]);
        assert_eq!(binary_names(None), ["mldeploy-python"]);
    }
}
