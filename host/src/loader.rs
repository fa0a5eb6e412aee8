//! Loading a checked plugin library: shadow copy, `abi_stable` header and layout checks, and
//! the comparison of the library's own metadata with its manifest.

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError};
use pio_plugin_api::{PluginMetadata, PluginModRef};

use crate::{
    elf::check_shared_library,
    error::{HostError, HostResult},
    manifest::Manifest,
    shadow::ShadowDir,
};

/// A library loaded through its `abi_stable` header, with its parsed metadata.
#[derive(Clone)]
pub struct LoadedLibrary {
    /// The root module.
    pub module: PluginModRef,
    /// What the library says about itself.
    pub metadata: PluginMetadata,
    /// The shadow copy that was loaded.
    pub shadow_path: PathBuf,
}

/// Loads `library` (already verified against its manifest) from a fresh shadow copy.
///
/// Each library is loaded through its own header rather than `abi_stable`'s per-type cached
/// loader, which would return the first library loaded for every later path.
pub fn load_library(plugin: &str, library: &Path, shadow: &ShadowDir) -> HostResult<LoadedLibrary> {
    let fail = |reason: String| HostError::Library {
        plugin: plugin.to_owned(),
        file: library.to_owned(),
        reason,
    };
    let shadow_path = shadow.copy_in(library)?;
    if cfg!(target_os = "linux") {
        check_shared_library(&shadow_path)
            .map_err(|reason| fail(format!("not a loadable shared library: {reason}")))?;
    }
    let header = lib_header_from_path(&shadow_path).map_err(|e| fail(describe(&e)))?;
    let module = header
        .init_root_module::<PluginModRef>()
        .map_err(|e| fail(describe(&e)))?;
    let json = (module.metadata_json())()
        .into_result()
        .map_err(|e| fail(format!("metadata failed: {e}")))?;
    let metadata: PluginMetadata =
        serde_json::from_str(&json).map_err(|e| fail(format!("metadata is not valid: {e}")))?;
    tracing::debug!(plugin, shadow = %shadow_path.display(), "library loaded");
    Ok(LoadedLibrary {
        module,
        metadata,
        shadow_path,
    })
}

/// Checks that the library's metadata agrees with its manifest on name and versions.
pub fn check_metadata(
    manifest: &Manifest,
    library: &Path,
    metadata: &PluginMetadata,
) -> HostResult<()> {
    let fields = [
        ("name", manifest.name.clone(), metadata.name.clone()),
        (
            "version",
            manifest.version.to_string(),
            metadata.version.to_string(),
        ),
        (
            "plugin_api",
            manifest.plugin_api.to_string(),
            metadata.plugin_api.to_string(),
        ),
    ];
    match fields
        .into_iter()
        .find(|(_, in_manifest, in_library)| in_manifest != in_library)
    {
        None => Ok(()),
        Some((field, in_manifest, in_library)) => Err(HostError::MetadataMismatch {
            plugin: manifest.name.clone(),
            file: library.to_owned(),
            field,
            manifest: in_manifest,
            library: in_library,
        }),
    }
}

/// A short account of a loading failure. Layout mismatches come as a many-kilobyte dump whose
/// useful lines start with `Error:`; keep those.
fn describe(error: &LibraryError) -> String {
    let full = error.to_string();
    let kind = match error {
        LibraryError::OpenError { .. } => "not a loadable shared library",
        LibraryError::GetSymbolError { .. } => "not an Inference-PIO plugin (no root module)",
        LibraryError::IncompatibleVersionNumber { .. } => {
            "built against an incompatible pio-plugin-api"
        }
        LibraryError::AbiInstability(_) => {
            "ABI layout differs from this host's pio-plugin-api (rebuild the plugin against it)"
        }
        _ => "cannot load plugin",
    };
    let errors: Vec<&str> = full
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Error:"))
        .take(3)
        .collect();
    let detail = if errors.is_empty() {
        full.lines().take(3).collect::<Vec<_>>().join(" ")
    } else {
        errors.join(" ")
    };
    const MAX: usize = 600;
    let detail = match detail.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &detail[..cut]),
        None => detail,
    };
    format!("{kind}: {detail}")
}
