//! A GGUF model opened for reading: one file, or all the shards of a split model (llama.cpp's
//! `gguf-split` format), seen as one metadata table and one tensor table.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{GgufError, Result};
use crate::shard::{Shard, Storage};
use crate::split::open::Model;
use crate::tensor::{TensorInfo, TensorType, TensorView};
use crate::value::MetadataValue;

pub use crate::parse::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC};

/// A parsed GGUF model whose tensor data stays in (memory-mapped) place.
///
/// A split model is opened from its first shard and reads as the model it was cut from: the
/// first shard's metadata without the `split.*` keys, every shard's tensors in order.
pub struct GgufFile {
    shards: Vec<Shard>,
    metadata: Vec<(String, MetadataValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    /// The shard holding each tensor of `tensors`.
    tensor_shard: Vec<usize>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path())
            .field("shards", &self.shards.len())
            .field("version", &self.version())
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

macro_rules! typed_getters {
    ($($get:ident, $opt:ident -> $ty:ty, $conv:expr, $expected:literal;)*) => {$(
        #[doc = concat!("The value of `key` as ", $expected, "; errors name the key if it is absent or has another type.")]
        pub fn $get(&self, key: &str) -> Result<$ty> {
            self.$opt(key)?.ok_or_else(|| GgufError::MissingKey {
                path: self.path().to_owned(),
                key: key.to_owned(),
            })
        }

        #[doc = concat!("Like [`Self::", stringify!($get), "`], but `Ok(None)` when the key is absent.")]
        pub fn $opt(&self, key: &str) -> Result<Option<$ty>> {
            self.get(key)
                .map(|value| {
                    $conv(value).ok_or_else(|| GgufError::MetadataType {
                        path: self.path().to_owned(),
                        key: key.to_owned(),
                        expected: $expected,
                        found: value.describe(),
                    })
                })
                .transpose()
        }
    )*};
}

impl GgufFile {
    /// Memory-maps and parses the GGUF model at `path`.
    ///
    /// Every count, offset and size in the file is checked against the file length; a
    /// truncated or corrupt file gives an error naming the file.
    ///
    /// If the file is the first shard of a split model (`split.count` > 1, named
    /// `PREFIX-00001-of-0000N.gguf`), every shard is opened and checked: its `split.no` and
    /// `split.count`, the total tensor count, and — when the manifest `PREFIX.shards.json` lies
    /// beside them — its size and SHA-256, before it is parsed. Another shard than the first is
    /// refused, naming the first.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::index(Model::open(path.as_ref())?)
    }

