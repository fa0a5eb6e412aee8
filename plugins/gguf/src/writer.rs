//! Writing GGUF v3 files, mainly to build small models for tests.
//!
//! ```
//! use pio_gguf::{GgufFile, GgufWriter, MetadataValue, TensorType};
//!
//! let mut writer = GgufWriter::new();
//! writer
//!     .add_metadata("general.architecture", "llama")
//!     .add_metadata("llama.block_count", MetadataValue::U32(2));
//! let weights: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
//! writer.add_f32_tensor("blk.0.attn_q.weight", &[32, 2], TensorType::Q8_0, &weights)?;
//! let file = GgufFile::from_bytes(writer.to_bytes()?)?;
//! assert_eq!(file.get_u32("llama.block_count")?, 2);
//! # Ok::<(), pio_gguf::GgufError>(())
//! ```

use std::path::Path;

use crate::error::{GgufError, Result};
use crate::parse::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use crate::quant;
use crate::tensor::{TensorInfo, TensorType};
use crate::value::MetadataValue;

pub use crate::quant::block32::{
    quantize_q4_0, quantize_q4_1, quantize_q5_0, quantize_q5_1, quantize_q8_0,
};
pub use crate::quant::kquant::{quantize_q4_k, quantize_q5_k, quantize_q6_k};
pub use crate::quant::{encode_bf16, encode_f16, encode_f32, quantize};

/// The GGUF version this writer produces.
pub const WRITE_VERSION: u32 = 3;

struct PendingTensor {
    info: TensorInfo,
    data: Vec<u8>,
}

/// Collects metadata and tensors, then serializes them as a GGUF v3 file.
///
/// Metadata keys keep their insertion order; tensor data is laid out in
/// insertion order, each tensor padded to the alignment (`general.alignment`
/// if set, otherwise 32).
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<PendingTensor>,
}

impl GgufWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a metadata value, replacing any earlier value for the same key.
    pub fn add_metadata(
        &mut self,
        key: impl Into<String>,
        value: impl Into<MetadataValue>,
    ) -> &mut Self {
        let (key, value) = (key.into(), value.into());
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Adds a tensor from raw bytes already in `dtype`'s layout.
    ///
    /// `dims` is in GGUF order (`dims[0]` = columns). For known types the
    /// byte count must match the shape; [`TensorType::Other`] data is taken
    /// as is, so tests can build files with unsupported types.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        dtype: TensorType,
        data: impl Into<Vec<u8>>,
    ) -> Result<&mut Self> {
        let info = TensorInfo {
            name: name.into(),
            dims: dims.to_vec(),
            dtype,
            offset: 0,
        };
        let data = data.into();
        let invalid = |what: String| GgufError::Writer(format!("tensor `{}`: {what}", info.name));
        if !(1..=MAX_DIMS as usize).contains(&dims.len()) {
            return Err(invalid(format!(
                "{} dimensions (expected 1 to {MAX_DIMS})",
                dims.len()
            )));
        }
        if self.tensors.iter().any(|t| t.info.name == info.name) {
            return Err(invalid("added twice".into()));
        }
        if dtype.block_size().is_some() {
            let size = info.byte_size().map_err(invalid)?;
            if size != data.len() as u64 {
                return Err(invalid(format!(
                    "shape {dims:?} of {dtype} needs {size} bytes, got {}",
                    data.len()
                )));
            }
        }
        self.tensors.push(PendingTensor { info, data });
        Ok(self)
    }

    /// Adds a tensor given as `f32` values, encoding or quantizing them to
    /// `dtype` (every type [`quantize`] writes).
    pub fn add_f32_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        dtype: TensorType,
        values: &[f32],
    ) -> Result<&mut Self> {
        self.add_tensor(name, dims, dtype, quant::quantize(dtype, values)?)
    }

    fn alignment(&self) -> Result<u64> {
        match self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, value)) => value
                .as_u32()
                .map(u64::from)
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| {
                    GgufError::Writer(format!(
                        "`{ALIGNMENT_KEY}` must be a power of two, got {}",
                        value.describe()
                    ))
                }),
        }
    }

    /// Serializes the file into memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let alignment = self.alignment()?;
        let metadata: Vec<_> = self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<_> = self
            .tensors
            .iter()
            .map(|t| (&t.info, t.data.len() as u64))
            .collect();
        let mut out = header(&metadata, &tensors, alignment)?;
        for tensor in &self.tensors {
            out.extend_from_slice(&tensor.data);
            out.resize(out.len().next_multiple_of(alignment as usize), 0);
        }
        Ok(out)
    }

    /// Writes the file to `path`.
    pub fn write_to(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()?).map_err(|source| GgufError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

/// A GGUF v3 header: magic, version, counts, `metadata` in order and the descriptors of
/// `tensors` (each with its data's size) with the offsets of their data laid out in order, each
/// tensor padded to `alignment`; padded itself to `alignment`, so the data follows it.
pub(crate) fn header(
    metadata: &[(&str, &MetadataValue)],
    tensors: &[(&TensorInfo, u64)],
    alignment: u64,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    out.extend_from_slice(&GGUF_MAGIC);
    out.extend_from_slice(&WRITE_VERSION.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        write_string(&mut out, key);
        out.extend_from_slice(&value.value_type().id().to_le_bytes());
        write_value(&mut out, value)
            .map_err(|what| GgufError::Writer(format!("metadata `{key}`: {what}")))?;
    }
    let mut offset = 0u64;
    for (info, size) in tensors {
        write_string(&mut out, &info.name);
        out.extend_from_slice(&(info.dims.len() as u32).to_le_bytes());
        for dim in &info.dims {
            out.extend_from_slice(&dim.to_le_bytes());
        }
        out.extend_from_slice(&info.dtype.id().to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + size).next_multiple_of(alignment);
    }
    out.resize(out.len().next_multiple_of(alignment as usize), 0);
    Ok(out)
}

/// Bytes `info`'s descriptor takes in a header: its name, dimension count, dimensions, type
/// and offset.
pub(crate) fn tensor_info_len(info: &TensorInfo) -> u64 {
    8 + info.name.len() as u64 + 4 + 8 * info.dims.len() as u64 + 4 + 8
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &MetadataValue) -> std::result::Result<(), String> {
    match value {
        MetadataValue::U8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::Bool(v) => out.push(u8::from(*v)),
        MetadataValue::String(s) => write_string(out, s),
        MetadataValue::Array {
            element_type,
            items,
        } => {
            out.extend_from_slice(&element_type.id().to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for (i, item) in items.iter().enumerate() {
                if item.value_type() != *element_type {
                    return Err(format!(
                        "array item {i} is {} in an array of {element_type}",
                        item.value_type()
                    ));
                }
                write_value(out, item).map_err(|what| format!("item {i}: {what}"))?;
            }
        }
    }
    Ok(())
}
