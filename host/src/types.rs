//! The plain Rust types of the manager's API, and their conversions to and from the ABI types
//! of `pio-plugin-api`.
//!
//! Callers of [`PluginManager`](crate::PluginManager) — the HTTP server, the command line,
//! tests — build and read these; the manager converts them at its edge, here and nowhere else,
//! so `abi_stable`'s `RString`, `RVec` and `ROption` never leave this crate. The worker protocol
//! (`isolation/`) keeps the ABI types on the wire: it is behind the same edge.
//!
//! A type gets a plain counterpart here when the ABI version holds `abi_stable` containers.
//! Types that hold only numbers and field-less enums are already plain Rust and are re-exported
//! as they are ([`ErrorKind`], [`FinishReason`], [`StreamControl`], [`HealthStatus`],
//! [`SequenceOpened`], [`Timings`], [`MemoryCategory`], [`CategoryMemory`], [`FreedMemory`],
//! [`CompressionScope`], [`CategoryCompression`]), as is [`PluginMetadata`], which crosses the ABI as JSON and
//! is plain Rust on both sides.

use std::fmt;

use pio_plugin_api as abi;

pub use abi::{
    Capability, CategoryCompression, CategoryMemory, CompressionScope, ErrorKind, FinishReason,
    FreedMemory, HealthStatus, MemoryCategory, ModelInfo, PluginMetadata, SequenceOpened,
    StreamControl, Timings, MAX_TOP_LOGPROBS,
};

/// Where and how big to run a plugin (see [`PluginManager::activate`](crate::PluginManager::activate)).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActivateOptions {
    /// Preferred device: a case-insensitive substring of the adapter name or its index in
    /// `pio devices`. `None` lets the plugin choose (a real GPU first, else a software one).
    pub adapter: Option<String>,
    /// Context length in tokens to size caches for; 0 means the model's default.
    pub context_length: u32,
    /// Upper bound on the device memory the plugin may allocate, in bytes; 0 means no limit.
    pub memory_budget_bytes: u64,
}

/// Sampling and stopping parameters of a generation. The defaults are the ABI's (llama.cpp's):
/// temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no repetition penalty, 256 new tokens,
/// a random seed.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// Upper bound on generated tokens.
    pub max_new_tokens: u32,
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
    /// Seed of the sampler's random generator; `None` picks one.
    pub seed: Option<u64>,
    /// Generation stops before any of these strings would be emitted.
    pub stop: Vec<String>,
}

impl Default for GenerationParams {
    fn default() -> Self {
        abi::GenerationParams::default().into()
    }
}

impl GenerationParams {
    /// Greedy decoding of at most `max_new_tokens` tokens.
    pub fn greedy(max_new_tokens: u32) -> Self {
        Self {
            max_new_tokens,
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks every field's range, naming the first one out of range (the ABI's rules, which
    /// plugins apply too).
    pub fn validate(&self) -> Result<(), PluginError> {
        abi::GenerationParams::from(self)
            .validate()
            .map_err(Into::into)
    }
}

/// A prompt given as text (tokenized by the plugin) or as token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Raw text; special tokens written in it (such as `<|im_start|>`) are recognised.
    Text(String),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
}

/// A request to continue a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// What to continue.
    pub prompt: Prompt,
    /// Sampling and stopping.
    pub params: GenerationParams,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_owned(),
            content: content.to_owned(),
        }
    }
}

/// A request to answer a conversation with the model's chat template.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The conversation so far, oldest first.
    pub messages: Vec<ChatMessage>,
    /// Sampling and stopping.
    pub params: GenerationParams,
}

/// What one sequence of a batch generates: a continuation or a chat answer.
#[derive(Debug, Clone, PartialEq)]
pub enum SequenceRequest {
    /// Continue a prompt, as [`GenerateRequest`] does.
    Generate(GenerateRequest),
    /// Answer a conversation, as [`ChatRequest`] does.
    Chat(ChatRequest),
}

/// A grammar the generated text must match (constrained decoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Constraint {
    /// Any JSON object.
    JsonObject,
    /// JSON matching this JSON Schema document.
    JsonSchema(String),
    /// Text matching this regular expression as a whole.
    Regex(String),
    /// Text matching this grammar in llguidance's Lark dialect.
    Lark(String),
}

/// What a batched sequence reports and obeys beyond its [`GenerationParams`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Report each generated token's log-probability and those of its `n` most likely
    /// alternatives (`Some(0)`: the token's alone); `None`: none.
    pub logprobs: Option<u32>,
    /// A grammar the generated text must match.
    pub constraint: Option<Constraint>,
}

