//! `pio-devices [ADAPTER]`: prints the GPU adapters wgpu can see and the one the plugins would
//! use (given `--adapter ADAPTER`, or by default), as JSON, for `pio devices` and `pio serve`'s
//! default memory budget: `{"adapters": [...], "chosen": INDEX, "error": null}` (`chosen` null
//! and `error` the reason when no adapter matches).
//!
//! Its own executable so that `pio` does not link wgpu: only this listing needs it, and the
//! listing must come from `pio_gpu`, the same wgpu instance, backends and choice the plugins
//! use, so that its indices are the ones `--adapter` takes.

use std::process::ExitCode;

use pio_gpu::{chosen_adapter, list_adapters, DeviceOptions};

fn main() -> ExitCode {
    let options = DeviceOptions {
        adapter: std::env::args().nth(1),
        ..DeviceOptions::default()
    };
    let adapters = list_adapters();
    let chosen = chosen_adapter(&adapters, &options);
    let listing = serde_json::json!({
        "adapters": adapters,
        "chosen": chosen.as_ref().ok(),
        "error": chosen.as_ref().err().map(ToString::to_string),
    });
    println!("{listing}");
    ExitCode::SUCCESS
}
