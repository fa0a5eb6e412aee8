//! The traits an author implements — [`Model`] for every plugin, [`TextModel`] for one that
//! generates text — and the plain Rust types they exchange with the kit.

use std::path::{Path, PathBuf};

use pio_plugin_api::{
    ActivateOptions, ChatMessage, CompressionScope, GenerationParams, PluginError, PluginMetadata,
    PluginResult,
};

use crate::{Compression, Config, Freed, Logprobs, MemoryUse, TokenSet, Tokenizer};

/// An active model: the state `activate` builds from the configuration, dropped by
/// `deactivate`. The kit holds the lifecycle (created → initialized → active, and back), so
/// model code never checks whether it is configured or active: a `&self` of this type *is*
/// an active model.
///
/// A model that only embeds implements this trait (overriding [`embed`](Model::embed)) and is
/// exported with [`export_embedding_model!`](crate::export_embedding_model); one that generates
/// text implements [`TextModel`] too.
pub trait Model: Sized + Send + 'static {
    /// The configuration, parsed and validated by the kit in `initialize`.
    type Config: Config;

    /// The model's tokenizer: `tokenize` / `detokenize`, prompts, streamed text.
    type Tokenizer: Tokenizer;

    /// What the plugin is; build it with [`metadata!`](crate::metadata). Must be cheap: no
    /// model loading, no device work.
    fn metadata() -> PluginMetadata;

    /// Acquires the device and loads the model.
    fn activate(config: &Self::Config, activation: &Activation) -> PluginResult<Self>;

    /// The tokenizer.
    fn tokenizer(&self) -> &Self::Tokenizer;

    /// Memory use and model-specific details for the host's stats. The kit adds its own
    /// counters (requests, tokens, activation time) and details.
    fn stats(&self) -> ModelStats {
        ModelStats::default()
    }

    /// A free-form JSON request (`pio infer`): benchmarks, perplexity, anything without a
    /// typed call.
    fn infer(&mut self, request: serde_json::Value) -> PluginResult<serde_json::Value> {
        let _ = request;
        Err(unsupported("infer"))
    }

    /// Embeds `texts`, one vector each, in order (capability `embeddings`).
    fn embed(&mut self, texts: &[&str]) -> PluginResult<Embeddings> {
        let _ = texts;
        Err(unsupported("embed"))
    }

    /// The memory the model holds now, by category. The default reports nothing (an empty
    /// report, not an error): the host then counts the model for its estimate alone.
    fn memory_report(&self) -> MemoryUse {
        MemoryUse::default()
    }

    /// What [`activate`](Model::activate) with `config` and `activation` would allocate, by
    /// category, computed without allocating (the host checks its memory budget with it
    /// before activating). The default estimates nothing.
    fn estimate_memory(config: &Self::Config, activation: &Activation) -> PluginResult<MemoryUse> {
        let _ = (config, activation);
        Ok(MemoryUse::default())
    }

    /// Drops what can be rebuilt (caches of closed sequences, scratch) and reports what was
    /// freed. The default frees nothing.
    fn force_memory_cleanup(&mut self) -> Freed {
        Freed::default()
    }

    /// The formats [`compress`](Model::compress) accepts for `scope`; the kit refuses any
    /// other with this list. The default: none.
    fn compression_formats(&self, scope: CompressionScope) -> &'static [&'static str] {
        let _ = scope;
        &[]
    }

    /// Stores the tensors of `scope` in `format` (one of
    /// [`compression_formats`](Model::compression_formats)) and reports the change.
    fn compress(&mut self, format: &str, scope: CompressionScope) -> PluginResult<Compression> {
        let _ = (format, scope);
        Err(unsupported("compression"))
    }

    /// How the tensors are compressed now; `None` (the default) when they are as loaded.
    fn compression_stats(&self) -> Option<Compression> {
        None
    }
}

/// A model that continues token sequences. The kit's generation driver turns it into
/// `generate`, `chat` and batched sequences (`open_sequence` / `step_sequences` /
/// `close_sequence`): stop strings (held back across token boundaries), `max_new_tokens`, the
/// context limit, cancellation, timings and usage counts are the kit's, so all three paths emit
/// the same tokens and text for the same request.
///
/// A sequence's life: [`open`](TextModel::open) with the prompt's ids, then
/// [`step`](TextModel::step) (or [`step_batch`](TextModel::step_batch) for several at once)
/// until the kit ends it, then [`close`](TextModel::close). Each step returns the token that
/// follows everything the sequence has seen so far, the tokens of earlier steps included.
pub trait TextModel: Model {
    /// One sequence's state: its KV-cache slot, position, sampler, ...
    type Sequence: Send + 'static;

    /// Positions a sequence may hold: its prompt and every generated token but the last, which
    /// is returned and never fed back. The kit refuses a prompt longer than this (a prompt that
    /// fills it still gets one token) and stops a generation (finish reason `length`) when it
    /// is full.
    fn context_length(&self) -> u32;

