//! `pio devices`: the GPU adapters the plugins can use.
//!
//! The listing comes from `pio-devices`, an executable installed beside `pio` (built with it),
//! which prints what `pio_gpu::list_adapters` sees as JSON: wgpu is linked there, not here.

use std::{path::PathBuf, process::Command, process::ExitCode};

use anyhow::Context;
use serde::Deserialize;

use super::output;

/// One adapter as `pio-devices` prints it (the fields of `pio_gpu::AdapterInfo` shown here).
#[derive(Debug, Clone, Deserialize)]
pub struct Adapter {
    pub name: String,
    backend: String,
    pub device_type: String,
    driver: String,
    driver_info: String,
    /// Device-local memory, where the driver tells.
    pub memory_bytes: Option<u64>,
}

impl Adapter {
    /// Whether this is a software (CPU) adapter, whose "device memory" is the host's RAM.
    pub fn is_software(&self) -> bool {
        self.device_type == "cpu"
    }
}

/// What `pio-devices` prints: the adapters and the one the plugins would use.
#[derive(Debug, Deserialize)]
pub struct Listing {
    pub adapters: Vec<Adapter>,
    /// Index of the adapter chosen for the `--adapter` asked (or by default).
    pub chosen: Option<usize>,
    /// Why none was chosen.
    pub error: Option<String>,
}

impl Listing {
    /// The chosen adapter, if any.
    pub fn chosen(&self) -> Option<&Adapter> {
        self.adapters.get(self.chosen?)
    }
}

/// The adapters, and the one chosen for `adapter` (an index or a name fragment; `None`: the
/// plugins' default choice, a real GPU before a software one).
pub fn list(adapter: Option<&str>) -> anyhow::Result<Listing> {
    let lister = lister_path()?;
    let output = Command::new(&lister)
        .args(adapter)
        .output()
        .with_context(|| {
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
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("{} printed no adapter list", lister.display()))
}

/// Prints the adapters as a table, in enumeration order (the order `--adapter` indices use),
/// the one the plugins use by default marked `*`.
pub fn devices() -> anyhow::Result<ExitCode> {
    let listing = list(None)?;
    if listing.adapters.is_empty() {
        anyhow::bail!(
            "no GPU adapter found: install a Vulkan driver (scripts/install-system installs \
             Mesa's software driver)"
        );
    }
    let rows: Vec<Vec<String>> = listing
        .adapters
        .iter()
        .enumerate()
        .map(|(index, a)| {
            let mark = if Some(index) == listing.chosen {
                "*"
            } else {
                ""
            };
            vec![
                format!("{index}{mark}"),
                a.name.clone(),
                a.backend.clone(),
                a.device_type.clone(),
                a.memory_bytes
                    .map_or_else(|| "unknown".to_owned(), pio_host::memory::format_size),
                format!("{} {}", a.driver, a.driver_info).trim().to_owned(),
            ]
        })
        .collect();
    output::print_table(&["#", "NAME", "BACKEND", "TYPE", "MEMORY", "DRIVER"], &rows);
    println!("* the adapter plugins use unless --adapter names another");
    Ok(ExitCode::SUCCESS)
}

/// `pio-devices` beside the running `pio`.
fn lister_path() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the pio executable")?;
    Ok(exe.with_file_name(format!("pio-devices{}", std::env::consts::EXE_SUFFIX)))
}
