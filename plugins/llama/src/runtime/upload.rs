//! Weights onto the device: matrices in the type [`WeightStorage`] gives them — their GGUF
//! storage type unless a conversion is configured — packed on the host ([`PackedLayer`]) and
//! uploaded, or written into a ring slot each time they are used (the disk pipeline,
//! `stream.rs`); each layer's q, k and v projections are concatenated into one matrix and its
//! gate and up projections interleaved into another, so one kernel reads each; norm weights
//! (always resident) become f32 vectors with the family's [`NormWeight`] applied.
//!
//! The kernels rotate adjacent pairs (GGML's "normal" RoPE). For a layer whose spec pairs the
//! halves of each head ([`RopePairs::Halves`], Gemma), the rows of `Wq` and `Wk` — and the q/k
//! norm weights, which act on the same values — are reordered here so that value `i` and
//! `i + head_dim/2` become neighbours: attention scores are dot products of q and k, which
//! the same reordering of both leaves unchanged, and v is not touched.

use std::borrow::Cow;

use pio_gguf::TensorView;
use pio_gpu::{Gpu, GpuBuffer, MatrixShape, PackedMatrix, QuantMatrix};

use super::stream::Slot;
use crate::error::Result;
use crate::models::{ModelSpec, NormWeight, RopePairs};
use crate::storage::WeightStorage;
use crate::weights::LayerTensors;

/// An RMSNorm weight as the kernels multiply by it: `w`, or `1 + w` for [`NormWeight::OnePlus`]
/// (folded in here, so the kernels know only one kind of norm).
pub(super) fn norm(gpu: &Gpu, t: &TensorView, weight: NormWeight) -> Result<GpuBuffer> {
    let values = norm_values(t, weight)?;
    Ok(gpu.storage_from(&t.info.name, &values)?)
}

fn norm_values(t: &TensorView, weight: NormWeight) -> Result<Vec<f32>> {
    let mut values = t.to_f32()?;
    if weight == NormWeight::OnePlus {
        values.iter_mut().for_each(|w| *w += 1.0);
    }
    Ok(values)
}

/// For each position of a head reordered for adjacent-pair RoPE, the position it comes from:
/// `2i` takes `i` and `2i + 1` takes `i + head_dim/2`.
fn adjacent_pair_source(j: usize, head_dim: usize) -> usize {
    let head = j / head_dim * head_dim;
    let i = j % head_dim;
    head + i / 2 + (i % 2) * (head_dim / 2)
}

/// `items` (whole heads of `head_dim` items each) in adjacent-pair order.
fn to_adjacent_pairs<T: Clone>(items: &[T], head_dim: usize) -> Vec<T> {
    (0..items.len())
        .map(|j| items[adjacent_pair_source(j, head_dim)].clone())
        .collect()
}

/// The rows of a `rows`-row matrix's bytes in adjacent-pair order (each row is whole blocks,
/// so rows move as byte ranges whatever the storage type).
fn rows_to_adjacent_pairs(data: &[u8], rows: usize, head_dim: usize) -> Vec<u8> {
    let row_bytes = data.len() / rows;
    let chunks: Vec<&[u8]> = data.chunks_exact(row_bytes).collect();
    to_adjacent_pairs(&chunks, head_dim).concat()
}

/// The device shapes of a layer's four fused matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LayerShapes {
    /// `[Wq; Wk; Wv]`.
    pub qkv: MatrixShape,
    pub output: MatrixShape,
    /// Gate and up rows interleaved by row group.
    pub gate_up: MatrixShape,
    pub down: MatrixShape,
}

impl LayerShapes {
    /// The shapes of the layer `l` of `spec`, its matrices stored as `storage` says: known
    /// from the tensor table alone (its query and key/value widths are its own, checked
    /// against its heads by [`crate::weights::ModelTensors::from_gguf`]).
    pub fn of(spec: &ModelSpec, l: &LayerTensors, storage: WeightStorage) -> Result<Self> {
        let hp = &spec.hparams;
        let rows = |t: &TensorView| t.info.dims[1] as usize;
        let (e, ff, q_rows, kv_rows) = (hp.n_embd, hp.n_ff, rows(&l.attn_q), rows(&l.attn_k));
        let shape = |group: &[&TensorView], rows, cols| -> Result<MatrixShape> {
            let dtype = storage.group_dtype(group)?;
            Ok(MatrixShape { dtype, rows, cols })
        };
        Ok(LayerShapes {
            qkv: shape(&[&l.attn_q, &l.attn_k, &l.attn_v], q_rows + 2 * kv_rows, e)?,
            output: shape(&[&l.attn_output], e, q_rows)?,
            gate_up: shape(&[&l.ffn_gate, &l.ffn_up], 2 * ff, e)?,
            down: shape(&[&l.ffn_down], e, ff)?,
        })
    }
}

/// A layer's four fused matrices, packed on the host (no device needed: the disk pipeline's
/// loader thread packs layers while the device computes).
pub(super) struct PackedLayer {
    pub qkv: PackedMatrix,
    pub output: PackedMatrix,
    pub gate_up: PackedMatrix,
    pub down: PackedMatrix,
}

