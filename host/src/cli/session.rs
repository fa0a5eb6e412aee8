//! A plugin manager filled from the plugin directories, as every plugin command needs.

use std::path::PathBuf;

use anyhow::Context;

use crate::{
    bundled::load_bundled,
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

/// A manager with no plugins, its shadow copies under the cache, and the default model of each
/// bundled model plugin as that plugin's default `model` configuration (used when the
/// manifest names none; fetched by the commands that need it, see [`fetch_default_model`]).
pub fn new_manager() -> anyhow::Result<PluginManager> {
    let root = paths::shadow_root();
    let mut manager = PluginManager::new(&root)
        .with_context(|| format!("cannot set up shadow copies in {}", root.display()))?;
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
