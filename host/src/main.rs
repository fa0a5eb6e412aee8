//! The `pio` command: parses arguments and hands over to the host library.

fn main() -> std::process::ExitCode {
    pio_host::cli::main()
}
