//! The `tgingest` binary: parses the command line and runs one subcommand (see `tgingest --help`).

fn main() -> std::process::ExitCode {
    tgingest::cli::main()
}
