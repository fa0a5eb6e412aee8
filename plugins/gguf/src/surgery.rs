//! Model surgery on a GGUF file: whole transformer blocks removed, attention heads silenced.
//!
//! The transform knows a model only through llama.cpp's conventions, which every family it
//! writes shares: block tensors are named `blk.N.*`, the shapes are `{arch}.block_count`,
//! `{arch}.attention.head_count` and `{arch}.attention.key_length` (default: embedding length
//! / head count), and a head's output projection is `blk.N.attn_output.weight`, `[n_head ·
//! head_dim]` columns by `n_embd` rows.
//!
//! - **Layers** ([`Surgery::remove_layers`]): the `blk.N.*` tensors of a removed block are
//!   dropped and the remaining blocks renumbered from 0 in their order; `{arch}.block_count`
//!   is lowered, and every `{arch}.*` array with one entry per block loses the removed
//!   blocks' entries. The file shrinks by the removed blocks' bytes.
//! - **Heads** ([`Surgery::remove_heads`]): query head `h` of block `N` is removed by zeroing
//!   its `head_dim` columns of `blk.N.attn_output.weight` — the quantized blocks holding them
//!   are replaced by blocks of zeros, every other byte is copied. The head then adds exactly
//!   nothing to the residual stream, but it is still computed and stored: the runtimes need one
//!   head count for every block, so the file does not shrink and decoding is not faster.
//!
//! Everything is checked before anything is built ([`Surgery::validate`]): indices in range,
//! at least one block left, no head in a removed block, nothing both removed and kept.
//! A family with knowledge these conventions do not carry (Gemma 3's implicit pattern of
//! sliding-window layers) passes `overrides`, metadata written after the transform.
//!
//! ```
//! use pio_gguf::{surgery::Surgery, GgufFile, GgufWriter, MetadataValue, TensorType};
//!
//! let mut writer = GgufWriter::new();
//! writer
//!     .add_metadata("general.architecture", "llama")
//!     .add_metadata("llama.block_count", MetadataValue::U32(3))
//!     .add_metadata("llama.embedding_length", MetadataValue::U32(32))
//!     .add_metadata("llama.attention.head_count", MetadataValue::U32(1));
//! for n in 0..3 {
//!     writer.add_f32_tensor(format!("blk.{n}.ffn_norm.weight"), &[32], TensorType::F32, &[n as f32; 32])?;
//! }
//! let file = GgufFile::from_bytes(writer.to_bytes()?)?;
//! let surgery = Surgery { remove_layers: vec![1], ..Surgery::default() };
//! let cut = GgufFile::from_bytes(surgery.apply(&file, &[])?.to_bytes()?)?;
//! assert_eq!(cut.get_u32("llama.block_count")?, 2);
//! assert_eq!(cut.tensor("blk.1.ffn_norm.weight")?.to_f32()?[0], 2.0);
//! # Ok::<(), pio_gguf::GgufError>(())
//! ```

use std::collections::BTreeSet;
use std::fmt;

use crate::error::{GgufError, Result};
use crate::reader::{GgufFile, ALIGNMENT_KEY};
use crate::tensor::TensorInfo;
use crate::value::MetadataValue;
use crate::writer::{quantize, GgufWriter};

/// One query head of one block, numbered as in the original file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Head {
    /// The block (`blk.N`).
    pub layer: usize,
    /// The query head within the block.
    pub head: usize,
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.layer, self.head)
    }
}

/// What to remove from a model and what must stay untouched; indices are those of the
/// original file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Surgery {
    /// Blocks to drop; the rest are renumbered.
    pub remove_layers: Vec<usize>,
    /// Query heads to silence (their output-projection columns zeroed).
    pub remove_heads: Vec<Head>,
    /// Blocks that must stay whole: neither removed nor with a head removed.
    pub keep_layers: Vec<usize>,
    /// Heads that must stay: not removed, nor their block.
    pub keep_heads: Vec<Head>,
}

/// The shapes surgery needs, read from a file's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// `{arch}.block_count`.
    pub layers: usize,
    /// `{arch}.attention.head_count`.
    pub heads: usize,
    /// `{arch}.attention.key_length`, or embedding length / head count.
    pub head_dim: usize,
}

impl Shape {
    /// The shapes of `file`, from the keys of its `general.architecture`.
    pub fn of(file: &GgufFile) -> Result<Self> {
        let arch = file.architecture()?;
        let get = |name: &str| file.get_u32(&format!("{arch}.{name}")).map(|v| v as usize);
        let heads = get("attention.head_count")?;
        let head_dim = match file.opt_u32(&format!("{arch}.attention.key_length"))? {
            Some(n) => n as usize,
            None => get("embedding_length")? / heads.max(1),
        };
        Ok(Shape {
            layers: get("block_count")?,
            heads,
            head_dim,
        })
    }
}

