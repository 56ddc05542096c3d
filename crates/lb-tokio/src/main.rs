//! `lb-tokio`: siplb on a current-thread tokio runtime. See `lb-tokio --help`.

fn main() -> std::process::ExitCode {
    lb_cli::main_with(lb_tokio::run)
}