impl DecodeOptions {
    /// Whether these options ask nothing beyond a plain sequence (what every plugin serves).
    pub fn is_plain(&self) -> bool {
        self.logprobs.is_none() && self.constraint.is_none()
    }
}

/// A token and its log-probability (natural log).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token id.
    pub token: u32,
    /// The token's bytes (a token may hold part of a UTF-8 character).
    pub bytes: Vec<u8>,
    /// Its log-probability.
    pub logprob: f32,
}

/// The log-probabilities at one position: of the sequence's token there, and of the most likely
/// tokens there, most likely first.
#[derive(Debug, Clone, PartialEq)]
pub struct PositionLogprobs {
    /// The token the sequence has at this position.
    pub chosen: TokenLogprob,
    /// The most likely tokens at this position, as many as asked for.
    pub top: Vec<TokenLogprob>,
}

/// A request to embed texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedRequest {
    /// The texts, embedded together as one batch.
    pub inputs: Vec<String>,
}

/// One generated token, as a generation streams it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    /// Position of the token in the generated sequence, from 0.
    pub index: u32,
    /// The token id.
    pub token: u32,
    /// Text completed by this token; empty while a UTF-8 sequence or a possible stop string is
    /// still incomplete. Concatenating every event's text gives the response text.
    pub text: String,
}

/// What one batch step produced for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceStep {
    /// The sequence.
    pub id: u64,
    /// Its new token.
    pub event: TokenEvent,
    /// Set when this token ended the sequence (it must then be closed).
    pub finish: Option<FinishReason>,
}

/// The result of a generation or a chat answer.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateResponse {
    /// The generated text (stop strings excluded).
    pub text: String,
    /// The generated token ids.
    pub tokens: Vec<u32>,
    /// Number of prompt tokens processed.
    pub prompt_tokens: u32,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Where the time went.
    pub timings: Timings,
}

/// The result of an embedding request: one vector per input, in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedResponse {
    /// One vector per input.
    pub embeddings: Vec<Vec<f32>>,
    /// Length of every vector.
    pub dimensions: u32,
    /// Tokens processed over all inputs.
    pub prompt_tokens: u32,
}

/// Resource use and counters of a plugin instance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginStats {
    /// Device (GPU) memory currently allocated, in bytes.
    pub device_memory_bytes: u64,
    /// Host memory the plugin holds (weights, caches), in bytes.
    pub host_memory_bytes: u64,
    /// Time the last activation took, in milliseconds.
    pub activate_ms: f64,
    /// Requests served since activation.
    pub requests: u64,
    /// Tokens processed (prompt and generated) since activation.
    pub tokens: u64,
    /// Free-form JSON details (chosen device, model file, ...).
    pub details_json: String,
}

/// A health report: a status and a reason.
/// A plugin's memory by category: what it holds, or (from `estimate_memory`) what activating
/// would allocate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// One entry per category, each at most once.
    pub categories: Vec<CategoryMemory>,
}

impl MemoryReport {
    /// Device bytes of every category together.
    pub fn device_bytes(&self) -> u64 {
        self.categories.iter().map(|c| c.device_bytes).sum()
    }

    /// Host bytes of every category together.
    pub fn host_bytes(&self) -> u64 {
        self.categories.iter().map(|c| c.host_bytes).sum()
    }

    /// The entry of `category`, if the plugin reported one.
    pub fn category(&self, category: MemoryCategory) -> Option<&CategoryMemory> {
        self.categories.iter().find(|c| c.category == category)
    }
}

/// What a forced cleanup freed, by category.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryFreed {
    /// One entry per category something was freed in.
    pub categories: Vec<FreedMemory>,
}

impl MemoryFreed {
    /// Device bytes freed in every category together.
    pub fn device_bytes(&self) -> u64 {
        self.categories.iter().map(|c| c.device_bytes).sum()
    }
}

/// A request to store some of a plugin's tensors in another format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressionRequest {
    /// What to compress.
    pub scope: CompressionScope,
    /// The target format by name (`f16`, `q8_0`, ...).
    pub format: String,
}

/// A quality measure before and after a compression.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityChange {
    /// What was measured (`perplexity`, `cosine`, ...).
    pub metric: String,
    /// The value before.
    pub before: f64,
    /// The value after.
    pub after: f64,
}

/// How a plugin's tensors are compressed.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressionReport {
    /// The method.
    pub method: String,
    /// Bytes before and after, per category.
    pub categories: Vec<CategoryCompression>,
    /// The measured quality change, if any.
    pub quality: Option<QualityChange>,
}

