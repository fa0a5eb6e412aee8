//! The dispatch sequence of a forward step, assembled from the spec's layers: the kernels of
//! each layer (for the decode and the prefill tile) and how a step binds them to the
//! activations and a KV cache.

use pio_gpu::{
    Attention, AttentionConfig, Dispatch, Epilogue, Gpu, GpuBuffer, KvType, Linear, LinearShape,
    QkNormRope, QkNormRopeConfig, QkvRope, QkvRopeConfig, QuantMatrix, ResidualRmsNorm, RowLayout,
    RowTile, TokenRange, TunedKernel, Tuner,
};

use super::stage::Stage;
use super::support::gate_epilogue;
use super::upload::LayerWeights;
use super::vocab::VocabMatrix;
use super::RunConfig;
use crate::error::Result;
use crate::kv_pool::blocks_for;
use crate::models::{AttentionWindow, ModelSpec};

/// The four fused matrix kernels of one layer, for one tile.
pub(super) struct LayerKernels {
    qkv: QkvRope,
    output: Linear,
    gate_up: Linear,
    down: Linear,
}

/// One layer on the device: its weights (resident, or views of a ring slot when the layer
/// streams from disk), its RoPE table and its kernels.
pub(super) struct Layer {
    pub weights: LayerWeights,
    /// Index of the layer's RoPE table in [`Stage::rope_tables`] (see [`ModelSpec::ropes`]).
    pub rope: usize,
    pub decode: LayerKernels,
    pub prefill: LayerKernels,
    /// Attention over the layer's window.
    pub attention: Attention,
    /// The per-head q/k norm with RoPE, when the layer has the norm (then `qkv` does not
    /// rotate).
    pub qk_norm: Option<QkNormRope>,
    /// The normalised residual add of the sandwich norms, when the layer has them.
    pub post_norm: Option<ResidualRmsNorm>,
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

/// The final norm + output projection, for both tiles: one kernel per shard of the
/// projection, each writing its columns of the logits.
pub(super) struct Head {
    /// `None` when the projection is the stage's own embedding table (tied).
    pub output: Option<VocabMatrix>,
    pub decode: Vec<Linear>,
    pub prefill: Vec<Linear>,
}

/// Activation buffers, each sized for `max_batch` tokens.
pub(super) struct Activations {
    pub tokens: GpuBuffer,
    pub positions: GpuBuffer,
    /// Per token, the row its key and value go to.
    pub cache_rows: GpuBuffer,
    /// Per token, where its sequence's block table starts in `blocks`.
    pub table_starts: GpuBuffer,
    /// The block tables of a step's sequences.
    pub blocks: GpuBuffer,
    pub x: GpuBuffer,
    pub q: GpuBuffer,
    pub attn: GpuBuffer,
    /// A projection's output before its post-norm and residual add.
    pub proj: GpuBuffer,
    pub ffn: GpuBuffer,
    pub logits: GpuBuffer,
}

impl Activations {
    /// The buffers for batches of `config.max_batch` tokens of `spec`, with room for their
    /// logits when `logits` (else a word: only the last stage computes them).
    pub fn new(gpu: &Gpu, spec: &ModelSpec, config: &RunConfig, logits: bool) -> Result<Self> {
        let hp = &spec.hparams;
        let b = config.max_batch as u64;
        let context_blocks = blocks_for(config.context) as u64;
        let words = |name: &str, n: u64| gpu.storage_zeroed(name, n * 4);
        // The widest layer's queries.
        let (e, q) = (hp.n_embd as u64, hp.max_q_dim() as u64);
        Ok(Activations {
            tokens: words("token ids", b)?,
            positions: words("positions", b)?,
            cache_rows: words("cache rows", b)?,
            table_starts: words("block table starts", b)?,
            // At most one table of the whole context per token.
            blocks: words("block tables", b * context_blocks)?,
            x: words("x", b * e)?,
            q: words("q", b * q)?,
            attn: words("attention out", b * q)?,
            proj: words("projection", b * e)?,
            ffn: words("gated feed-forward", b * hp.n_ff as u64)?,
            logits: words("logits", if logits { b * hp.vocab_size as u64 } else { 1 })?,
        })
    }
}

/// Which KV cache a step uses: the model's own (one sequence, row = position: the identity
/// block table) or the block pool batched sequences share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CacheKind {
    Main,
    Batch,
}

/// The dispatches of one stage's forward step, in parts submitted in order: the first runs the
/// embedding lookup (first stage) and the resident layers; each layer streamed from disk has a
/// part of its own, submitted once its weights are in its ring slot (`stream.rs`); the head's
/// dispatches (last stage) end the last part.
pub(super) struct Step {
    pub parts: Vec<StepPart>,
    pub n_tokens: u32,
}

/// Dispatches submitted together.
pub(super) struct StepPart {
    /// The streamed layer whose weights must be written before these dispatches run.
    pub streamed_layer: Option<usize>,
    pub dispatches: Vec<Dispatch>,
}

impl Step {
    /// Kernel launches of the step.
    pub fn dispatch_count(&self) -> usize {
        self.parts.iter().map(|p| p.dispatches.len()).sum()
    }
}

