//! `pio plugins list | info | check | pack`.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use clap::Args;

use pio_host::{
    memory::format_size,
    pack::{pack as pack_library, PackRequest},
    CompressionReport, CompressionRequest, CompressionScope, MemoryReport, PluginState,
    PluginSummary,
};

use super::{
    output::print_table,
    session::{fetch_default_model, load_manager, new_manager},
    PluginDirs,
};

/// Arguments of `pio plugins pack`.
#[derive(Debug, Args)]
pub struct PackArgs {
    /// The built plugin library (`.so`).
    library: PathBuf,
    /// The plugin folder to write.
    #[arg(long)]
    out: PathBuf,
    /// A model file to ship in the folder; repeatable.
    #[arg(long = "model", value_name = "FILE")]
    models: Vec<PathBuf>,
    /// The `config` object passed to the plugin's initialize, as JSON.
    #[arg(long, default_value = "{}")]
    config: String,
}

fn capabilities(summary: &PluginSummary) -> String {
    summary
        .metadata
        .as_ref()
        .map(|m| {
            m.capabilities
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_else(|| "-".to_owned())
}

/// `pio plugins list`.
pub fn list(dirs: &PluginDirs) -> anyhow::Result<ExitCode> {
    let manager = load_manager(dirs)?;
    let plugins = manager.list_plugins();
    if plugins.is_empty() {
        println!("no plugins found (use --dir DIR or set PIO_PLUGIN_PATH)");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = plugins
        .iter()
        .map(|p| {
            vec![
                p.manifest.name.clone(),
                p.manifest.version.to_string(),
                p.generation.to_string(),
                p.state.name().to_owned(),
                capabilities(p),
                p.dir.display().to_string(),
            ]
        })
        .collect();
    print_table(
        &["NAME", "VERSION", "GEN", "STATE", "CAPABILITIES", "PATH"],
        &rows,
    );
    for p in plugins.iter() {
        if let PluginState::Failed(reason) = &p.state {
            eprintln!("{}: {reason}", p.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The value of `--compress`: `SCOPE=FORMAT`.
pub fn parse_compression(value: &str) -> Result<CompressionRequest, String> {
    let (scope, format) = value
        .split_once('=')
        .ok_or_else(|| format!("`{value}` is not SCOPE=FORMAT (e.g. weights=q8_0)"))?;
    let scope = match scope {
        "weights" => CompressionScope::Weights,
        "kv_cache" => CompressionScope::KvCache,
        other => return Err(format!("unknown scope `{other}`: weights or kv_cache")),
    };
    Ok(CompressionRequest {
        scope,
        format: format.to_owned(),
    })
}

/// `pio plugins info NAME [--activate] [--compress SCOPE=FORMAT]`.
pub fn info(
    name: &str,
    activate: bool,
    compress: Option<&CompressionRequest>,
    dirs: &PluginDirs,
) -> anyhow::Result<ExitCode> {
    let activate = activate || compress.is_some();
    let manager = load_manager(dirs)?;
    let summary = manager.info(name)?;
    let m = &summary.manifest;
    println!("name:         {}", m.name);
    println!("version:      {}", m.version);
    println!("state:        {}", summary.state);
    println!("generation:   {}", summary.generation);
    println!("folder:       {}", summary.dir.display());
    println!("library:      {} (sha256 {})", m.library, m.sha256);
    println!("plugin api:   {}", m.plugin_api);
    println!("host range:   {}", m.host);
    for model in &m.models {
        println!("model file:   {} (sha256 {})", model.path, model.sha256);
    }
    if let Some(meta) = &summary.metadata {
        println!("author:       {}", meta.author);
        println!("description:  {}", meta.description);
        println!("license:      {}", meta.license);
        println!("capabilities: {}", capabilities(&summary));
        println!("tags:         {}", meta.tags.join(", "));
        println!("model:        {}", serde_json::to_string(&meta.model)?);
    }
    if activate {
        fetch_default_model(&summary.manifest.name)?;
    }
    if summary.state == PluginState::Loaded {
        // A plugin before API 0.1.2, or one that cannot read its model yet, has no estimate.
        match manager.estimate_memory(&summary.id, &Default::default()) {
            Ok(estimate) => print_memory("estimate", &estimate),
            Err(e) => println!("estimate:     none ({e})"),
        }
    }
    if activate {
        manager.activate(&summary.id, &Default::default())?;
        let stats = manager.stats(&summary.id)?;
        println!("activate:     {:.0} ms", stats.activate_ms);
        println!("device mem:   {} bytes", stats.device_memory_bytes);
        println!("host mem:     {} bytes", stats.host_memory_bytes);
        if !stats.details_json.is_empty() {
            let details: serde_json::Value = serde_json::from_str(&stats.details_json)
                .context("the plugin's stats details are not valid JSON")?;
            println!("details:      {}", serde_json::to_string_pretty(&details)?);
        }
        match manager.memory_report(&summary.id) {
            Ok(report) => print_memory("memory", &report),
            Err(e) => println!("memory:       none ({e})"),
        }
        match manager.compression_stats(&summary.id) {
            Ok(Some(stats)) => {
                let ratio = stats
                    .ratio()
                    .map_or_else(String::new, |r| format!(", ratio {r:.3}"));
                println!("compression:  {}{ratio}", stats.method);
            }
            Ok(None) => println!("compression:  none (tensors as loaded)"),
            Err(e) => println!("compression:  none ({e})"),
        }
        if let Some(request) = compress {
            let report = manager.compress(&summary.id, request)?;
            print_compression(&report);
            let memory = manager.memory_report(&summary.id)?;
            print_memory("memory now", &memory);
        }
        manager.deactivate(&summary.id)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints what a compression did: method and ratio, bytes per category, quality change.
fn print_compression(report: &CompressionReport) {
    let ratio = report
        .ratio()
        .map_or_else(String::new, |r| format!(", ratio {r:.3}"));
    println!("compressed:   {}{ratio}", report.method);
    for c in &report.categories {
        println!(
            "  {:<12}{} -> {}",
            c.category.as_str(),
            format_size(c.bytes_before),
            format_size(c.bytes_after)
        );
    }
    if let Some(q) = &report.quality {
        println!(
            "  {}: {:.6} -> {:.6} ({:+.3}%)",
            q.metric,
            q.before,
            q.after,
            (q.after / q.before - 1.0) * 100.0
        );
    }
}

/// Prints a memory report (or estimate) as `label: total`, then one line per category.
fn print_memory(label: &str, report: &MemoryReport) {
    println!(
        "{:<14}device {}, host {}",
        format!("{label}:"),
        format_size(report.device_bytes()),
        format_size(report.host_bytes())
    );
    for c in &report.categories {
        let pool = match c.capacity_bytes {
            0 => String::new(),
            capacity => format!(
                " (pool: {} of {} in use)",
                format_size(c.used_bytes),
                format_size(capacity)
            ),
        };
        println!(
            "  {:<12}device {}, host {}{pool}",
            c.category.as_str(),
            format_size(c.device_bytes),
            format_size(c.host_bytes)
        );
    }
}

/// `pio plugins check PATH`.
pub fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let manager = new_manager()?;
    match manager.load_plugin_from_path(path) {
        Ok(id) => {
            let summary = manager.info(&id)?;
            println!(
                "ok: {} (plugin api {}, host {}, capabilities {})",
                summary.manifest.label(),
                summary.manifest.plugin_api,
                summary.manifest.host,
                capabilities(&summary),
            );
            manager.unload(&id)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("refused: {}: {error}", path.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `pio plugins pack LIBRARY --out DIR`.
pub fn pack(args: &PackArgs) -> anyhow::Result<ExitCode> {
    let config: serde_json::Value =
        serde_json::from_str(&args.config).context("--config is not valid JSON")?;
    anyhow::ensure!(config.is_object(), "--config must be a JSON object");
    let manager = new_manager()?;
    let manifest = pack_library(
        &PackRequest {
            library: args.library.clone(),
            out_dir: args.out.clone(),
            models: args.models.clone(),
            config,
        },
        manager.shadow(),
    )?;
    println!("packed {} into {}", manifest.label(), args.out.display());
    Ok(ExitCode::SUCCESS)
}
