//! The `mldeploy` command: the server's command line with the built-in model kinds.

fn main() -> std::process::ExitCode {
    mldeploy_server::run_cli(mldeploy_candle::BuiltinLoader)
}
