//! A loaded model ready to serve: the GPU model with its tokenizer, chat template and batched
//! sequences' block pool, and its generation as the authoring kit's [`TextModel`]: sequences
//! opened alone (`generate`, `chat`) run in the model's own cache, batched ones in the pool
//! (see [`crate::sequence`]).

use std::path::{Path, PathBuf};

use pio_gguf::GgufFile;
use pio_gpu::{DeviceOptions, Gpu, KvType, TuneMode, TuneSettings};
use pio_plugin_kit::{
    Compression, Logprobs, Message, Next, PluginError, PluginResult, Sampled, SequenceParams,
    StepOptions, TextModel,
};
use pio_text::{ChatMessage, ChatTemplate, TextTokenizer};

use crate::batch::{Batch, DEFAULT_KV_BLOCKS};
use crate::error::{Error, Result};
use crate::forward::Forward;
use crate::kv_pool::BlockPool;
use crate::memory::{self, MemoryConfig, MemoryLimits, MemoryNeeds};
use crate::models::{self, ModelSpec};
use crate::partition;
use crate::perplexity::{perplexity, perplexity_llama_cpp, Perplexity, Style};
use crate::runtime::{GpuModel, RunConfig, DEFAULT_MAX_BATCH};
use crate::sampler::{Sampler, SamplingParams};
use crate::sequence::{Sequence, Tokens};
use crate::storage::{Storage, WeightStorage};
use crate::tokenizer::GgufTokenizer;
use crate::weights::ModelTensors;

/// What a model file is, read from its metadata and tensor table without touching the device.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    /// The GGUF file.
    pub path: PathBuf,
    /// What the model is: its family's description of it.
    pub spec: ModelSpec,
    /// Number of parameters.
    pub parameter_count: u64,
    /// Storage type of most block weights in the file, e.g. `Q4_1`.
    pub quantization: String,
    /// How the weights are stored on the device.
    pub weights: WeightStorage,
    /// Bytes the weights take on the device once repacked.
    pub weight_bytes: u64,
    /// Per layer, the device bytes of its four fused matrices (q/k/v, output, gate/up, down):
    /// what streaming it from the file saves and its ring slot needs.
    pub layer_matrix_bytes: Vec<[u64; 4]>,
    /// Of `weight_bytes`, the token embedding table's.
    pub embedding_bytes: u64,
    /// Of `weight_bytes`, the output projection's (0 when the head is tied to the embedding).
    pub head_bytes: u64,
}

impl ModelSummary {
    /// Reads and validates the hyperparameters and tensor table of `file`, its weights to be
    /// stored on the device as `weights` says.
    pub fn read(file: &GgufFile, weights: WeightStorage) -> Result<Self> {
        let spec = models::describe(file)?;
        let tensors = ModelTensors::from_gguf(file, &spec)?;
        let embedding_bytes = weights.group_device_bytes(&[&tensors.token_embd])?;
        let head_bytes = match tensors.tied_output {
            true => 0,
            false => weights.group_device_bytes(&[&tensors.output])?,
        };
        let mut weight_bytes = embedding_bytes + head_bytes;
        let mut layer_matrix_bytes = Vec::with_capacity(tensors.layers.len());
        for l in &tensors.layers {
            // The groups `runtime::upload` fuses, each stored in one type.
            let groups: [&[_]; 4] = [
                &[&l.attn_q, &l.attn_k, &l.attn_v],
                &[&l.attn_output],
                &[&l.ffn_gate, &l.ffn_up],
                &[&l.ffn_down],
            ];
            let mut matrices = [0; 4];
            for (bytes, group) in matrices.iter_mut().zip(groups) {
                *bytes = weights.group_device_bytes(group)?;
            }
            weight_bytes += matrices.iter().sum::<u64>();
            weight_bytes += l.norms().map(|t| 4 * t.info.dims[0]).sum::<u64>();
            layer_matrix_bytes.push(matrices);
        }
        weight_bytes += 4 * spec.hparams.n_embd as u64;
        Ok(ModelSummary {
            path: file.path().to_owned(),
            parameter_count: tensors.parameter_count(),
            quantization: tensors.dominant_type().to_string(),
            weights,
            weight_bytes,
            layer_matrix_bytes,
            embedding_bytes,
            head_bytes,
            spec,
        })
    }