    /// Parses GGUF data already in memory; errors name the file `<memory>`. The data cannot be
    /// a shard of a split model of several files.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let (shard, header) = Shard::parse("<memory>".into(), Storage::Owned(bytes))?;
        Self::index(Model::single(shard, header)?)
    }

    fn index(model: Model) -> Result<Self> {
        let Model {
            shards,
            metadata,
            tensors,
        } = model;
        let (tensors, tensor_shard): (Vec<_>, Vec<_>) = tensors.into_iter().unzip();
        let file = Self {
            shards,
            metadata_index: metadata
                .iter()
                .enumerate()
                .map(|(i, (key, _))| (key.clone(), i))
                .collect(),
            metadata,
            tensor_index: tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tensors,
            tensor_shard,
        };
        // Validate every tensor whose size is known now, so corruption is
        // reported at open time rather than on first use.
        for (index, info) in file.tensors.iter().enumerate() {
            if info.dtype.block_size().is_some() {
                file.view(index)?;
            }
        }
        Ok(file)
    }

    /// The path the model was opened from: the file, or a split model's first shard
    /// (`<memory>` for [`Self::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.shards[0].path
    }

    /// The paths of the model's files in order: one, or every shard of a split model.
    pub fn shard_paths(&self) -> impl ExactSizeIterator<Item = &Path> {
        self.shards.iter().map(|shard| shard.path.as_path())
    }

    /// The bytes of file `index` of [`Self::shard_paths`].
    pub(crate) fn shard_bytes(&self, index: usize) -> &[u8] {
        self.shards[index].bytes()
    }

    /// GGUF format version (2 or 3) of the (first) file.
    pub fn version(&self) -> u32 {
        self.shards[0].version
    }

    /// Alignment of tensor data, from `general.alignment` or the default 32.
    pub fn alignment(&self) -> u64 {
        self.shards[0].alignment
    }

    /// Absolute offset in the (first) file where its tensor data section starts.
    pub fn data_offset(&self) -> u64 {
        self.shards[0].data_offset
    }

    /// All metadata, in file order (a split model's `split.*` keys are not in it).
    pub fn metadata(&self) -> &[(String, MetadataValue)] {
        &self.metadata
    }

    /// One metadata value, if present.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    typed_getters! {
        get_u32, opt_u32 -> u32, MetadataValue::as_u32, "an integer that fits in u32";
        get_u64, opt_u64 -> u64, MetadataValue::as_u64, "an integer that fits in u64";
        get_i32, opt_i32 -> i32, MetadataValue::as_i32, "an integer that fits in i32";
        get_f32, opt_f32 -> f32, MetadataValue::as_f32, "a float";
        get_bool, opt_bool -> bool, MetadataValue::as_bool, "a bool";
        get_str, opt_str -> &str, MetadataValue::as_str, "a string";
        get_string_array, opt_string_array -> Vec<&str>, MetadataValue::as_string_array, "an array of strings";
        get_f32_array, opt_f32_array -> Vec<f32>, MetadataValue::as_f32_array, "an array of floats";
        get_i32_array, opt_i32_array -> Vec<i32>, MetadataValue::as_i32_array, "an array of integers that fit in i32";
        get_u32_array, opt_u32_array -> Vec<u32>, MetadataValue::as_u32_array, "an array of integers that fit in u32";
    }

    /// `key` as one u32 per block of a model of `n` blocks, read as llama.cpp's
    /// `get_key_or_arr` reads per-layer keys such as `{arch}.attention.head_count`: a number
    /// holds for every block, an array must have exactly `n` entries. `Ok(None)` when the key
    /// is absent; another type or length is an error naming the key.
    pub fn opt_u32_per_block(&self, key: &str, n: usize) -> Result<Option<Vec<u32>>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let per_block = match value {
            MetadataValue::Array { items, .. } if items.len() == n => value.as_u32_array(),
            MetadataValue::Array { .. } => None,
            _ => value.as_u32().map(|v| vec![v; n]),
        };
        per_block.map(Some).ok_or_else(|| GgufError::MetadataType {
            path: self.path().to_owned(),
            key: key.to_owned(),
            expected: "an integer that fits in u32, or an array of one per block",
            found: format!("{} for {n} blocks", value.describe()),
        })
    }

    /// The model architecture (`general.architecture`), e.g. `llama`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// All tensor descriptors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// One tensor descriptor, if present.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor's descriptor and validated bytes.
    ///
    /// Fails if the tensor is absent, its type is unknown, its row length is
    /// not a multiple of the block size, or its data is misaligned or does
    /// not fit inside the file.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let index = *self
            .tensor_index
            .get(name)
            .ok_or_else(|| GgufError::MissingTensor {
                path: self.path().to_owned(),
                name: name.to_owned(),
            })?;
        self.view(index)
    }

    fn view(&self, index: usize) -> Result<TensorView<'_>> {
        let info = &self.tensors[index];
        let shard = &self.shards[self.tensor_shard[index]];
        let invalid = |what: String| GgufError::InvalidTensor {
            path: shard.path.clone(),
            name: info.name.clone(),
            what,
        };
        if let TensorType::Other(_) = info.dtype {
            return Err(invalid(format!("{} is not supported", info.dtype)));
        }
        let size = info.byte_size().map_err(invalid)?;
        if info.offset % shard.alignment != 0 {
            return Err(invalid(format!(
                "data offset {} is not a multiple of the alignment {}",
                info.offset, shard.alignment
            )));
        }
        let bytes = shard.bytes();
        let range = shard
            .data_offset
            .checked_add(info.offset)
            .and_then(|start| Some(start..start.checked_add(size)?))
            .filter(|range| range.end <= bytes.len() as u64)
            .ok_or_else(|| {
                invalid(format!(
                    "data ({size} bytes at data offset {}) extends past the end of the {}-byte file",
                    info.offset,
                    bytes.len()
                ))
            })?;
        Ok(TensorView {
            info,
            data: &bytes[range.start as usize..range.end as usize],
        })
    }
}
