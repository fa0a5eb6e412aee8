//! One file of a model — the whole model, or one shard of a split model: its bytes (mapped or
//! in memory) and where its data section starts.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{GgufError, Result};
use crate::parse::{self, Failure, ParseError};
use crate::tensor::TensorInfo;
use crate::value::MetadataValue;

/// Where a file's bytes live.
pub(crate) enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    /// Maps the file at `path` read-only (an empty file is held as no bytes: mapping one fails on
    /// some platforms, and it is malformed anyway).
    pub(crate) fn map(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(Self::Owned(Vec::new()));
        }
        // SAFETY: the map is read-only. Model files are treated as immutable while loaded;
        // truncating one underneath a running process is outside this crate's contract (as for
        // every mmap user).
        Ok(Self::Mapped(unsafe { Mmap::map(&file) }?))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Self::Mapped(map) => map,
            Self::Owned(bytes) => bytes,
        }
    }
}

/// One parsed file: its bytes and the placement of its tensor data.
pub(crate) struct Shard {
    pub(crate) path: PathBuf,
    pub(crate) storage: Storage,
    pub(crate) version: u32,
    pub(crate) alignment: u64,
    pub(crate) data_offset: u64,
}

/// A file's header as read: its key-value pairs in file order and its tensor table.
pub(crate) struct Header {
    pub(crate) metadata: Vec<(String, MetadataValue)>,
    pub(crate) tensors: Vec<TensorInfo>,
}

impl Shard {
    /// Parses the header of `storage`, the bytes of the file `path`; errors name `path`.
    pub(crate) fn parse(path: PathBuf, storage: Storage) -> Result<(Self, Header)> {
        let parsed = match parse::parse(storage.bytes()) {
            Ok(parsed) => parsed,
            Err(Failure::Version(version)) => {
                return Err(GgufError::UnsupportedVersion { path, version })
            }
            Err(Failure::Malformed(ParseError { offset, what })) => {
                return Err(GgufError::Malformed {
                    path,
                    offset: offset as u64,
                    what,
                })
            }
        };
        let shard = Self {
            path,
            storage,
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
        };
        let header = Header {
            metadata: parsed.metadata,
            tensors: parsed.tensors,
        };
        Ok((shard, header))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }
}
