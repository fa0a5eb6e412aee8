//! The GPU runtime: a [`ModelSpec`] run with `pio-gpu`'s fused kernels, with its KV caches.
//!
//! Nothing here knows a family: [`GpuModel::new`] reads the file's spec
//! ([`crate::models::describe`]); `support.rs` refuses what no kernel does, `upload.rs` puts
//! the weights on the device and `graph.rs` builds each layer's kernels and the dispatches of a
//! step. A forward step of `T` tokens records five dispatches per layer (Llama; eight with
//! Gemma's q/k and sandwich norms) into one command encoder, submits them once, then reads back either the logits ([`Forward::forward`]) or,
//! when generating ([`Forward::next_token`]), only the token id the device sampler picked.
//! Prompts longer than [`GpuModel::max_batch`] are processed in chunks. The dispatches of a
//! single-token step are built once and reused for every decoded token; only the token-id and
//! position buffers change. Tiles (tokens per invocation, workgroup size) are chosen per
//! adapter class, see [`RowTile`].
//!
//! When the weights do not fit the device budget, the last layers stream from the file through
//! a ring of device buffers (`stream.rs`, [`RunConfig::streamed_layers`]): a step is then
//! submitted in parts, one per streamed layer, each once its weights are written.

mod graph;
mod stream;
mod support;
mod upload;
mod vocab;

pub use stream::{StreamStats, RING_SLOTS};

use pio_gguf::GgufFile;
use pio_gpu::{
    DeviceSampler, Dispatch, Embed, EmbedTable, Epilogue, Gpu, GpuBuffer, KvCache, KvShape, Linear,
    RopeTable, RowLayout, RowTile,
};

use crate::error::{Error, Result};
use crate::forward::Forward;
use crate::kv_pool::{blocks_for, BlockCopy};
use crate::models::{self, ModelSpec};
use crate::sampler::Sampler;
use crate::storage::Storage;
use crate::weights::ModelTensors;
use graph::{Activations, CacheKind, Head, KernelFactory, Layer, Step, StepPart};
use stream::LayerStream;
use upload::{LayerShapes, LayerWeights, Matrices};
use vocab::VocabMatrix;

/// Default largest number of tokens processed by one forward submission.
pub const DEFAULT_MAX_BATCH: usize = 64;

/// Where the tokens of a step go in a paged KV cache (see [`KvCache`]): each token's row (where
/// its key and value are written) and its sequence's block table (what it attends to).
#[derive(Debug, Clone, Copy)]
pub struct CacheMap<'a> {
    /// Per token, its cache row: its table's block for its position, times the block size, plus
    /// the position within the block.
    pub rows: &'a [u32],
    /// Per token, the index of its sequence's table in `tables`.
    pub sequences: &'a [u32],
    /// The block table of each sequence of the step.
    pub tables: &'a [&'a [u32]],
}

/// The tokens of a step with, for each, its position in its sequence and where it is in the
/// cache.
#[derive(Debug, Clone, Copy)]
struct Placement<'a> {
    tokens: &'a [u32],
    positions: &'a [u32],
    cache: CacheMap<'a>,
}

impl<'a> Placement<'a> {
    /// Tokens `start..start + len` (clamped to the end).
    fn chunk(&self, start: usize, len: usize) -> Placement<'a> {
        let end = (start + len).min(self.tokens.len());
        Placement {
            tokens: &self.tokens[start..end],
            positions: &self.positions[start..end],
            cache: CacheMap {
                rows: &self.cache.rows[start..end],
                sequences: &self.cache.sequences[start..end],
                tables: self.cache.tables,
            },
        }
    }

    /// The block tables of this placement's sequences, one after the other, and where each
    /// token's starts: what the attention kernel reads. Only the tables of sequences that have
    /// tokens here, so a chunk of `max_batch` tokens never needs more than `max_batch` tables.
    fn tables(&self) -> (Vec<u32>, Vec<u32>) {
        let mut blocks = Vec::new();
        let mut starts_of: Vec<Option<u32>> = vec![None; self.cache.tables.len()];
        let starts = self
            .cache
            .sequences
            .iter()
            .map(|&s| {
                *starts_of[s as usize].get_or_insert_with(|| {
                    let start = blocks.len() as u32;
                    blocks.extend_from_slice(self.cache.tables[s as usize]);
                    start
                })
            })
            .collect();
        (blocks, starts)
    }
}

