//! The Llama forward pass on the GPU, built from `pio-gpu`'s fused kernels.
//!
//! Weights stay in their GGUF storage type on the device (repacked by [`QuantMatrix::upload`]);
//! each layer's Q, K and V projections are one concatenated matrix, its gate and up projections
//! one interleaved matrix. A forward step of `T` tokens records five dispatches per layer into
//! one command encoder:
//!
//! ```text
//! x = embed(tokens)
//! per layer:  q, cache[positions] = rope(Wqkv rmsnorm(x, attn_norm))      (QkvRope)
//!             a = attention(q, cache)                                    (causal GQA)
//!             x += Wo a                                                  (Linear, residual)
//!             f = silu(Wgate h) * (Wup h),  h = rmsnorm(x, ffn_norm)     (Linear, SwiGlu)
//!             x += Wdown f                                               (Linear, residual)
//! logits = Wout rmsnorm(x, output_norm)   (all T rows, or only the last)  (Linear)
//! [token = sample(logits)]                                               (DeviceSampler)
//! ```
//!
//! and submits them once, then reads back either the logits ([`Forward::forward`]) or, when
//! generating ([`Forward::next_token`]), only the token id the device sampler picked. Prompts longer than [`GpuModel::max_batch`] are processed in
//! chunks. The dispatches of a single-token step are built once and reused for every decoded
//! token; only the token-id and position buffers change. Tiles (tokens per invocation,
//! workgroup size) are chosen per adapter class, see [`RowTile`].

use std::borrow::Cow;

use pio_gguf::{GgufFile, TensorType, TensorView};
use pio_gpu::{
    Attention, AttentionConfig, DeviceSampler, Dispatch, Embed, Epilogue, Gpu, GpuBuffer, KvCache,
    Linear, LinearShape, QkvRope, QkvRopeConfig, QuantMatrix, RopeTable, RowLayout, RowTile,
    TokenRange, WeightDtype,
};

use crate::error::{Error, Result};
use crate::generate::Forward;
use crate::hparams::HParams;
use crate::sampler::Sampler;
use crate::weights::ModelTensors;

/// Default largest number of tokens processed by one forward submission.
pub const DEFAULT_MAX_BATCH: usize = 64;

fn weight_dtype(t: &TensorView) -> Result<WeightDtype> {
    Ok(match t.info.dtype {
        TensorType::F32 => WeightDtype::F32,
        TensorType::F16 => WeightDtype::F16,
        TensorType::Q4_0 => WeightDtype::Q4_0,
        TensorType::Q4_1 => WeightDtype::Q4_1,
        TensorType::Q8_0 => WeightDtype::Q8_0,
        other => {
            return Err(Error::UnsupportedTensorType {
                name: t.info.name.clone(),
                dtype: other.to_string(),
            })
        }
    })
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

/// The four fused kernels of one layer, for one tile.
struct LayerKernels {
    qkv: QkvRope,
    output: Linear,
    gate_up: Linear,
    down: Linear,
}

struct Layer {
    attn_norm: GpuBuffer,
    ffn_norm: GpuBuffer,
    /// `[Wq; Wk; Wv]`.
    qkv: QuantMatrix,
    output: QuantMatrix,
    /// Gate and up rows interleaved by row group.
    gate_up: QuantMatrix,
    down: QuantMatrix,
    decode: LayerKernels,
    prefill: LayerKernels,
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
struct Head {
    /// `None` when the projection is tied to the embedding table.
    output: Option<QuantMatrix>,
    decode: Linear,
    prefill: Linear,
}

/// Activation buffers, each sized for `max_batch` tokens.
struct Activations {
    tokens: GpuBuffer,
    positions: GpuBuffer,
    cache_rows: GpuBuffer,
    x: GpuBuffer,
    q: GpuBuffer,
    attn: GpuBuffer,
    ffn: GpuBuffer,
    logits: GpuBuffer,
}

/// Which KV cache a step uses: the model's own (one sequence, row = position) or the one
/// batched sequences share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheKind {
    Main,
    Batch,
}

/// The tokens of a step with, for each, its position in its sequence and its cache row.
#[derive(Debug, Clone, Copy)]
struct Placement<'a> {
    tokens: &'a [u32],
    positions: &'a [u32],
    rows: &'a [u32],
}

