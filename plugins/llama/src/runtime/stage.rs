//! One device's share of a model: a contiguous range of its layers with their weights, KV
//! caches and activations, and the embedding lookup (the first stage) or the final norm, head
//! and sampler (the last stage). A model on one device is one stage that has both; a model
//! partitioned over several devices is a pipeline of stages (`pipeline.rs`) whose hidden
//! states cross from one device to the next through the host.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pio_gguf::GgufFile;
use pio_gpu::{
    DeviceSampler, Dispatch, Embed, EmbedTable, Epilogue, Gpu, GpuBuffer, KvCache, KvShape, Linear,
    RopeTable, RowLayout, TuneReport, TunedKernel, Tuner,
};

use super::graph::{Activations, CacheKind, Head, KernelFactory, Layer, Step, StepPart};
use super::stream::LayerStream;
use super::upload::{self, LayerShapes, LayerWeights, Matrices};
use super::vocab::VocabMatrix;
use super::{Placement, RunConfig, KEPT_STEPS};
use crate::error::{Error, Result};
use crate::kv_pool::blocks_for;
use crate::models::ModelSpec;
use crate::weights::ModelTensors;

/// The embedding lookup of the first stage: the table, and one lookup kernel per shard.
pub(super) struct Embedding {
    pub table: VocabMatrix,
    pub lookups: Vec<Embed>,
}

/// The end of the last stage: the final norm, the head (its own projection, or the tied
/// embedding table — a copy of it when the embedding is on another device) and the device
/// sampler bound to the logits.
pub(super) struct Output {
    pub norm: GpuBuffer,
    pub head: Head,
    pub sampler: DeviceSampler,
    /// The sampling kernel bound to the logits (of the last token of every step).
    pub sample: Dispatch,
}