/// How a [`GpuModel`] stores its tensors and what it is sized for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunConfig {
    /// How the weight matrices and the KV caches are stored.
    pub storage: Storage,
    /// Positions of the model's own KV cache.
    pub context: usize,
    /// Largest number of tokens one submission processes.
    pub max_batch: usize,
    /// How many of the last layers stream from the file through a ring of [`RING_SLOTS`]
    /// layers instead of staying on the device (0: every layer is resident).
    pub streamed_layers: usize,
}

impl RunConfig {
    /// Weights as stored, an f32 KV cache of `context` positions, batches of `max_batch`
    /// tokens, every layer resident.
    pub fn new(context: usize, max_batch: usize) -> Self {
        RunConfig {
            storage: Storage::default(),
            context,
            max_batch,
            streamed_layers: 0,
        }
    }
}

/// The model on the GPU with its KV cache; implements [`Forward`].
pub struct GpuModel {
    spec: ModelSpec,
    context: usize,
    max_batch: usize,
    token_embd: VocabMatrix,
    /// The embedding lookup of each shard of `token_embd`.
    embed: Vec<Embed>,
    layers: Vec<Layer>,
    output_norm: GpuBuffer,
    head: Head,
    /// One table per distinct RoPE of the layers ([`ModelSpec::ropes`]).
    rope_tables: Vec<RopeTable>,
    /// The model's own cache, for one sequence: its block table is the identity.
    cache: KvCache,
    identity_table: Vec<u32>,
    /// The block pool batched sequences share, once reserved.
    batch_cache: Option<KvCache>,
    acts: Activations,
    decode_step: Option<Step>,
    sampler: DeviceSampler,
    /// The sampling kernel bound to the logits (of the last token of every step).
    sample: Dispatch,
    /// The layers streamed from the file, if any.
    stream: Option<LayerStream>,
    // Declared last so every buffer above is dropped before the device.
    gpu: Gpu,
}

impl GpuModel {
    /// Reads the spec of `file` ([`models::describe`]) and runs it with the weights as stored
    /// and an f32 KV cache: see [`GpuModel::from_spec`].
    pub fn new(gpu: Gpu, file: &GgufFile, context: usize, max_batch: usize) -> Result<Self> {
        let spec = models::describe(file)?;
        Self::from_spec(gpu, file, spec, RunConfig::new(context, max_batch))
    }

