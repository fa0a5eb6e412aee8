//! `pio serve`: the OpenAI-compatible HTTP server. Settings come from flags, then `PIO_*`
//! environment variables, then `--config FILE`, then the profile and the defaults; with
//! `--plugins DIR` the directory is loaded, watched and hot-reloaded, and every reload event is
//! printed as one JSON line on stdout; without it the bundled default plugins are served.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Args;

use pio_host::{memory::format_size, watch::WatchOptions, ActivateOptions, PluginManager};
use pio_server::{BatchLayer, ConfigLayer, LoadReport, PluginSource, RunningServer, ServerOptions};

use crate::{
    bundled::load_bundled,
    models::{default_model, DEFAULT_MODELS},
};

use super::{
    devices,
    run::ActivateArgs,
    session::{isolation_layer, new_manager},
};

/// Arguments of `pio serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The plugin directory to load and watch (default: the bundled llama and bert plugins).
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080; env PIO_ADDR].
    #[arg(long)]
    addr: Option<String>,
    /// TOML file with any of: addr, plugins, api_key, profile, queue_depth,
    /// request_timeout_secs, shutdown_grace_secs, body_limit_bytes, max_tokens_limit,
    /// default_max_tokens,
    /// header_read_timeout_secs, idle_timeout_secs, header_limit_bytes, memory_budget,
    /// keep_alive, a [batch] table with max_sequences, target_step_ms, and a
    /// [plugin_keep_alive] table of keep-alives by plugin name.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Named limits: default, low-latency or throughput [env PIO_PROFILE].
    #[arg(long)]
    profile: Option<String>,
    /// Requests waiting per plugin and priority before 429 [env PIO_QUEUE_DEPTH].
    #[arg(long)]
    queue_depth: Option<usize>,
    /// Seconds a request may take [env PIO_REQUEST_TIMEOUT_SECS].
    #[arg(long = "request-timeout", value_name = "SECS")]
    request_timeout_secs: Option<u64>,
    /// After SIGTERM or SIGINT, seconds requests in flight may take to finish while no new
    /// one is taken (`/health/ready` answers 503 "draining") [default: 25; env
    /// PIO_SHUTDOWN_GRACE_SECS].
    #[arg(long = "shutdown-grace", value_name = "SECS")]
    shutdown_grace_secs: Option<u64>,
    /// Largest request body in bytes [env PIO_BODY_LIMIT_BYTES].
    #[arg(long)]
    body_limit_bytes: Option<usize>,
    /// Largest max_tokens a request may ask for [env PIO_MAX_TOKENS_LIMIT].
    #[arg(long)]
    max_tokens_limit: Option<u32>,
    /// Seconds a client may take to send a request's line and headers once it has started
    /// [default: 10; env PIO_HEADER_READ_TIMEOUT_SECS].
    #[arg(long = "header-read-timeout", value_name = "SECS")]
    header_read_timeout_secs: Option<u64>,
    /// Seconds a connection may stay open with no request in flight, and a request body may take
    /// to arrive [default: 60; env PIO_IDLE_TIMEOUT_SECS].
    #[arg(long = "idle-timeout", value_name = "SECS")]
    idle_timeout_secs: Option<u64>,
    /// Largest request line plus headers in bytes; larger is answered 431
    /// [default: 16384; env PIO_HEADER_LIMIT_BYTES].
    #[arg(long)]
    header_limit_bytes: Option<usize>,
    /// Most sequences one batched step may carry [env PIO_BATCH_MAX_SEQUENCES].
    #[arg(long)]
    batch_max_sequences: Option<usize>,
    /// Step latency, in milliseconds, the adaptive batch limit aims at
    /// [env PIO_BATCH_TARGET_STEP_MS].
    #[arg(long)]
    batch_target_step_ms: Option<u64>,
    /// Bearer key required on every route but /health. Prefer PIO_API_KEY: flags are visible
    /// to other users of the machine.
    #[arg(long)]
    api_key: Option<String>,
    /// How long a plugin stays resident after its last request: a duration (`5m`), seconds, or
    /// negative for always; a request's `keep_alive` overrides it [default: always; env
    /// PIO_KEEP_ALIVE].
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    keep_alive: Option<String>,
    /// Quiet time after the last file change before a folder is examined, in milliseconds.
    #[arg(long, default_value_t = 200)]
    debounce_ms: u64,
    #[command(flatten)]
    activate: ActivateArgs,
}

