//! `pio-devices`: prints the GPU adapters wgpu can see, as a JSON array, for `pio devices`.
//!
//! Its own executable so that `pio` does not link wgpu: only this listing needs it, and the
//! listing must come from `pio_gpu`, the same wgpu instance and backends the plugins enumerate,
//! so that its indices are the ones `--adapter` takes.

use std::process::ExitCode;

fn main() -> ExitCode {
    match serde_json::to_string(&pio_gpu::list_adapters()) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("pio-devices: {error}");
            ExitCode::FAILURE
        }
    }
}