/// Builds the kernels of the layers and the head, each matrix kernel with the tile its
/// device's [`Tuner`] chooses for its shape.
pub(super) struct KernelFactory<'a> {
    pub gpu: &'a Gpu,
    pub spec: &'a ModelSpec,
    /// The KV cache's type, which the kernels that read or write it are built for.
    pub kv_type: KvType,
    pub tuner: &'a Tuner,
}

impl KernelFactory<'_> {
    /// The tile of `kernel` over `weights` (with the fused norm when `norm`) for launches of
    /// `tokens` tokens: 1 (decode) or the prefill chunk.
    pub fn tile(
        &self,
        kernel: TunedKernel,
        weights: &QuantMatrix,
        norm: bool,
        tokens: u32,
    ) -> RowTile {
        self.tuner.tile(self.gpu, kernel, weights, norm, tokens)
    }

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

    /// The matrix kernels of layer `i` over its uploaded `weights`, for launches of `tokens`
    /// tokens (1: decode, or the prefill chunk), each with its tuned tile. A projection
    /// followed by a post-norm stores its output (the norm's kernel adds it to the residual);
    /// one without accumulates into the residual itself.
    pub fn layer(&self, i: usize, weights: &LayerWeights, tokens: u32) -> Result<LayerKernels> {
        let hp = &self.spec.hparams;
        let tuned = |kernel, matrix: &QuantMatrix, norm| {
            let tile = self.tile(kernel, matrix, norm, tokens);
            self.shape(matrix, norm, tile)
        };
        let residual = |post_norm: &Option<GpuBuffer>| match post_norm {
            Some(_) => Epilogue::Store,
            None => Epilogue::Accumulate,
        };
        Ok(LayerKernels {
            qkv: QkvRope::new(
                self.gpu,
                QkvRopeConfig {
                    shape: tuned(TunedKernel::QkvRope, &weights.qkv, true),
                    q_rows: hp.q_dim(i) as u32,
                    kv_rows: hp.kv_dim(i) as u32,
                    head_dim: hp.head_dim as u32,
                    rope: weights.qk_norm.is_none(),
                    kv_type: self.kv_type,
                },
            )?,
            output: Linear::new(
                self.gpu,
                tuned(TunedKernel::Linear, &weights.output, false),
                residual(&weights.attn_post_norm),
            )?,
            gate_up: Linear::new(
                self.gpu,
                tuned(TunedKernel::Gated, &weights.gate_up, true),
                gate_epilogue(self.spec, i),
            )?,
            down: Linear::new(
                self.gpu,
                tuned(TunedKernel::Linear, &weights.down, false),
                residual(&weights.ffn_post_norm),
            )?,
        })
    }

    /// Layer `i`'s attention over its window, with its heads.
    pub fn attention(&self, i: usize) -> Result<Attention> {
        let (hp, heads) = (&self.spec.hparams, self.spec.hparams.heads[i]);
        Ok(Attention::new(
            self.gpu,
            AttentionConfig {
                n_heads: heads.n_head as u32,
                n_kv_heads: heads.n_head_kv as u32,
                head_dim: hp.head_dim as u32,
                q: RowLayout::contiguous(hp.q_dim(i) as u32),
                window: match self.spec.layers[i].attention.window {
                    AttentionWindow::Global => None,
                    AttentionWindow::Sliding(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
                },
                kv_type: self.kv_type,
            },
        )?)
    }

    /// The per-head q/k norm of layer `i`, with its heads, when its `weights` have one.
    pub fn qk_norm(&self, i: usize, weights: &LayerWeights) -> Result<Option<QkNormRope>> {
        let (hp, heads) = (&self.spec.hparams, self.spec.hparams.heads[i]);
        let config = QkNormRopeConfig {
            n_heads: heads.n_head as u32,
            n_kv_heads: heads.n_head_kv as u32,
            head_dim: hp.head_dim as u32,
            eps: self.spec.norm.eps,
            kv_type: self.kv_type,
        };
        weights
            .qk_norm
            .as_ref()
            .map(|_| Ok(QkNormRope::new(self.gpu, config)?))
            .transpose()
    }

    /// The normalised residual add of a layer whose `weights` have a post-norm.
    pub fn post_norm(&self, weights: &LayerWeights) -> Result<Option<ResidualRmsNorm>> {
        let has = weights.attn_post_norm.is_some() || weights.ffn_post_norm.is_some();
        let (e, eps) = (self.spec.hparams.n_embd as u32, self.spec.norm.eps);
        has.then(|| Ok(ResidualRmsNorm::new(self.gpu, e, eps)?))
            .transpose()
    }
}

