//! ABI-stable outputs of the plugin calls.

use abi_stable::{
    std_types::{ROption, RString, RVec},
    StableAbi,
};
use serde::{Deserialize, Serialize};

/// One generated token, as streamed to the host's sink.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TokenEvent {
    /// Position of the token in the generated sequence, from 0.
    pub index: u32,
    /// The token id.
    pub token: u32,
    /// Text completed by this token; empty while a UTF-8 sequence or a possible stop string is
    /// still incomplete. Concatenating every event's text gives the response text.
    pub text: RString,
}

/// What the host's sink wants after a token.
#[repr(u8)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamControl {
    /// Keep generating.
    Continue,
    /// Stop as soon as possible; the response ends with [`FinishReason::Cancelled`].
    Stop,
}

/// Why a generation ended.
#[repr(u8)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-generation token, or a stop string matched.
    Stop,
    /// `max_new_tokens` or the context length was reached.
    Length,
    /// The sink asked to stop.
    Cancelled,
}

impl FinishReason {
    /// The OpenAI-style name (`stop`, `length`, `cancelled`).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// A sequence opened for batched generation.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceOpened {
    /// The plugin's handle for the sequence.
    pub id: u64,
    /// Tokens of its prompt (after the chat template, for chat).
    pub prompt_tokens: u32,
    /// How many of them were not recomputed: their keys and values were reused from an earlier
    /// sequence with the same prompt prefix (prefix cache); 0 on a miss.
    pub cached_tokens: u32,
}

/// What one batch step produced for one sequence.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SequenceStep {
    /// The sequence.
    pub id: u64,
    /// Its new token.
    pub event: TokenEvent,
    /// Set when this token ended the sequence (it must then be closed).
    pub finish: ROption<FinishReason>,
}

/// A token and its log-probability (natural log) under the model's distribution.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token id.
    pub token: u32,
    /// The token's bytes (a token may hold part of a UTF-8 character).
    pub bytes: RVec<u8>,
    /// Its log-probability.
    pub logprob: f32,
}

/// The log-probabilities at one position: of the token there, and of the most likely tokens
/// there (most likely first).
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PositionLogprobs {
    /// The token the sequence has at this position (generated, or the prompt's).
    pub chosen: TokenLogprob,
    /// The most likely tokens at this position, as many as asked for.
    pub top: RVec<TokenLogprob>,
}

/// Wall-clock durations of one request, in milliseconds.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Processing the prompt, up to the first generated token.
    pub prompt_ms: f64,
    /// Generating every token after the first.
    pub generation_ms: f64,
}

/// The result of `generate` or `chat`.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct GenerateResponse {
    /// The generated text (stop strings excluded).
    pub text: RString,
    /// The generated token ids.
    pub tokens: RVec<u32>,
    /// Number of prompt tokens processed.
    pub prompt_tokens: u32,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Where the time went.
    pub timings: Timings,
}

/// The result of `embed`: one vector per input, in input order.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct EmbedResponse {
    /// One vector per input.
    pub embeddings: RVec<RVec<f32>>,
    /// Length of every vector.
    pub dimensions: u32,
    /// Tokens processed over all inputs.
    pub prompt_tokens: u32,
}

/// Resource use and counters of a plugin instance.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
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
    pub details_json: RString,
}

/// How a plugin instance feels.
#[repr(u8)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// Ready to serve.
    Ok,
    /// Serving, with a problem worth reporting.
    Degraded,
    /// Not able to serve (not active, or broken).
    Unavailable,
}

/// A health report: a status and a reason.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The status.
    pub status: HealthStatus,
    /// Why, in a few words.
    pub message: RString,
}

impl Health {
    /// A health report with `status` and `message`.
    pub fn new(status: HealthStatus, message: impl Into<String>) -> Self {
        Self {
            status,
            message: RString::from(message.into()),
        }
    }
}