impl Surgery {
    /// Whether the surgery changes nothing.
    pub fn is_empty(&self) -> bool {
        self.remove_layers.is_empty() && self.remove_heads.is_empty()
    }

    /// Checks the surgery against a model of `shape`: every index in range, at least one block
    /// left, no head of a removed block, no component both removed and kept. The error names
    /// the offending component.
    pub fn validate(&self, shape: Shape) -> Result<()> {
        let invalid = |what: String| Err(GgufError::Surgery(what));
        if shape.layers == 0 || shape.heads == 0 {
            return invalid(format!("a model of {shape:?} has nothing to remove"));
        }
        let removed: BTreeSet<usize> = self.remove_layers.iter().copied().collect();
        for &layer in self.remove_layers.iter().chain(&self.keep_layers) {
            if layer >= shape.layers {
                return invalid(format!(
                    "layer {layer} is out of range: the model has layers 0..={}",
                    shape.layers - 1
                ));
            }
        }
        for head in self.remove_heads.iter().chain(&self.keep_heads) {
            if head.layer >= shape.layers || head.head >= shape.heads {
                return invalid(format!(
                    "head {head} is out of range: the model has layers 0..={} of heads 0..={}",
                    shape.layers - 1,
                    shape.heads - 1
                ));
            }
        }
        if removed.len() >= shape.layers {
            return invalid(format!(
                "removing all {} layers leaves no model",
                shape.layers
            ));
        }
        if let Some(head) = self
            .remove_heads
            .iter()
            .find(|h| removed.contains(&h.layer))
        {
            return invalid(format!(
                "head {head} is in layer {}, which is removed whole",
                head.layer
            ));
        }
        if let Some(layer) = self.keep_layers.iter().find(|l| removed.contains(l)) {
            return invalid(format!("layer {layer} is both kept and removed"));
        }
        if let Some(head) = self
            .remove_heads
            .iter()
            .find(|h| self.keep_layers.contains(&h.layer))
        {
            return invalid(format!(
                "head {head} is removed but its layer {} is kept whole",
                head.layer
            ));
        }
        if let Some(head) = self.keep_heads.iter().find(|h| removed.contains(&h.layer)) {
            return invalid(format!(
                "head {head} is kept but its layer {} is removed",
                head.layer
            ));
        }
        if let Some(head) = self
            .keep_heads
            .iter()
            .find(|h| self.remove_heads.contains(h))
        {
            return invalid(format!("head {head} is both kept and removed"));
        }
        Ok(())
    }

