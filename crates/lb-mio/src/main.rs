//! `lb-mio`: siplb on a mio readiness loop. See `lb-mio --help`.

fn main() -> std::process::ExitCode {
    lb_cli::main_with(lb_mio::run)
}
