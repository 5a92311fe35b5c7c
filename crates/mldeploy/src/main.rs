//! The `mldeploy` command: the server's command line with the built-in model kinds.
//!
//! A command line that serves a Python model (an ml-deploy interface file or `config.yaml`) is
//! handed to the `mldeploy-python` binary first: this one never links libpython, so it runs
//! where no Python is installed (docs/design.md).

#![forbid(unsafe_code)]

/// jemalloc for the whole process, librdkafka's C code included (docs/design.md says why).
#[global_allocator]
static ALLOCATOR: mldeploy_server::Allocator = mldeploy_server::Allocator;

/// Exit code of a refused configuration, as the command line uses.
const EXIT_CONFIG: u8 = 2;

fn main() -> std::process::ExitCode {
    if let Some(message) = mldeploy_server::launch::hand_over_to_python() {
        eprintln!("mldeploy: {message}");
        return std::process::ExitCode::from(EXIT_CONFIG);
    }
    mldeploy_server::run_cli(mldeploy_package::PackageLoader)
}