impl<'a> Placement<'a> {
    /// Tokens `start..start + len` (clamped to the end).
    fn chunk(&self, start: usize, len: usize) -> Placement<'a> {
        let end = (start + len).min(self.tokens.len());
        Placement {
            tokens: &self.tokens[start..end],
            positions: &self.positions[start..end],
            rows: &self.rows[start..end],
        }
    }
}

/// The dispatches of one forward step.
struct Step {
    dispatches: Vec<Dispatch>,
    n_tokens: u32,
    all_logits: bool,
}

/// The model on the GPU with its KV cache; implements [`Forward`].
pub struct GpuModel {
    hp: HParams,
    context: usize,
    max_batch: usize,
    token_embd: QuantMatrix,
    embed: Embed,
    attention: Attention,
    layers: Vec<Layer>,
    output_norm: GpuBuffer,
    head: Head,
    rope_table: RopeTable,
    cache: KvCache,
    /// The cache batched sequences share, once reserved.
    batch_cache: Option<KvCache>,
    acts: Activations,
    decode_step: Option<Step>,
    sampler: DeviceSampler,
    /// The sampling kernel bound to the logits (of the last token of every step).
    sample: Dispatch,
    // Declared last so every buffer above is dropped before the device.
    gpu: Gpu,
}

/// Builds the kernels of the layers and the head for one tile.
struct KernelFactory<'a> {
    gpu: &'a Gpu,
    hp: &'a HParams,
}

impl KernelFactory<'_> {
    fn shape(&self, weights: &QuantMatrix, norm: bool, tile: RowTile) -> LinearShape {
        LinearShape {
            dtype: weights.dtype(),
            rows: weights.rows(),
            cols: weights.cols(),
            norm_eps: norm.then_some(self.hp.rms_eps),
            tile,
        }
    }

    fn layer(&self, layer: &LayerWeights, tile: RowTile) -> Result<LayerKernels> {
        let hp = self.hp;
        let q_rows = (hp.n_head * hp.head_dim) as u32;
        Ok(LayerKernels {
            qkv: QkvRope::new(
                self.gpu,
                QkvRopeConfig {
                    shape: self.shape(&layer.qkv, true, tile),
                    q_rows,
                    kv_rows: hp.kv_dim() as u32,
                    head_dim: hp.head_dim as u32,
                },
            )?,
            output: Linear::new(
                self.gpu,
                self.shape(&layer.output, false, tile),
                Epilogue::Accumulate,
            )?,
            gate_up: Linear::new(
                self.gpu,
                self.shape(&layer.gate_up, true, tile),
                Epilogue::SwiGlu,
            )?,
            down: Linear::new(
                self.gpu,
                self.shape(&layer.down, false, tile),
                Epilogue::Accumulate,
            )?,
        })
    }
}

/// A layer's matrices on the device, before its kernels are built.
struct LayerWeights {
    qkv: QuantMatrix,
    output: QuantMatrix,
    gate_up: QuantMatrix,
    down: QuantMatrix,
}