/// `pio serve`.
pub fn serve(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let flags = ConfigLayer {
        addr: args.addr.clone(),
        plugins: args.plugins.clone(),
        api_key: args.api_key.clone(),
        profile: args.profile.clone(),
        queue_depth: args.queue_depth,
        request_timeout_secs: args.request_timeout_secs,
        shutdown_grace_secs: args.shutdown_grace_secs,
        body_limit_bytes: args.body_limit_bytes,
        max_tokens_limit: args.max_tokens_limit,
        default_max_tokens: None,
        header_read_timeout_secs: args.header_read_timeout_secs,
        idle_timeout_secs: args.idle_timeout_secs,
        header_limit_bytes: args.header_limit_bytes,
        batch: BatchLayer {
            max_sequences: args.batch_max_sequences,
            target_step_ms: args.batch_target_step_ms,
        },
        isolation: isolation_layer(),
        memory_budget: args.activate.memory_budget.map(|bytes| bytes.to_string()),
        keep_alive: args.keep_alive.clone(),
        plugin_keep_alive: Default::default(),
    };
    let env = ConfigLayer::from_env(|name| std::env::var(name).ok()).map_err(anyhow::Error::msg)?;
    let file = match &args.config {
        Some(path) => ConfigLayer::from_file(path).map_err(anyhow::Error::msg)?,
        None => ConfigLayer::default(),
    };
    let mut config = flags
        .over(env)
        .over(file)
        .resolve()
        .map_err(anyhow::Error::msg)
        .context("invalid server configuration")?;
    if config.memory.budget.is_none() {
        let activate = args.activate.options();
        config.memory.budget = default_memory_budget(activate.adapter.as_deref());
    }
    let budget = config.memory.budget;
    let source = match &config.plugins {
        Some(dir) => PluginSource::Directory(dir.clone()),
        None => PluginSource::Loader(Box::new(load_defaults)),
    };
    let options = ServerOptions {
        config,
        source,
        watch: WatchOptions {
            debounce: Duration::from_millis(args.debounce_ms),
            // Each plugin is told the whole budget: one that can stream (llama) keeps within
            // it on its own.
            activate: ActivateOptions {
                memory_budget_bytes: budget.unwrap_or(0),
                ..args.activate.options()
            },
            ..WatchOptions::default()
        },
        print_events: true,
    };
    let mut manager = new_manager()?;
    manager.set_isolation(options.config.isolation.clone());
    let manager = Arc::new(manager);
    let server = RunningServer::start(manager, options)?;
    eprintln!(
        "listening on http://{} (Ctrl-C stops); reload events follow as JSON lines",
        server.local_addr()
    );
    server.run_until_signal()?;
    Ok(ExitCode::SUCCESS)
}

/// The memory budget when none is configured: the device memory of the adapter the plugins
/// will use less a margin ([`budget_margin`]); none on a software adapter (its memory is the
/// host's RAM, shared with everything else on the machine) or where the driver reports no
/// size. Says which, and why, in the log.
fn default_memory_budget(adapter: Option<&str>) -> Option<u64> {
    let listing = match devices::list(adapter) {
        Ok(listing) => listing,
        Err(error) => {
            tracing::warn!("no memory budget: the adapters could not be listed ({error:#})");
            return None;
        }
    };
    let Some(chosen) = listing.chosen() else {
        let reason = listing.error.as_deref().unwrap_or("no adapter");
        tracing::info!("no memory budget: no adapter would be used ({reason})");
        return None;
    };
    match chosen.memory_bytes {
        _ if chosen.is_software() => {
            tracing::info!(
                adapter = %chosen.name,
                "no memory budget by default: a software adapter's device memory is the \
                 host's RAM; set memory_budget, PIO_MEMORY_BUDGET or --memory-budget to share it \
                 between plugins"
            );
            None
        }
        None => {
            tracing::info!(
                adapter = %chosen.name,
                "no memory budget by default: the driver reports no device memory size"
            );
            None
        }
        Some(memory) => {
            let budget = memory - budget_margin(memory);
            tracing::info!(
                adapter = %chosen.name,
                memory = %format_size(memory),
                budget = %format_size(budget),
                "memory budget by default: the adapter's device memory less a margin"
            );
            Some(budget)
        }
    }
}

/// What the default budget leaves of `memory` for the driver, other processes and allocations
/// no plugin accounts for: a tenth, at least 256 MiB (and never all of it).
fn budget_margin(memory: u64) -> u64 {
    (memory / 10).max(256 << 20).min(memory / 2)
}

/// What `pio serve` serves without `--plugins`: fetches the default models that are not
/// cached, loads the bundled plugins (which read their model when initialized) and reports the
/// default model plugins for activation.
fn load_defaults(manager: &PluginManager) -> LoadReport {
    let mut report = LoadReport::default();
    let mut fetched = Vec::new();
    for (plugin, _) in DEFAULT_MODELS {
        match default_model(plugin).map_or(Ok(()), |model| model.ensure().map(drop)) {
            Ok(()) => fetched.push(*plugin),
            Err(error) => report.failures.push((
                PathBuf::from(plugin),
                format!("cannot fetch the default model of '{plugin}': {error}"),
            )),
        }
    }
    for (folder, result) in load_bundled(manager) {
        if let Err(error) = result {
            report.failures.push((folder, error.to_string()));
        }
    }
    report.activate = fetched
        .into_iter()
        .filter_map(|plugin| manager.resolve(plugin).ok())
        .collect();
    report
}

#[cfg(test)]
mod tests {
    use super::budget_margin;

    #[test]
    fn the_default_budget_leaves_a_tenth_at_least_256_mib_at_most_half() {
        const MIB: u64 = 1 << 20;
        assert_eq!(budget_margin(80 * 1024 * MIB), 8 * 1024 * MIB);
        assert_eq!(budget_margin(1024 * MIB), 256 * MIB);
        assert_eq!(budget_margin(300 * MIB), 150 * MIB);
    }
}
