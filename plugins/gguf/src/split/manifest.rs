//! The manifest this crate writes beside a split model's shards, `{prefix}.shards.json`: every
//! shard's file name, size and SHA-256 in order, and the file they were cut from. When it is
//! there, [`crate::GgufFile::open`] checks each shard against it before using it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{FragmentProblem, GgufError, Result};
use crate::split::digest::sha256_hex;
use crate::split::name::ShardName;

/// A file by name, size and content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The file name (shards: relative to the manifest's folder).
    pub file: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

impl FileEntry {
    /// Fails with [`GgufError::Fragment`] naming `path` unless `bytes` has this entry's size and
    /// SHA-256.
    pub(crate) fn verify(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let fail = |problem| {
            Err(GgufError::Fragment {
                path: path.to_owned(),
                problem,
            })
        };
        if bytes.len() as u64 != self.bytes {
            return fail(FragmentProblem::Size {
                bytes: bytes.len() as u64,
                expected: self.bytes,
                expected_sha256: self.sha256.clone(),
            });
        }
        let actual = sha256_hex(bytes);
        if actual != self.sha256 {
            return fail(FragmentProblem::Digest {
                actual,
                expected: self.sha256.clone(),
            });
        }
        Ok(())
    }
}

/// What `{prefix}.shards.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The file the shards were cut from, when they were cut from one file: merging them gives
    /// these bytes back when it was laid out as GGUF writers lay files out.
    pub original: Option<FileEntry>,
    /// The shards, in order.
    pub shards: Vec<FileEntry>,
}

impl Manifest {
    /// The manifest of the model `name` is a shard of, if there is one; fails if it cannot be
    /// read or does not list the shards llama.cpp's naming rule gives.
    pub(crate) fn beside(name: &ShardName) -> Result<Option<Self>> {
        let path = name.manifest_path();
        if !path.exists() {
            return Ok(None);
        }
        let manifest = Self::read(&path)?;
        let invalid = |what: String| GgufError::Manifest {
            path: path.clone(),
            what,
        };
        if manifest.shards.len() != name.count() {
            return Err(invalid(format!(
                "lists {} shards, the file names say {}",
                manifest.shards.len(),
                name.count()
            )));
        }
        for (index, entry) in manifest.shards.iter().enumerate() {
            let path = name.sibling(index).path();
            let expected = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if entry.file != expected {
                return Err(invalid(format!(
                    "shard {} is `{}`, expected `{expected}`",
                    index + 1,
                    entry.file
                )));
            }
        }
        Ok(Some(manifest))
    }

    /// Reads the manifest at `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| GgufError::Io {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| GgufError::Manifest {
            path: path.to_owned(),
            what: e.to_string(),
        })
    }

    /// Writes the manifest to `path`.
    pub fn write_to(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| GgufError::Manifest {
            path: path.to_owned(),
            what: e.to_string(),
        })?;
        std::fs::write(path, text + "\n").map_err(|source| GgufError::Io {
            path: path.to_owned(),
            source,
        })
    }
}
