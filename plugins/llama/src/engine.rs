//! A loaded model ready to serve: the GPU model with its tokenizer and chat template, and the
//! entry points that take text or token ids to generated text.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pio_gguf::{GgufFile, TensorType};
use pio_gpu::{DeviceOptions, Gpu};
use pio_plugin_api::{StreamControl, TokenEvent};
use pio_text::{ChatMessage, ChatTemplate, TextTokenizer};

use crate::batch::{Batch, BatchMemory, BatchSettings, Opened, Stepped};
use crate::error::{Error, Result};
use crate::generate::{generate, GenerateConfig, Generation};
use crate::memory::{self, MemoryConfig, MemoryLimits};
use crate::models::{self, ModelSpec};
use crate::perplexity::{perplexity, perplexity_llama_cpp, Perplexity, Style};
use crate::runtime::{GpuModel, DEFAULT_MAX_BATCH};
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
    /// Storage type of most block weights, e.g. `Q4_1`.
    pub quantization: String,
    /// Bytes the weights take on the device once repacked.
    pub weight_bytes: u64,
}

impl ModelSummary {
    /// Reads and validates the hyperparameters and tensor table of `file`.
    pub fn read(file: &GgufFile) -> Result<Self> {
        let spec = models::describe(file)?;
        let tensors = ModelTensors::from_gguf(file, &spec)?;
        let mut weight_bytes =
            packed_bytes(&tensors.token_embd.info.dims, tensors.token_embd.info.dtype);
        if !tensors.tied_output {
            weight_bytes += packed_bytes(&tensors.output.info.dims, tensors.output.info.dtype);
        }
        for l in &tensors.layers {
            weight_bytes += l
                .matrices()
                .iter()
                .map(|t| packed_bytes(&t.info.dims, t.info.dtype))
                .sum::<u64>();
            weight_bytes += l.norms().map(|t| 4 * t.info.dims[0]).sum::<u64>();
        }
        weight_bytes += 4 * spec.hparams.n_embd as u64;
        Ok(ModelSummary {
            path: file.path().to_owned(),
            parameter_count: tensors.parameter_count(),
            quantization: tensors.dominant_type().to_string(),
            weight_bytes,
            spec,
        })
    }

    /// Device bytes needed to run with a `context`-position KV cache and batches of `max_batch`
    /// tokens: weights, KV cache, RoPE table and activations (small uniforms excluded).
    /// (The batched sequences' cache is not included: see [`ModelSummary::memory_needs`].)
    pub fn required_device_bytes(&self, context: usize, max_batch: usize) -> u64 {
        self.memory_needs(&MemoryConfig {
            context,
            max_batch,
            batch_rows: 0,
            copied_batch_rows: 0,
        })
        .device
    }
}

