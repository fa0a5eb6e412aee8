//! `pio plugins pack`: turns a built library into a plugin folder with a correct manifest, so
//! authors never write digests by hand.

use std::path::{Path, PathBuf};

use crate::{
    digest::sha256_file,
    error::{HostError, HostResult},
    loader::load_unverified_library,
    manifest::{Manifest, ModelFile},
    shadow::ShadowDir,
};

/// What to pack.
#[derive(Debug, Clone)]
pub struct PackRequest {
    /// The built `cdylib`.
    pub library: PathBuf,
    /// The plugin folder to write (created if missing).
    pub out_dir: PathBuf,
    /// Model files to copy into the folder and list in the manifest.
    pub models: Vec<PathBuf>,
    /// The manifest's `config` object.
    pub config: serde_json::Value,
}

/// Packs `request.library` into a plugin folder and returns the manifest written.
///
/// The library is loaded (from a shadow copy) to read its metadata: name, version, API version
/// and host range come from the library itself.
pub fn pack(request: &PackRequest, shadow: &ShadowDir) -> HostResult<Manifest> {
    let library_name = file_name(&request.library)?;
    let loaded = load_unverified_library(&library_name, &request.library, shadow)?;
    let metadata = loaded.metadata;
    std::fs::create_dir_all(&request.out_dir).map_err(|e| HostError::io(&request.out_dir, e))?;

    let library_target = request.out_dir.join(&library_name);
    copy_replacing(&request.library, &library_target)?;
    let mut models = Vec::new();
    for model in &request.models {
        let name = file_name(model)?;
        let target = request.out_dir.join(&name);
        copy_replacing(model, &target)?;
        models.push(ModelFile {
            path: name,
            sha256: sha256_file(&target)?,
        });
    }
    let manifest = Manifest {
        name: metadata.name,
        version: metadata.version,
        library: library_name,
        sha256: sha256_file(&library_target)?,
        plugin_api: metadata.plugin_api,
        host: metadata.host,
        models,
        config: request.config.clone(),
    };
    manifest.write(&request.out_dir)?;
    Ok(manifest)
}

fn file_name(path: &Path) -> HostResult<String> {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .ok_or_else(|| HostError::io(path, std::io::Error::other("not a file path")))
}

/// Copies through a temporary name and renames, so a reader never sees a half-written file.
fn copy_replacing(from: &Path, to: &Path) -> HostResult<()> {
    if from.canonicalize().ok() == to.canonicalize().ok() {
        return Ok(());
    }
    let partial = to.with_extension("partial");
    std::fs::copy(from, &partial).map_err(|e| HostError::io(from, e))?;
    std::fs::rename(&partial, to).map_err(|e| HostError::io(to, e))
}