    /// Device bytes needed to run with a `context`-position KV cache of `kv_type` and batches
    /// of `max_batch` tokens: weights, KV cache, RoPE table, activations, the sampler and the
    /// dispatches' parameters. (The batched sequences' cache is not included: see
    /// [`ModelSummary::memory_needs`].)
    pub fn required_device_bytes(&self, context: usize, max_batch: usize, kv_type: KvType) -> u64 {
        self.memory_needs(&MemoryConfig {
            context,
            max_batch,
            kv_blocks: 0,
            kv_type,
            streamed_layers: 0,
            devices: 1,
        })
        .device
    }
}

/// See [`Engine::host_bytes`].
fn host_bytes(tokenizer: &TextTokenizer, vocab_size: usize, max_batch: usize) -> u64 {
    let vocab: usize = (0..tokenizer.vocab_size() as u32)
        .map(|id| {
            let text = tokenizer.token_text(id).map_or(0, str::len);
            let piece = tokenizer.token_to_piece(id).map_or(0, <[u8]>::len);
            2 * text + piece
        })
        .sum();
    (vocab + max_batch * vocab_size * 4) as u64
}

/// The sizes [`Engine::load`] gives a model of `summary`: a KV cache of `context_length`
/// positions (0: the trained context), batches of up to [`DEFAULT_MAX_BATCH`] tokens, a pool of
/// `kv_blocks` blocks, both caches of `kv_type`, and as many layers streamed from the file as
/// the memory budget needs ([`ModelSummary::fit_budget`]).
fn memory_config(summary: &ModelSummary, options: &LoadOptions) -> Result<MemoryConfig> {
    let context = match options.context_length {
        0 => summary.spec.hparams.context_length,
        n => n,
    };
    let config = MemoryConfig {
        context,
        max_batch: DEFAULT_MAX_BATCH.min(context),
        kv_blocks: options.kv_blocks,
        kv_type: options.storage.kv,
        streamed_layers: 0,
        devices: options.devices.len().max(1),
    };
    match config.devices {
        // Split over devices, every layer is resident: the budget is checked as it is.
        2.. => Ok(config),
        _ => summary.fit_budget(config, options.memory_budget),
    }
}

/// Opens the devices `options` name ([`LoadOptions::devices`], else the one `device`), after
/// checking that there are no more of them than layers and that a given split names one layer
/// count per device adding up to the layers.
fn open_devices(summary: &ModelSummary, options: &LoadOptions) -> Result<Vec<Gpu>> {
    let n_layers = summary.spec.layers.len();
    let wanted = match options.devices.as_slice() {
        [] => std::slice::from_ref(&options.device),
        devices => devices,
    };
    if wanted.len() > n_layers {
        return Err(Error::InvalidParams(format!(
            "{} devices for {n_layers} layers: every device needs at least one layer",
            wanted.len()
        )));
    }
    if !options.split.is_empty() {
        partition::check_split(&options.split, wanted.len(), n_layers)?;
    }
    Ok(wanted
        .iter()
        .map(Gpu::new)
        .collect::<std::result::Result<_, _>>()?)
}

