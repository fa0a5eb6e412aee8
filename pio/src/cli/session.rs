//! A plugin manager filled from the plugin directories, as every plugin command needs.

use std::{collections::BTreeMap, path::PathBuf, sync::OnceLock};

use anyhow::Context;
use bytesize::ByteSize;
use clap::Args;

use pio_host::{
    isolation::{Isolation, IsolationLayer},
    paths, PluginManager,
};

use crate::{
    bundled::load_bundled,
    models::{default_model, DEFAULT_MODELS},
};

use super::PluginDirs;

/// Creates a manager and loads every plugin of the search path: the `--dir` directories, else
/// `$PIO_PLUGIN_PATH`; plus the bundled plugins. Failures are logged, not fatal: they show up
/// as failed plugins.
pub fn load_manager(dirs: &PluginDirs) -> anyhow::Result<PluginManager> {
    let mut manager = new_manager()?;
    load_plugins(&mut manager, dirs)?;
    Ok(manager)
}

/// Loads every plugin of the search path into `manager` (see [`load_manager`]).
pub fn load_plugins(manager: &mut PluginManager, dirs: &PluginDirs) -> anyhow::Result<()> {
    let search: Vec<PathBuf> = if dirs.dirs.is_empty() {
        paths::plugin_path_from_env()
    } else {
        dirs.dirs.clone()
    };
    for dir in &search {
        let report = manager
            .load_plugins_from_directory(dir)
            .with_context(|| format!("cannot read plugin directory {}", dir.display()))?;
        for (path, error) in report.failures {
            tracing::warn!(path = %path.display(), "{error}");
        }
    }
    if dirs.dirs.is_empty() {
        load_bundled(manager);
    }
    Ok(())
}

/// Where plugins run, for every command that loads them (`pio serve` also reads the
/// `[isolation]` table of its configuration file, below these).
#[derive(Debug, Clone, Default, Args)]
pub struct IsolationArgs {
    /// Run plugins in this process (`in-process`, the default and the fastest) or each in a
    /// worker process of its own (`process`: a crashing plugin takes down only its worker).
    #[arg(long, global = true, env = "PIO_ISOLATION", value_name = "MODE")]
    isolation: Option<Isolation>,
    /// With process isolation: the address-space limit of each worker (e.g. `4GiB`).
    #[arg(
        long,
        global = true,
        env = "PIO_WORKER_MEMORY_LIMIT",
        value_name = "SIZE"
    )]
    worker_memory_limit: Option<ByteSize>,
    /// With process isolation: the CPU-time limit of each worker, in seconds.
    #[arg(
        long,
        global = true,
        env = "PIO_WORKER_CPU_LIMIT_SECS",
        value_name = "SECS"
    )]
    worker_cpu_limit_secs: Option<u64>,
    /// A plugin call silent this long is stuck (default 300): a worker is killed; under
    /// `pio serve` an in-process instance is replaced.
    #[arg(
        long,
        global = true,
        env = "PIO_WORKER_STALL_TIMEOUT_SECS",
        value_name = "SECS"
    )]
    worker_stall_timeout_secs: Option<u64>,
}

impl IsolationArgs {
    /// These options as a configuration layer.
    pub fn layer(&self) -> IsolationLayer {
        IsolationLayer {
            mode: self.isolation,
            memory_limit: self.worker_memory_limit,
            cpu_limit_secs: self.worker_cpu_limit_secs,
            stall_timeout_secs: self.worker_stall_timeout_secs,
            plugins: BTreeMap::new(),
        }
    }
}

/// The command line's isolation options, set once by `cli::main` before any command runs.
static ISOLATION: OnceLock<IsolationArgs> = OnceLock::new();

/// Records the command line's isolation options for [`new_manager`].
pub fn set_isolation(args: IsolationArgs) {
    let _ = ISOLATION.set(args);
}

/// The command line's isolation options as a configuration layer.
pub fn isolation_layer() -> IsolationLayer {
    ISOLATION
        .get()
        .map(IsolationArgs::layer)
        .unwrap_or_default()
}

/// A manager with no plugins, its shadow copies under the cache, and the default model of each
/// bundled model plugin as that plugin's default `model` configuration (used when the
/// manifest names none; fetched by the commands that need it, see [`fetch_default_model`]).
pub fn new_manager() -> anyhow::Result<PluginManager> {
    let root = paths::shadow_root();
    let mut manager = PluginManager::new(&root)
        .with_context(|| format!("cannot set up shadow copies in {}", root.display()))?;
    let isolation = isolation_layer()
        .resolve()
        .map_err(anyhow::Error::msg)
        .context("invalid isolation settings")?;
    manager.set_isolation(isolation);
    for (plugin, _) in DEFAULT_MODELS {
        if let Some(model) = default_model(plugin) {
            manager.set_config_default(plugin, serde_json::json!({ "model": model.path() }));
        }
    }
    Ok(manager)
}

/// Fetches the default model of `plugin` (if it has one) unless it is already cached.
pub fn fetch_default_model(plugin: &str) -> anyhow::Result<()> {
    if let Some(model) = default_model(plugin) {
        model.ensure()?;
    }
    Ok(())
}
