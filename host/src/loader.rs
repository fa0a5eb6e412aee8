//! Loading a checked plugin library: shadow copy, `abi_stable` header and layout checks, and
//! the comparison of the library's own metadata with its manifest.

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError};
use pio_plugin_api::{
    abi::{v0_1_0, v0_1_1},
    PluginMetadata, PluginModRef,
};

use crate::{
    elf::check_shared_library,
    error::{HostError, HostResult},
    manifest::Manifest,
    object::{PluginModule, PluginObject},
    shadow::ShadowDir,
};

/// A library loaded through its `abi_stable` header, with its parsed metadata.
#[derive(Clone)]
pub struct LoadedLibrary {
    /// The root module, in the API layout the library was built with.
    pub module: PluginModule,
    /// What the library says about itself.
    pub metadata: PluginMetadata,
    /// The shadow copy that was loaded.
    pub shadow_path: PathBuf,
}

/// Loads the library of the plugin folder `dir` described by `manifest` (already checked, see
/// [`Manifest::check_compatibility`]) and checks that its metadata agrees with the manifest.
pub fn open_plugin(
    manifest: &Manifest,
    dir: &Path,
    shadow: &ShadowDir,
) -> HostResult<LoadedLibrary> {
    let library_path = manifest.library_path(dir)?;
    let library = load_verified_library(&manifest.name, &library_path, &manifest.sha256, shadow)?;
    check_metadata(manifest, &library_path, &library.metadata)?;
    Ok(library)
}

/// Creates an instance of plugin `plugin` from its loaded `library` and initializes it with
/// the configuration `config` (JSON).
pub fn new_instance(
    plugin: &str,
    library: &LoadedLibrary,
    config: &str,
) -> HostResult<PluginObject> {
    let plugin_error = |operation, error: pio_plugin_api::PluginError| HostError::Plugin {
        plugin: plugin.to_owned(),
        operation,
        error: error.into(),
    };
    let mut instance = library
        .module
        .new_instance()
        .map_err(|e| plugin_error("new", e))?;
    instance
        .initialize(config.into())
        .into_result()
        .map_err(|e| plugin_error("initialize", e))?;
    Ok(instance)
}

/// Loads the library of plugin `plugin` from a fresh shadow copy, refusing it unless the copy's
/// bytes have the manifest's digest `sha256`.
///
/// The digest is checked on the copy that is then opened, not on the plugin folder's file: the
/// folder may change between a check and the copy, and only the bytes that run matter.
pub fn load_verified_library(
    plugin: &str,
    library: &Path,
    sha256: &str,
    shadow: &ShadowDir,
) -> HostResult<LoadedLibrary> {
    let copy = shadow.copy_in(library)?;
    if copy.sha256 != sha256 {
        let _ = std::fs::remove_file(&copy.path);
        return Err(HostError::HashMismatch {
            plugin: plugin.to_owned(),
            file: library.to_owned(),
            expected: sha256.to_owned(),
            actual: copy.sha256,
        });
    }
    open_library(plugin, library, copy.path)
}

/// Loads a library no manifest vouches for (`pio plugins pack` reading a freshly built
/// library's metadata) from a fresh shadow copy.
pub fn load_unverified_library(
    plugin: &str,
    library: &Path,
    shadow: &ShadowDir,
) -> HostResult<LoadedLibrary> {
    let copy = shadow.copy_in(library)?;
    open_library(plugin, library, copy.path)
}

/// Opens the shadow copy `shadow_path` of `library` and reads its metadata.
///
/// Each library is loaded through its own header rather than `abi_stable`'s per-type cached
/// loader, which would return the first library loaded for every later path.
fn open_library(plugin: &str, library: &Path, shadow_path: PathBuf) -> HostResult<LoadedLibrary> {
    let fail = |reason: String| HostError::Library {
        plugin: plugin.to_owned(),
        file: library.to_owned(),
        reason,
    };
    if cfg!(target_os = "linux") {
        check_shared_library(&shadow_path)
            .map_err(|reason| fail(format!("not a loadable shared library: {reason}")))?;
    }
    let header = lib_header_from_path(&shadow_path).map_err(|e| fail(describe(&e)))?;
    // The current layout, else the frozen earlier layouts of the band (a library built against
    // an older minor has fewer vtable methods, which the current layout's check refuses).
    let module = match header.init_root_module::<PluginModRef>() {
        Ok(module) => PluginModule::Current(module),
        Err(current) => match header.init_root_module::<v0_1_1::PluginModRef>() {
            Ok(module) => PluginModule::V0_1_1(module),
            Err(_) => match header.init_root_module::<v0_1_0::PluginModRef>() {
                Ok(module) => PluginModule::V0_1_0(module),
                Err(_) => return Err(fail(describe(&current))),
            },
        },
    };
    let json = module
        .metadata_json()
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