/// The layers of `summary` per device of `gpus`, as `options.split` says or as
/// [`partition::plan`] chooses from each device's memory (an adapter's memory shared evenly by
/// the logical devices opened on it; a device that reports none is not bounded).
fn split_layers(
    summary: &ModelSummary,
    config: &MemoryConfig,
    options: &LoadOptions,
    gpus: &[Gpu],
) -> Result<Vec<usize>> {
    if gpus.len() == 1 {
        return Ok(vec![summary.spec.layers.len()]);
    }
    // Which adapter each device is on, by its index in the adapter list: two identical GPUs
    // are two adapters, two logical devices on one are not.
    let adapters = pio_gpu::list_adapters();
    let indices = options
        .devices
        .iter()
        .map(|device| pio_gpu::chosen_adapter(&adapters, device))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let capacities: Vec<Option<u64>> = indices
        .iter()
        .zip(gpus)
        .map(|(index, gpu)| {
            let sharing = indices.iter().filter(|i| *i == index).count() as u64;
            gpu.adapter_info().memory_bytes.map(|bytes| bytes / sharing)
        })
        .collect();
    let costs = summary.partition_costs(config);
    let split = match options.split.is_empty() {
        true => partition::plan(&costs, &capacities)?,
        false => {
            partition::check_fits(&costs, &options.split, &capacities)?;
            options.split.clone()
        }
    };
    tracing::info!(?split, devices = gpus.len(), "layers split over devices");
    Ok(split)
}

/// How [`Engine::load`] loads a model: everything but the file.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The device to run on.
    pub device: DeviceOptions,
    /// Positions of the model's own KV cache (0: the model's trained context length).
    pub context_length: usize,
    /// Device memory budget in bytes (0: unlimited).
    pub memory_budget: u64,
    /// Blocks of the pool batched sequences share.
    pub kv_blocks: usize,
    /// How the weight matrices and both KV caches (the model's own and the pool) are stored
    /// on the device.
    pub storage: Storage,
    /// The devices to split the layers over, in order (an adapter index or name fragment
    /// each; the same adapter twice is two logical devices on it); empty: `device` alone.
    pub devices: Vec<DeviceOptions>,
    /// Layers per device of `devices`, in order; empty: planned ([`partition::plan`]).
    pub split: Vec<usize>,
    /// How the matrix kernels' tiles are chosen (default: [`TuneMode::Off`], the adapter
    /// class's tiles; the plugin's `tuning` setting defaults to `auto`).
    pub tuning: TuneSettings,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            devices: Vec::new(),
            split: Vec::new(),
            device: DeviceOptions::default(),
            context_length: 0,
            memory_budget: 0,
            kv_blocks: DEFAULT_KV_BLOCKS,
            storage: Storage::default(),
            tuning: TuneSettings {
                mode: TuneMode::Off,
                cache_dir: None,
            },
        }
    }
}

/// A model on the GPU with its tokenizer, (optional) chat template and batched sequences'
/// block pool: the active state of the plugin.
pub struct Engine {
    options: LoadOptions,
    model: GpuModel,
    tokenizer: GgufTokenizer,
    batch: Batch,
    template: Option<ChatTemplate>,
    summary: ModelSummary,
    host_bytes: u64,
    /// The compression this engine was made by, if any ([`crate::compress`]).
    compression: Option<Compression>,
}

