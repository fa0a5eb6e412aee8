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
//! position buffers change. Each matrix kernel's tile (tokens per invocation, workgroup size,
//! reduction) is measured per shape on the device at the first activation and cached, or is the
//! adapter class's default ([`RunConfig::tuning`], [`pio_gpu::Tuner`]).
//!
//! When the weights do not fit the device budget, the last layers stream from the file through
//! a ring of device buffers (`stream.rs`, [`RunConfig::streamed_layers`]): a step is then
//! submitted in parts, one per streamed layer, each once its weights are written.

mod graph;
mod pipeline;
mod stage;
mod stream;
mod support;
mod upload;
mod vocab;

pub use pipeline::{DeviceStats, PipelineStats};
pub use stream::{StreamStats, RING_SLOTS};

use pio_gguf::GgufFile;
use pio_gpu::{Dispatch, Gpu, TuneMode, TuneReport, TuneSettings};

use crate::error::{Error, Result};
use crate::forward::Forward;
use crate::kv_pool::{blocks_for, BlockCopy};
use crate::models::{self, ModelSpec};
use crate::sampler::Sampler;
use crate::storage::Storage;
use crate::weights::ModelTensors;
use graph::CacheKind;
use pipeline::{ChunkOutput, PipelineCounters, Readout};
use stage::{Stage, StageSource};

/// Default largest number of tokens processed by one forward submission.
pub const DEFAULT_MAX_BATCH: usize = 64;

/// Steps each device keeps built besides its decode step, the least recently used replaced
/// first: building one binds every dispatch anew (tens of milliseconds on a software adapter for
/// a model of 30 layers), which every batched decode step and every prefill chunk would
/// otherwise pay. A batched decode runs the same step while its number of sequences holds; a
/// long prompt's chunks are all full but the last.
pub const KEPT_STEPS: usize = 8;

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

/// How a [`GpuModel`] stores its tensors, what it is sized for and how its kernels are tuned.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// How the matrix kernels' tiles are chosen: measured per shape and cached, or the adapter
    /// class's defaults ([`pio_gpu::Tuner`]).
    pub tuning: TuneSettings,
}

impl RunConfig {
    /// Weights as stored, an f32 KV cache of `context` positions, batches of `max_batch`
    /// tokens, every layer resident, the adapter class's tiles (no tuning: a caller that
    /// wants it sets [`RunConfig::tuning`]).
    pub fn new(context: usize, max_batch: usize) -> Self {
        RunConfig {
            storage: Storage::default(),
            context,
            max_batch,
            streamed_layers: 0,
            tuning: TuneSettings {
                mode: TuneMode::Off,
                cache_dir: None,
            },
        }
    }
}

