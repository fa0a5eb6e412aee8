//! Model surgery on a GGUF file: whole transformer blocks and single attention heads removed.
//!
//! The transform knows a model only through llama.cpp's conventions, which every family it
//! writes shares: block tensors are named `blk.N.*`; the shapes are `{arch}.block_count`,
//! `{arch}.attention.head_count` and `head_count_kv` (one number for every block, or an array
//! with one per block, as llama.cpp's `get_key_or_arr` reads them) and
//! `{arch}.attention.key_length` (default: embedding length / block 0's head count); query
//! head `h` is rows `h · head_dim ..` of `blk.N.attn_q` (and of its bias), key/value head `j`
//! rows `j · head_dim ..` of `attn_k` and `attn_v`, and query head `h`'s output projection is
//! columns `h · head_dim ..` of `attn_output`. Query head `h` of a block of `n_head` query and
//! `n_kv` key/value heads reads key/value head `h / (n_head / n_kv)` (grouped-query
//! attention).
//!
//! - **Layers** ([`Surgery::remove_layers`]): the `blk.N.*` tensors of a removed block are
//!   dropped and the remaining blocks renumbered from 0 in their order; `{arch}.block_count`
//!   is lowered, and every `{arch}.*` array with one entry per block loses the removed
//!   blocks' entries. The file shrinks by the removed blocks' bytes.
//! - **Heads** ([`Surgery::remove_heads`]): a removed query head loses its rows of `attn_q`
//!   and its columns of `attn_output` (whole quantized blocks moved, no value re-encoded), so
//!   the file shrinks and the block computes less. What happens to the key/value heads is
//!   [`HeadPlan`]'s rule — every block's groups stay equal, as the kernels and llama.cpp
//!   need: a key/value head left with no query head is removed with its group; the groups
//!   left are cut into parts of the largest size that divides each of them (their greatest
//!   common divisor), and a key/value head whose group is cut into `k` parts appears `k` times
//!   (its rows of `attn_k` and `attn_v` copied). Every query head so reads the same keys and
//!   values as before, so the block computes exactly what it computed with the removed heads'
//!   output columns zeroed; the cost is key/value memory when the groups left have a small
//!   common divisor (SmolLM2, 9 query heads over 3: one head removed leaves groups of 3, 3 and
//!   2, so the block gets 8 key/value heads). Per-head-dimension tensors (Gemma 3's q/k norms,
//!   `[head_dim]`) are unaffected. The file then states `head_count` and `head_count_kv` as
//!   arrays with one entry per block, and `key_length` / `value_length` explicitly (llama.cpp
//!   would otherwise derive them from block 0's head count).
//!
//! Everything is checked before anything is built ([`Surgery::validate`]): indices in range,
//! at least one block left and one query head in every block, no head in a removed block,
//! nothing both removed and kept. A family with knowledge these conventions do not carry
//! (Gemma 3's implicit pattern of sliding-window layers) passes `overrides`, metadata written
//! after the transform.
//!
//! ```
//! use pio_gguf::{surgery::{Head, Surgery}, GgufFile, GgufWriter, MetadataValue, TensorType};
//!
//! let mut writer = GgufWriter::new();
//! writer
//!     .add_metadata("general.architecture", "llama")
//!     .add_metadata("llama.block_count", MetadataValue::U32(3))
//!     .add_metadata("llama.embedding_length", MetadataValue::U32(64))
//!     .add_metadata("llama.attention.head_count", MetadataValue::U32(2));
//! for n in 0..3 {
//!     writer.add_f32_tensor(format!("blk.{n}.attn_q.weight"), &[64, 64], TensorType::F32, &[n as f32; 64 * 64])?;
//! }
//! let file = GgufFile::from_bytes(writer.to_bytes()?)?;
//! let surgery = Surgery {
//!     remove_layers: vec![1],
//!     remove_heads: vec![Head { layer: 2, head: 0 }],
//!     ..Surgery::default()
//! };
//! let cut = GgufFile::from_bytes(surgery.apply(&file, &[])?.to_bytes()?)?;
//! assert_eq!(cut.get_u32("llama.block_count")?, 2);
//! assert_eq!(cut.get_u32_array("llama.attention.head_count")?, [2, 1]);
//! let q = cut.tensor("blk.1.attn_q.weight")?;
//! assert_eq!((q.info.dims.as_slice(), q.to_f32()?[0]), ([64, 32].as_slice(), 2.0));
//! # Ok::<(), pio_gguf::GgufError>(())
//! ```

