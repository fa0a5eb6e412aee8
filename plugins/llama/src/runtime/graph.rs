//! The dispatch sequence of a forward step, assembled from the spec's layers: the kernels of
//! each layer (for the decode and the prefill tile) and how a step binds them to the
//! activations and a KV cache.

use pio_gpu::{
    Dispatch, Epilogue, Gpu, GpuBuffer, Linear, LinearShape, QkvRope, QkvRopeConfig, QuantMatrix,
    RowTile, TokenRange,
};

use super::support::gate_epilogue;
use super::upload::LayerWeights;
use super::GpuModel;
use crate::error::Result;
use crate::models::ModelSpec;

/// The four fused kernels of one layer, for one tile.
pub(super) struct LayerKernels {
    qkv: QkvRope,
    output: Linear,
    gate_up: Linear,
    down: Linear,
}

/// One layer on the device: its weights, its RoPE table and its kernels.
pub(super) struct Layer {
    pub weights: LayerWeights,
    /// Index of the layer's RoPE table in [`GpuModel::rope_tables`] (see [`ModelSpec::ropes`]).
    pub rope: usize,
    pub decode: LayerKernels,
    pub prefill: LayerKernels,
}

impl Layer {
    fn kernels(&self, n_tokens: u32) -> &LayerKernels {
        if n_tokens == 1 {
            &self.decode
        } else {
            &self.prefill
        }
    }
}

/// The final norm + output projection, for both tiles.
pub(super) struct Head {
    /// `None` when the projection is tied to the embedding table.
    pub output: Option<QuantMatrix>,
    pub decode: Linear,
    pub prefill: Linear,
}

/// Activation buffers, each sized for `max_batch` tokens.
pub(super) struct Activations {
    pub tokens: GpuBuffer,
    pub positions: GpuBuffer,
    pub cache_rows: GpuBuffer,
    pub x: GpuBuffer,
    pub q: GpuBuffer,
    pub attn: GpuBuffer,
    pub ffn: GpuBuffer,
    pub logits: GpuBuffer,
}

/// Which KV cache a step uses: the model's own (one sequence, row = position) or the one
/// batched sequences share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CacheKind {
    Main,
    Batch,
}

/// The dispatches of one forward step.
pub(super) struct Step {
    pub dispatches: Vec<Dispatch>,
    pub n_tokens: u32,
    pub all_logits: bool,
}

/// Builds the kernels of the layers and the head for one tile.
pub(super) struct KernelFactory<'a> {
    pub gpu: &'a Gpu,
    pub spec: &'a ModelSpec,
}

impl KernelFactory<'_> {
    /// The shape of a matrix kernel over `weights`, with the fused RMSNorm when `norm`.
    pub fn shape(&self, weights: &QuantMatrix, norm: bool, tile: RowTile) -> LinearShape {
        LinearShape {
            dtype: weights.dtype(),
            rows: weights.rows(),
            cols: weights.cols(),
            norm_eps: norm.then_some(self.spec.norm.eps),
            tile,
        }
    }

    /// The kernels of layer `i` over its uploaded `weights`.
    pub fn layer(&self, i: usize, weights: &LayerWeights, tile: RowTile) -> Result<LayerKernels> {
        let hp = &self.spec.hparams;
        Ok(LayerKernels {
            qkv: QkvRope::new(
                self.gpu,
                QkvRopeConfig {
                    shape: self.shape(&weights.qkv, true, tile),
                    q_rows: hp.q_dim() as u32,
                    kv_rows: hp.kv_dim() as u32,
                    head_dim: hp.head_dim as u32,
                },
            )?,
            output: Linear::new(
                self.gpu,
                self.shape(&weights.output, false, tile),
                Epilogue::Accumulate,
            )?,
            gate_up: Linear::new(
                self.gpu,
                self.shape(&weights.gate_up, true, tile),
                gate_epilogue(self.spec, i)?,
            )?,
            down: Linear::new(
                self.gpu,
                self.shape(&weights.down, false, tile),
                Epilogue::Accumulate,
            )?,
        })
    }
}

impl GpuModel {
    /// Binds every dispatch of a step over `n` tokens against the cache of `kind`:
    ///
    /// ```text
    /// x = embed(tokens)
    /// per layer:  q, cache[rows] = rope(Wqkv rmsnorm(x, attn_norm))          (QkvRope)
    ///             a = attention(q, cache)                                    (causal GQA)
    ///             x += Wo a                                                  (Linear, residual)
    ///             f = act(Wgate h) * (Wup h),  h = rmsnorm(x, ffn_norm)      (Linear, gated)
    ///             x += Wdown f                                               (Linear, residual)
    /// logits = Wout rmsnorm(x, output_norm)   (all n rows, or only the last)  (Linear)
    /// ```
    pub(super) fn build_step(&self, n: u32, all_logits: bool, kind: CacheKind) -> Result<Step> {
        let (gpu, a) = (&self.gpu, &self.acts);
        let kv = self.cache(kind)?;
        let tokens = TokenRange::all(n);
        let mut dispatches = vec![self.embed.bind(gpu, &self.token_embd, &a.tokens, &a.x, n)?];
        for (i, l) in self.layers.iter().enumerate() {
            let (k, w) = (l.kernels(n), &l.weights);
            let cache = kv.layer(i)?;
            dispatches.extend([
                k.qkv.bind(
                    gpu,
                    &w.qkv,
                    &a.x,
                    Some(&w.attn_norm),
                    &a.positions,
                    &a.cache_rows,
                    &self.rope_tables[l.rope],
                    &a.q,
                    cache,
                    tokens,
                )?,
                self.attention
                    .bind(gpu, &a.q, &a.positions, &a.cache_rows, cache, &a.attn, n)?,
                k.output.bind(gpu, &w.output, &a.attn, None, &a.x, tokens)?,
                k.gate_up
                    .bind(gpu, &w.gate_up, &a.x, Some(&w.ffn_norm), &a.ffn, tokens)?,
                k.down.bind(gpu, &w.down, &a.ffn, None, &a.x, tokens)?,
            ]);
        }
        let (head, rows) = if n == 1 {
            (&self.head.decode, tokens)
        } else if all_logits {
            (&self.head.prefill, tokens)
        } else {
            (&self.head.decode, TokenRange::one(n - 1))
        };
        dispatches.push(head.bind(
            gpu,
            self.head.output.as_ref().unwrap_or(&self.token_embd),
            &a.x,
            Some(&self.output_norm),
            &a.logits,
            rows,
        )?);
        Ok(Step {
            dispatches,
            n_tokens: n,
            all_logits,
        })
    }
}