impl Stage {
    /// Binds every dispatch of this stage's step over `n` tokens against the cache of `kind`
    /// (the embedding only in the first stage, the head only in the last):
    ///
    /// ```text
    /// x = embed(tokens) * scale                                (one Embed per vocabulary shard)
    /// per layer:  q, cache[rows] = rope(Wqkv rmsnorm(x, attn_norm))          (QkvRope)
    ///             [q, cache[rows].k = rope(headnorm(q)), rope(headnorm(k))]  (QkNormRope)
    ///             a = attention(q, cache[block tables])       (causal GQA, maybe windowed)
    ///             x += Wo a   or   x += rmsnorm(Wo a, post_attention_norm)   (Linear [+ norm])
    ///             f = act(Wgate h) * (Wup h),  h = rmsnorm(x, ffn_norm)      (Linear, gated)
    ///             x += Wdown f   or   x += rmsnorm(Wdown f, post_ffw_norm)   (Linear [+ norm])
    /// logits = Wout rmsnorm(x, output_norm)  (all n rows, or only the last; one Linear per shard)
    /// ```
    /// (bracketed steps only for layers whose spec has them).
    pub(super) fn build_step(&self, n: u32, all_logits: bool, kind: CacheKind) -> Result<Step> {
        let (gpu, a) = (&self.gpu, &self.acts);
        let kv = self.cache(kind)?;
        let tokens = TokenRange::all(n);
        let embed = match &self.embedding {
            None => Vec::new(),
            Some(embedding) => embedding
                .lookups
                .iter()
                .zip(&embedding.table.shards)
                .map(|(embed, shard)| Ok(embed.bind(gpu, &shard.matrix, &a.tokens, &a.x, n)?))
                .collect::<Result<Vec<_>>>()?,
        };
        let mut parts = vec![StepPart {
            streamed_layer: None,
            dispatches: embed,
        }];
        for (local, l) in self.layers.iter().enumerate() {
            let i = self.layer_range.start + local;
            if self.stream.as_ref().is_some_and(|s| s.streams(i)) {
                parts.push(StepPart {
                    streamed_layer: Some(i),
                    dispatches: Vec::new(),
                });
            }
            let dispatches = &mut parts.last_mut().expect("not empty").dispatches;
            let (k, w) = (l.kernels(n), &l.weights);
            let cache = kv.layer(local)?;
            let table = &self.rope_tables[l.rope];
            dispatches.push(k.qkv.bind(
                gpu,
                &w.qkv,
                &a.x,
                Some(&w.attn_norm),
                &a.positions,
                &a.cache_rows,
                table,
                &a.q,
                cache,
                tokens,
            )?);
            if let (Some(qk), Some((q_norm, k_norm))) = (&l.qk_norm, &w.qk_norm) {
                dispatches.push(qk.bind(
                    gpu,
                    &a.q,
                    &a.positions,
                    &a.cache_rows,
                    table,
                    q_norm,
                    k_norm,
                    cache,
                    n,
                )?);
            }
            dispatches.push(l.attention.bind(
                gpu,
                &a.q,
                &a.positions,
                &a.table_starts,
                &a.blocks,
                cache,
                &a.attn,
                n,
            )?);
            dispatches.extend(self.residual(
                l,
                &k.output,
                &w.output,
                &a.attn,
                &w.attn_post_norm,
                n,
            )?);
            dispatches.push(k.gate_up.bind(
                gpu,
                &w.gate_up,
                &a.x,
                Some(&w.ffn_norm),
                &a.ffn,
                tokens,
            )?);
            dispatches.extend(self.residual(l, &k.down, &w.down, &a.ffn, &w.ffn_post_norm, n)?);
        }
        if let Some(output) = &self.output {
            let (head, rows) = if n == 1 {
                (&output.head.decode, tokens)
            } else if all_logits {
                (&output.head.prefill, tokens)
            } else {
                (&output.head.decode, TokenRange::one(n - 1))
            };
            let weights = match (&output.head.output, &self.embedding) {
                (Some(table), _) => table,
                (None, Some(embedding)) => &embedding.table,
                (None, None) => unreachable!("a tied head without a table is the first stage"),
            };
            let dispatches = &mut parts.last_mut().expect("not empty").dispatches;
            for (kernel, shard) in head.iter().zip(&weights.shards) {
                dispatches.push(kernel.bind(
                    gpu,
                    &shard.matrix,
                    &a.x,
                    Some(&output.norm),
                    &a.logits,
                    rows,
                )?);
            }
        }
        Ok(Step { parts, n_tokens: n })
    }
}

impl Stage {
    /// `x += W input` for `n` tokens, or with a post-norm weight `x += rmsnorm(W input) * w`
    /// (the projection stored in `proj`, then the layer's normalised residual add).
    fn residual(
        &self,
        layer: &Layer,
        linear: &Linear,
        weights: &QuantMatrix,
        input: &GpuBuffer,
        post_norm: &Option<GpuBuffer>,
        n: u32,
    ) -> Result<Vec<Dispatch>> {
        let (gpu, a, tokens) = (&self.gpu, &self.acts, TokenRange::all(n));
        Ok(match (post_norm, &layer.post_norm) {
            (Some(weight), Some(norm)) => vec![
                linear.bind(gpu, weights, input, None, &a.proj, tokens)?,
                norm.bind(gpu, &a.proj, weight, &a.x, n)?,
            ],
            _ => vec![linear.bind(gpu, weights, input, None, &a.x, tokens)?],
        })
    }
}
