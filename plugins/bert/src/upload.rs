//! Model weights on the device: the linear layers as pio-gpu [`QuantMatrix`]es in the chosen
//! [`WeightDtype`] (Q, K and V stacked into one matrix), their biases, the LayerNorm
//! parameters and the embeddings (f32 whatever the dtype).

use pio_gpu::{Gpu, GpuBuffer, QuantMatrix, WeightDtype};
use pio_plugin_api::PluginResult;

use crate::weights::{BertWeights, Linear, Norm};

/// One encoder layer on the device.
#[derive(Debug)]
pub struct DeviceLayer {
    /// Q, K and V stacked: `[3 * hidden][hidden]`.
    pub qkv: QuantMatrix,
    /// Their biases, `3 * hidden`.
    pub qkv_bias: GpuBuffer,
    /// Attention output projection.
    pub attn_out: QuantMatrix,
    /// Its bias.
    pub attn_out_bias: GpuBuffer,
    /// The attention LayerNorm's gamma then beta.
    pub attn_norm: GpuBuffer,
    /// Feed-forward up-projection.
    pub up: QuantMatrix,
    /// Its bias.
    pub up_bias: GpuBuffer,
    /// Feed-forward down-projection.
    pub down: QuantMatrix,
    /// Its bias.
    pub down_bias: GpuBuffer,
    /// The output LayerNorm's gamma then beta.
    pub out_norm: GpuBuffer,
}

/// Every weight of the model on the device.
#[derive(Debug)]
pub struct DeviceWeights {
    /// `[vocab][hidden]` word embeddings.
    pub word: GpuBuffer,
    /// `[positions][hidden]` position embeddings with token-type row 0 added (every input is a
    /// single segment, so token type 0 is the only one used).
    pub pos_type: GpuBuffer,
    /// Embedding LayerNorm gamma then beta.
    pub embed_norm: GpuBuffer,
    /// The encoder layers.
    pub layers: Vec<DeviceLayer>,
}

/// An f32 storage buffer holding `data`.
fn upload_f32(gpu: &Gpu, label: &str, data: &[f32]) -> PluginResult<GpuBuffer> {
    gpu.storage_from(label, data)
        .map_err(|e| e.into_plugin_error(&format!("uploading {label}")))
}

fn matrix(
    gpu: &Gpu,
    label: &str,
    linear: &Linear,
    dtype: WeightDtype,
) -> PluginResult<QuantMatrix> {
    QuantMatrix::from_f32(gpu, dtype, linear.rows, linear.cols, &linear.weight)
        .map_err(|e| e.into_plugin_error(&format!("uploading {label}")))
}

/// A LayerNorm's gamma then beta, as the fused kernels read them.
fn norm(gpu: &Gpu, label: &str, norm: &Norm) -> PluginResult<GpuBuffer> {
    let values: Vec<f32> = [&norm.weight, &norm.bias]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    upload_f32(gpu, label, &values)
}

impl DeviceWeights {
    /// Device bytes the weights take.
    pub fn bytes(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                [&l.qkv, &l.attn_out, &l.up, &l.down]
                    .iter()
                    .map(|m| m.buffer().size())
                    .sum::<u64>()
                    + [
                        &l.qkv_bias,
                        &l.attn_out_bias,
                        &l.attn_norm,
                        &l.up_bias,
                        &l.down_bias,
                        &l.out_norm,
                    ]
                    .iter()
                    .map(|b| b.size())
                    .sum::<u64>()
            })
            .sum();
        layers + self.word.size() + self.pos_type.size() + self.embed_norm.size()
    }

    /// Stores the linear layers of `weights` as `dtype` and uploads everything.
    pub fn upload(gpu: &Gpu, weights: &BertWeights, dtype: WeightDtype) -> PluginResult<Self> {
        let hidden = weights.embed_norm.weight.len();
        let type0 = &weights.token_type_embeddings[..hidden];
        let pos_type: Vec<f32> = weights
            .position_embeddings
            .chunks_exact(hidden)
            .flat_map(|row| row.iter().zip(type0).map(|(p, t)| p + t))
            .collect();
        let mut layers = Vec::with_capacity(weights.layers.len());
        for (i, layer) in weights.layers.iter().enumerate() {
            let [q, k, v] = [&layer.query, &layer.key, &layer.value];
            let stacked = Linear {
                rows: 3 * hidden,
                cols: hidden,
                weight: [&q.weight, &k.weight, &v.weight]
                    .into_iter()
                    .flatten()
                    .copied()
                    .collect(),
                bias: [&q.bias, &k.bias, &v.bias]
                    .into_iter()
                    .flatten()
                    .copied()
                    .collect(),
            };
            let name = |part: &str| format!("layer{i}.{part}");
            layers.push(DeviceLayer {
                qkv: matrix(gpu, &name("qkv"), &stacked, dtype)?,
                qkv_bias: upload_f32(gpu, &name("qkv.bias"), &stacked.bias)?,
                attn_out: matrix(gpu, &name("attn_out"), &layer.attn_out, dtype)?,
                attn_out_bias: upload_f32(gpu, &name("attn_out.bias"), &layer.attn_out.bias)?,
                attn_norm: norm(gpu, &name("attn_norm"), &layer.attn_norm)?,
                up: matrix(gpu, &name("up"), &layer.up, dtype)?,
                up_bias: upload_f32(gpu, &name("up.bias"), &layer.up.bias)?,
                down: matrix(gpu, &name("down"), &layer.down, dtype)?,
                down_bias: upload_f32(gpu, &name("down.bias"), &layer.down.bias)?,
                out_norm: norm(gpu, &name("out_norm"), &layer.out_norm)?,
            });
        }
        Ok(Self {
            word: upload_f32(gpu, "word_embeddings", &weights.word_embeddings)?,
            pos_type: upload_f32(gpu, "position_type_embeddings", &pos_type)?,
            embed_norm: norm(gpu, "embeddings.norm", &weights.embed_norm)?,
            layers,
        })
    }
}