use std::collections::BTreeSet;
use std::fmt;

use crate::error::{GgufError, Result};
use crate::reader::{GgufFile, ALIGNMENT_KEY};
use crate::tensor::TensorInfo;
use crate::value::{MetadataValue, ValueType};
use crate::writer::GgufWriter;

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
    /// Query heads to remove from the projections (see the module documentation).
    pub remove_heads: Vec<Head>,
    /// Blocks that must stay whole: neither removed nor with a head removed.
    pub keep_layers: Vec<usize>,
    /// Heads that must stay: not removed, nor their block.
    pub keep_heads: Vec<Head>,
}

/// The shapes surgery needs, read from a file's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// `{arch}.block_count`.
    pub layers: usize,
    /// Query heads of each block (`{arch}.attention.head_count`).
    pub heads: Vec<usize>,
    /// Key/value heads of each block (`{arch}.attention.head_count_kv`, default `heads`).
    pub kv_heads: Vec<usize>,
    /// `{arch}.attention.key_length`, or embedding length / block 0's head count.
    pub head_dim: usize,
}

impl Shape {
    /// The shapes of `file`, from the keys of its `general.architecture`; a block whose query
    /// heads are not a whole number of groups of its key/value heads is an error.
    pub fn of(file: &GgufFile) -> Result<Self> {
        let arch = file.architecture()?;
        let key = |name: &str| format!("{arch}.{name}");
        let layers = file.get_u32(&key("block_count"))? as usize;
        let per_block = |name: &str| -> Result<Option<Vec<usize>>> {
            Ok(file
                .opt_u32_per_block(&key(name), layers)?
                .map(|v| v.into_iter().map(|n| n as usize).collect()))
        };
        let heads = per_block("attention.head_count")?.ok_or_else(|| GgufError::MissingKey {
            path: file.path().to_owned(),
            key: key("attention.head_count"),
        })?;
        let kv_heads = per_block("attention.head_count_kv")?.unwrap_or_else(|| heads.clone());
        let head_dim = match file.opt_u32(&key("attention.key_length"))? {
            Some(n) => n as usize,
            None => {
                let first = heads.first().copied().unwrap_or(0).max(1);
                file.get_u32(&key("embedding_length"))? as usize / first
            }
        };
        for (layer, (&h, &kv)) in heads.iter().zip(&kv_heads).enumerate() {
            if kv == 0 || h % kv != 0 {
                return Err(GgufError::Surgery(format!(
                    "block {layer}: {h} query heads are not whole groups of {kv} key/value heads"
                )));
            }
        }
        Ok(Shape {
            layers,
            heads,
            kv_heads,
            head_dim,
        })
    }
}

/// What removing query heads does to one block: the query heads it keeps and, for each of
/// its new key/value heads, the original key/value head whose rows it copies (see the
/// module documentation for the rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadPlan {
    /// The query heads kept, original indices, in order.
    pub query: Vec<usize>,
    /// For each key/value head of the new block, the original one it copies, in order.
    pub kv: Vec<usize>,
}

