//! A plugin manager filled from the plugin directories, as every plugin command needs.

use std::{collections::BTreeMap, path::PathBuf, sync::OnceLock, time::Duration};

use anyhow::Context;
use bytesize::ByteSize;
use clap::Args;

use crate::{
    bundled::load_bundled,
    isolation::{Isolation, WorkerSettings},
    models::{default_model, DEFAULT_MODELS},
    paths, PluginManager,
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

/// Where plugins run, for every command that loads them.
#[derive(Debug, Clone, Args)]
pub struct IsolationArgs {
    /// Run plugins in this process (`in-process`, the fastest) or each in a worker process of
    /// its own (`process`: a crashing plugin takes down only its worker).
    #[arg(
        long,
        global = true,
        env = "PIO_ISOLATION",
        default_value = "in-process"
    )]
    isolation: Isolation,
    /// With process isolation: the address-space limit of each worker (e.g. `4GiB`).
    #[arg(
        long,
        global = true,
        env = "PIO_WORKER_MEMORY_LIMIT",
        value_name = "SIZE"
    )]
    worker_memory_limit: Option<ByteSize>,
    /// With process isolation: the CPU-time limit of each worker, in seconds.
    #[arg(long, global = true, env = "PIO_WORKER_CPU_LIMIT", value_name = "SECS")]
    worker_cpu_limit: Option<u64>,
    /// With process isolation: a worker silent this long during a call is killed as hung.
    #[arg(
        long,
        global = true,
        env = "PIO_WORKER_STALL_TIMEOUT",
        value_name = "SECS",
        default_value_t = 300
    )]
    worker_stall_timeout: u64,
}

impl IsolationArgs {
    fn worker_settings(&self) -> WorkerSettings {
        WorkerSettings {
            memory_limit_bytes: self.worker_memory_limit.map(|size| size.as_u64()),
            cpu_limit_secs: self.worker_cpu_limit,
            stall_timeout: Duration::from_secs(self.worker_stall_timeout),
            ..WorkerSettings::default()
        }
    }
}

/// The command line's isolation options, set once by `cli::main` before any command runs.
static ISOLATION: OnceLock<IsolationArgs> = OnceLock::new();

/// Records the command line's isolation options for [`new_manager`].
pub fn set_isolation(args: IsolationArgs) {
    let _ = ISOLATION.set(args);
}

/// A manager with no plugins, its shadow copies under the cache, and the default model of each
/// bundled model plugin as that plugin's default `model` configuration (used when the
/// manifest names none; fetched by the commands that need it, see [`fetch_default_model`]).
pub fn new_manager() -> anyhow::Result<PluginManager> {
    let root = paths::shadow_root();
    let mut manager = PluginManager::new(&root)
        .with_context(|| format!("cannot set up shadow copies in {}", root.display()))?;
    if let Some(args) = ISOLATION.get() {
        manager.set_isolation(args.isolation, BTreeMap::new(), args.worker_settings());
    }
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