impl Engine {
    /// Loads `path` as `options` say: on their device, with a KV cache of their
    /// `context_length`, their weight storage and a pool of `kv_blocks` blocks for batched
    /// sequences.
    ///
    /// Fails before allocating anything (see [`memory::check`]) when the context exceeds the
    /// model's trained context, or the configuration (the pool included) needs a buffer
    /// larger than the device allows, more than the memory budget, or more host memory than
    /// is available.
    pub fn load(path: &Path, options: LoadOptions) -> Result<Self> {
        let LoadOptions {
            memory_budget,
            kv_blocks,
            storage,
            ..
        } = options;
        let file = GgufFile::open(path)?;
        let summary = ModelSummary::read(&file, storage.weights)?;
        let config = memory_config(&summary, &options)?;
        let MemoryConfig {
            context,
            max_batch,
            streamed_layers,
            ..
        } = config;
        // Nothing sized by the context exists before this check: a device holds no buffers yet.
        let gpus = open_devices(&summary, &options)?;
        let limits = MemoryLimits::of(&gpus, memory_budget);
        memory::check(
            &summary,
            &config,
            &limits,
            0,
            memory::host_available_bytes(),
        )?;
        let split = split_layers(&summary, &config, &options, &gpus)?;
        let tokenizer = TextTokenizer::from_gguf(&file)?;
        if tokenizer.vocab_size() != summary.spec.hparams.vocab_size {
            return Err(Error::InvalidModel(format!(
                "tokenizer has {} tokens, the model {}",
                tokenizer.vocab_size(),
                summary.spec.hparams.vocab_size
            )));
        }
        let template = match file.get("tokenizer.chat_template") {
            Some(_) => Some(ChatTemplate::from_gguf(&file)?),
            None => None,
        };
        let run = RunConfig {
            storage,
            context,
            max_batch,
            streamed_layers,
            tuning: options.tuning.clone(),
        };
        if streamed_layers > 0 {
            tracing::info!(
                streamed_layers,
                budget = memory_budget,
                "the weights exceed the memory budget: streaming the last layers from the file"
            );
        }
        let model = GpuModel::partitioned(gpus, &split, &file, summary.spec.clone(), run)?;
        let host_bytes = host_bytes(&tokenizer, summary.spec.hparams.vocab_size, max_batch);
        let batch = Batch::new(kv_blocks);
        Ok(Engine {
            options,
            model,
            tokenizer: GgufTokenizer::new(tokenizer),
            batch,
            template,
            summary,
            host_bytes,
            compression: None,
        })
    }

    /// What [`Engine::load`] of `path` with `options` would allocate, read from the file's
    /// metadata and tensor table alone: no device, no upload.
    pub fn estimate(path: &Path, options: &LoadOptions) -> Result<MemoryNeeds> {
        let summary = ModelSummary::read(&GgufFile::open(path)?, options.storage.weights)?;
        let config = memory_config(&summary, options)?;
        Ok(summary.memory_needs(&config))
    }

    /// The same model loaded again with its tensors stored as `storage` says (its other
    /// options unchanged). The loaded engine is untouched, and keeps serving if this fails;
    /// both are in memory until the caller drops one.
    pub fn reloaded(&self, storage: Storage) -> Result<Engine> {
        let options = LoadOptions {
            storage,
            ..self.options.clone()
        };
        Engine::load(&self.summary.path, options)
    }

    /// How the model was loaded.
    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// The compression this engine was made by (`None`: loaded as configured).
    pub fn compression(&self) -> Option<&Compression> {
        self.compression.as_ref()
    }

    /// This engine, recorded as made by `compression`.
    pub(crate) fn compressed_by(self, compression: Compression) -> Engine {
        Engine {
            compression: Some(compression),
            ..self
        }
    }

    /// What is loaded.
    pub fn summary(&self) -> &ModelSummary {
        &self.summary
    }

    /// Estimated host memory held while loaded: the tokenizer's vocabulary (token texts and
    /// their decoded bytes, each counted twice for the tokenizer library's own copy) and the
    /// largest logits read-back.
    pub fn host_bytes(&self) -> u64 {
        self.host_bytes
    }

    /// The GPU model.
    pub fn model(&self) -> &GpuModel {
        &self.model
    }

