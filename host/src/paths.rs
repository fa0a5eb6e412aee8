//! Where the host keeps its files: the cache (models, shadow copies, bundled plugin folders)
//! and the plugin search path.

use std::path::PathBuf;

/// The cache directory: `$PIO_CACHE_DIR`, else `$XDG_CACHE_HOME/pio`, else `~/.cache/pio`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PIO_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("pio");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache").join("pio")
}

/// Root of the per-process shadow-copy directories.
pub fn shadow_root() -> PathBuf {
    cache_dir().join("shadow")
}

/// Plugin directories to search when none is given: each entry of `$PIO_PLUGIN_PATH`
/// (colon-separated).
pub fn plugin_path_from_env() -> Vec<PathBuf> {
    std::env::var_os("PIO_PLUGIN_PATH")
        .map(|value| std::env::split_paths(&value).collect())
        .unwrap_or_default()
}