impl CompressionReport {
    /// Bytes after over bytes before, over every category; `None` when nothing was measured.
    pub fn ratio(&self) -> Option<f64> {
        let before: u64 = self.categories.iter().map(|c| c.bytes_before).sum();
        let after: u64 = self.categories.iter().map(|c| c.bytes_after).sum();
        (before > 0).then(|| after as f64 / before as f64)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The status.
    pub status: HealthStatus,
    /// Why, in a few words.
    pub message: String,
}

/// An error a plugin returned: a kind plus its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// The category of the failure.
    pub kind: ErrorKind,
    /// What failed, naming the offending file, tensor, field or limit.
    pub message: String,
}

impl PluginError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// [`ErrorKind::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for PluginError {}

// Requests: plain → ABI, on the way into a plugin.

impl From<&ActivateOptions> for abi::ActivateOptions {
    fn from(options: &ActivateOptions) -> Self {
        Self {
            adapter: options.adapter.as_deref().map(Into::into).into(),
            context_length: options.context_length,
            memory_budget_bytes: options.memory_budget_bytes,
        }
    }
}

impl From<&GenerationParams> for abi::GenerationParams {
    fn from(params: &GenerationParams) -> Self {
        Self {
            max_new_tokens: params.max_new_tokens,
            temperature: params.temperature,
            top_k: params.top_k,
            top_p: params.top_p,
            min_p: params.min_p,
            repetition_penalty: params.repetition_penalty,
            seed: params.seed.into(),
            stop: params.stop.iter().map(|s| s.as_str().into()).collect(),
        }
    }
}

impl From<&Prompt> for abi::Prompt {
    fn from(prompt: &Prompt) -> Self {
        match prompt {
            Prompt::Text(text) => Self::Text(text.as_str().into()),
            Prompt::Tokens(tokens) => Self::Tokens(tokens.as_slice().into()),
        }
    }
}

impl From<&GenerateRequest> for abi::GenerateRequest {
    fn from(request: &GenerateRequest) -> Self {
        Self {
            prompt: (&request.prompt).into(),
            params: (&request.params).into(),
        }
    }
}

impl From<&ChatMessage> for abi::ChatMessage {
    fn from(message: &ChatMessage) -> Self {
        Self::new(&message.role, &message.content)
    }
}

impl From<&ChatRequest> for abi::ChatRequest {
    fn from(request: &ChatRequest) -> Self {
        Self {
            messages: request.messages.iter().map(Into::into).collect(),
            params: (&request.params).into(),
        }
    }
}

impl From<&SequenceRequest> for abi::SequenceRequest {
    fn from(request: &SequenceRequest) -> Self {
        match request {
            SequenceRequest::Generate(request) => Self::Generate(request.into()),
            SequenceRequest::Chat(request) => Self::Chat(request.into()),
        }
    }
}

impl From<&Constraint> for abi::Constraint {
    fn from(constraint: &Constraint) -> Self {
        match constraint {
            Constraint::JsonObject => Self::new("json_object", ""),
            Constraint::JsonSchema(schema) => Self::new("json_schema", schema),
            Constraint::Regex(regex) => Self::new("regex", regex),
            Constraint::Lark(grammar) => Self::new("lark", grammar),
        }
    }
}

impl From<&DecodeOptions> for abi::DecodeOptions {
    fn from(options: &DecodeOptions) -> Self {
        Self {
            logprobs: options.logprobs.into(),
            constraint: options.constraint.as_ref().map(Into::into).into(),
        }
    }
}

impl From<&EmbedRequest> for abi::EmbedRequest {
    fn from(request: &EmbedRequest) -> Self {
        Self {
            inputs: request.inputs.iter().map(|s| s.as_str().into()).collect(),
        }
    }
}

// Responses: ABI → plain, on the way out of a plugin.