    /// The GPU model (for perplexity and direct forward passes).
    pub fn model_mut(&mut self) -> &mut GpuModel {
        &mut self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// Perplexity of `text` with windows of `window` tokens in `style` (see [`perplexity`] and
    /// [`perplexity_llama_cpp`] for how windows are formed and scored); each window starts
    /// with BOS when the tokenizer adds one.
    pub fn perplexity(&mut self, text: &str, window: usize, style: Style) -> Result<Perplexity> {
        let (tokens, bos) = self.text_tokens(text)?;
        match style {
            Style::Plain => perplexity(&mut self.model, &tokens, window, bos),
            Style::LlamaCpp => {
                let with_special = self.tokenizer.text().encode(text, true)?;
                perplexity_llama_cpp(&mut self.model, &with_special, window, bos)
            }
        }
    }

    /// The tokens of `text` without special tokens, and the BOS id when the tokenizer adds
    /// one: how text is scored.
    pub fn text_tokens(&self, text: &str) -> Result<(Vec<u32>, Option<u32>)> {
        let tokenizer = self.tokenizer.text();
        let tokens = tokenizer.encode(text, false)?;
        let with_special = tokenizer.encode(text, true)?;
        let bos = (with_special.len() > tokens.len())
            .then(|| tokenizer.bos_id())
            .flatten();
        Ok((tokens, bos))
    }

    /// The batched sequences' block pool: its size and what is available.
    pub fn kv_pool(&self) -> &BlockPool {
        self.batch.pool()
    }

    /// The block pool, to drop its cache.
    pub fn kv_pool_mut(&mut self) -> &mut BlockPool {
        self.batch.pool_mut()
    }

    /// What this engine's configuration needs (see [`ModelSummary::memory_needs`]).
    pub fn memory_needs(&self) -> MemoryNeeds {
        self.summary.memory_needs(&MemoryConfig {
            context: self.model.context(),
            max_batch: self.model.max_batch(),
            kv_blocks: self.kv_pool().n_blocks(),
            kv_type: self.options.storage.kv,
            streamed_layers: self.model.streaming().map_or(0, |s| s.layers),
            devices: self.model.device_count(),
        })
    }

    /// Device bytes of one block of the batched sequences' pool, all layers' K and V.
    pub fn kv_block_bytes(&self) -> u64 {
        self.summary.kv_shape(self.options.storage.kv).block_bytes()
    }

    /// What the kit's driver makes of `token`: end-of-generation ids end the sequence
    /// without text.
    fn next(&self, token: u32) -> Next {
        match self.tokenizer.text().is_eog(token) {
            true => Next::EndOfGeneration(token),
            false => Next::Token(token),
        }
    }
}

/// Generation: the kit's driver over this model's sequences.
impl TextModel for Engine {
    type Sequence = Sequence;

    fn context_length(&self) -> u32 {
        // The context was checked to fit in 32 bits when the model was built.
        self.model.context() as u32
    }

    /// The conversation rendered with the model's chat template, ending with the assistant
    /// header, tokenized with the model's special tokens.
    fn chat_prompt(&self, messages: &[Message]) -> PluginResult<Vec<u32>> {
        let template = self.template.as_ref().ok_or_else(|| {
            Error::InvalidModel("the model has no chat template (tokenizer.chat_template)".into())
        })?;
        let messages: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage::new(m.role.as_str(), m.content.as_str()))
            .collect();
        let text = template.render(&messages, true).map_err(Error::from)?;
        Ok(self
            .tokenizer
            .text()
            .encode(&text, true)
            .map_err(Error::from)?)
    }

    /// A batched sequence in the block pool, sharing the longest prefix with `prompt` the pool
    /// holds (see [`Batch::open`]).
    fn open(&mut self, prompt: &[u32], params: &SequenceParams) -> PluginResult<Sequence> {
        let sampler = Sampler::new(SamplingParams::from(&params.sampling))?;
        let max_new_tokens = params.max_new_tokens as usize;
        let batched = self
            .batch
            .open(&mut self.model, prompt, max_new_tokens, sampler)?;
        Ok(Sequence::Batched(batched))
    }

    /// A sequence in the model's own cache, sampled on the device.
    fn open_alone(&mut self, prompt: &[u32], params: &SequenceParams) -> PluginResult<Sequence> {
        let sampler = Sampler::new(SamplingParams::from(&params.sampling))?;
        let tokens = Tokens::open_alone(&mut self.model, prompt, sampler)?;
        Ok(Sequence::Alone(tokens))
    }

