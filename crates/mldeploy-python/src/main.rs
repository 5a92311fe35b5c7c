//! `mldeploy-python`: the `mldeploy` command line, serving ml-deploy interface classes through
//! an embedded CPython. `mldeploy` runs it (by `exec`, same arguments) for Python models; it can
//! be run directly too.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use mldeploy_python::{check_version, PythonLoader};
use mldeploy_server::launch;

/// jemalloc for the whole process, libpython's and numpy's C code included (docs/design.md).
#[global_allocator]
static ALLOCATOR: mldeploy_server::Allocator = mldeploy_server::Allocator;

/// Exit code of a refused configuration, as the command line uses.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    // The environment is chosen and checked here, in the master, before any worker (and any
    // interpreter) exists; a command line that does not parse is reported by `run_cli`.
    let mut loader = PythonLoader::default();
    if let Some(settings) = launch::settings_of(std::env::args_os()) {
        let env = match launch::env_of(&settings) {
            Ok(env) => env,
            Err(message) => {
                eprintln!("mldeploy: {message}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        if let Some(Err(message)) = env.as_ref().map(check_version) {
            eprintln!("mldeploy: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
        loader = PythonLoader { env, metric_class: settings.python.metric_class };
    }
    mldeploy_server::run_cli(loader)
}