    /// Uploads the weights `spec` names in `file` to `gpu` (stored as `config.storage` says;
    /// those of the last `config.streamed_layers` layers are read from the file at every step
    /// instead), compiles every kernel, and allocates a KV cache (of `storage.kv` values) of
    /// `config.context` positions and activations for batches of up to `config.max_batch`
    /// tokens. Fails with [`Error::UnsupportedFeature`] when the spec needs a kernel the
    /// runtime does not have.
    pub fn from_spec(
        gpu: Gpu,
        file: &GgufFile,
        spec: ModelSpec,
        config: RunConfig,
    ) -> Result<Self> {
        let RunConfig {
            storage,
            context,
            max_batch,
            streamed_layers,
        } = config;
        support::check(&spec)?;
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
        let t = ModelTensors::from_gguf(file, &spec)?;
        let n_layers = t.layers.len();
        if streamed_layers > n_layers {
            return Err(Error::InvalidParams(format!(
                "{streamed_layers} streamed layers, but the model has {n_layers}"
            )));
        }
        let streamed = n_layers - streamed_layers..n_layers;
        let shapes = t.layers[streamed.clone()]
            .iter()
            .map(|l| LayerShapes::of(&spec, l, storage.weights))
            .collect::<Result<Vec<_>>>()?;
        let stream = match streamed.is_empty() {
            true => None,
            false => Some(LayerStream::start(
                &gpu,
                file.path(),
                &spec,
                storage.weights,
                streamed.clone(),
                &shapes,
            )?),
        };
        let hp = &spec.hparams;
        let u = |v: usize| v as u32;
        let (e, vocab, q_rows) = (u(hp.n_embd), u(hp.vocab_size), u(hp.q_dim()));
        let (ctx, b) = (u(context), max_batch as u64);
        let kind = gpu.adapter_info().device_type;
        let (decode_tile, prefill_tile) = (RowTile::decode(kind), RowTile::prefill(kind));
        tracing::info!(?decode_tile, ?prefill_tile, adapter = %gpu.adapter_info(), "kernel tiles");

        let ropes = spec.ropes();
        let factory = KernelFactory {
            gpu: &gpu,
            spec: &spec,
            kv_type: storage.kv,
        };
        let layers = t
            .layers
            .iter()
            .zip(&spec.layers)
            .enumerate()
            .map(|(i, (l, layer))| {
                let matrices = match &stream {
                    Some(stream) if stream.streams(i) => {
                        Matrices::Streamed(stream.slot(i), shapes[i - streamed.start])
                    }
                    _ => Matrices::Upload(storage.weights),
                };
                let weights = LayerWeights::new(&gpu, &spec, i, l, matrices)?;
                Ok(Layer {
                    decode: factory.layer(i, &weights, decode_tile)?,
                    prefill: factory.layer(i, &weights, prefill_tile)?,
                    attention: factory.attention(i)?,
                    qk_norm: factory.qk_norm(&weights)?,
                    post_norm: factory.post_norm(&weights)?,
                    rope: ropes
                        .iter()
                        .position(|r| *r == layer.attention.rope)
                        .expect("ropes() lists every layer's RoPE"),
                    weights,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let token_embd = VocabMatrix::upload(
            &gpu,
            storage.weights,
            &t.token_embd,
            hp.vocab_size,
            hp.n_embd,
        )?;
        // A tied head reads the embedding table itself (same packed layout).
        let output = match t.tied_output {
            true => None,
            false => Some(VocabMatrix::upload(
                &gpu,
                storage.weights,
                &t.output,
                hp.vocab_size,
                hp.n_embd,
            )?),
        };
        let head_kernels = |tile| {
            let weights = output.as_ref().unwrap_or(&token_embd);
            weights
                .shards
                .iter()
                .map(|shard| {
                    let columns = RowLayout {
                        stride: vocab,
                        offset: shard.first_row,
                    };
                    let shape = factory.shape(&shard.matrix, true, tile);
                    Ok(Linear::with_output(&gpu, shape, Epilogue::Store, columns)?)
                })
                .collect::<Result<Vec<_>>>()
        };
        let head = Head {
            decode: head_kernels(decode_tile)?,
            prefill: head_kernels(prefill_tile)?,
            output,
        };

        let (hd, nkv) = (u(hp.head_dim), u(hp.n_head_kv));
        let embed = token_embd
            .shards
            .iter()
            .map(|shard| {
                let table = EmbedTable {
                    dtype: shard.matrix.dtype(),
                    rows: shard.matrix.rows(),
                    cols: e,
                    first_row: shard.first_row,
                    scale: spec.embedding.scale,
                };
                Ok(Embed::new(&gpu, table)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let rope_tables = ropes
            .iter()
            .map(|r| Ok(RopeTable::new(&gpu, hd, f64::from(r.base), ctx)?))
            .collect::<Result<Vec<_>>>()?;
        let context_blocks = u(blocks_for(context));
        let kv_shape = KvShape {
            n_layers: u(hp.n_layer),
            n_kv_heads: nkv,
            head_dim: hd,
            kv_type: storage.kv,
        };
        let cache = KvCache::new(&gpu, kv_shape, context_blocks)?;
        let words = |name: &str, n: u64| gpu.storage_zeroed(name, n * 4);
        let acts = Activations {
            tokens: words("token ids", b)?,
            positions: words("positions", b)?,
            cache_rows: words("cache rows", b)?,
            table_starts: words("block table starts", b)?,
            // At most one table of the whole context per token.
            blocks: words("block tables", b * u64::from(context_blocks))?,
            x: words("x", b * u64::from(e))?,
            q: words("q", b * u64::from(q_rows))?,
            attn: words("attention out", b * u64::from(q_rows))?,
            proj: words("projection", b * u64::from(e))?,
            ffn: words("gated feed-forward", b * hp.n_ff as u64)?,
            logits: words("logits", b * u64::from(vocab))?,
        };
        let sampler = DeviceSampler::new(&gpu, vocab)?;
        let sample = sampler.bind(&gpu, &acts.logits)?;
        let output_norm = upload::norm(&gpu, &t.output_norm, spec.norm.weight)?;
        let mut model = GpuModel {
            spec,
            context,
            max_batch,
            token_embd,
            embed,
            layers,
            output_norm,
            head,
            rope_tables,
            cache,
            identity_table: (0..context_blocks).collect(),
            batch_cache: None,
            acts,
            decode_step: None,
            sample,
            sampler,
            stream,
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

    /// What the model is.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
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
        self.decode_step.as_ref().map_or(0, Step::dispatch_count) + 1
    }

    /// Kernel launches each transformer layer takes per decoded token.
    pub fn dispatches_per_layer(&self) -> usize {
        // Everything but the embedding lookups, the heads and the sampler, over the layers.
        let outside = self.embed.len() + self.head.decode.len() + 1;
        (self.dispatches_per_token().saturating_sub(outside)) / self.layers.len().max(1)
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

    /// What streaming layers from the file has done, when some layers stream.
    pub fn streaming(&self) -> Option<StreamStats> {
        self.stream.as_ref().map(LayerStream::stats)
    }

    /// Queues the tokens, positions, cache rows and block tables of `step` and submits every
    /// part of it but the last (a streamed layer's part once its weights are written); returns
    /// the last part, followed by the sampling kernel when `sample` is set, recorded into a new
    /// encoder for the caller to submit.
    fn encode_step(
        &self,
        step: &Step,
        at: Placement<'_>,
        sample: bool,
    ) -> Result<pio_gpu::wgpu::CommandEncoder> {
        debug_assert_eq!(at.tokens.len(), step.n_tokens as usize);
        self.gpu.write(&self.acts.tokens, 0, at.tokens)?;
        self.gpu.write(&self.acts.positions, 0, at.positions)?;
        self.gpu.write(&self.acts.cache_rows, 0, at.cache.rows)?;
        let (blocks, starts) = at.tables();
        self.gpu.write(&self.acts.table_starts, 0, &starts)?;
        self.gpu.write(&self.acts.blocks, 0, &blocks)?;
        let (last, before) = step.parts.split_last().expect("a step has a part");
        for part in before {
            self.write_streamed_weights(part)?;
            let index = self.gpu.submit(self.gpu.encode(&part.dispatches));
            if let (Some(stream), Some(_)) = (&self.stream, part.streamed_layer) {
                stream.submitted(index);
            }
        }
        self.write_streamed_weights(last)?;
        let sampler = sample.then_some(&self.sample);
        Ok(self.gpu.encode(last.dispatches.iter().chain(sampler)))
    }

    /// Writes the weights of the streamed layer of `part`, if it has one, into its ring slot.
    fn write_streamed_weights(&self, part: &StepPart) -> Result<()> {
        match (&self.stream, part.streamed_layer) {
            (Some(stream), Some(layer)) => stream.write(&self.gpu, layer),
            _ => Ok(()),
        }
    }

    /// Marks the step's submissions finished (after a read-back, which waits for them).
    fn step_done(&self) {
        if let Some(stream) = &self.stream {
            stream.all_done();
        }
    }

    /// Runs one step of at most `max_batch` tokens and reads its logits back.
    fn run_step(&self, step: &Step, at: Placement<'_>) -> Result<Vec<f32>> {
        let encoder = self.encode_step(step, at, false)?;
        let rows = if step.all_logits { at.tokens.len() } else { 1 };
        let vocab = self.spec.hparams.vocab_size as u64;
        let logits =
            self.gpu
                .submit_and_read::<f32>(encoder, &self.acts.logits, 0, rows as u64 * vocab)?;
        self.step_done();
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
        self.step_done();
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
        if let Some(&bad) = tokens
            .iter()
            .find(|&&t| t as usize >= self.spec.hparams.vocab_size)
        {
            return Err(Error::InvalidParams(format!(
                "token {bad} is outside the vocabulary of {}",
                self.spec.hparams.vocab_size
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

    /// Times every dispatch of one step over `tokens` of the model's own sequence at positions
    /// `start_pos..` (at most [`GpuModel::max_batch`] tokens), ending with the sampling kernel
    /// as generation does ([`Gpu::profile`]). The step computes what it would in generation:
    /// it writes the tokens' keys and values into the cache.
    pub fn profile_step(&self, tokens: &[u32], start_pos: usize) -> Result<pio_gpu::Profile> {
        self.check_tokens(tokens, start_pos)?;
        if tokens.len() > self.max_batch {
            return Err(Error::InvalidParams(format!(
                "a profiled step of {} tokens: one step takes at most {}",
                tokens.len(),
                self.max_batch
            )));
        }
        self.alone(tokens, start_pos, |at| {
            self.with_step(tokens.len(), false, CacheKind::Main, |step| {
                let (blocks, starts) = at.tables();
                let a = &self.acts;
                let inputs = [
                    (&a.tokens, at.tokens),
                    (&a.positions, at.positions),
                    (&a.cache_rows, at.cache.rows),
                    (&a.table_starts, &starts[..]),
                    (&a.blocks, &blocks[..]),
                ];
                for (buffer, data) in inputs {
                    self.gpu.write(buffer, 0, data)?;
                }
                let mut profile: Option<pio_gpu::Profile> = None;
                for (i, part) in step.parts.iter().enumerate() {
                    self.write_streamed_weights(part)?;
                    let sample = (i + 1 == step.parts.len()).then_some(&self.sample);
                    let dispatches: Vec<&Dispatch> = part.dispatches.iter().chain(sample).collect();
                    let timed = self.gpu.profile(&dispatches)?;
                    match &mut profile {
                        Some(profile) => profile.extend(timed),
                        None => profile = Some(timed),
                    }
                }
                self.step_done();
                Ok(profile.expect("a step has a part"))
            })
        })
    }

    /// Whether the block pool of batched sequences is allocated (at the first batched
    /// sequence).
    pub fn has_batch_cache(&self) -> bool {
        self.batch_cache.is_some()
    }

    /// Allocates, once, the block pool that batched sequences share: `n_blocks` blocks of
    /// [`pio_gpu::KV_BLOCK_ROWS`] positions (see [`GpuModel::forward_batch`]).
    pub fn reserve_batch_cache(&mut self, n_blocks: usize) -> Result<()> {
        if self.batch_cache.is_none() {
            let hp = &self.spec.hparams;
            let blocks = u32::try_from(n_blocks)
                .map_err(|_| Error::InvalidParams(format!("{n_blocks} KV cache blocks")))?;
            let shape = KvShape {
                n_layers: hp.n_layer as u32,
                n_kv_heads: hp.n_head_kv as u32,
                head_dim: hp.head_dim as u32,
                kv_type: self.cache.kv_type(),
            };
            self.batch_cache = Some(KvCache::new(&self.gpu, shape, blocks)?);
        }
        Ok(())
    }

    /// Copies the first rows of a block of the batched sequences' pool to another block
    /// (copy-on-write of a shared prefix's last block).
    pub fn copy_batch_block(&self, copy: BlockCopy) -> Result<()> {
        let cache = self.cache(CacheKind::Batch)?;
        Ok(cache.copy_blocks(&self.gpu, &[(copy.from, copy.to, copy.rows)])?)
    }

    /// Runs `tokens` of possibly different sequences at their `positions`, writing their keys
    /// and values to the rows `cache` gives in the batched sequences' pool; each token attends
    /// to positions `0..=positions[t]` of its sequence's block table. Returns the logits of
    /// every token with `all_logits`, else of the last one.
    pub fn forward_batch(
        &mut self,
        tokens: &[u32],
        positions: &[u32],
        cache: CacheMap<'_>,
        all_logits: bool,
    ) -> Result<Vec<f32>> {
        let pool = self.cache(CacheKind::Batch)?;
        let (cache_rows, n_blocks) = (pool.max_positions(), pool.n_blocks());
        if positions.len() != tokens.len()
            || cache.rows.len() != tokens.len()
            || cache.sequences.len() != tokens.len()
        {
            return Err(Error::InvalidParams(
                "a batch needs one position, cache row and sequence per token".into(),
            ));
        }
        let table_covers = |(&position, &sequence): (&u32, &u32)| {
            cache.tables.get(sequence as usize).is_some_and(|table| {
                table.len() >= blocks_for(position as usize + 1)
                    && table.iter().all(|&b| b < n_blocks)
            })
        };
        if !positions.iter().zip(cache.sequences).all(table_covers) {
            return Err(Error::InvalidParams(
                "a token's block table does not cover its position in the pool".into(),
            ));
        }
        if let Some(bad) = positions.iter().find(|&&p| p as usize >= self.context) {
            return Err(Error::PromptTooLong {
                prompt: *bad as usize + 1,
                context: self.context,
            });
        }
        if let Some(bad) = cache.rows.iter().find(|&&r| r >= cache_rows) {
            return Err(Error::InvalidParams(format!(
                "cache row {bad} is outside the batch cache of {cache_rows} rows"
            )));
        }
        self.check_vocabulary(tokens)?;
        let at = Placement {
            tokens,
            positions,
            cache,
        };
        self.run_chunks(at, all_logits, CacheKind::Batch)
    }
}

impl Forward for GpuModel {
    fn vocab_size(&self) -> usize {
        self.spec.hparams.vocab_size
    }

    fn context_length(&self) -> usize {
        self.context
    }

    fn forward(&mut self, tokens: &[u32], start_pos: usize, all_logits: bool) -> Result<Vec<f32>> {
        self.check_tokens(tokens, start_pos)?;
        self.alone(tokens, start_pos, |at| {
            self.run_chunks(at, all_logits, CacheKind::Main)
        })
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
        self.alone(last, start_pos + last_start, |at| {
            self.with_step(last.len(), false, CacheKind::Main, |step| {
                self.run_step_sampled(step, at)
            })
        })
    }
}

impl GpuModel {
    /// Runs `f` on `tokens` of the one sequence of the model's own cache, from `start_pos` on:
    /// row = position, through the identity block table.
    fn alone<T>(&self, tokens: &[u32], start_pos: usize, f: impl FnOnce(Placement<'_>) -> T) -> T {
        let positions = sequential(start_pos, tokens.len());
        let sequences = vec![0; tokens.len()];
        let tables = [self.identity_table.as_slice()];
        f(Placement {
            tokens,
            positions: &positions,
            cache: CacheMap {
                rows: &positions,
                sequences: &sequences,
                tables: &tables,
            },
        })
    }
}

/// `start..start + n` as u32 positions (or cache rows).
fn sequential(start: usize, n: usize) -> Vec<u32> {
    (start..start + n).map(|p| p as u32).collect()
}

#[cfg(test)]
mod tests;