    /// The new index of every original block: `None` for a removed one.
    pub fn renumbering(&self, layers: usize) -> Vec<Option<usize>> {
        let mut next = 0;
        (0..layers)
            .map(|l| {
                (!self.remove_layers.contains(&l)).then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect()
    }

    /// A writer holding `file` with this surgery applied (see the module documentation), then
    /// `overrides` set. Fails before building anything when [`Surgery::validate`] does, and
    /// when a silenced head's columns do not fall on whole blocks of its tensor's type.
    pub fn apply(
        &self,
        file: &GgufFile,
        overrides: &[(String, MetadataValue)],
    ) -> Result<GgufWriter> {
        let shape = Shape::of(file)?;
        self.validate(shape)?;
        let arch = file.architecture()?.to_owned();
        let new_index = self.renumbering(shape.layers);
        let kept = new_index.iter().flatten().count();

        let mut writer = GgufWriter::new();
        let block_count = format!("{arch}.block_count");
        for (key, value) in file.metadata() {
            if key == ALIGNMENT_KEY {
                // The writer lays tensors out with its own alignment (the default).
                continue;
            }
            let value = match value {
                _ if *key == block_count => MetadataValue::U32(kept as u32),
                MetadataValue::Array {
                    element_type,
                    items,
                } if key.starts_with(&format!("{arch}.")) && items.len() == shape.layers => {
                    let items = items
                        .iter()
                        .zip(&new_index)
                        .filter(|(_, n)| n.is_some())
                        .map(|(item, _)| item.clone())
                        .collect();
                    MetadataValue::array(*element_type, items)
                }
                _ => value.clone(),
            };
            writer.add_metadata(key.clone(), value);
        }
        for (key, value) in overrides {
            writer.add_metadata(key.clone(), value.clone());
        }

        for info in file.tensors() {
            let data = file.tensor(&info.name)?.data;
            let Some((layer, rest)) = block_of(&info.name) else {
                writer.add_tensor(info.name.clone(), &info.dims, info.dtype, data)?;
                continue;
            };
            let Some(Some(new)) = new_index.get(layer) else {
                continue;
            };
            let name = format!("blk.{new}.{rest}");
            let silenced: Vec<usize> = self
                .remove_heads
                .iter()
                .filter(|h| h.layer == layer)
                .map(|h| h.head)
                .collect();
            if rest == "attn_output.weight" && !silenced.is_empty() {
                let data = zero_columns(info, data, shape.head_dim, &silenced)?;
                writer.add_tensor(name, &info.dims, info.dtype, data)?;
            } else {
                writer.add_tensor(name, &info.dims, info.dtype, data)?;
            }
        }
        Ok(writer)
    }
}

/// `(N, rest)` of a tensor named `blk.N.rest`.
fn block_of(name: &str) -> Option<(usize, &str)> {
    let (index, rest) = name.strip_prefix("blk.")?.split_once('.')?;
    Some((index.parse().ok()?, rest))
}

/// `data` of `info` with columns `h * head_dim .. (h + 1) * head_dim` of every row zeroed for
/// each `h` of `heads`: the blocks covering them replaced by a block of zeros in the tensor's
/// type, the other bytes unchanged.
fn zero_columns(
    info: &TensorInfo,
    data: &[u8],
    head_dim: usize,
    heads: &[usize],
) -> Result<Vec<u8>> {
    let refuse = |what: String| GgufError::Surgery(format!("tensor `{}`: {what}", info.name));
    let (Some(block), Some(block_bytes), Some(row_bytes)) = (
        info.dtype.block_size().map(|b| b as usize),
        info.dtype.type_size().map(|b| b as usize),
        info.row_bytes().map(|b| b as usize),
    ) else {
        return Err(refuse(format!(
            "cannot silence heads in type {}",
            info.dtype
        )));
    };
    if head_dim % block != 0 {
        return Err(refuse(format!(
            "heads of {head_dim} columns do not fall on whole {} blocks of {block}",
            info.dtype
        )));
    }
    let zero_block = quantize(info.dtype, &vec![0.0; block])?;
    let blocks_per_head = head_dim / block;
    let mut out = data.to_vec();
    for row in out.chunks_exact_mut(row_bytes) {
        for &head in heads {
            let first = head * blocks_per_head * block_bytes;
            let span = &mut row[first..first + blocks_per_head * block_bytes];
            for b in span.chunks_exact_mut(block_bytes) {
                b.copy_from_slice(&zero_block);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorType;

    /// A 4-block model of 2 heads of 32: `attn_output` in `dtype`, a per-block array.
    fn model(dtype: TensorType) -> GgufFile {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", "llama")
            .add_metadata("llama.block_count", MetadataValue::U32(4))
            .add_metadata("llama.embedding_length", MetadataValue::U32(64))
            .add_metadata("llama.attention.head_count", MetadataValue::U32(2))
            .add_metadata(
                "llama.per_layer",
                MetadataValue::array(
                    crate::ValueType::U32,
                    (10..14).map(MetadataValue::U32).collect(),
                ),
            )
            .add_metadata("general.name", "tiny");
        w.add_f32_tensor("token_embd.weight", &[64, 3], TensorType::F32, &[0.5; 192])
            .unwrap();
        for n in 0..4 {
            let values: Vec<f32> = (0..64 * 3)
                .map(|i| (i % 7) as f32 - 3.0 + n as f32)
                .collect();
            w.add_f32_tensor(
                format!("blk.{n}.attn_output.weight"),
                &[64, 3],
                dtype,
                &values,
            )
            .unwrap();
            w.add_f32_tensor(
                format!("blk.{n}.ffn_norm.weight"),
                &[64],
                TensorType::F32,
                &[n as f32; 64],
            )
            .unwrap();
        }
        GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap()
    }

    fn cut(file: &GgufFile, surgery: &Surgery) -> GgufFile {
        GgufFile::from_bytes(surgery.apply(file, &[]).unwrap().to_bytes().unwrap()).unwrap()
    }

    #[test]
    fn removed_layers_are_dropped_and_the_rest_renumbered() {
        let file = model(TensorType::Q8_0);
        let surgery = Surgery {
            remove_layers: vec![2, 0],
            ..Surgery::default()
        };
        let out = cut(&file, &surgery);
        assert_eq!(out.get_u32("llama.block_count").unwrap(), 2);
        assert_eq!(out.get_u32_array("llama.per_layer").unwrap(), [11, 13]);
        assert_eq!(out.get_str("general.name").unwrap(), "tiny");
        let names: Vec<&str> = out.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names.len(), 5, "{names:?}");
        assert!(out.tensor_info("blk.2.ffn_norm.weight").is_none());
        // Old block 1 is new block 0, old 3 new 1, bytes unchanged.
        for (old, new) in [(1, 0), (3, 1)] {
            for part in ["attn_output", "ffn_norm"] {
                let a = file.tensor(&format!("blk.{old}.{part}.weight")).unwrap();
                let b = out.tensor(&format!("blk.{new}.{part}.weight")).unwrap();
                assert_eq!((a.data, &a.info.dims), (b.data, &b.info.dims));
            }
        }
        assert_eq!(surgery.renumbering(4), [None, Some(0), None, Some(1)]);
    }

    #[test]
    fn a_removed_head_has_zero_columns_and_every_other_value_is_unchanged() {
        for dtype in [TensorType::F32, TensorType::Q4_1, TensorType::Q8_0] {
            let file = model(dtype);
            let head = Head { layer: 2, head: 1 };
            let out = cut(
                &file,
                &Surgery {
                    remove_heads: vec![head],
                    ..Surgery::default()
                },
            );
            let before = file
                .tensor("blk.2.attn_output.weight")
                .unwrap()
                .to_f32()
                .unwrap();
            let after = out
                .tensor("blk.2.attn_output.weight")
                .unwrap()
                .to_f32()
                .unwrap();
            for (i, (a, b)) in before.iter().zip(&after).enumerate() {
                let expect = if i % 64 >= 32 { 0.0 } else { *a };
                assert_eq!(*b, expect, "{dtype} value {i}");
            }
            assert!(before.iter().skip(32).take(32).any(|v| *v != 0.0));
            let other = |f: &GgufFile| f.tensor("blk.1.attn_output.weight").unwrap().data.to_vec();
            assert_eq!(other(&file), other(&out));
        }
    }

    #[test]
    fn bad_surgery_is_refused_naming_the_component() {
        let shape = Shape {
            layers: 4,
            heads: 2,
            head_dim: 32,
        };
        let h = |layer, head| Head { layer, head };
        let cases = [
            (
                Surgery {
                    remove_layers: vec![0, 1, 2, 3],
                    ..Surgery::default()
                },
                "all 4 layers",
            ),
            (
                Surgery {
                    remove_layers: vec![4],
                    ..Surgery::default()
                },
                "layer 4 is out of range",
            ),
            (
                Surgery {
                    remove_heads: vec![h(1, 2)],
                    ..Surgery::default()
                },
                "head 1.2 is out of range",
            ),
            (
                Surgery {
                    remove_layers: vec![1],
                    keep_layers: vec![1],
                    ..Surgery::default()
                },
                "layer 1 is both kept and removed",
            ),
            (
                Surgery {
                    remove_heads: vec![h(3, 0)],
                    keep_layers: vec![3],
                    ..Surgery::default()
                },
                "its layer 3 is kept",
            ),
            (
                Surgery {
                    remove_layers: vec![2],
                    keep_heads: vec![h(2, 1)],
                    ..Surgery::default()
                },
                "head 2.1 is kept but its layer 2 is removed",
            ),
            (
                Surgery {
                    remove_heads: vec![h(0, 1)],
                    keep_heads: vec![h(0, 1)],
                    ..Surgery::default()
                },
                "head 0.1 is both kept and removed",
            ),
            (
                Surgery {
                    remove_layers: vec![0],
                    remove_heads: vec![h(0, 1)],
                    ..Surgery::default()
                },
                "which is removed whole",
            ),
        ];
        for (surgery, expect) in cases {
            let err = surgery.validate(shape).unwrap_err().to_string();
            assert!(err.contains(expect), "{surgery:?}: {err}");
        }
        let fine = Surgery {
            remove_layers: vec![0, 1, 2],
            remove_heads: vec![h(3, 1)],
            keep_heads: vec![h(3, 0)],
            keep_layers: vec![],
        };
        assert!(fine.validate(shape).is_ok());
        // `apply` refuses before building anything.
        let file = model(TensorType::F32);
        assert!(Surgery {
            remove_layers: vec![9],
            ..Surgery::default()
        }
        .apply(&file, &[])
        .is_err());
    }

    #[test]
    fn heads_that_split_a_block_are_refused() {
        // Q4_K blocks are 256 wide; heads here are 32.
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", "llama")
            .add_metadata("llama.block_count", MetadataValue::U32(1))
            .add_metadata("llama.embedding_length", MetadataValue::U32(256))
            .add_metadata("llama.attention.head_count", MetadataValue::U32(8));
        w.add_f32_tensor(
            "blk.0.attn_output.weight",
            &[256, 1],
            TensorType::Q4_K,
            &[1.0; 256],
        )
        .unwrap();
        let file = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
        let err = Surgery {
            remove_heads: vec![Head { layer: 0, head: 3 }],
            ..Surgery::default()
        }
        .apply(&file, &[])
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("do not fall on whole Q4_K blocks"), "{err}");
    }
}
