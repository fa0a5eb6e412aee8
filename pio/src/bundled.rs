//! Bundled plugins: plugin libraries installed beside the `pio` executable (for a workspace
//! build, `target/<profile>/libpio_plugin_*.so`). They are packed on first use into plugin folders
//! under the cache, and packed again whenever the library changes, so `pio` works right after
//! `cargo build` with no manual packing.

use std::path::{Path, PathBuf};

use pio_host::{
    digest::sha256_file,
    pack::{pack, PackRequest},
    paths::cache_dir,
    shadow::ShadowDir,
    HostResult, Manifest, PluginManager,
};

/// File-name prefix of bundled plugin libraries.
const LIBRARY_PREFIX: &str = "libpio_plugin_";

/// Plugin folders for every bundled library, (re)packed as needed. Libraries that fail to pack
/// are logged and skipped.
pub fn bundled_plugin_folders(shadow: &ShadowDir) -> Vec<PathBuf> {
    let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
    else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(&exe_dir) else {
        return Vec::new();
    };
    let mut libraries: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_bundled_library(p))
        .collect();
    libraries.sort();
    libraries
        .into_iter()
        .filter_map(|library| match ensure_packed(&library, shadow) {
            Ok(folder) => Some(folder),
            Err(e) => {
                tracing::warn!(library = %library.display(), "cannot use bundled plugin: {e}");
                None
            }
        })
        .collect()
}

/// Registers and loads every bundled plugin into `manager`, returning each folder with the id
/// loaded or the reason it was not (also logged).
pub fn load_bundled(manager: &PluginManager) -> Vec<(PathBuf, HostResult<String>)> {
    bundled_plugin_folders(manager.shadow())
        .into_iter()
        .map(|folder| {
            let result = manager.load_plugin_from_path(&folder);
            if let Err(error) = &result {
                tracing::warn!(folder = %folder.display(), "{error}");
            }
            (folder, result)
        })
        .collect()
}

fn is_bundled_library(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.starts_with(LIBRARY_PREFIX) && name.ends_with(std::env::consts::DLL_SUFFIX)
}

/// The plugin folder of `library`, packed again if the library changed since the last time.
fn ensure_packed(library: &Path, shadow: &ShadowDir) -> HostResult<PathBuf> {
    let stem = library
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let folder = cache_dir().join("bundled").join(stem);
    let current = sha256_file(library)?;
    if let Ok(manifest) = Manifest::read(&folder) {
        if manifest.sha256 == current {
            return Ok(folder);
        }
    }
    pack(
        &PackRequest {
            library: library.to_owned(),
            out_dir: folder.clone(),
            models: Vec::new(),
            config: serde_json::json!({}),
        },
        shadow,
    )?;
    Ok(folder)
}
