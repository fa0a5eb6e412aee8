//! ABI-stable inputs of the plugin calls.

use abi_stable::{
    std_types::{ROption, RString, RVec},
    StableAbi,
};
use serde::{Deserialize, Serialize};

/// Options for [`activate`](crate::PluginInstance::activate): where and how big to run.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ActivateOptions {
    /// Preferred device: a case-insensitive substring of the adapter name or its index in
    /// `pio devices`. `None` lets the plugin choose (a real GPU first, else a software one).
    pub adapter: ROption<RString>,
    /// Context length in tokens to size caches for; 0 means the model's default.
    pub context_length: u32,
    /// Upper bound on the device memory the plugin may allocate, in bytes; 0 means no limit.
    pub memory_budget_bytes: u64,
}

/// Sampling and stopping parameters of a generation.
///
/// The defaults match llama.cpp's: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no
/// repetition penalty, 256 new tokens, a random seed.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq)]
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
    pub seed: ROption<u64>,
    /// Generation stops before any of these strings would be emitted.
    pub stop: RVec<RString>,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            seed: ROption::RNone,
            stop: RVec::new(),
        }
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

    /// Checks every field's range, naming the first one out of range.
    pub fn validate(&self) -> Result<(), crate::PluginError> {
        let fail = |what: String| Err(crate::PluginError::invalid_input(what));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return fail(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return fail(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return fail(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return fail(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return fail("stop strings must not be empty".to_owned());
        }
        Ok(())
    }
}

/// A prompt given as text (tokenized by the plugin) or as token ids.
#[repr(u8)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Raw text; special tokens written in it (such as `<|im_start|>`) are recognised.
    Text(RString),
    /// Token ids, used as they are.
    Tokens(RVec<u32>),
}

/// A request to continue a prompt.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// What to continue.
    pub prompt: Prompt,
    /// Sampling and stopping.
    pub params: GenerationParams,
}

/// One message of a conversation.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: RString,
    /// The message text.
    pub content: RString,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A request to answer a conversation with the model's chat template.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The conversation so far, oldest first.
    pub messages: RVec<ChatMessage>,
    /// Sampling and stopping.
    pub params: GenerationParams,
}

/// What one sequence of a batch generates: a continuation or a chat answer.
#[repr(u8)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum SequenceRequest {
    /// Continue a prompt, as [`GenerateRequest`] does.
    Generate(GenerateRequest),
    /// Answer a conversation, as [`ChatRequest`] does.
    Chat(ChatRequest),
}

/// Most alternatives a request may ask log-probabilities for, per token (OpenAI's limit for
/// `top_logprobs`).
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// A grammar the generated text must match: constrained decoding, applied to the model's
/// choices token by token so the output matches by construction.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// What `source` is: `json_object` (any JSON object; `source` is empty), `json_schema` (a
    /// JSON Schema document), `regex` (a regular expression the whole text matches) or `lark`
    /// (a grammar in llguidance's Lark dialect). A string, so later kinds keep the layout.
    pub kind: RString,
    /// The schema, expression or grammar.
    pub source: RString,
}

impl Constraint {
    /// The kinds a constraint may have.
    pub const KINDS: [&'static str; 4] = ["json_object", "json_schema", "regex", "lark"];

    /// A constraint of `kind` over `source`.
    pub fn new(kind: &str, source: &str) -> Self {
        Self {
            kind: kind.into(),
            source: source.into(),
        }
    }
}

/// What a batched sequence reports and obeys beyond its [`GenerationParams`]
/// ([`open_sequence_with`](crate::PluginInstance::open_sequence_with), API 0.1.1).
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Report each generated token's log-probability and those of its `n` most likely
    /// alternatives (`Some(0)`: the token's alone, at most [`MAX_TOP_LOGPROBS`]); `None`: none.
    pub logprobs: ROption<u32>,
    /// A grammar the generated text must match.
    pub constraint: ROption<Constraint>,
}

impl DecodeOptions {
    /// Whether these options ask nothing beyond a plain sequence.
    pub fn is_plain(&self) -> bool {
        self.logprobs.is_none() && self.constraint.is_none()
    }

    /// Checks the number of alternatives and the constraint's kind, naming what is wrong.
    pub fn validate(&self) -> Result<(), crate::PluginError> {
        if let ROption::RSome(n) = self.logprobs {
            if n > MAX_TOP_LOGPROBS {
                return Err(crate::PluginError::invalid_input(format!(
                    "top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {n}"
                )));
            }
        }
        if let ROption::RSome(constraint) = &self.constraint {
            if !Constraint::KINDS.contains(&constraint.kind.as_str()) {
                return Err(crate::PluginError::invalid_input(format!(
                    "unknown constraint kind '{}'; one of: {}",
                    constraint.kind,
                    Constraint::KINDS.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// A request to embed texts.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EmbedRequest {
    /// The texts, embedded together as one batch.
    pub inputs: RVec<RString>,
}
