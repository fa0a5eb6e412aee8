//! Weights onto the device: matrices stay in their GGUF storage type (repacked by
//! [`QuantMatrix::upload`]), each layer's q, k and v projections are concatenated into one
//! matrix and its gate and up projections interleaved into another, so one kernel reads each;
//! norm weights become f32 vectors with the family's [`NormWeight`] applied.

use std::borrow::Cow;

use pio_gguf::TensorView;
use pio_gpu::{Gpu, GpuBuffer, QuantMatrix, WeightDtype};

use crate::error::{Error, Result};
use crate::models::{ModelSpec, NormWeight};
use crate::weights::LayerTensors;

/// The kernels' name for the storage type of `t`.
pub(super) fn weight_dtype(t: &TensorView) -> Result<WeightDtype> {
    WeightDtype::from_gguf_type(t.info.dtype).ok_or_else(|| Error::UnsupportedTensorType {
        name: t.info.name.clone(),
        dtype: t.info.dtype.to_string(),
    })
}

/// A `rows` × `cols` matrix, uploaded as it is stored.
pub(super) fn matrix(gpu: &Gpu, t: &TensorView, rows: usize, cols: usize) -> Result<QuantMatrix> {
    Ok(QuantMatrix::upload(
        gpu,
        weight_dtype(t)?,
        rows,
        cols,
        t.data,
    )?)
}

/// An RMSNorm weight as the kernels multiply by it: `w`, or `1 + w` for [`NormWeight::OnePlus`]
/// (folded in here, so the kernels know only one kind of norm).
pub(super) fn norm(gpu: &Gpu, t: &TensorView, weight: NormWeight) -> Result<GpuBuffer> {
    let mut values = t.to_f32()?;
    if weight == NormWeight::OnePlus {
        values.iter_mut().for_each(|w| *w += 1.0);
    }
    Ok(gpu.storage_from(&t.info.name, &values)?)
}

/// The raw bytes of `tensors` in one storage type: their own when they share it, else each
/// converted to f32 (exact for every supported type), so they can be uploaded as one matrix.
fn common_storage<'a>(tensors: &[&TensorView<'a>]) -> Result<(WeightDtype, Vec<Cow<'a, [u8]>>)> {
    let dtype = weight_dtype(tensors[0])?;
    let mut same = true;
    for t in tensors {
        same &= weight_dtype(t)? == dtype;
    }
    if same {
        return Ok((
            dtype,
            tensors.iter().map(|t| Cow::Borrowed(t.data)).collect(),
        ));
    }
    tracing::info!(
        tensor = %tensors[0].info.name,
        "fused projections have different storage types; uploading them as f32"
    );
    let converted = tensors
        .iter()
        .map(|t| {
            Ok(Cow::Owned(
                t.to_f32()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ))
        })
        .collect::<Result<_>>()?;
    Ok((WeightDtype::F32, converted))
}

/// One layer's weights on the device.
pub(super) struct LayerWeights {
    pub attn_norm: GpuBuffer,
    pub ffn_norm: GpuBuffer,
    /// `[Wq; Wk; Wv]`.
    pub qkv: QuantMatrix,
    pub output: QuantMatrix,
    /// Gate and up rows interleaved by row group.
    pub gate_up: QuantMatrix,
    pub down: QuantMatrix,
}

impl LayerWeights {
    /// Uploads the tensors of one layer of `spec`.
    pub fn upload(gpu: &Gpu, spec: &ModelSpec, l: &LayerTensors) -> Result<Self> {
        let hp = &spec.hparams;
        let (e, ff, q_rows) = (hp.n_embd, hp.n_ff, hp.q_dim());
        let (qkv_dtype, qkv) = common_storage(&[&l.attn_q, &l.attn_k, &l.attn_v])?;
        let (ffn_dtype, gate_up) = common_storage(&[&l.ffn_gate, &l.ffn_up])?;
        Ok(LayerWeights {
            attn_norm: norm(gpu, &l.attn_norm, spec.norm.weight)?,
            ffn_norm: norm(gpu, &l.ffn_norm, spec.norm.weight)?,
            qkv: QuantMatrix::upload(gpu, qkv_dtype, q_rows + 2 * hp.kv_dim(), e, &qkv.concat())?,
            output: matrix(gpu, &l.attn_output, e, q_rows)?,
            gate_up: QuantMatrix::upload_gate_up(gpu, ffn_dtype, ff, e, &gate_up[0], &gate_up[1])?,
            down: matrix(gpu, &l.ffn_down, e, ff)?,
        })
    }
}
