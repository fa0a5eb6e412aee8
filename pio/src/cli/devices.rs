//! `pio devices`: the GPU adapters the plugins can use.
//!
//! The listing comes from `pio-devices`, an executable installed beside `pio` (built with it),
//! which prints what `pio_gpu::list_adapters` sees as JSON: wgpu is linked there, not here.

use std::{path::PathBuf, process::Command, process::ExitCode};

use anyhow::Context;
use serde::Deserialize;

use super::output;

/// One adapter as `pio-devices` prints it (the fields of `pio_gpu::AdapterInfo` shown here).
#[derive(Debug, Deserialize)]
struct Adapter {
    name: String,
    backend: String,
    device_type: String,
    driver: String,
    driver_info: String,
}

/// Prints the adapters as a table, in enumeration order (the order `--adapter` indices use).
pub fn devices() -> anyhow::Result<ExitCode> {
    let lister = lister_path()?;
    let output = Command::new(&lister).output().with_context(|| {
        format!(
            "cannot run {} (it is built with pio: `cargo build -p pio`)",
            lister.display()
        )
    })?;
    if !output.status.success() {
        anyhow::bail!(
            "{} failed with {}: {}",
            lister.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let adapters: Vec<Adapter> = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("{} printed no adapter list", lister.display()))?;
    if adapters.is_empty() {
        anyhow::bail!(
            "no GPU adapter found: install a Vulkan driver (scripts/install-system installs \
             Mesa's software driver)"
        );
    }
    let rows: Vec<Vec<String>> = adapters
        .into_iter()
        .enumerate()
        .map(|(index, a)| {
            vec![
                index.to_string(),
                a.name,
                a.backend,
                a.device_type,
                format!("{} {}", a.driver, a.driver_info).trim().to_owned(),
            ]
        })
        .collect();
    output::print_table(&["#", "NAME", "BACKEND", "TYPE", "DRIVER"], &rows);
    Ok(ExitCode::SUCCESS)
}

/// `pio-devices` beside the running `pio`.
fn lister_path() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the pio executable")?;
    Ok(exe.with_file_name(format!("pio-devices{}", std::env::consts::EXE_SUFFIX)))
}