impl From<abi::GenerationParams> for GenerationParams {
    fn from(params: abi::GenerationParams) -> Self {
        Self {
            max_new_tokens: params.max_new_tokens,
            temperature: params.temperature,
            top_k: params.top_k,
            top_p: params.top_p,
            min_p: params.min_p,
            repetition_penalty: params.repetition_penalty,
            seed: params.seed.into_option(),
            stop: params.stop.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<&abi::TokenEvent> for TokenEvent {
    fn from(event: &abi::TokenEvent) -> Self {
        Self {
            index: event.index,
            token: event.token,
            text: event.text.as_str().to_owned(),
        }
    }
}

impl From<abi::TokenLogprob> for TokenLogprob {
    fn from(token: abi::TokenLogprob) -> Self {
        Self {
            token: token.token,
            bytes: token.bytes.into_vec(),
            logprob: token.logprob,
        }
    }
}

impl From<abi::PositionLogprobs> for PositionLogprobs {
    fn from(position: abi::PositionLogprobs) -> Self {
        Self {
            chosen: position.chosen.into(),
            top: position.top.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<abi::SequenceStep> for SequenceStep {
    fn from(step: abi::SequenceStep) -> Self {
        Self {
            id: step.id,
            event: (&step.event).into(),
            finish: step.finish.into_option(),
        }
    }
}

impl From<abi::GenerateResponse> for GenerateResponse {
    fn from(response: abi::GenerateResponse) -> Self {
        Self {
            text: response.text.into(),
            tokens: response.tokens.into(),
            prompt_tokens: response.prompt_tokens,
            finish_reason: response.finish_reason,
            timings: response.timings,
        }
    }
}

impl From<abi::EmbedResponse> for EmbedResponse {
    fn from(response: abi::EmbedResponse) -> Self {
        Self {
            embeddings: response.embeddings.into_iter().map(Into::into).collect(),
            dimensions: response.dimensions,
            prompt_tokens: response.prompt_tokens,
        }
    }
}

impl From<abi::PluginStats> for PluginStats {
    fn from(stats: abi::PluginStats) -> Self {
        Self {
            device_memory_bytes: stats.device_memory_bytes,
            host_memory_bytes: stats.host_memory_bytes,
            activate_ms: stats.activate_ms,
            requests: stats.requests,
            tokens: stats.tokens,
            details_json: stats.details_json.into(),
        }
    }
}

impl From<&CompressionRequest> for abi::CompressionRequest {
    fn from(request: &CompressionRequest) -> Self {
        Self {
            scope: request.scope,
            format: request.format.as_str().into(),
        }
    }
}

impl From<abi::MemoryReport> for MemoryReport {
    fn from(report: abi::MemoryReport) -> Self {
        Self {
            categories: report.categories.into_vec(),
        }
    }
}

impl From<abi::MemoryFreed> for MemoryFreed {
    fn from(freed: abi::MemoryFreed) -> Self {
        Self {
            categories: freed.categories.into_vec(),
        }
    }
}

impl From<abi::CompressionReport> for CompressionReport {
    fn from(report: abi::CompressionReport) -> Self {
        Self {
            method: report.method.into_string(),
            categories: report.categories.into_vec(),
            quality: report.quality.into_option().map(|q| QualityChange {
                metric: q.metric.into_string(),
                before: q.before,
                after: q.after,
            }),
        }
    }
}

impl From<abi::Health> for Health {
    fn from(health: abi::Health) -> Self {
        Self {
            status: health.status,
            message: health.message.into(),
        }
    }
}

impl From<abi::PluginError> for PluginError {
    fn from(error: abi::PluginError) -> Self {
        Self {
            kind: error.kind,
            message: error.message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_abi_defaults() {
        let params = GenerationParams::default();
        assert_eq!(
            abi::GenerationParams::from(&params),
            abi::GenerationParams::default()
        );
        assert_eq!(ActivateOptions::default().adapter, None);
    }

    #[test]
    fn a_request_keeps_every_field_across_the_boundary() {
        let params = GenerationParams {
            max_new_tokens: 7,
            temperature: 0.5,
            top_k: 3,
            top_p: 0.9,
            min_p: 0.1,
            repetition_penalty: 1.2,
            seed: Some(42),
            stop: vec!["\n".to_owned(), "END".to_owned()],
        };
        let request = SequenceRequest::Chat(ChatRequest {
            messages: vec![ChatMessage::new("user", "héllo")],
            params: params.clone(),
        });
        let abi::SequenceRequest::Chat(chat) = abi::SequenceRequest::from(&request) else {
            panic!("a chat request became another kind");
        };
        assert_eq!(chat.messages[0].role.as_str(), "user");
        assert_eq!(chat.messages[0].content.as_str(), "héllo");
        assert_eq!(GenerationParams::from(chat.params), params);
        let tokens = abi::Prompt::from(&Prompt::Tokens(vec![1, 2, 3]));
        assert_eq!(tokens, abi::Prompt::Tokens(vec![1, 2, 3].into()));
        let options = ActivateOptions {
            adapter: Some("llvmpipe".to_owned()),
            context_length: 512,
            memory_budget_bytes: 1 << 20,
        };
        let converted = abi::ActivateOptions::from(&options);
        assert_eq!(
            converted.adapter.as_ref().map(|a| a.as_str()).into_option(),
            Some("llvmpipe")
        );
        assert_eq!(
            (converted.context_length, converted.memory_budget_bytes),
            (512, 1 << 20)
        );
    }

    #[test]
    fn validation_names_the_field_out_of_range() {
        let error = GenerationParams {
            top_p: 0.0,
            ..GenerationParams::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(error.kind, ErrorKind::InvalidInput);
        assert!(error.message.contains("top_p"), "{error}");
        assert!(GenerationParams::greedy(4).validate().is_ok());
    }
}
