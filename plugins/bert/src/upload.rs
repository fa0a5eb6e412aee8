//! Model weights on the device: linear layers packed in the chosen [`WeightFormat`], the fused
//! Q|K|V matrix, embeddings and LayerNorm parameters.

use pio_gpu::{Gpu, GpuBuffer};
use pio_plugin_api::PluginResult;

use crate::kernels::gpu_error;
use crate::pack::{PackedMatrix, WeightFormat};
use crate::weights::{BertWeights, Linear, Norm};

/// A weight matrix in the device layout of [`crate::pack`].
#[derive(Debug)]
pub struct DeviceMatrix {
    /// Storage format.
    pub format: WeightFormat,
    /// Output features.
    pub rows: u32,
    /// Input features.
    pub cols: u32,
    /// The packed chunks.
    pub words: GpuBuffer,
    /// Q8_0 scales (one unused value for other formats).
    pub scales: GpuBuffer,
}

impl DeviceMatrix {
    /// Uploads `packed`, labelling the buffers with `label`.
    pub fn upload(gpu: &Gpu, label: &str, packed: &PackedMatrix) -> PluginResult<Self> {
        let context = || format!("uploading {label}");
        Ok(Self {
            format: packed.format,
            rows: packed.rows as u32,
            cols: packed.cols as u32,
            words: gpu
                .storage_from(label, &packed.words)
                .map_err(|e| gpu_error(&context(), e))?,
            scales: gpu
                .storage_from(&format!("{label}.scales"), &packed.scales)
                .map_err(|e| gpu_error(&context(), e))?,
        })
    }
}

/// An f32 storage buffer holding `data`.
pub(crate) fn upload_f32(gpu: &Gpu, label: &str, data: &[f32]) -> PluginResult<GpuBuffer> {
    gpu.storage_from(label, data)
        .map_err(|e| gpu_error(&format!("uploading {label}"), e))
}

/// One encoder layer on the device.
#[derive(Debug)]
pub struct DeviceLayer {
    /// Q, K and V stacked: `[3 * hidden][hidden]`.
    pub qkv: DeviceMatrix,
    /// Their biases, `3 * hidden`.
    pub qkv_bias: GpuBuffer,
    /// Attention output projection.
    pub attn_out: DeviceMatrix,
    /// Its bias, then the attention LayerNorm's gamma and beta.
    pub attn_aux: GpuBuffer,
    /// Feed-forward up-projection.
    pub up: DeviceMatrix,
    /// Its bias.
    pub up_bias: GpuBuffer,
    /// Feed-forward down-projection.
    pub down: DeviceMatrix,
    /// Its bias, then the output LayerNorm's gamma and beta.
    pub down_aux: GpuBuffer,
}

/// Every weight of the model on the device.
#[derive(Debug)]
pub struct DeviceWeights {
    /// `[vocab][hidden]` word embeddings (f32 whatever the format).
    pub word: GpuBuffer,
    /// `[positions][hidden]` position embeddings with token-type row 0 added (every input is a
    /// single segment, so token type 0 is the only one used).
    pub pos_type: GpuBuffer,
    /// Embedding LayerNorm gamma then beta.
    pub embed_norm: GpuBuffer,
    /// The encoder layers.
    pub layers: Vec<DeviceLayer>,
}

fn bias_and_norm(linear: &Linear, norm: &Norm) -> Vec<f32> {
    [&linear.bias, &norm.weight, &norm.bias]
        .into_iter()
        .flatten()
        .copied()
        .collect()
}

fn matrix(
    gpu: &Gpu,
    label: &str,
    linear: &Linear,
    format: WeightFormat,
) -> PluginResult<DeviceMatrix> {
    let packed = PackedMatrix::pack(&linear.weight, linear.rows, linear.cols, format)?;
    DeviceMatrix::upload(gpu, label, &packed)
}

impl DeviceWeights {
    /// Device bytes the weights take.
    pub fn bytes(&self) -> u64 {
        let matrix = |m: &DeviceMatrix| m.words.size() + m.scales.size();
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                matrix(&l.qkv)
                    + matrix(&l.attn_out)
                    + matrix(&l.up)
                    + matrix(&l.down)
                    + [&l.qkv_bias, &l.attn_aux, &l.up_bias, &l.down_aux]
                        .iter()
                        .map(|b| b.size())
                        .sum::<u64>()
            })
            .sum();
        layers + self.word.size() + self.pos_type.size() + self.embed_norm.size()
    }

    /// Packs `weights` in `format` and uploads them.
    pub fn upload(gpu: &Gpu, weights: &BertWeights, format: WeightFormat) -> PluginResult<Self> {
        let hidden = weights.embed_norm.weight.len();
        let type0 = &weights.token_type_embeddings[..hidden];
        let pos_type: Vec<f32> = weights
            .position_embeddings
            .chunks_exact(hidden)
            .flat_map(|row| row.iter().zip(type0).map(|(p, t)| p + t))
            .collect();
        let norm: Vec<f32> = [&weights.embed_norm.weight, &weights.embed_norm.bias]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        let mut layers = Vec::with_capacity(weights.layers.len());
        for (i, layer) in weights.layers.iter().enumerate() {
            let stacked = Linear {
                rows: 3 * hidden,
                cols: hidden,
                weight: [&layer.query.weight, &layer.key.weight, &layer.value.weight]
                    .into_iter()
                    .flatten()
                    .copied()
                    .collect(),
                bias: [&layer.query.bias, &layer.key.bias, &layer.value.bias]
                    .into_iter()
                    .flatten()
                    .copied()
                    .collect(),
            };
            layers.push(DeviceLayer {
                qkv: matrix(gpu, &format!("layer{i}.qkv"), &stacked, format)?,
                qkv_bias: upload_f32(gpu, &format!("layer{i}.qkv.bias"), &stacked.bias)?,
                attn_out: matrix(gpu, &format!("layer{i}.attn_out"), &layer.attn_out, format)?,
                attn_aux: upload_f32(
                    gpu,
                    &format!("layer{i}.attn_out.aux"),
                    &bias_and_norm(&layer.attn_out, &layer.attn_norm),
                )?,
                up: matrix(gpu, &format!("layer{i}.up"), &layer.up, format)?,
                up_bias: upload_f32(gpu, &format!("layer{i}.up.bias"), &layer.up.bias)?,
                down: matrix(gpu, &format!("layer{i}.down"), &layer.down, format)?,
                down_aux: upload_f32(
                    gpu,
                    &format!("layer{i}.down.aux"),
                    &bias_and_norm(&layer.down, &layer.out_norm),
                )?,
            });
        }
        Ok(Self {
            word: upload_f32(gpu, "word_embeddings", &weights.word_embeddings)?,
            pos_type: upload_f32(gpu, "position_type_embeddings", &pos_type)?,
            embed_norm: upload_f32(gpu, "embeddings.norm", &norm)?,
            layers,
        })
    }
}