impl PackedLayer {
    /// Packs the matrices of the tensors `l` of layer `index` of `spec`, stored as `storage`
    /// says.
    pub fn pack(
        spec: &ModelSpec,
        index: usize,
        l: &LayerTensors,
        storage: WeightStorage,
    ) -> Result<Self> {
        let hp = &spec.hparams;
        let (e, ff, q_rows, hd) = (hp.n_embd, hp.n_ff, hp.q_dim(index), hp.head_dim);
        let shapes = LayerShapes::of(spec, l, storage)?;
        let (_, mut qkv) = storage.group_bytes(&[&l.attn_q, &l.attn_k, &l.attn_v])?;
        if spec.layers[index].attention.rope.pairs == RopePairs::Halves {
            qkv[0] = Cow::Owned(rows_to_adjacent_pairs(&qkv[0], q_rows, hd));
            qkv[1] = Cow::Owned(rows_to_adjacent_pairs(&qkv[1], hp.kv_dim(index), hd));
        }
        let single = |t: &TensorView, shape| -> Result<PackedMatrix> {
            let (_, bytes) = storage.group_bytes(&[t])?;
            Ok(PackedMatrix::pack(shape, &bytes[0])?)
        };
        let (ffn_dtype, gate_up) = storage.group_bytes(&[&l.ffn_gate, &l.ffn_up])?;
        Ok(PackedLayer {
            qkv: PackedMatrix::pack(shapes.qkv, &qkv.concat())?,
            output: single(&l.attn_output, shapes.output)?,
            gate_up: PackedMatrix::pack_gate_up(ffn_dtype, ff, e, &gate_up[0], &gate_up[1])?,
            down: single(&l.ffn_down, shapes.down)?,
        })
    }

    /// Bytes the four matrices take on the device.
    pub fn device_bytes(&self) -> u64 {
        [&self.qkv, &self.output, &self.gate_up, &self.down]
            .iter()
            .map(|m| m.shape().device_bytes())
            .sum()
    }
}

/// One layer's weights on the device: its norm weights, and its matrices either uploaded or
/// views of a ring slot of the disk pipeline ([`Slot`]).
pub(super) struct LayerWeights {
    pub attn_norm: GpuBuffer,
    pub ffn_norm: GpuBuffer,
    /// Per-head norm weights of queries and keys, in the order the q and k rows are.
    pub qk_norm: Option<(GpuBuffer, GpuBuffer)>,
    /// The sandwich norms after attention and after the feed-forward.
    pub attn_post_norm: Option<GpuBuffer>,
    pub ffn_post_norm: Option<GpuBuffer>,
    /// `[Wq; Wk; Wv]`.
    pub qkv: QuantMatrix,
    pub output: QuantMatrix,
    /// Gate and up rows interleaved by row group.
    pub gate_up: QuantMatrix,
    pub down: QuantMatrix,
}

/// Where a layer's matrices come from.
pub(super) enum Matrices<'a> {
    /// Packed now and uploaded.
    Upload(WeightStorage),
    /// Written into this ring slot before each use, in the shapes given.
    Streamed(&'a Slot, LayerShapes),
}

impl LayerWeights {
    /// Uploads the norm weights of the tensors `l` of layer `index` of `spec`, with its
    /// matrices from `matrices`.
    pub fn new(
        gpu: &Gpu,
        spec: &ModelSpec,
        index: usize,
        l: &LayerTensors,
        matrices: Matrices,
    ) -> Result<Self> {
        let hd = spec.hparams.head_dim;
        let halves = spec.layers[index].attention.rope.pairs == RopePairs::Halves;
        let head_norm = |t: &TensorView| -> Result<GpuBuffer> {
            let values = norm_values(t, spec.norm.weight)?;
            let values = match halves {
                true => to_adjacent_pairs(&values, hd),
                false => values,
            };
            Ok(gpu.storage_from(&t.info.name, &values)?)
        };
        let opt_norm = |t: &Option<TensorView>| {
            t.as_ref()
                .map(|t| norm(gpu, t, spec.norm.weight))
                .transpose()
        };
        let [qkv, output, gate_up, down] = match matrices {
            Matrices::Upload(storage) => {
                let p = PackedLayer::pack(spec, index, l, storage)?;
                [&p.qkv, &p.output, &p.gate_up, &p.down]
                    .map(|packed| QuantMatrix::from_packed(gpu, packed))
            }
            Matrices::Streamed(slot, shapes) => [
                (&slot.qkv, shapes.qkv),
                (&slot.output, shapes.output),
                (&slot.gate_up, shapes.gate_up),
                (&slot.down, shapes.down),
            ]
            .map(|(slot, shape)| QuantMatrix::in_slot(slot, shape)),
        };
        Ok(LayerWeights {
            attn_norm: norm(gpu, &l.attn_norm, spec.norm.weight)?,
            ffn_norm: norm(gpu, &l.ffn_norm, spec.norm.weight)?,
            qk_norm: match &l.qk_norm {
                Some((q, k)) => Some((head_norm(q)?, head_norm(k)?)),
                None => None,
            },
            attn_post_norm: opt_norm(&l.attn_post_norm)?,
            ffn_post_norm: opt_norm(&l.ffn_post_norm)?,
            qkv: qkv?,
            output: output?,
            gate_up: gate_up?,
            down: down?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_become_adjacent_pairs_within_each_head() {
        // Two heads of 4: (0, 2) and (1, 3) pair up in each.
        let order = to_adjacent_pairs(&[0, 1, 2, 3, 4, 5, 6, 7], 4);
        assert_eq!(order, [0, 2, 1, 3, 4, 6, 5, 7]);
        let rows = rows_to_adjacent_pairs(&[10, 11, 20, 21, 30, 31, 40, 41], 4, 4);
        assert_eq!(rows, [10, 11, 30, 31, 20, 21, 40, 41]);
    }
}