impl Embedding {
    /// The lookup kernels over `table`, one per shard.
    fn new(gpu: &Gpu, spec: &ModelSpec, table: VocabMatrix) -> Result<Self> {
        let lookups = table
            .shards
            .iter()
            .map(|shard| {
                let table = EmbedTable {
                    dtype: shard.matrix.dtype(),
                    rows: shard.matrix.rows(),
                    cols: spec.hparams.n_embd as u32,
                    first_row: shard.first_row,
                    scale: spec.embedding.scale,
                };
                Ok(Embed::new(gpu, table)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Embedding { table, lookups })
    }
}

impl Output {
    /// The head over `table` — or, tied, over `embedding`'s table — for one token (its tile
    /// tuned per shard shape) and for `prefill_tokens` (the adapter class's prefill tile: the
    /// head runs over several tokens only when every position's logits are asked for, and
    /// timing it there would cost more than the rest of the search), after the final `norm`,
    /// and the sampler bound to `acts`' logits.
    fn new(
        factory: &KernelFactory<'_>,
        table: Option<VocabMatrix>,
        embedding: Option<&Embedding>,
        norm: GpuBuffer,
        acts: &Activations,
        prefill_tokens: u32,
    ) -> Result<Self> {
        let gpu = factory.gpu;
        let vocab = factory.spec.hparams.vocab_size as u32;
        let weights = match (&table, embedding) {
            (Some(table), _) => table,
            (None, Some(embedding)) => &embedding.table,
            (None, None) => {
                return Err(Error::InvalidParams(
                    "a tied head needs the embedding table on its device".into(),
                ))
            }
        };
        let head_kernels = |tokens: u32| {
            weights
                .shards
                .iter()
                .map(|shard| {
                    let columns = RowLayout {
                        stride: vocab,
                        offset: shard.first_row,
                    };
                    let tile = match tokens {
                        1 => factory.tile(TunedKernel::Linear, &shard.matrix, true, 1),
                        _ => factory.tuner.default_tile(tokens),
                    };
                    let shape = factory.shape(&shard.matrix, true, tile);
                    Ok(Linear::with_output(gpu, shape, Epilogue::Store, columns)?)
                })
                .collect::<Result<Vec<_>>>()
        };
        let head = Head {
            decode: head_kernels(1)?,
            prefill: head_kernels(prefill_tokens)?,
            output: table,
        };
        let sampler = DeviceSampler::new(gpu, vocab)?;
        let sample = sampler.bind(gpu, &acts.logits)?;
        Ok(Output {
            norm,
            head,
            sampler,
            sample,
        })
    }
}

/// One device's layers and everything they run with.
pub(super) struct Stage {
    /// The model's layers this stage runs, by their index in the model.
    pub layer_range: Range<usize>,
    /// Layer `layer_range.start + i` is `layers[i]`.
    pub layers: Vec<Layer>,
    pub embedding: Option<Embedding>,
    pub output: Option<Output>,
    /// One table per distinct RoPE of the model's layers ([`ModelSpec::ropes`]).
    pub rope_tables: Vec<RopeTable>,
    /// The stage's layers of the model's own cache, for one sequence: its block table is the
    /// identity.
    pub cache: KvCache,
    /// The stage's layers of the block pool batched sequences share, once reserved.
    pub batch_cache: Option<KvCache>,
    pub acts: Activations,
    /// The single-token step of the main cache, built once.
    pub decode_step: Option<Step>,
    /// The other steps built so far, the most recently used last (at most [`KEPT_STEPS`]).
    pub steps: Mutex<Vec<(StepKey, Arc<Step>)>>,
    /// The layers streamed from the file, if any (only ever the model's last layers).
    pub stream: Option<LayerStream>,
    /// Time this device spent on submitted work, in nanoseconds (see `pipeline.rs`).
    pub busy_nanos: AtomicU64,
    /// How the matrix kernels' tiles were chosen on this device.
    pub tuning: TuneReport,
    // Declared last so every buffer above is dropped before the device.
    pub gpu: Gpu,
}

/// What a step is built for: its tokens, whether it computes every token's logits, its cache.
pub(super) type StepKey = (u32, bool, CacheKind);

/// What a stage is built from: the model file, its spec and tensors, and how it is run.
pub(super) struct StageSource<'a> {
    pub file: &'a GgufFile,
    pub spec: &'a ModelSpec,
    pub tensors: &'a ModelTensors<'a>,
    pub config: &'a RunConfig,
}

impl Stage {
    /// Uploads the layers `layer_range` of `source` to `gpu` with their KV caches and
    /// activations; the first stage (`layer_range` starts at 0) also gets the embedding
    /// lookup, the last (it ends at the last layer) the head and sampler, and the model's last
    /// `config.streamed_layers` layers, which stream from the file.
    pub fn build(gpu: Gpu, source: &StageSource<'_>, layer_range: Range<usize>) -> Result<Self> {
        let StageSource {
            file,
            spec,
            tensors: t,
            config,
        } = *source;
        let n_layers = t.layers.len();
        let (first, last) = (layer_range.start == 0, layer_range.end == n_layers);
        // `GpuModel::from_spec` checked that the streamed layers are all in the last stage.
        let streamed = match last {
            true => n_layers - config.streamed_layers..n_layers,
            false => n_layers..n_layers,
        };
        let shapes = t.layers[streamed.clone()]
            .iter()
            .map(|l| LayerShapes::of(spec, l, config.storage.weights))
            .collect::<Result<Vec<_>>>()?;
        let stream = match streamed.is_empty() {
            true => None,
            false => Some(LayerStream::start(
                &gpu,
                file.path(),
                spec,
                config.storage.weights,
                streamed.clone(),
                &shapes,
            )?),
        };
        let hp = &spec.hparams;
        let u = |v: usize| v as u32;
        let ctx = u(config.context);
        // The prefill tiles are tuned for full chunks (of at most 64 tokens: longer launches
        // only make the search slower, the per-invocation work is the same).
        let prefill_tokens = u(config.max_batch.min(64));
        let tuner = Tuner::new(&gpu, &config.tuning);

        let ropes = spec.ropes();
        let factory = KernelFactory {
            gpu: &gpu,
            spec,
            kv_type: config.storage.kv,
            tuner: &tuner,
        };
        let layers = layer_range
            .clone()
            .map(|i| {
                let (l, layer) = (&t.layers[i], &spec.layers[i]);
                let matrices = match &stream {
                    Some(stream) if stream.streams(i) => {
                        Matrices::Streamed(stream.slot(i), shapes[i - streamed.start])
                    }
                    _ => Matrices::Upload(config.storage.weights),
                };
                let weights = LayerWeights::new(&gpu, spec, i, l, matrices)?;
                Ok(Layer {
                    decode: factory.layer(i, &weights, 1)?,
                    prefill: factory.layer(i, &weights, prefill_tokens)?,
                    attention: factory.attention(i)?,
                    qk_norm: factory.qk_norm(i, &weights)?,
                    post_norm: factory.post_norm(&weights)?,
                    rope: ropes
                        .iter()
                        .position(|r| *r == layer.attention.rope)
                        .expect("ropes() lists every layer's RoPE"),
                    weights,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let vocab_matrix = |tensor| {
            VocabMatrix::upload(
                &gpu,
                config.storage.weights,
                tensor,
                hp.vocab_size,
                hp.n_embd,
            )
        };
        let embedding = match first {
            true => Some(Embedding::new(&gpu, spec, vocab_matrix(&t.token_embd)?)?),
            false => None,
        };
        // Only the last stage computes logits.
        let acts = Activations::new(&gpu, spec, config, last)?;
        let output = match last {
            false => None,
            true => {
                // A tied head reads the embedding table: this stage's own when it has the
                // embedding, else a copy of it.
                let table = match (t.tied_output, &embedding) {
                    (true, Some(_)) => None,
                    (true, None) => Some(vocab_matrix(&t.token_embd)?),
                    (false, _) => Some(vocab_matrix(&t.output)?),
                };
                let norm = upload::norm(&gpu, &t.output_norm, spec.norm.weight)?;
                Some(Output::new(
                    &factory,
                    table,
                    embedding.as_ref(),
                    norm,
                    &acts,
                    prefill_tokens,
                )?)
            }
        };

        let rope_tables = ropes
            .iter()
            .map(|r| {
                Ok(RopeTable::new(
                    &gpu,
                    u(hp.head_dim),
                    f64::from(r.base),
                    ctx,
                )?)
            })
            .collect::<Result<Vec<_>>>()?;
        tuner.save();
        let tuning = tuner.report();
        tracing::info!(
            adapter = %gpu.adapter_info(), layers = ?layer_range, mode = tuning.mode,
            searches = tuning.searches, search_seconds = tuning.search_seconds,
            "kernel tiles chosen"
        );
        let cache = KvCache::new(
            &gpu,
            kv_shape(spec, layer_range.clone(), config.storage.kv),
            u(blocks_for(config.context)),
        )?;
        let mut stage = Stage {
            layer_range,
            layers,
            embedding,
            output,
            rope_tables,
            cache,
            batch_cache: None,
            acts,
            decode_step: None,
            steps: Mutex::new(Vec::with_capacity(KEPT_STEPS)),
            stream,
            busy_nanos: AtomicU64::new(0),
            tuning,
            gpu,
        };
        stage.decode_step = Some(stage.build_step(1, false, CacheKind::Main)?);
        Ok(stage)
    }

    /// The cache a step of `kind` uses.
    pub fn cache(&self, kind: CacheKind) -> Result<&KvCache> {
        match kind {
            CacheKind::Main => Ok(&self.cache),
            CacheKind::Batch => self.batch_cache.as_ref().ok_or_else(|| {
                Error::InvalidParams("no cache for batched sequences was reserved".into())
            }),
        }
    }

    /// Allocates, once, this stage's layers of the block pool batched sequences share.
    pub fn reserve_batch_cache(&mut self, spec: &ModelSpec, blocks: u32) -> Result<()> {
        if self.batch_cache.is_none() {
            let shape = kv_shape(spec, self.layer_range.clone(), self.cache.kv_type());
            self.batch_cache = Some(KvCache::new(&self.gpu, shape, blocks)?);
        }
        Ok(())
    }

    /// Time this device spent on submitted work.
    pub fn busy(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.busy_nanos.load(Ordering::Relaxed))
    }

    /// Sets [`Stage::busy`] back to zero.
    pub fn reset_busy(&self) {
        self.busy_nanos.store(0, Ordering::Relaxed);
    }

    /// Adds `time` to [`Stage::busy`].
    pub fn add_busy(&self, time: std::time::Duration) {
        let nanos = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
        self.busy_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Runs `f` on the step for `n` tokens against the cache of `kind`: the prebuilt decode
    /// step for one token of the main cache, else a kept one or one built for the call (and
    /// kept, in place of the least recently used when [`KEPT_STEPS`] are kept).
    pub fn with_step<T>(
        &self,
        n: usize,
        all_logits: bool,
        kind: CacheKind,
        f: impl FnOnce(&Step) -> Result<T>,
    ) -> Result<T> {
        match (&self.decode_step, n, kind) {
            (Some(step), 1, CacheKind::Main) => f(step),
            _ => f(&*self.kept_step((n as u32, all_logits, kind))?),
        }
    }

    /// The step for `key`, kept or built (see [`Stage::with_step`]).
    fn kept_step(&self, key: StepKey) -> Result<Arc<Step>> {
        let mut steps = self.steps.lock().expect("step cache lock");
        let step = match steps.iter().position(|(k, _)| *k == key) {
            Some(i) => steps.remove(i).1,
            None => {
                let (n, all_logits, kind) = key;
                Arc::new(self.build_step(n, all_logits, kind)?)
            }
        };
        if steps.len() == KEPT_STEPS {
            steps.remove(0);
        }
        steps.push((key, Arc::clone(&step)));
        Ok(step)
    }

    /// Queues the inputs of `step` — the token ids (first stage) or the previous stage's
    /// `hidden` states, and the positions, cache rows and block tables of `at` — and submits
    /// every part of the step but the last (a streamed layer's part once its weights are
    /// written); returns the last part, followed by the sampling kernel when `sample` is set
    /// (last stage), recorded into a new encoder for the caller to submit.
    pub fn encode_step(
        &self,
        step: &Step,
        at: Placement<'_>,
        hidden: Option<&[f32]>,
        sample: bool,
    ) -> Result<pio_gpu::wgpu::CommandEncoder> {
        debug_assert_eq!(at.tokens.len(), step.n_tokens as usize);
        self.write_inputs(at, hidden)?;
        let gpu = &self.gpu;
        let (last, before) = step.parts.split_last().expect("a step has a part");
        for part in before {
            self.write_streamed_weights(part)?;
            let index = gpu.submit(gpu.encode(&part.dispatches));
            if let (Some(stream), Some(_)) = (&self.stream, part.streamed_layer) {
                stream.submitted(index);
            }
        }
        self.write_streamed_weights(last)?;
        let sampler = self
            .output
            .as_ref()
            .filter(|_| sample)
            .map(|output| &output.sample);
        Ok(gpu.encode(last.dispatches.iter().chain(sampler)))
    }

    /// Queues the inputs of a step over `at`: the token ids (first stage) or the previous
    /// stage's `hidden` states, and the tokens' positions, cache rows and block tables.
    pub fn write_inputs(&self, at: Placement<'_>, hidden: Option<&[f32]>) -> Result<()> {
        let (gpu, a) = (&self.gpu, &self.acts);
        match (&self.embedding, hidden) {
            (Some(_), _) => gpu.write(&a.tokens, 0, at.tokens)?,
            (None, Some(hidden)) => gpu.write(&a.x, 0, hidden)?,
            (None, None) => {
                return Err(Error::InvalidParams(
                    "a stage after the first needs the previous stage's hidden states".into(),
                ))
            }
        }
        gpu.write(&a.positions, 0, at.positions)?;
        gpu.write(&a.cache_rows, 0, at.cache.rows)?;
        let (blocks, starts) = at.tables();
        gpu.write(&a.table_starts, 0, &starts)?;
        gpu.write(&a.blocks, 0, &blocks)?;
        Ok(())
    }

    /// Writes the weights of the streamed layer of `part`, if it has one, into its ring slot.
    pub fn write_streamed_weights(&self, part: &StepPart) -> Result<()> {
        match (&self.stream, part.streamed_layer) {
            (Some(stream), Some(layer)) => stream.write(&self.gpu, layer),
            _ => Ok(()),
        }
    }

    /// Marks the step's submissions finished (after a read-back, which waits for them).
    pub fn step_done(&self) {
        if let Some(stream) = &self.stream {
            stream.all_done();
        }
    }

    /// Kernel launches of this stage's single-token step.
    pub fn decode_dispatches(&self) -> usize {
        self.decode_step.as_ref().map_or(0, Step::dispatch_count)
    }
}

/// The KV cache shape of the layers `layers` of `spec`.
fn kv_shape(spec: &ModelSpec, layers: Range<usize>, kv_type: pio_gpu::KvType) -> KvShape {
    let mut shape = spec.hparams.kv_shape(kv_type);
    shape.kv_heads = shape.kv_heads[layers].to_vec();
    shape
}