impl HeadPlan {
    /// The plan for a block of `n_head` query heads over `n_kv` key/value heads without the
    /// query heads `removed` (at least one must stay, `n_kv` must divide `n_head`): the
    /// smallest number of key/value heads that keeps every group equal and every query head
    /// reading the keys and values it read before.
    pub fn new(n_head: usize, n_kv: usize, removed: &BTreeSet<usize>) -> Self {
        let group = n_head / n_kv;
        let query: Vec<usize> = (0..n_head).filter(|h| !removed.contains(h)).collect();
        let mut sizes = vec![0; n_kv];
        for &h in &query {
            sizes[h / group] += 1;
        }
        let part = sizes.iter().fold(0, |acc, &s| gcd(acc, s)).max(1);
        let kv = sizes
            .iter()
            .enumerate()
            .flat_map(|(j, &s)| std::iter::repeat_n(j, s / part))
            .collect();
        HeadPlan { query, kv }
    }
}

/// Greatest common divisor; `gcd(0, n) = n`.
fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Surgery {
    /// Whether the surgery changes nothing.
    pub fn is_empty(&self) -> bool {
        self.remove_layers.is_empty() && self.remove_heads.is_empty()
    }

    /// Checks the surgery against a model of `shape`: every index in range, at least one block
    /// left and one query head in every block, no head of a removed block, no component both
    /// removed and kept. The error names the offending component.
    pub fn validate(&self, shape: &Shape) -> Result<()> {
        let invalid = |what: String| Err(GgufError::Surgery(what));
        if shape.layers == 0 {
            return invalid("a model of no layers has nothing to remove".into());
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
            if head.layer >= shape.layers {
                return invalid(format!(
                    "head {head} is out of range: the model has layers 0..={}",
                    shape.layers - 1
                ));
            }
            let n = shape.heads[head.layer];
            if head.head >= n {
                return invalid(format!(
                    "head {head} is out of range: layer {} has heads 0..={}",
                    head.layer,
                    n.saturating_sub(1)
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
        for (layer, heads) in self.removed_heads() {
            if heads.len() == shape.heads[layer] {
                return invalid(format!(
                    "removing all {} heads of layer {layer} leaves it no attention; remove \
                     the layer instead",
                    heads.len()
                ));
            }
        }
        Ok(())
    }

    /// The removed query heads of each block that loses some, by block.
    fn removed_heads(&self) -> std::collections::BTreeMap<usize, BTreeSet<usize>> {
        let mut by_layer = std::collections::BTreeMap::<usize, BTreeSet<usize>>::new();
        for h in &self.remove_heads {
            by_layer.entry(h.layer).or_default().insert(h.head);
        }
        by_layer
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

    /// The [`HeadPlan`] of every original block of `shape` that loses query heads (`None`
    /// for the others). Assumes [`Surgery::validate`] passed.
    pub fn head_plans(&self, shape: &Shape) -> Vec<Option<HeadPlan>> {
        let removed = self.removed_heads();
        (0..shape.layers)
            .map(|layer| {
                removed
                    .get(&layer)
                    .map(|heads| HeadPlan::new(shape.heads[layer], shape.kv_heads[layer], heads))
            })
            .collect()
    }

    /// A writer holding `file` with this surgery applied (see the module documentation), then
    /// `overrides` set. Fails before building anything when [`Surgery::validate`] does, and
    /// names the tensor when a removed head's columns do not fall on whole blocks of its
    /// tensor's type or a tensor does not have the shape the heads say.
    pub fn apply(
        &self,
        file: &GgufFile,
        overrides: &[(String, MetadataValue)],
    ) -> Result<GgufWriter> {
        let shape = Shape::of(file)?;
        self.validate(&shape)?;
        let arch = file.architecture()?.to_owned();
        let new_index = self.renumbering(shape.layers);
        let plans = self.head_plans(&shape);
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
        if !self.remove_heads.is_empty() {
            let per_block = |count: &dyn Fn(usize) -> usize| {
                let items = (0..shape.layers)
                    .filter(|&l| new_index[l].is_some())
                    .map(|l| MetadataValue::U32(count(l) as u32))
                    .collect();
                MetadataValue::array(ValueType::U32, items)
            };
            let heads = per_block(&|l| plans[l].as_ref().map_or(shape.heads[l], |p| p.query.len()));
            let kv_heads =
                per_block(&|l| plans[l].as_ref().map_or(shape.kv_heads[l], |p| p.kv.len()));
            let head_dim = MetadataValue::U32(shape.head_dim as u32);
            writer
                .add_metadata(format!("{arch}.attention.head_count"), heads)
                .add_metadata(format!("{arch}.attention.head_count_kv"), kv_heads);
            for length in ["key_length", "value_length"] {
                let key = format!("{arch}.attention.{length}");
                if file.get(&key).is_none() {
                    writer.add_metadata(key, head_dim.clone());
                }
            }
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
            match &plans[layer] {
                Some(plan) => {
                    let (dims, data) = cut_heads(info, data, &shape, layer, plan)?;
                    writer.add_tensor(name, &dims, info.dtype, data)?;
                }
                None => {
                    writer.add_tensor(name, &info.dims, info.dtype, data)?;
                }
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

/// The dims and bytes of tensor `info` of block `layer` after `plan`: `attn_q` keeps the
/// kept query heads' rows, `attn_k` and `attn_v` the rows of the key/value heads `plan.kv`
/// lists (repeats copied), `attn_output` the kept query heads' columns; every other tensor is
/// unchanged. A fused `attn_qkv` is refused: its heads are not told apart here.
fn cut_heads(
    info: &TensorInfo,
    data: &[u8],
    shape: &Shape,
    layer: usize,
    plan: &HeadPlan,
) -> Result<(Vec<u64>, Vec<u8>)> {
    let (_, rest) = block_of(&info.name).expect("a block tensor");
    let part = rest.split_once('.').map_or(rest, |(part, _)| part);
    let hd = shape.head_dim;
    match part {
        "attn_q" => select_rows(info, data, shape.heads[layer] * hd, hd, &plan.query),
        "attn_k" | "attn_v" => select_rows(info, data, shape.kv_heads[layer] * hd, hd, &plan.kv),
        "attn_output" if rest == "attn_output.weight" => {
            select_columns(info, data, shape.heads[layer] * hd, hd, &plan.query)
        }
        "attn_qkv" => Err(GgufError::Surgery(format!(
            "tensor `{}`: heads cannot be removed from a fused q/k/v projection",
            info.name
        ))),
        _ => Ok((info.dims.clone(), data.to_vec())),
    }
}

/// Groups `groups` (each `group` rows, in that order, repeats allowed) of the output rows of
/// `info` — a matrix of `rows` rows (`dims[1]`) or a vector of `rows` values (a bias) — and
/// its new dims. Rows are whole blocks of any type, so they move as bytes.
fn select_rows(
    info: &TensorInfo,
    data: &[u8],
    rows: usize,
    group: usize,
    groups: &[usize],
) -> Result<(Vec<u64>, Vec<u8>)> {
    let refuse = |what: String| GgufError::Surgery(format!("tensor `{}`: {what}", info.name));
    let (n_rows, row_bytes) = match info.dims.as_slice() {
        [_, r] => (*r as usize, data.len() / (*r as usize).max(1)),
        [n] if info.dtype.block_size() == Some(1) => {
            (*n as usize, info.dtype.type_size().unwrap_or(0) as usize)
        }
        _ => {
            return Err(refuse(format!(
                "cannot select the heads of dims {:?}",
                info.dims
            )))
        }
    };
    if n_rows != rows || row_bytes * n_rows != data.len() {
        return Err(refuse(format!(
            "has {n_rows} rows where its heads need {rows}"
        )));
    }
    let group_bytes = group * row_bytes;
    let out: Vec<u8> = groups
        .iter()
        .flat_map(|&g| &data[g * group_bytes..(g + 1) * group_bytes])
        .copied()
        .collect();
    let mut dims = info.dims.clone();
    *dims.last_mut().expect("1 or 2 dims") = (groups.len() * group) as u64;
    Ok((dims, out))
}

/// Columns `h * group .. (h + 1) * group` of every row of matrix `info` (of `cols` columns)
/// for each `h` of `groups`, in order — whole blocks of its type moved as bytes — and its new
/// dims.
fn select_columns(
    info: &TensorInfo,
    data: &[u8],
    cols: usize,
    group: usize,
    groups: &[usize],
) -> Result<(Vec<u64>, Vec<u8>)> {
    let refuse = |what: String| GgufError::Surgery(format!("tensor `{}`: {what}", info.name));
    let (Some(block), Some(block_bytes), Some(row_bytes)) = (
        info.dtype.block_size().map(|b| b as usize),
        info.dtype.type_size().map(|b| b as usize),
        info.row_bytes().map(|b| b as usize),
    ) else {
        return Err(refuse(format!(
            "cannot remove heads in type {}",
            info.dtype
        )));
    };
    if info.dims.len() != 2 || info.dims[0] as usize != cols {
        return Err(refuse(format!(
            "has dims {:?} where its heads need {cols} columns",
            info.dims
        )));
    }
    if group % block != 0 {
        return Err(refuse(format!(
            "heads of {group} columns do not fall on whole {} blocks of {block}",
            info.dtype
        )));
    }
    let head_bytes = group / block * block_bytes;
    let out: Vec<u8> = data
        .chunks_exact(row_bytes)
        .flat_map(|row| {
            groups
                .iter()
                .flat_map(move |&h| &row[h * head_bytes..(h + 1) * head_bytes])
        })
        .copied()
        .collect();
    Ok((vec![(groups.len() * group) as u64, info.dims[1]], out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorType;

    /// A 4-block model of 4 query heads of 32 over 2 key/value heads (`n_embd` 128): every
    /// attention matrix in `dtype` with distinct values, a per-block array, a bias on `attn_q`.
    fn model(dtype: TensorType) -> GgufFile {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", "llama")
            .add_metadata("llama.block_count", MetadataValue::U32(4))
            .add_metadata("llama.embedding_length", MetadataValue::U32(128))
            .add_metadata("llama.attention.head_count", MetadataValue::U32(4))
            .add_metadata("llama.attention.head_count_kv", MetadataValue::U32(2))
            .add_metadata(
                "llama.per_layer",
                MetadataValue::array(
                    crate::ValueType::U32,
                    (10..14).map(MetadataValue::U32).collect(),
                ),
            )
            .add_metadata("general.name", "tiny");
        w.add_f32_tensor("token_embd.weight", &[128, 3], TensorType::F32, &[0.5; 384])
            .unwrap();
        // Small integers: exact in every type used here.
        let values = |n: usize, layer: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 7 + layer) % 15) as f32 - 7.0)
                .collect()
        };
        for n in 0..4 {
            for (part, rows) in [("attn_q", 128), ("attn_k", 64), ("attn_v", 64)] {
                w.add_f32_tensor(
                    format!("blk.{n}.{part}.weight"),
                    &[128, rows],
                    dtype,
                    &values(128 * rows as usize, n),
                )
                .unwrap();
            }
            w.add_f32_tensor(
                format!("blk.{n}.attn_q.bias"),
                &[128],
                TensorType::F32,
                &values(128, n),
            )
            .unwrap();
            w.add_f32_tensor(
                format!("blk.{n}.attn_output.weight"),
                &[128, 3],
                dtype,
                &values(128 * 3, n),
            )
            .unwrap();
            w.add_f32_tensor(
                format!("blk.{n}.ffn_norm.weight"),
                &[128],
                TensorType::F32,
                &[n as f32; 128],
            )
            .unwrap();
        }
        GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap()
    }

    fn cut(file: &GgufFile, surgery: &Surgery) -> GgufFile {
        GgufFile::from_bytes(surgery.apply(file, &[]).unwrap().to_bytes().unwrap()).unwrap()
    }

    fn shape(heads: usize, kv_heads: usize) -> Shape {
        Shape {
            layers: 4,
            heads: vec![heads; 4],
            kv_heads: vec![kv_heads; 4],
            head_dim: 32,
        }
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
        // Without removed heads the head counts stay one number.
        assert_eq!(out.get_u32("llama.attention.head_count").unwrap(), 4);
        let names: Vec<&str> = out.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names.len(), 1 + 2 * 6, "{names:?}");
        assert!(out.tensor_info("blk.2.ffn_norm.weight").is_none());
        // Old block 1 is new block 0, old 3 new 1, bytes unchanged.
        for (old, new) in [(1, 0), (3, 1)] {
            for part in ["attn_q", "attn_output", "ffn_norm"] {
                let a = file.tensor(&format!("blk.{old}.{part}.weight")).unwrap();
                let b = out.tensor(&format!("blk.{new}.{part}.weight")).unwrap();
                assert_eq!((a.data, &a.info.dims), (b.data, &b.info.dims));
            }
        }
        assert_eq!(surgery.renumbering(4), [None, Some(0), None, Some(1)]);
    }

    /// Head 2 of block 2 (4 query heads over 2 key/value heads, groups {0, 1} and {2, 3})
    /// leaves groups of 2 and 1: block 2 gets 3 key/value heads, 0, 0 and 1, reading what
    /// they read before.
    #[test]
    fn a_removed_head_leaves_the_projections_and_its_group_is_kept_equal() {
        for dtype in [TensorType::F32, TensorType::Q4_1, TensorType::Q8_0] {
            let file = model(dtype);
            let surgery = Surgery {
                remove_layers: vec![0],
                remove_heads: vec![Head { layer: 2, head: 2 }],
                ..Surgery::default()
            };
            let out = cut(&file, &surgery);
            assert_eq!(
                out.get_u32_array("llama.attention.head_count").unwrap(),
                [4, 3, 4]
            );
            assert_eq!(
                out.get_u32_array("llama.attention.head_count_kv").unwrap(),
                [2, 3, 2]
            );
            assert_eq!(out.get_u32("llama.attention.key_length").unwrap(), 32);
            assert_eq!(out.get_u32("llama.attention.value_length").unwrap(), 32);
            let read = |f: &GgufFile, name: &str| {
                let t = f.tensor(name).unwrap();
                (t.info.dims.clone(), t.to_f32().unwrap())
            };
            let rows = |values: &[f32], cols: usize, groups: &[usize]| -> Vec<f32> {
                groups
                    .iter()
                    .flat_map(|&g| values[g * 32 * cols..(g + 1) * 32 * cols].to_vec())
                    .collect()
            };
            let (_, q) = read(&file, "blk.2.attn_q.weight");
            let (dims, got) = read(&out, "blk.1.attn_q.weight");
            assert_eq!(
                (dims, got),
                (vec![128, 96], rows(&q, 128, &[0, 1, 3])),
                "{dtype}"
            );
            let (_, bias) = read(&file, "blk.2.attn_q.bias");
            let (dims, got) = read(&out, "blk.1.attn_q.bias");
            assert_eq!((dims, got), (vec![96], rows(&bias, 1, &[0, 1, 3])));
            for part in ["attn_k", "attn_v"] {
                let (_, kv) = read(&file, &format!("blk.2.{part}.weight"));
                let (dims, got) = read(&out, &format!("blk.1.{part}.weight"));
                assert_eq!((dims, got), (vec![128, 96], rows(&kv, 128, &[0, 0, 1])));
            }
            let (_, o) = read(&file, "blk.2.attn_output.weight");
            let (dims, got) = read(&out, "blk.1.attn_output.weight");
            let columns: Vec<f32> = o
                .chunks(128)
                .flat_map(|row| [&row[..64], &row[96..]].concat())
                .collect();
            assert_eq!((dims, got), (vec![96, 3], columns), "{dtype}");
            // The other blocks are copied byte for byte.
            let bytes = |f: &GgufFile, name: &str| f.tensor(name).unwrap().data.to_vec();
            assert_eq!(
                bytes(&file, "blk.3.attn_output.weight"),
                bytes(&out, "blk.2.attn_output.weight")
            );
        }
    }

    /// Every way of removing heads from blocks of 9 over 3 (SmolLM2) and 8 over 2 query heads
    /// keeps each query head reading its own key/value head, in groups of one size, with as
    /// few key/value heads as that allows.
    #[test]
    fn head_plans_keep_every_query_head_on_its_keys_and_values() {
        for (n_head, n_kv) in [(9, 3), (8, 2), (4, 1)] {
            let group = n_head / n_kv;
            for mask in 1..(1u32 << n_head) - 1 {
                let removed: BTreeSet<usize> =
                    (0..n_head).filter(|h| mask & (1 << h) != 0).collect();
                let plan = HeadPlan::new(n_head, n_kv, &removed);
                assert_eq!(plan.query.len(), n_head - removed.len());
                assert_eq!(plan.query.len() % plan.kv.len(), 0, "{removed:?}: {plan:?}");
                let new_group = plan.query.len() / plan.kv.len();
                for (i, &h) in plan.query.iter().enumerate() {
                    assert_eq!(plan.kv[i / new_group], h / group, "{removed:?}: {plan:?}");
                }
                // No larger groups would do: two neighbouring parts of one original group
                // could not be merged without breaking another group's size.
                let mut sizes = vec![0; n_kv];
                plan.query.iter().for_each(|&h| sizes[h / group] += 1);
                assert!(sizes.iter().all(|&s| s % new_group == 0));
                assert!((new_group + 1..=group).all(|g| sizes.iter().any(|&s| s % g != 0)));
            }
        }
        let plan = |removed: &[usize]| HeadPlan::new(9, 3, &removed.iter().copied().collect());
        assert_eq!(plan(&[0]).kv, [0, 0, 1, 1, 1, 2, 2, 2]);
        assert_eq!(plan(&[0, 3, 6]).kv, [0, 1, 2]);
        assert_eq!(plan(&[3, 4, 5]).kv, [0, 2]);
    }

    #[test]
    fn per_block_head_counts_are_read_back_and_cut_again() {
        let file = model(TensorType::F32);
        let once = cut(
            &file,
            &Surgery {
                remove_heads: vec![Head { layer: 1, head: 3 }],
                ..Surgery::default()
            },
        );
        let read = Shape::of(&once).unwrap();
        assert_eq!(
            (read.heads, read.kv_heads),
            (vec![4, 3, 4, 4], vec![2, 3, 2, 2])
        );
        let twice = cut(
            &once,
            &Surgery {
                remove_layers: vec![0],
                remove_heads: vec![Head { layer: 1, head: 0 }, Head { layer: 2, head: 0 }],
                ..Surgery::default()
            },
        );
        assert_eq!(
            twice.get_u32_array("llama.attention.head_count").unwrap(),
            [2, 3, 4]
        );
        assert_eq!(
            twice
                .get_u32_array("llama.attention.head_count_kv")
                .unwrap(),
            [2, 3, 2]
        );
        assert_eq!(
            twice.tensor("blk.0.attn_k.weight").unwrap().info.dims,
            [128, 64]
        );
    }

    #[test]
    fn bad_surgery_is_refused_naming_the_component() {
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
                "head 1.2 is out of range: layer 1 has heads 0..=1",
            ),
            (
                Surgery {
                    remove_heads: vec![h(5, 0)],
                    ..Surgery::default()
                },
                "head 5.0 is out of range",
            ),
            (
                Surgery {
                    remove_heads: vec![h(2, 0), h(2, 1)],
                    ..Surgery::default()
                },
                "removing all 2 heads of layer 2",
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
            let err = surgery.validate(&shape(2, 1)).unwrap_err().to_string();
            assert!(err.contains(expect), "{surgery:?}: {err}");
        }
        let fine = Surgery {
            remove_layers: vec![0, 1, 2],
            remove_heads: vec![h(3, 1)],
            keep_heads: vec![h(3, 0)],
            keep_layers: vec![],
        };
        assert!(fine.validate(&shape(2, 1)).is_ok());
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