impl LayerWeights {
    fn upload(gpu: &Gpu, hp: &HParams, l: &crate::weights::LayerTensors) -> Result<Self> {
        let (e, ff) = (hp.n_embd, hp.n_ff);
        let q_rows = hp.n_head * hp.head_dim;
        let (qkv_dtype, qkv) = common_storage(&[&l.attn_q, &l.attn_k, &l.attn_v])?;
        let (ffn_dtype, gate_up) = common_storage(&[&l.ffn_gate, &l.ffn_up])?;
        let matrix = |t: &TensorView, rows, cols| -> Result<QuantMatrix> {
            Ok(QuantMatrix::upload(
                gpu,
                weight_dtype(t)?,
                rows,
                cols,
                t.data,
            )?)
        };
        Ok(LayerWeights {
            qkv: QuantMatrix::upload(gpu, qkv_dtype, q_rows + 2 * hp.kv_dim(), e, &qkv.concat())?,
            output: matrix(&l.attn_output, e, q_rows)?,
            gate_up: QuantMatrix::upload_gate_up(gpu, ffn_dtype, ff, e, &gate_up[0], &gate_up[1])?,
            down: matrix(&l.ffn_down, e, ff)?,
        })
    }
}

impl GpuModel {
    /// Uploads the weights of `file` to `gpu`, compiles every kernel, and allocates a KV cache of
    /// `context` positions and activations for batches of up to `max_batch` tokens.
    pub fn new(gpu: Gpu, file: &GgufFile, context: usize, max_batch: usize) -> Result<Self> {
        let hp = HParams::from_gguf(file)?;
        if hp.rope_dim != hp.head_dim {
            return Err(Error::InvalidModel(format!(
                "partial RoPE (rope.dimension_count {} < head_dim {}) is not supported on the GPU",
                hp.rope_dim, hp.head_dim
            )));
        }
        if hp.head_dim % 8 != 0 || hp.n_ff % 4 != 0 {
            return Err(Error::InvalidModel(format!(
                "the GPU kernels need head_dim a multiple of 8 (got {}) and the feed-forward \
                 width a multiple of 4 (got {})",
                hp.head_dim, hp.n_ff
            )));
        }
        if context == 0 || max_batch == 0 {
            return Err(Error::InvalidParams(
                "context length and batch size must be positive".into(),
            ));
        }
        if u32::try_from(context).is_err() || u32::try_from(max_batch).is_err() {
            return Err(Error::InvalidParams(format!(
                "a context of {context} positions and batches of {max_batch} tokens: both must \
                 fit in 32 bits"
            )));
        }
        let t = ModelTensors::from_gguf(file, &hp)?;
        let u = |v: usize| v as u32;
        let (e, vocab) = (u(hp.n_embd), u(hp.vocab_size));
        let q_rows = u(hp.n_head * hp.head_dim);
        let (ctx, b) = (u(context), max_batch as u64);
        let kind = gpu.adapter_info().device_type;
        let (decode_tile, prefill_tile) = (RowTile::decode(kind), RowTile::prefill(kind));
        tracing::info!(?decode_tile, ?prefill_tile, adapter = %gpu.adapter_info(), "kernel tiles");

        let vector = |t: &TensorView| -> Result<GpuBuffer> {
            Ok(gpu.storage_from(&t.info.name, &t.to_f32()?)?)
        };
        let factory = KernelFactory { gpu: &gpu, hp: &hp };
        let layers = t
            .layers
            .iter()
            .map(|l| {
                let w = LayerWeights::upload(&gpu, &hp, l)?;
                Ok(Layer {
                    attn_norm: vector(&l.attn_norm)?,
                    ffn_norm: vector(&l.ffn_norm)?,
                    decode: factory.layer(&w, decode_tile)?,
                    prefill: factory.layer(&w, prefill_tile)?,
                    qkv: w.qkv,
                    output: w.output,
                    gate_up: w.gate_up,
                    down: w.down,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let embd_dtype = weight_dtype(&t.token_embd)?;
        let token_embd = QuantMatrix::upload(
            &gpu,
            embd_dtype,
            hp.vocab_size,
            hp.n_embd,
            t.token_embd.data,
        )?;
        // A tied head reads the embedding table itself (same packed layout).
        let output = match t.tied_output {
            true => None,
            false => Some(QuantMatrix::upload(
                &gpu,
                weight_dtype(&t.output)?,
                hp.vocab_size,
                hp.n_embd,
                t.output.data,
            )?),
        };
        let head_weights = output.as_ref().unwrap_or(&token_embd);
        let head = Head {
            decode: Linear::new(
                &gpu,
                factory.shape(head_weights, true, decode_tile),
                Epilogue::Store,
            )?,
            prefill: Linear::new(
                &gpu,
                factory.shape(head_weights, true, prefill_tile),
                Epilogue::Store,
            )?,
            output,
        };

        let (hd, nh, nkv) = (u(hp.head_dim), u(hp.n_head), u(hp.n_head_kv));
        let embed = Embed::new(&gpu, embd_dtype, vocab, e)?;
        let attention = Attention::new(
            &gpu,
            AttentionConfig {
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                q: RowLayout::contiguous(q_rows),
            },
        )?;
        let rope_table = RopeTable::new(&gpu, hd, f64::from(hp.rope_base), ctx)?;
        let cache = KvCache::new(&gpu, u(hp.n_layer), ctx, nkv, hd)?;
        let words = |name: &str, n: u64| gpu.storage_zeroed(name, n * 4);
        let acts = Activations {
            tokens: words("token ids", b)?,
            positions: words("positions", b)?,
            cache_rows: words("cache rows", b)?,
            x: words("x", b * u64::from(e))?,
            q: words("q", b * u64::from(q_rows))?,
            attn: words("attention out", b * u64::from(q_rows))?,
            ffn: words("swiglu", b * hp.n_ff as u64)?,
            logits: words("logits", b * u64::from(vocab))?,
        };
        let sampler = DeviceSampler::new(&gpu, vocab)?;
        let sample = sampler.bind(&gpu, &acts.logits)?;
        let mut model = GpuModel {
            output_norm: vector(&t.output_norm)?,
            hp,
            context,
            max_batch,
            token_embd,
            embed,
            attention,
            layers,
            head,
            rope_table,
            cache,
            batch_cache: None,
            acts,
            decode_step: None,
            sample,
            sampler,
            gpu,
        };
        model.decode_step = Some(model.build_step(1, false, CacheKind::Main)?);
        // Software drivers compile a pipeline at its first dispatch: run a batched and a
        // single-token step now so the first request does not pay for it. The cache positions
        // written here are overwritten by the first real forward.
        model.forward(&[0, 0], 0, false)?;
        let mut warm_up = Sampler::new(crate::sampler::SamplingParams::default())?;
        model.next_token(&[0], 0, &mut warm_up, &[])?;
        Ok(model)
    }

    /// The device the model runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The model's hyperparameters.
    pub fn hparams(&self) -> &HParams {
        &self.hp
    }

    /// Positions the KV cache holds.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Largest number of tokens one submission processes.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Kernel launches per decoded token, from the embedding lookup to the sampled token id
    /// (all in one submission).
    pub fn dispatches_per_token(&self) -> usize {
        self.decode_step.as_ref().map_or(0, |s| s.dispatches.len()) + 1
    }

    /// Kernel launches each transformer layer takes per decoded token.
    pub fn dispatches_per_layer(&self) -> usize {
        // Everything but the embedding lookup, the head and the sampler, over the layers.
        (self.dispatches_per_token().saturating_sub(3)) / self.layers.len().max(1)
    }

    /// The cache a step of `kind` uses.
    fn cache(&self, kind: CacheKind) -> Result<&KvCache> {
        match kind {
            CacheKind::Main => Ok(&self.cache),
            CacheKind::Batch => self.batch_cache.as_ref().ok_or_else(|| {
                Error::InvalidParams("no cache for batched sequences was reserved".into())
            }),
        }
    }

    /// Binds every dispatch of a step over `n` tokens against the cache of `kind`.
    fn build_step(&self, n: u32, all_logits: bool, kind: CacheKind) -> Result<Step> {
        let (gpu, a) = (&self.gpu, &self.acts);
        let kv = self.cache(kind)?;
        let tokens = TokenRange::all(n);
        let mut dispatches = vec![self.embed.bind(gpu, &self.token_embd, &a.tokens, &a.x, n)?];
        for (i, l) in self.layers.iter().enumerate() {
            let k = l.kernels(n);
            let cache = kv.layer(i)?;
            dispatches.extend([
                k.qkv.bind(
                    gpu,
                    &l.qkv,
                    &a.x,
                    Some(&l.attn_norm),
                    &a.positions,
                    &a.cache_rows,
                    &self.rope_table,
                    &a.q,
                    cache,
                    tokens,
                )?,
                self.attention
                    .bind(gpu, &a.q, &a.positions, &a.cache_rows, cache, &a.attn, n)?,
                k.output.bind(gpu, &l.output, &a.attn, None, &a.x, tokens)?,
                k.gate_up
                    .bind(gpu, &l.gate_up, &a.x, Some(&l.ffn_norm), &a.ffn, tokens)?,
                k.down.bind(gpu, &l.down, &a.ffn, None, &a.x, tokens)?,
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

    /// Queues the tokens, positions and cache rows of `step` and records its dispatches,
    /// followed by the sampling kernel when `sample` is set, into a new encoder.
    fn encode_step(
        &self,
        step: &Step,
        at: Placement<'_>,
        sample: bool,
    ) -> Result<pio_gpu::wgpu::CommandEncoder> {
        debug_assert_eq!(at.tokens.len(), step.n_tokens as usize);
        self.gpu.write(&self.acts.tokens, 0, at.tokens)?;
        self.gpu.write(&self.acts.positions, 0, at.positions)?;
        self.gpu.write(&self.acts.cache_rows, 0, at.rows)?;
        let sampler = sample.then_some(&self.sample);
        let encoder = self.gpu.encode(step.dispatches.iter().chain(sampler));
        Ok(encoder)
    }

    /// Runs one step of at most `max_batch` tokens and reads its logits back.
    fn run_step(&self, step: &Step, at: Placement<'_>) -> Result<Vec<f32>> {
        let encoder = self.encode_step(step, at, false)?;
        let rows = if step.all_logits { at.tokens.len() } else { 1 };
        let vocab = self.hp.vocab_size as u64;
        let logits =
            self.gpu
                .submit_and_read::<f32>(encoder, &self.acts.logits, 0, rows as u64 * vocab)?;
        if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
            return Err(Error::Numerics(format!(
                "GPU logit {} of position {} is {}",
                i as u64 % vocab,
                at.positions[i / vocab as usize],
                logits[i]
            )));
        }
        Ok(logits)
    }

    /// Runs one step and samples the token after its last one on the device: one submission,
    /// one 4-byte read-back.
    fn run_step_sampled(&self, step: &Step, at: Placement<'_>) -> Result<u32> {
        let encoder = self.encode_step(step, at, true)?;
        let raw = self
            .gpu
            .submit_and_read::<u32>(encoder, self.sampler.result(), 0, 1)?;
        self.sampler.token(raw[0]).ok_or_else(|| {
            Error::Numerics(format!(
                "a GPU logit after position {} is NaN or infinite",
                at.positions[at.positions.len() - 1]
            ))
        })
    }

    /// Checks that `tokens` at `start_pos..` fit the cache and the vocabulary.
    fn check_tokens(&self, tokens: &[u32], start_pos: usize) -> Result<()> {
        if start_pos + tokens.len() > self.context {
            return Err(Error::PromptTooLong {
                prompt: start_pos + tokens.len(),
                context: self.context,
            });
        }
        self.check_vocabulary(tokens)
    }

    /// Checks that `tokens` is not empty and every id is in the vocabulary.
    fn check_vocabulary(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::InvalidParams("forward of no tokens".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.hp.vocab_size) {
            return Err(Error::InvalidParams(format!(
                "token {bad} is outside the vocabulary of {}",
                self.hp.vocab_size
            )));
        }
        Ok(())
    }

    /// Runs `f` on the step for a chunk of `n` tokens against the cache of `kind`: the prebuilt
    /// decode step for one token of the main cache, else one built for the chunk.
    fn with_step<T>(
        &self,
        n: usize,
        all_logits: bool,
        kind: CacheKind,
        f: impl FnOnce(&Step) -> Result<T>,
    ) -> Result<T> {
        match (&self.decode_step, n, kind) {
            (Some(step), 1, CacheKind::Main) => f(step),
            _ => f(&self.build_step(n as u32, all_logits, kind)?),
        }
    }

    /// Runs `at` in chunks of at most `max_batch` tokens; returns the logits of every token
    /// with `all_logits`, else of the last one.
    fn run_chunks(&self, at: Placement<'_>, all_logits: bool, kind: CacheKind) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        let n_chunks = at.tokens.len().div_ceil(self.max_batch);
        for i in 0..n_chunks {
            let chunk = at.chunk(i * self.max_batch, self.max_batch);
            let logits = self.with_step(chunk.tokens.len(), all_logits, kind, |step| {
                self.run_step(step, chunk)
            })?;
            if all_logits || i + 1 == n_chunks {
                out.extend_from_slice(&logits);
            }
        }
        Ok(out)
    }

    /// A zeroed KV cache of `rows` rows for batched sequences.
    fn new_batch_cache(&self, rows: usize) -> Result<KvCache> {
        let hp = &self.hp;
        let rows =
            u32::try_from(rows).map_err(|_| Error::InvalidParams(format!("{rows} cache rows")))?;
        Ok(KvCache::new(
            &self.gpu,
            hp.n_layer as u32,
            rows,
            hp.n_head_kv as u32,
            hp.head_dim as u32,
        )?)
    }

    /// Allocates, once, the cache that batched sequences share: `rows` rows, each sequence in
    /// its own contiguous range (see [`GpuModel::forward_batch`]).
    pub fn reserve_batch_cache(&mut self, rows: usize) -> Result<()> {
        if self.batch_cache.is_none() {
            self.batch_cache = Some(self.new_batch_cache(rows)?);
        }
        Ok(())
    }

    /// Rows of the batched sequences' cache, once reserved.
    pub fn batch_cache_rows(&self) -> Option<usize> {
        self.batch_cache
            .as_ref()
            .map(|c| c.max_positions() as usize)
    }

    /// Replaces the batched sequences' cache (reserved before) by one of `rows` rows, moving
    /// the `(old_row, new_row, count)` ranges of the old one into it. The old cache is freed
    /// once its rows are copied; on failure it stays as it was.
    pub fn grow_batch_cache(&mut self, rows: usize, moves: &[(u32, u32, u32)]) -> Result<()> {
        let grown = self.new_batch_cache(rows)?;
        grown.copy_rows_from(&self.gpu, self.cache(CacheKind::Batch)?, moves)?;
        self.batch_cache = Some(grown);
        Ok(())
    }

    /// Runs `tokens` of possibly different sequences at their `positions`, writing their keys
    /// and values to `rows` of the batch cache (each token attends to the `positions[t] + 1`
    /// rows ending at `rows[t]`); returns the logits of every token with `all_logits`, else of
    /// the last one.
    pub fn forward_batch(
        &mut self,
        tokens: &[u32],
        positions: &[u32],
        rows: &[u32],
        all_logits: bool,
    ) -> Result<Vec<f32>> {
        let cache_rows = self.cache(CacheKind::Batch)?.max_positions();
        if positions.len() != tokens.len() || rows.len() != tokens.len() {
            return Err(Error::InvalidParams(
                "a batch needs one position and one cache row per token".into(),
            ));
        }
        if let Some(bad) = positions.iter().find(|&&p| p as usize >= self.context) {
            return Err(Error::PromptTooLong {
                prompt: *bad as usize + 1,
                context: self.context,
            });
        }
        if let Some(bad) = rows.iter().find(|&&r| r >= cache_rows) {
            return Err(Error::InvalidParams(format!(
                "cache row {bad} is outside the batch cache of {cache_rows} rows"
            )));
        }
        self.check_vocabulary(tokens)?;
        let at = Placement {
            tokens,
            positions,
            rows,
        };
        self.run_chunks(at, all_logits, CacheKind::Batch)
    }
}

impl Forward for GpuModel {
    fn vocab_size(&self) -> usize {
        self.hp.vocab_size
    }

    fn context_length(&self) -> usize {
        self.context
    }

    fn forward(&mut self, tokens: &[u32], start_pos: usize, all_logits: bool) -> Result<Vec<f32>> {
        self.check_tokens(tokens, start_pos)?;
        let sequential = sequential(start_pos, tokens.len());
        let at = Placement {
            tokens,
            positions: &sequential,
            rows: &sequential,
        };
        self.run_chunks(at, all_logits, CacheKind::Main)
    }

    /// Samples on the device: every chunk but the last runs as in [`Forward::forward`], the last
    /// one ends with the sampling kernel and reads back only the token id.
    fn next_token(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        sampler: &mut Sampler,
        history: &[u32],
    ) -> Result<u32> {
        self.check_tokens(tokens, start_pos)?;
        let last_start = (tokens.len() - 1) / self.max_batch * self.max_batch;
        if last_start > 0 {
            self.forward(&tokens[..last_start], start_pos, false)?;
        }
        let (settings, penalized) = sampler.device_settings(history);
        self.sampler.set(&self.gpu, &settings, &penalized)?;
        let last = &tokens[last_start..];
        let sequential = sequential(start_pos + last_start, last.len());
        let at = Placement {
            tokens: last,
            positions: &sequential,
            rows: &sequential,
        };
        self.with_step(last.len(), false, CacheKind::Main, |step| {
            self.run_step_sampled(step, at)
        })
    }
}

/// `start..start + n` as u32 positions (or cache rows).
fn sequential(start: usize, n: usize) -> Vec<u32> {
    (start..start + n).map(|p| p as u32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::ReferenceModel;
    use crate::sampler::argmax;
    use crate::test_model::{compare, smollm2, test_gpu, tiny_llama, TinyConfig};

    /// Runs `prompt` (all positions) and then `decode_steps` greedy tokens through both models,
    /// printing and returning the worst absolute and relative logit errors.
    fn check_against_reference(
        gpu_model: &mut GpuModel,
        reference: &mut ReferenceModel,
        prompt: &[u32],
        decode_steps: usize,
        label: &str,
    ) -> (f32, f32) {
        let vocab = reference.vocab_size();
        let g = gpu_model.forward(prompt, 0, true).unwrap();
        let r = reference.forward(prompt, 0, true).unwrap();
        let (mut abs, mut rel) = compare(&g, &r);
        eprintln!(
            "{label}: prompt of {} tokens: max abs {abs:.3e}, rel {rel:.3e}",
            prompt.len()
        );
        let mut next = argmax(&r[r.len() - vocab..]);
        for step in 0..decode_steps {
            let pos = prompt.len() + step;
            let g = gpu_model.forward(&[next], pos, false).unwrap();
            let r = reference.forward(&[next], pos, false).unwrap();
            let (a, b) = compare(&g, &r);
            eprintln!("{label}: decode position {pos}: max abs {a:.3e}, rel {b:.3e}");
            (abs, rel) = (abs.max(a), rel.max(b));
            next = argmax(&r);
        }
        (abs, rel)
    }

    fn tiny_case(cfg: TinyConfig, max_batch: usize) {
        let file = tiny_llama(&cfg);
        let mut reference = ReferenceModel::load(&file, 64).unwrap();
        let mut model = GpuModel::new(test_gpu(), &file, 64, max_batch).unwrap();
        let prompt: Vec<u32> = (0..21).map(|i| (i * 37 + 5) % 290).collect();
        let (abs, rel) = check_against_reference(&mut model, &mut reference, &prompt, 6, "tiny");
        // Both sides use the same quantized weights; only f32 summation order differs.
        assert!(abs < 1e-3 && rel < 1e-4, "max abs {abs}, rel {rel}");
    }

    #[test]
    fn tiny_random_model_matches_reference() {
        tiny_case(TinyConfig::default(), 8);
    }

    #[test]
    fn tiny_tied_model_in_one_batch_matches_reference() {
        let cfg = TinyConfig {
            tied: true,
            n_head_kv: 1,
            types: vec![TensorType::Q4_1, TensorType::F16, TensorType::Q8_0],
            seed: 7,
            ..TinyConfig::default()
        };
        tiny_case(cfg, 64);
    }

    /// A detokenizer producing no text: these tests compare token ids.
    struct Silent;

    impl crate::generate::Detokenizer for Silent {
        fn push(&mut self, _token: u32) -> Result<String> {
            Ok(String::new())
        }
        fn finish(&mut self) -> String {
            String::new()
        }
    }

    #[test]
    fn device_sampling_picks_the_tokens_the_host_sampler_picks() {
        use crate::generate::{generate, GenerateConfig};
        use crate::sampler::SamplingParams;
        let file = tiny_llama(&TinyConfig::default());
        let mut reference = ReferenceModel::load(&file, 64).unwrap();
        let mut model = GpuModel::new(test_gpu(), &file, 64, 8).unwrap();
        let prompt: Vec<u32> = (0..11).map(|i| (i * 53 + 7) % 290).collect();
        for (temperature, top_k, top_p, min_p, penalty) in [
            (0.0, 0, 1.0, 0.0, 1.3),
            (1.0, 0, 1.0, 0.0, 1.0),
            (0.8, 20, 0.95, 0.0, 1.1),
            (1.2, 0, 0.9, 0.05, 1.0),
        ] {
            let config = GenerateConfig {
                max_new_tokens: 16,
                sampling: SamplingParams {
                    temperature,
                    top_k,
                    top_p,
                    min_p,
                    repetition_penalty: penalty,
                    seed: 5,
                    ..SamplingParams::default()
                },
                ..GenerateConfig::default()
            };
            let run = |m: &mut dyn Forward| {
                generate(m, &mut Silent, &prompt, &config, &mut |_| {
                    pio_plugin_api::StreamControl::Continue
                })
                .unwrap()
                .tokens
            };
            let on_device = run(&mut model);
            let on_host = run(&mut reference);
            assert_eq!(on_device, on_host, "{:?}", config.sampling);
        }
    }

    #[test]
    fn rewinding_the_cache_recomputes_the_same_logits() {
        let file = tiny_llama(&TinyConfig::default());
        let mut model = GpuModel::new(test_gpu(), &file, 32, 16).unwrap();
        let a = model.forward(&[5, 6, 7, 8], 0, false).unwrap();
        model.forward(&[9, 9, 9], 4, false).unwrap();
        // Overwrite positions 2.. with the original tokens: the cache of 0..2 is reused.
        let b = model.forward(&[7, 8], 2, false).unwrap();
        assert!(compare(&a, &b).0 < 1e-5);
        let err = model.forward(&[1; 5], 30, false).unwrap_err();
        assert!(matches!(err, Error::PromptTooLong { .. }), "{err}");
    }

    #[test]
    fn smollm2_matches_reference() {
        let Some(path) = smollm2() else { return };
        let file = GgufFile::open(path).unwrap();
        let mut reference = ReferenceModel::load(&file, 128).unwrap();
        let mut model = GpuModel::new(test_gpu(), &file, 128, DEFAULT_MAX_BATCH).unwrap();
        // "<|im_start|>user\nThe capital" and some arbitrary ids.
        let prompt = [1, 4093, 198, 504, 3575, 3223, 28, 1029, 8130, 49, 2];
        let (abs, rel) = check_against_reference(&mut model, &mut reference, &prompt, 4, "SmolLM2");
        assert!(abs < 1e-3 && rel < 1e-4, "max abs {abs}, rel {rel}");
    }
}
