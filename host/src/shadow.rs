//! Private shadow copies of plugin libraries.
//!
//! The dynamic loader caches libraries by path and `abi_stable` never unloads them, so the host
//! never loads a library from its plugin folder: it copies it to a per-process directory under a
//! unique name first. A rebuilt plugin then loads as a new library instead of the stale cached
//! one, and the plugin folder can change while the copy is in use.

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use crate::{
    digest::sha256_of_regular_file,
    error::{HostError, HostResult},
};

/// A library copied into the shadow directory, with the digest of the bytes written.
#[derive(Debug, Clone)]
pub struct ShadowCopy {
    /// The copy: the file that is loaded.
    pub path: PathBuf,
    /// Lowercase hex SHA-256 of the copy's contents, computed from the very bytes written, so
    /// a check of it holds for what is loaded even if the source changes meanwhile.
    pub sha256: String,
}

/// This process's directory of shadow copies.
#[derive(Debug)]
pub struct ShadowDir {
    dir: PathBuf,
    next: AtomicU64,
}

impl ShadowDir {
    /// Creates `root/<pid>/`, first removing the directories of processes that no longer run
    /// (their copies are no longer mapped by anyone).
    pub fn create(root: &Path) -> HostResult<Self> {
        std::fs::create_dir_all(root).map_err(|e| HostError::io(root, e))?;
        remove_stale(root);
        let dir = root.join(std::process::id().to_string());
        if dir.exists() {
            // A previous process with our pid left it behind.
            std::fs::remove_dir_all(&dir).map_err(|e| HostError::io(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| HostError::io(&dir, e))?;
        Ok(Self {
            dir,
            next: AtomicU64::new(0),
        })
    }

    /// The directory holding this process's copies.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Copies `library` into the shadow directory under a name no other copy has had, hashing
    /// the bytes as they are written. The copy is made read-only.
    pub fn copy_in(&self, library: &Path) -> HostResult<ShadowCopy> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let file_name = library
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "library".to_owned());
        let target = self.dir.join(format!("{n}-{file_name}"));
        let sha256 = copy_hashing(library, &target)?;
        Ok(ShadowCopy {
            path: target,
            sha256,
        })
    }
}

/// Copies the regular file `from` to the new file `to` and returns the SHA-256 of the bytes
/// written; the copy is made read-only.
fn copy_hashing(from: &Path, to: &Path) -> HostResult<String> {
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| HostError::io(to, e))?;
    let sha256 = sha256_of_regular_file(from, |chunk| {
        target.write_all(chunk).map_err(|e| HostError::io(to, e))
    })?;
    let mut permissions = target
        .metadata()
        .map_err(|e| HostError::io(to, e))?
        .permissions();
    permissions.set_readonly(true);
    target
        .set_permissions(permissions)
        .map_err(|e| HostError::io(to, e))?;
    Ok(sha256)
}

/// Removes `root/<pid>` directories whose process is gone. Best effort: failures are logged.
fn remove_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !process_alive(pid) {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(path = %entry.path().display(), "cannot remove stale shadow copies: {e}");
            }
        }
    }
}

fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_get_unique_names_and_stale_dirs_are_removed() {
        let root = tempfile::tempdir().unwrap();
        // A pid far above the kernel's maximum is never alive.
        let stale = root.path().join("4294967");
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join("0-lib.so"), b"old").unwrap();

        let shadow = ShadowDir::create(root.path()).unwrap();
        assert!(!stale.exists());

        let source = root.path().join("lib.so");
        std::fs::write(&source, b"lib").unwrap();
        let a = shadow.copy_in(&source).unwrap();
        let b = shadow.copy_in(&source).unwrap();
        assert_ne!(a.path, b.path);
        assert_eq!(std::fs::read(&a.path).unwrap(), b"lib");
        assert!(a.path.starts_with(shadow.path()));
        assert_eq!(a.sha256, crate::digest::sha256_file(&a.path).unwrap());
    }
}
