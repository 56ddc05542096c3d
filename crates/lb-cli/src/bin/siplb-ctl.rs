//! `siplb-ctl`: the admin API from a shell. See `siplb-ctl --help` and `lb_cli::ctl`.

fn main() -> std::process::ExitCode {
    lb_cli::ctl::main()
}