/// Device bytes of a matrix once `pio-gpu` repacks it into 32-bit words (see its `quant`
/// module): words per 32-element block are 32 (F32), 16 (F16), 5 (Q4_0), 6 (Q4_1), 9 (Q8_0).
fn packed_bytes(dims: &[u64], dtype: TensorType) -> u64 {
    let words_per_block = match dtype {
        TensorType::F32 => 32,
        TensorType::F16 => 16,
        TensorType::Q4_0 => 5,
        TensorType::Q4_1 => 6,
        _ => 9,
    };
    dims.iter().product::<u64>() / 32 * words_per_block * 4
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

/// A model on the GPU with its tokenizer and (optional) chat template.
pub struct Engine {
    model: GpuModel,
    tokenizer: Arc<TextTokenizer>,
    batch: Batch,
    template: Option<ChatTemplate>,
    summary: ModelSummary,
    host_bytes: u64,
}

impl Engine {
    /// Loads `path` onto the device chosen by `device`, with a KV cache of `context_length`
    /// positions (0: the model's trained context length). Batched sequences get `batch` (their
    /// slot context capped at the model's).
    ///
    /// Fails before allocating anything (see [`memory::check`]) when the context exceeds the
    /// model's trained context, or the configuration (batch slots included) needs a buffer
    /// larger than the device allows, more than `memory_budget` (bytes, 0 = unlimited), or more
    /// host memory than is available.
    pub fn load(
        path: &Path,
        device: &DeviceOptions,
        context_length: usize,
        memory_budget: u64,
        batch: BatchSettings,
    ) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let summary = ModelSummary::read(&file)?;
        let context = match context_length {
            0 => summary.spec.hparams.context_length,
            n => n,
        };
        let max_batch = DEFAULT_MAX_BATCH.min(context);
        let batch = BatchSettings {
            slot_context: batch.slot_context.min(context),
            ..batch
        };
        // Nothing sized by the context exists before this check: a device holds no buffers yet.
        let gpu = Gpu::new(device)?;
        let limits = MemoryLimits::of(&gpu, memory_budget);
        let config = MemoryConfig {
            context,
            max_batch,
            batch_rows: batch.slots.saturating_mul(batch.slot_context),
            copied_batch_rows: 0,
        };
        memory::check(
            &summary,
            &config,
            &limits,
            0,
            memory::host_available_bytes(),
        )?;
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
        let model = GpuModel::new(gpu, &file, context, max_batch)?;
        let host_bytes = host_bytes(&tokenizer, summary.spec.hparams.vocab_size, max_batch);
        let batch = Batch::new(
            batch,
            BatchMemory {
                summary: summary.clone(),
                limits,
            },
        );
        Ok(Engine {
            model,
            tokenizer: Arc::new(tokenizer),
            batch,
            template,
            summary,
            host_bytes,
        })
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

    /// Text to token ids; with `add_special`, BOS is prepended if the model asks for it.
    pub fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode(text, add_special)?)
    }

    /// Token ids to text (special tokens included as written).
    pub fn detokenize(&self, tokens: &[u32]) -> Result<String> {
        Ok(self.tokenizer.decode(tokens, false)?)
    }

    /// The token ids of a conversation rendered with the model's chat template, ending with the
    /// assistant header.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let template = self.template.as_ref().ok_or_else(|| {
            Error::InvalidModel("the model has no chat template (tokenizer.chat_template)".into())
        })?;
        let text = template.render(messages, true)?;
        self.tokenize(&text, true)
    }

    /// Perplexity of `text` with windows of `window` tokens in `style` (see [`perplexity`] and
    /// [`perplexity_llama_cpp`] for how windows are formed and scored); each window starts
    /// with BOS when the tokenizer adds one.
    pub fn perplexity(&mut self, text: &str, window: usize, style: Style) -> Result<Perplexity> {
        let tokens = self.tokenizer.encode(text, false)?;
        let with_special = self.tokenizer.encode(text, true)?;
        let bos = (with_special.len() > tokens.len())
            .then(|| self.tokenizer.bos_id())
            .flatten();
        match style {
            Style::Plain => perplexity(&mut self.model, &tokens, window, bos),
            Style::LlamaCpp => perplexity_llama_cpp(&mut self.model, &with_special, window, bos),
        }
    }

    /// `config` with the model's end-of-generation ids added.
    fn with_eog(&self, config: &GenerateConfig) -> GenerateConfig {
        let mut config = config.clone();
        config.eog_ids.extend_from_slice(self.tokenizer.eos_ids());
        config
    }

    /// Opens a batched sequence generating from `prompt` (see [`Batch::open`]).
    pub fn open_sequence(&mut self, prompt: &[u32], config: &GenerateConfig) -> Result<Opened> {
        let config = self.with_eog(config);
        self.batch
            .open(&mut self.model, &self.tokenizer, prompt, &config)
    }

    /// One token for each of the batched sequences `ids`, decoded together.
    pub fn step_sequences(&mut self, ids: &[u64]) -> Result<Vec<Stepped>> {
        self.batch.step(&mut self.model, ids)
    }

    /// Closes batched sequence `id`.
    pub fn close_sequence(&mut self, id: u64) -> Result<()> {
        self.batch.close(id)
    }

    /// The batch: its settings and open sequences.
    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    /// Generates from `prompt` token ids (see [`generate`]); the model's end-of-generation ids
    /// are added to `config.eog_ids`, and special tokens produce no text.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        config: &GenerateConfig,
        on_token: &mut dyn FnMut(&TokenEvent) -> StreamControl,
    ) -> Result<Generation> {
        let config = self.with_eog(config);
        let mut decoder = self.tokenizer.stream_decoder(true);
        generate(&mut self.model, &mut decoder, prompt, &config, on_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::Forward;
    use crate::test_model::{smollm2, tiny_llama_bytes, TinyConfig};
    use pio_plugin_api::FinishReason;

    fn greedy(max_new_tokens: usize) -> GenerateConfig {
        GenerateConfig {
            max_new_tokens,
            ..GenerateConfig::default()
        }
    }

    #[test]
    fn tiny_model_round_trips_text_and_generates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        std::fs::write(&path, tiny_llama_bytes(&TinyConfig::default())).unwrap();
        let mut engine = Engine::load(
            &path,
            &DeviceOptions::default(),
            64,
            0,
            BatchSettings::default(),
        )
        .unwrap();
        let ids = engine.tokenize("The capital of France", false).unwrap();
        assert!(
            ids.len() < "The capital of France".len(),
            "merges apply: {ids:?}"
        );
        assert_eq!(engine.detokenize(&ids).unwrap(), "The capital of France");
        let chat = engine
            .chat_prompt(&[ChatMessage::user("hello there")])
            .unwrap();
        assert_eq!(chat[0], 1, "starts with <|im_start|>");
        let mut streamed = String::new();
        let g = engine
            .generate(&chat, &greedy(10), &mut |e| {
                streamed.push_str(&e.text);
                StreamControl::Continue
            })
            .unwrap();
        assert_eq!(g.text, streamed);
        assert!(!g.tokens.is_empty());
        assert_eq!(engine.summary().spec.hparams.n_layer, 2);
        assert_eq!(engine.model_mut().context_length(), 64);
    }

    #[test]
    fn memory_budget_is_enforced_before_loading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        std::fs::write(&path, tiny_llama_bytes(&TinyConfig::default())).unwrap();
        let err = Engine::load(
            &path,
            &DeviceOptions::default(),
            64,
            1000,
            BatchSettings::default(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("budget"), "{err}");
    }

    #[test]
    #[ignore = "needs the SmolLM2 model: pio models fetch"]
    fn smollm2_answers_capital_of_france_greedily() {
        let path = smollm2();
        let mut engine = Engine::load(
            &path,
            &DeviceOptions::default(),
            512,
            0,
            BatchSettings::default(),
        )
        .unwrap();
        let prompt = engine
            .chat_prompt(&[ChatMessage::user("What is the capital of France?")])
            .unwrap();
        let text = engine.detokenize(&prompt).unwrap();
        assert!(
            text.contains("You are a helpful AI assistant named SmolLM"),
            "{text}"
        );
        let start = std::time::Instant::now();
        let g = engine
            .generate(&prompt, &greedy(32), &mut |_| StreamControl::Continue)
            .unwrap();
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "SmolLM2 greedy answer: {:?} ({} prompt tokens, {} new tokens, prefill {:.0} ms, \
             decode {:.1} tokens/s, total {secs:.1} s)",
            g.text,
            g.prompt_tokens,
            g.tokens.len(),
            g.timings.prompt_ms,
            (g.tokens.len() - 1) as f64 / (g.timings.generation_ms / 1e3)
        );
        // The first answer token is a near tie between "The" and "L": report the GPU margin.
        let logits = engine.model_mut().forward(&prompt, 0, false).unwrap();
        let mut ranked: Vec<(usize, f32)> = logits.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let name = |id: usize| engine.detokenize(&[id as u32]).unwrap();
        eprintln!(
            "first token: {:?} {:.4} vs {:?} {:.4} (margin {:.4})",
            name(ranked[0].0),
            ranked[0].1,
            name(ranked[1].0),
            ranked[1].1,
            ranked[0].1 - ranked[1].1
        );
        assert_eq!(g.text, "The capital of France is Paris.");
        assert_eq!(g.finish_reason, FinishReason::Stop);
    }
}