/// The model on one or more devices with its KV caches; implements [`Forward`].
///
/// On several devices the layers are split into contiguous stages, one per device
/// ([`GpuModel::partitioned`]); each device holds only its layers' weights and KV caches, the
/// first also the embedding, the last the head (and a copy of the embedding table when the
/// head is tied to it), and forward passes run through them as a pipeline (`pipeline.rs`).
pub struct GpuModel {
    spec: ModelSpec,
    context: usize,
    max_batch: usize,
    /// One per device, in layer order; never empty.
    stages: Vec<Stage>,
    /// The block table of the model's own cache, for one sequence: the identity.
    identity_table: Vec<u32>,
    counters: PipelineCounters,
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
        let n_layers = spec.layers.len();
        Self::partitioned(vec![gpu], &[n_layers], file, spec, config)
    }

    /// As [`GpuModel::from_spec`], with the layers split over `gpus`: the first `split[0]`
    /// layers on `gpus[0]`, the next `split[1]` on `gpus[1]`, and so on (see
    /// [`crate::partition`] for choosing the split). Layers streamed from the file must all be
    /// on the last device.
    pub fn partitioned(
        gpus: Vec<Gpu>,
        split: &[usize],
        file: &GgufFile,
        spec: ModelSpec,
        config: RunConfig,
    ) -> Result<Self> {
        let RunConfig {
            context,
            max_batch,
            streamed_layers,
            ..
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
        crate::partition::check_split(split, gpus.len(), n_layers)?;
        if streamed_layers > n_layers {
            return Err(Error::InvalidParams(format!(
                "{streamed_layers} streamed layers, but the model has {n_layers}"
            )));
        }
        let on_last_device = split.last().copied().unwrap_or(0);
        if streamed_layers > on_last_device {
            return Err(Error::InvalidParams(format!(
                "{streamed_layers} layers stream from the file, more than the {on_last_device} \
                 on the last device: streamed layers must all be on the last device"
            )));
        }
        let source = StageSource {
            file,
            spec: &spec,
            tensors: &t,
            config: &config,
        };
        let mut first = 0;
        let stages = gpus
            .into_iter()
            .zip(split)
            .map(|(gpu, &n)| {
                let range = first..first + n;
                first += n;
                Stage::build(gpu, &source, range)
            })
            .collect::<Result<Vec<_>>>()?;
        drop(t);
        let context_blocks = blocks_for(context) as u32;
        let mut model = GpuModel {
            spec,
            context,
            max_batch,
            stages,
            identity_table: (0..context_blocks).collect(),
            counters: PipelineCounters::default(),
        };
        // Software drivers compile a pipeline at its first dispatch: run a batched and a
        // single-token step now so the first request does not pay for it (over several
        // devices the pass is cut into a chunk per device: two tokens each). The cache positions
        // written here are overwritten by the first real forward.
        let warm_up_tokens = vec![0; (2 * model.stages.len()).min(context)];
        model.forward(&warm_up_tokens, 0, false)?;
        let mut warm_up = Sampler::new(crate::sampler::SamplingParams::default())?;
        model.next_token(&[0], 0, &mut warm_up, &[])?;
        model.counters = PipelineCounters::default();
        for stage in &model.stages {
            stage.reset_busy();
        }
        Ok(model)
    }

    /// How each device's matrix kernels got their tiles, in device order.
    pub fn tuning(&self) -> Vec<&TuneReport> {
        self.stages.iter().map(|s| &s.tuning).collect()
    }

    /// The devices the model runs on, in order.
    pub fn gpus(&self) -> impl Iterator<Item = &Gpu> {
        self.stages.iter().map(|s| &s.gpu)
    }

    /// The first device the model runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.stages[0].gpu
    }

    /// How many devices the model runs on.
    pub fn device_count(&self) -> usize {
        self.stages.len()
    }

    /// Device bytes allocated now, over every device.
    pub fn allocated_bytes(&self) -> u64 {
        self.stages.iter().map(|s| s.gpu.allocated_bytes()).sum()
    }

    /// The most device bytes each device had allocated at once, summed over the devices (an
    /// upper bound of the total's peak).
    pub fn peak_allocated_bytes(&self) -> u64 {
        self.stages
            .iter()
            .map(|s| s.gpu.peak_allocated_bytes())
            .sum()
    }

    /// The adapters the model runs on, as `pio devices` names them, joined with `" + "`
    /// when there are several.
    pub fn adapters(&self) -> String {
        let names: Vec<String> = self
            .stages
            .iter()
            .map(|s| s.gpu.adapter_info().to_string())
            .collect();
        names.join(" + ")
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

    /// Kernel launches per decoded token, from the embedding lookup to the sampled token id.
    pub fn dispatches_per_token(&self) -> usize {
        self.stages
            .iter()
            .map(Stage::decode_dispatches)
            .sum::<usize>()
            + 1
    }

    /// Kernel launches each transformer layer takes per decoded token.
    pub fn dispatches_per_layer(&self) -> usize {
        // Everything but the embedding lookups, the heads and the sampler, over the layers.
        let first = &self.stages[0];
        let last = self.last_stage();
        let lookups = first.embedding.as_ref().map_or(0, |e| e.lookups.len());
        let heads = last.output.as_ref().map_or(0, |o| o.head.decode.len());
        let outside = lookups + heads + 1;
        (self.dispatches_per_token().saturating_sub(outside)) / self.spec.layers.len().max(1)
    }

    /// The stage with the head and the streamed layers.
    fn last_stage(&self) -> &Stage {
        self.stages.last().expect("a model has a stage")
    }

    /// What streaming layers from the file has done, when some layers stream.
    pub fn streaming(&self) -> Option<StreamStats> {
        self.last_stage().stream.as_ref().map(|s| s.stats())
    }

    /// Runs `at` in chunks (see [`GpuModel::chunk_size`]) through the stages; returns the
    /// logits of every token with `all_logits`, else of the last one.
    fn run_chunks(&self, at: Placement<'_>, all_logits: bool, kind: CacheKind) -> Result<Vec<f32>> {
        let size = self.chunk_size(at.tokens.len());
        let chunks: Vec<Placement<'_>> = (0..at.tokens.len().div_ceil(size))
            .map(|i| at.chunk(i * size, size))
            .collect();
        let mut out = Vec::new();
        let n_chunks = chunks.len();
        self.run_pipeline(
            &chunks,
            kind,
            Readout::Logits { all: all_logits },
            |c, output| {
                let ChunkOutput::Logits(logits) = output else {
                    unreachable!("a logits read-out gives logits");
                };
                self.check_logits(&logits, chunks[c])?;
                if all_logits || c + 1 == n_chunks {
                    out.extend_from_slice(&logits);
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Fails with [`Error::Numerics`] naming the first logit of `at` that is not finite.
    fn check_logits(&self, logits: &[f32], at: Placement<'_>) -> Result<()> {
        let vocab = self.spec.hparams.vocab_size;
        let Some(i) = logits.iter().position(|v| !v.is_finite()) else {
            return Ok(());
        };
        // Either every token's logits or the last token's.
        let token = match logits.len() / vocab == at.positions.len() {
            true => i / vocab,
            false => at.positions.len() - 1,
        };
        Err(Error::Numerics(format!(
            "GPU logit {} of position {} is {}",
            i % vocab,
            at.positions[token],
            logits[i]
        )))
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

    /// Times every dispatch of one step over `tokens` of the model's own sequence at positions
    /// `start_pos..` (at most [`GpuModel::max_batch`] tokens), device after device, ending
    /// with the sampling kernel as generation does ([`Gpu::profile`]). The step computes what
    /// it would in generation: it writes the tokens' keys and values into the cache.
    pub fn profile_step(&self, tokens: &[u32], start_pos: usize) -> Result<pio_gpu::Profile> {
        self.check_tokens(tokens, start_pos)?;
        if tokens.len() > self.max_batch {
            return Err(Error::InvalidParams(format!(
                "a profiled step of {} tokens: one step takes at most {}",
                tokens.len(),
                self.max_batch
            )));
        }
        let embd = self.spec.hparams.n_embd as u64;
        self.alone(tokens, start_pos, |at| {
            let mut profile: Option<pio_gpu::Profile> = None;
            let mut hidden: Option<Vec<f32>> = None;
            for stage in &self.stages {
                stage.with_step(tokens.len(), false, CacheKind::Main, |step| {
                    stage.write_inputs(at, hidden.as_deref())?;
                    for (i, part) in step.parts.iter().enumerate() {
                        stage.write_streamed_weights(part)?;
                        let sample = stage
                            .output
                            .as_ref()
                            .filter(|_| i + 1 == step.parts.len())
                            .map(|output| &output.sample);
                        let dispatches: Vec<&Dispatch> =
                            part.dispatches.iter().chain(sample).collect();
                        let timed = stage.gpu.profile(&dispatches)?;
                        match &mut profile {
                            Some(profile) => profile.extend(timed),
                            None => profile = Some(timed),
                        }
                    }
                    stage.step_done();
                    Ok(())
                })?;
                if stage.output.is_none() {
                    let n = tokens.len() as u64 * embd;
                    hidden = Some(stage.gpu.read_range(&stage.acts.x, 0, n)?);
                }
            }
            Ok(profile.expect("a model has a stage with a part"))
        })
    }

    /// Whether the block pool of batched sequences is allocated (at the first batched
    /// sequence).
    pub fn has_batch_cache(&self) -> bool {
        self.stages[0].batch_cache.is_some()
    }

    /// Allocates, once, the block pool that batched sequences share: `n_blocks` blocks of
    /// [`pio_gpu::KV_BLOCK_ROWS`] positions (see [`GpuModel::forward_batch`]), each device
    /// holding its layers of it.
    pub fn reserve_batch_cache(&mut self, n_blocks: usize) -> Result<()> {
        let blocks = u32::try_from(n_blocks)
            .map_err(|_| Error::InvalidParams(format!("{n_blocks} KV cache blocks")))?;
        for stage in &mut self.stages {
            stage.reserve_batch_cache(&self.spec, blocks)?;
        }
        Ok(())
    }

    /// Copies the first rows of a block of the batched sequences' pool to another block
    /// (copy-on-write of a shared prefix's last block), on every device.
    pub fn copy_batch_block(&self, copy: BlockCopy) -> Result<()> {
        for stage in &self.stages {
            let cache = stage.cache(CacheKind::Batch)?;
            cache.copy_blocks(&stage.gpu, &[(copy.from, copy.to, copy.rows)])?;
        }
        Ok(())
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
        let pool = self.stages[0].cache(CacheKind::Batch)?;
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
        let stage = self.last_stage();
        let output = stage.output.as_ref().expect("the last stage has the head");
        output.sampler.set(&stage.gpu, &settings, &penalized)?;
        let last = &tokens[last_start..];
        let mut raw = None;
        let at_end = start_pos + tokens.len() - 1;
        self.alone(last, start_pos + last_start, |at| {
            self.run_pipeline(&[at], CacheKind::Main, Readout::Token, |_, token| {
                let ChunkOutput::Token(token) = token else {
                    unreachable!("a token read-out gives a token");
                };
                raw = Some(token);
                Ok(())
            })
        })?;
        let raw = raw.expect("the pipeline ran its one chunk");
        output.sampler.token(raw).ok_or_else(|| {
            Error::Numerics(format!(
                "a GPU logit after position {at_end} is NaN or infinite"
            ))
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
