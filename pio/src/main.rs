//! The `pio` command: a thin binary over the `pio-host` (plugin manager) and `pio-server` (HTTP)
//! libraries. `main` only hands over to the command line.

mod bundled;
mod cli;
mod models;

fn main() -> std::process::ExitCode {
    cli::main()
}