    fn step(&mut self, sequence: &mut Sequence) -> PluginResult<Next> {
        match sequence {
            Sequence::Alone(tokens) => {
                let token = tokens.step_alone(&mut self.model)?;
                Ok(self.next(token))
            }
            Sequence::Batched(_) => self.step_batch(&mut [sequence]).map(|nexts| nexts[0]),
        }
    }

    fn step_batch(&mut self, batch: &mut [&mut Sequence]) -> PluginResult<Vec<Next>> {
        let plain = vec![StepOptions::default(); batch.len()];
        let sampled = self.step_with(batch, &plain)?;
        Ok(sampled.into_iter().map(|s| s.next).collect())
    }

    /// Batched sequences decoded in one forward pass over the block pool, each sampled on the
    /// host under its options (a grammar's mask, log-probabilities).
    fn step_with(
        &mut self,
        batch: &mut [&mut Sequence],
        options: &[StepOptions<'_>],
    ) -> PluginResult<Vec<Sampled>> {
        let mut batched = Vec::with_capacity(batch.len());
        for sequence in batch.iter_mut() {
            match &mut **sequence {
                Sequence::Batched(sequence) => batched.push(sequence),
                Sequence::Alone(_) => {
                    return Err(PluginError::internal(
                        "a sequence opened alone is stepped alone, never in a batch",
                    ))
                }
            }
        }
        let chosen = self.batch.step(&mut self.model, &mut batched, options)?;
        Ok(chosen
            .into_iter()
            .map(|(token, logprobs)| Sampled {
                next: self.next(token),
                logprobs,
            })
            .collect())
    }

    /// The prompt through the model's own cache, every position's logits kept.
    fn score(&mut self, prompt: &[u32], top: u32) -> PluginResult<Vec<Logprobs>> {
        let logits = self.model.forward(prompt, 0, true)?;
        let vocab = logits.len() / prompt.len();
        Ok(logits
            .chunks_exact(vocab)
            .zip(&prompt[1..])
            .map(|(row, &token)| Logprobs::from_logits(row, token, top))
            .collect())
    }

    fn close(&mut self, sequence: Sequence) {
        if let Sequence::Batched(batched) = sequence {
            self.batch.close(batched);
        }
    }

    fn reused_prompt_tokens(&self, sequence: &Sequence) -> u32 {
        match sequence {
            // At most the prompt's length, which fits the context.
            Sequence::Batched(batched) => batched.reused() as u32,
            Sequence::Alone(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use pio_plugin_kit::{Sampling, Tokenizer};

    use super::*;
    use crate::test_model::{tiny_engine, tiny_file, TinyConfig};

    /// `n` tokens of `sequence`, end-of-generation tokens included.
    fn steps(engine: &mut Engine, sequence: &mut Sequence, n: usize) -> Vec<Next> {
        (0..n).map(|_| engine.step(sequence).unwrap()).collect()
    }

    #[test]
    fn tiny_model_round_trips_text_and_renders_chat() {
        let dir = tempfile::tempdir().unwrap();
        let engine = tiny_engine(&dir);
        let tokenizer = engine.tokenizer();
        let ids = tokenizer.encode("The capital of France", false).unwrap();
        assert!(
            ids.len() < "The capital of France".len(),
            "merges apply: {ids:?}"
        );
        assert_eq!(tokenizer.decode(&ids).unwrap(), "The capital of France");
        let chat = engine
            .chat_prompt(&[Message {
                role: "user".into(),
                content: "hello there".into(),
            }])
            .unwrap();
        assert_eq!(chat[0], 1, "starts with <|im_start|>");
        assert_eq!(engine.summary().spec.hparams.n_layer, 2);
        assert_eq!(engine.context_length(), 64);
    }

    #[test]
    fn a_sequence_alone_and_a_batched_one_continue_alike() {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = tiny_engine(&dir);
        let prompt: Vec<u32> = (0..13).map(|i| (i * 29 + 3) % 290).collect();
        for sampling in [
            Sampling::greedy(),
            Sampling {
                temperature: 0.9,
                top_k: 40,
                seed: Some(11),
                ..Sampling::greedy()
            },
        ] {
            let params = SequenceParams {
                sampling,
                max_new_tokens: 12,
            };
            let mut alone = engine.open_alone(&prompt, &params).unwrap();
            assert!(matches!(alone, Sequence::Alone(_)));
            let want = steps(&mut engine, &mut alone, 12);
            engine.close(alone);
            let mut batched = engine.open(&prompt, &params).unwrap();
            assert!(matches!(batched, Sequence::Batched(_)));
            assert_eq!(steps(&mut engine, &mut batched, 12), want, "{params:?}");
            engine.close(batched);
        }
    }

    #[test]
    fn memory_budget_is_enforced_before_loading() {
        let dir = tempfile::tempdir().unwrap();
        let path = tiny_file(&dir, &TinyConfig::default());
        let options = LoadOptions {
            context_length: 64,
            memory_budget: 1000,
            ..LoadOptions::default()
        };
        let err = Engine::load(&path, options).err().unwrap().to_string();
        assert!(err.contains("budget"), "{err}");
    }

    /// A budget below what the model needs resident: the engine streams its last layers,
    /// its estimate says so, and what it allocates — batched sequences' pool included — stays
    /// within the budget while it generates, alone and batched.
    #[test]
    fn a_model_over_the_budget_streams_within_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = tiny_file(
            &dir,
            &TinyConfig {
                n_layer: 6,
                ..TinyConfig::default()
            },
        );
        let unlimited = LoadOptions {
            context_length: 64,
            ..LoadOptions::default()
        };
        let resident = Engine::estimate(&path, &unlimited).unwrap();
        let options = LoadOptions {
            memory_budget: resident.device - resident.weights / 3,
            ..unlimited.clone()
        };
        let estimate = Engine::estimate(&path, &options).unwrap();
        assert!(estimate.device <= options.memory_budget && estimate.ring > 0);
        let mut engine = Engine::load(&path, options.clone()).unwrap();
        let streamed = engine.model().streaming().unwrap().layers;
        assert!((3..=6).contains(&streamed), "{streamed}");
        let prompt: Vec<u32> = (0..13).map(|i| (i * 29 + 3) % 290).collect();
        let params = SequenceParams {
            sampling: Sampling::greedy(),
            max_new_tokens: 6,
        };
        for batched in [false, true] {
            let mut sequence = match batched {
                false => engine.open_alone(&prompt, &params).unwrap(),
                true => engine.open(&prompt, &params).unwrap(),
            };
            assert_eq!(steps(&mut engine, &mut sequence, 6).len(), 6);
            engine.close(sequence);
        }
        assert_eq!(engine.memory_needs(), estimate);
        let peak = engine.model().gpu().peak_allocated_bytes();
        assert!(
            peak <= options.memory_budget,
            "peak {peak} over the budget {}",
            options.memory_budget
        );

        // Too small for any plan: the error names the smallest plan's sizes.
        let base = memory_config(engine.summary(), &unlimited).unwrap();
        let every = (0..=6)
            .map(|streamed_layers| {
                engine.summary().memory_needs(&MemoryConfig {
                    streamed_layers,
                    ..base
                })
            })
            .min_by_key(|needs| needs.device)
            .unwrap();
        let options = LoadOptions {
            memory_budget: every.device - 1,
            ..unlimited
        };
        let err = Engine::load(&path, options).err().unwrap();
        let text = err.to_string();
        assert!(
            matches!(err, Error::BudgetTooSmallToStream { needed, ring, .. }
                if needed == every.device && ring == every.ring),
            "{text}"
        );
        assert!(text.contains(&every.device.to_string()), "{text}");
    }
}