    /// The prompt ids of a conversation, with the model's chat template (capability `chat`).
    fn chat_prompt(&self, messages: &[Message]) -> PluginResult<Vec<u32>> {
        let _ = messages;
        Err(unsupported("chat"))
    }

    /// Starts a sequence: processes `prompt` (never empty, checked against the vocabulary and
    /// the context) and prepares to continue it as `params` say. Batched sequences are opened
    /// here; several may be open at once and are stepped together.
    fn open(&mut self, prompt: &[u32], params: &SequenceParams) -> PluginResult<Self::Sequence>;

    /// Starts a sequence that runs alone: `generate` and `chat` open it, step it with
    /// [`step`](TextModel::step) until it ends and close it within one call, so no other
    /// sequence is stepped while it is open. A model may keep such a sequence where only one
    /// fits (a cache of its own, sampling on the device); it must produce the tokens a
    /// sequence from [`open`](TextModel::open) would. The default is `open`.
    fn open_alone(
        &mut self,
        prompt: &[u32],
        params: &SequenceParams,
    ) -> PluginResult<Self::Sequence> {
        self.open(prompt, params)
    }

    /// The next token of `sequence`.
    fn step(&mut self, sequence: &mut Self::Sequence) -> PluginResult<Next>;

    /// The next token of each of `batch`, in order. The default steps them one by one; a model
    /// that decodes several sequences in one forward pass overrides it, and must return what
    /// [`step`](TextModel::step) would for each.
    fn step_batch(&mut self, batch: &mut [&mut Self::Sequence]) -> PluginResult<Vec<Next>> {
        batch
            .iter_mut()
            .map(|sequence| self.step(sequence))
            .collect()
    }

    /// Ends a sequence, finished or abandoned, freeing what it holds. (Sequences still open
    /// at `deactivate` are dropped with the model.)
    fn close(&mut self, sequence: Self::Sequence) {
        drop(sequence);
    }

    /// How many of the prompt's tokens `open` did not recompute (a prefix cache hit).
    fn reused_prompt_tokens(&self, sequence: &Self::Sequence) -> u32 {
        let _ = sequence;
        0
    }

    /// Steps `batch` as [`step_batch`](TextModel::step_batch) does, each sequence under its
    /// [`StepOptions`]: only tokens of `allowed` may be chosen (constrained decoding; the
    /// model masks its logits, then samples as usual), and `logprobs` asks for the chosen
    /// token's log-probability and the most likely tokens' (under the model's unmasked
    /// distribution: [`Logprobs::from_logits`]).
    ///
    /// The default serves options that ask nothing through `step_batch` and refuses the others
    /// as unsupported; a model that offers log-probabilities or constrained decoding overrides
    /// it (and lets `step_batch` call it with plain options, so the two cannot disagree).
    fn step_with(
        &mut self,
        batch: &mut [&mut Self::Sequence],
        options: &[StepOptions<'_>],
    ) -> PluginResult<Vec<Sampled>> {
        if let Some(asked) = options.iter().find_map(StepOptions::feature) {
            return Err(unsupported(asked));
        }
        let nexts = self.step_batch(batch)?;
        Ok(nexts.into_iter().map(Sampled::from).collect())
    }

    /// The log-probabilities of `prompt`'s tokens after the first, each given the tokens before
    /// it, with the `top` most likely tokens at each position: one [`Logprobs`] per token from
    /// the second on (what `echo` with `logprobs` reports).
    fn score(&mut self, prompt: &[u32], top: u32) -> PluginResult<Vec<Logprobs>> {
        let _ = (prompt, top);
        Err(unsupported("prompt log-probabilities"))
    }
}

/// What the kit asks of one sequence's step beyond its next token (see
/// [`TextModel::step_with`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepOptions<'a> {
    /// Only these tokens may be chosen; `None`: any.
    pub allowed: Option<&'a TokenSet>,
    /// Report the chosen token's log-probability and those of this many most likely tokens;
    /// `None`: no log-probabilities.
    pub logprobs: Option<u32>,
}

impl StepOptions<'_> {
    /// The feature these options need beyond a plain step, if any.
    fn feature(&self) -> Option<&'static str> {
        if self.allowed.is_some() {
            Some("constrained decoding")
        } else if self.logprobs.is_some() {
            Some("log-probabilities")
        } else {
            None
        }
    }
}

/// What a model chose at one step under [`StepOptions`].
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The token and whether it ends the sequence.
    pub next: Next,
    /// Its log-probabilities, when the options asked for them.
    pub logprobs: Option<Logprobs>,
}

impl From<Next> for Sampled {
    fn from(next: Next) -> Self {
        Self {
            next,
            logprobs: None,
        }
    }
}

