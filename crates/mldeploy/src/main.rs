//! The `mldeploy` command: the server's command line with the built-in model kinds.

#![forbid(unsafe_code)]

/// jemalloc for the whole process, librdkafka's C code included (docs/design.md says why).
#[global_allocator]
static ALLOCATOR: mldeploy_server::Allocator = mldeploy_server::Allocator;

fn main() -> std::process::ExitCode {
    mldeploy_server::run_cli(mldeploy_package::PackageLoader)
}