/// What a model produced at one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A token; the sequence may go on.
    Token(u32),
    /// A token after which the model has nothing more to say: its text is emitted, then the
    /// generation ends with finish reason `stop`.
    Final(u32),
    /// An end-of-generation token (end of sequence, end of turn): recorded but not shown, and
    /// the generation ends with finish reason `stop`.
    EndOfGeneration(u32),
}

impl Next {
    /// The token id.
    pub fn token(self) -> u32 {
        match self {
            Next::Token(t) | Next::Final(t) | Next::EndOfGeneration(t) => t,
        }
    }
}

/// Where and how big to run, from the host's `activate` call, and where the plugin lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activation {
    /// The plugin's folder, against which relative paths of its configuration (model files)
    /// resolve; the host sets it, a test may not.
    pub plugin_dir: Option<PathBuf>,
    /// Preferred device: a case-insensitive substring of the adapter name or its index in
    /// `pio devices`; `None` lets the model choose.
    pub adapter: Option<String>,
    /// Context length to size caches for; `None` means the model's default.
    pub context_length: Option<u32>,
    /// Upper bound on the device memory the model may allocate, in bytes; `None` means no limit.
    pub memory_budget_bytes: Option<u64>,
}

impl Activation {
    /// `path`, a path from the configuration, resolved against the plugin's folder: a
    /// relative path names a file in the folder (the manifest's model files), an absolute one
    /// stays as it is. Without a folder (a test), a relative path stays relative.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        match &self.plugin_dir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        }
    }

    /// The host's `options` for a plugin in `plugin_dir`.
    pub(crate) fn new(options: &ActivateOptions, plugin_dir: Option<PathBuf>) -> Self {
        Self {
            plugin_dir,
            adapter: options
                .adapter
                .as_ref()
                .map(|a| a.to_string())
                .into_option(),
            context_length: (options.context_length != 0).then_some(options.context_length),
            memory_budget_bytes: (options.memory_budget_bytes != 0)
                .then_some(options.memory_budget_bytes),
        }
    }
}

/// How a sequence is to be continued, as its model needs to know. Already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceParams {
    /// How to pick tokens.
    pub sampling: Sampling,
    /// The most tokens the kit will ask this sequence for: the request's `max_new_tokens`
    /// within the context's room. A model that reserves room per sequence sizes it by this;
    /// the kit enforces it (and ends the sequence earlier on stop strings).
    pub max_new_tokens: u32,
}

/// How to pick tokens: a request's sampling parameters (the kit enforces the others itself:
/// `max_new_tokens`, stop strings). Already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 means greedy decoding.
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 disables.
    pub top_k: u32,
    /// Keep the smallest set of tokens whose probability reaches p; 1 disables.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 disables.
    pub min_p: f32,
    /// Penalty for tokens already in the prompt or output; 1 disables.
    pub repetition_penalty: f32,
    /// Seed of the sampler's random generator; `None` lets the model pick one.
    pub seed: Option<u64>,
}

impl Sampling {
    /// Greedy decoding without a repetition penalty: always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: None,
        }
    }
}

impl From<&GenerationParams> for Sampling {
    fn from(params: &GenerationParams) -> Self {
        Self {
            temperature: params.temperature,
            top_k: params.top_k,
            top_p: params.top_p,
            min_p: params.min_p,
            repetition_penalty: params.repetition_penalty,
            seed: params.seed.into_option(),
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant` (the host refuses other roles).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl From<&ChatMessage> for Message {
    fn from(message: &ChatMessage) -> Self {
        Self {
            role: message.role.to_string(),
            content: message.content.to_string(),
        }
    }
}

/// What a model reports for the host's stats.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelStats {
    /// Device (GPU) memory allocated, in bytes.
    pub device_memory_bytes: u64,
    /// Host memory held (weights, caches), in bytes.
    pub host_memory_bytes: u64,
    /// Model-specific details (chosen device, model file, ...), merged into the stats' JSON.
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// The result of [`Model::embed`].
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One vector per input, in input order, each `dimensions` long.
    pub vectors: Vec<Vec<f32>>,
    /// Length of every vector.
    pub dimensions: u32,
    /// Tokens processed over all inputs.
    pub prompt_tokens: u32,
}

fn unsupported(operation: &str) -> PluginError {
    PluginError::unsupported(format!("this plugin does not implement {operation}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_paths_resolve_against_the_plugin_folder() {
        let activation = Activation {
            plugin_dir: Some("/plugins/llama".into()),
            ..Activation::default()
        };
        let resolve = |path: &str| activation.resolve(Path::new(path));
        assert_eq!(
            resolve("model.gguf"),
            Path::new("/plugins/llama/model.gguf")
        );
        assert_eq!(resolve("/models/m.gguf"), Path::new("/models/m.gguf"));
        let without_folder = Activation::default().resolve(Path::new("model.gguf"));
        assert_eq!(without_folder, Path::new("model.gguf"));
    }
}
