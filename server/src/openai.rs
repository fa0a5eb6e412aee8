//! The OpenAI wire format: request bodies as clients send them, their conversion into plugin
//! requests (validated, errors naming the field), and the response and stream-chunk bodies.

use std::time::{SystemTime, UNIX_EPOCH};

use pio_host::{ChatMessage, FinishReason, GenerationParams, Prompt};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{engine::Completion, error::ApiError};

/// Most stop strings a request may give.
pub const MAX_STOP_STRINGS: usize = 16;

/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// Highest `temperature` accepted (OpenAI's range is 0 to 2).
const MAX_TEMPERATURE: f32 = 2.0;

/// Sampling fields shared by chat and text completions.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sampling {
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    n: Option<u32>,
    /// Extension: top-k cutoff (0 disables).
    top_k: Option<u32>,
    /// Extension: min-p cutoff (0 disables).
    min_p: Option<f32>,
    /// Extension: repetition penalty (1 disables).
    repetition_penalty: Option<f32>,
    /// Extension: above 0 is served first, below 0 last.
    pub priority: Option<i64>,
    /// Whether to answer with server-sent events.
    #[serde(default)]
    pub stream: bool,
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Server-side limits applied to every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `max_tokens` when the request gives none.
    pub default_max_tokens: u32,
    /// The largest `max_tokens` accepted.
    pub max_tokens_limit: u32,
}

impl Sampling {
    /// The plugin's generation parameters: the plugin defaults, overridden by every field
    /// the request sets; each value checked, errors naming the field.
    pub fn params(&self, limits: Limits) -> Result<GenerationParams, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("n", "only n = 1 is supported"));
        }
        let (param, max_tokens) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(n), _) => ("max_completion_tokens", n),
            (None, Some(n)) => ("max_tokens", n),
            (None, None) => ("max_tokens", limits.default_max_tokens),
        };
        if !(1..=limits.max_tokens_limit).contains(&max_tokens) {
            return Err(ApiError::invalid(
                param,
                format!(
                    "{param} must be in 1..={}, got {max_tokens}",
                    limits.max_tokens_limit
                ),
            ));
        }
        let stop: Vec<String> = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOP_STRINGS {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "stop has {} strings; at most {MAX_STOP_STRINGS} are accepted",
                    stop.len()
                ),
            ));
        }
        if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "a stop string has {} bytes; at most {MAX_STOP_BYTES} are accepted",
                    long.len()
                ),
            ));
        }
        if let Some(temperature) = self.temperature {
            // `validate` below refuses negative and non-finite values.
            if temperature > MAX_TEMPERATURE {
                return Err(ApiError::invalid(
                    "temperature",
                    format!("temperature must be in [0, {MAX_TEMPERATURE}], got {temperature}"),
                ));
            }
        }
        let defaults = GenerationParams::default();
        let params = GenerationParams {
            max_new_tokens: max_tokens,
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_k: self.top_k.unwrap_or(defaults.top_k),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            min_p: self.min_p.unwrap_or(defaults.min_p),
            repetition_penalty: self
                .repetition_penalty
                .unwrap_or(defaults.repetition_penalty),
            seed: self.seed,
            stop: stop.to_vec(),
        };
        params.validate().map_err(|e| {
            let message = e.message.to_string();
            let param = [
                "temperature",
                "top_p",
                "min_p",
                "repetition_penalty",
                "stop",
            ]
            .into_iter()
            .find(|field| message.starts_with(field))
            .unwrap_or("sampling");
            ApiError::invalid(param, message)
        })?;
        Ok(params)
    }

    /// Whether a stream should end with a usage-only chunk (`stream_options.include_usage`).
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    /// The plugin: `name` or `name@version`.
    pub model: String,
    messages: Vec<MessageIn>,
    /// Sampling, streaming and priority.
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Debug, Deserialize)]
struct MessageIn {
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

/// The role a plugin gets for a message's `role`: `system`, `user` and `assistant` as they
/// are; `developer` (OpenAI's newer name for system instructions) as `system`. Everything else
/// is refused: `tool` and `function` (this server has no tool calling) and any other string,
/// which would otherwise reach the plugin's chat template.
fn plugin_role(role: &str) -> Result<&'static str, String> {
    match role {
        "system" | "developer" => Ok("system"),
        "user" => Ok("user"),
        "assistant" => Ok("assistant"),
        "tool" | "function" => Err(format!(
            "role '{role}' is not supported: this server does not do tool calling"
        )),
        other => {
            let shown: String = other.chars().take(40).collect();
            Err(format!(
                "unknown role {shown:?}; one of: system, developer, user, assistant"
            ))
        }
    }
}

impl ChatCompletionRequest {
    /// The conversation as plugin chat messages; only text content and the roles of
    /// [`plugin_role`] are accepted.
    pub fn messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages", "messages must not be empty"));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = plugin_role(&m.role).map_err(|message| {
                    let field = format!("messages[{i}].role");
                    ApiError::invalid(field.clone(), format!("{field}: {message}"))
                })?;
                let text = match &m.content {
                    None => String::new(),
                    Some(Content::Text(text)) => text.clone(),
                    Some(Content::Parts(parts)) => parts
                        .iter()
                        .map(|p| match (p.kind.as_str(), &p.text) {
                            ("text", Some(text)) => Ok(text.as_str()),
                            (kind, _) => Err(ApiError::invalid(
                                format!("messages[{i}].content"),
                                format!(
                                    "messages[{i}].content: content parts of type '{kind}' are not supported; only 'text'"
                                ),
                            )),
                        })
                        .collect::<Result<Vec<_>, _>>()?
                        .concat(),
                };
                Ok(ChatMessage::new(role, &text))
            })
            .collect()
    }
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// The plugin: `name` or `name@version`.
    pub model: String,
    prompt: PromptIn,
    /// Sampling, streaming and priority.
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptIn {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
}

impl CompletionRequest {
    /// The prompt: a string (or an array holding one), or token ids.
    pub fn prompt(&self) -> Result<Prompt, ApiError> {
        match &self.prompt {
            PromptIn::Text(text) => Ok(Prompt::Text(text.clone())),
            PromptIn::Tokens(tokens) if !tokens.is_empty() => {
                Ok(Prompt::Tokens(tokens.clone()))
            }
            PromptIn::Texts(texts) if texts.len() == 1 => Ok(Prompt::Text(texts[0].clone())),
            _ => Err(ApiError::invalid(
                "prompt",
                "prompt must be a string, an array of one string, or a non-empty array of token ids",
            )),
        }
    }
}

/// `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    /// The plugin: `name` or `name@version`.
    pub model: String,
    input: EmbeddingInput,
    encoding_format: Option<String>,
    dimensions: Option<u32>,
    /// Extension: above 0 is served first, below 0 last.
    pub priority: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

/// How embedding vectors are written in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// JSON arrays of numbers.
    Float,
    /// Base64 of the little-endian `f32` bytes (what the official Python client asks for).
    Base64,
}

impl EmbeddingRequest {
    /// The texts to embed, none empty.
    pub fn inputs(&self) -> Result<Vec<String>, ApiError> {
        let inputs = match &self.input {
            EmbeddingInput::One(text) => vec![text.clone()],
            EmbeddingInput::Many(texts) => texts.clone(),
        };
        if inputs.is_empty() || inputs.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                "input",
                "input must be a non-empty string or a non-empty array of non-empty strings",
            ));
        }
        Ok(inputs)
    }

    /// The requested encoding; `dimensions` is refused (vectors are not truncated).
    pub fn encoding(&self) -> Result<Encoding, ApiError> {
        if self.dimensions.is_some() {
            return Err(ApiError::invalid(
                "dimensions",
                "dimensions is not supported: the plugin decides the vector size",
            ));
        }
        match self.encoding_format.as_deref() {
            None | Some("float") => Ok(Encoding::Float),
            Some("base64") => Ok(Encoding::Base64),
            Some(other) => Err(ApiError::invalid(
                "encoding_format",
                format!("encoding_format must be 'float' or 'base64', got '{other}'"),
            )),
        }
    }
}

/// `POST /tokenize`.
#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    /// The plugin.
    pub model: String,
    /// The text.
    pub prompt: String,
    /// Whether the model's special tokens (e.g. BOS) are added.
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
}

fn yes() -> bool {
    true
}

/// `POST /detokenize`.
#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    /// The plugin.
    pub model: String,
    /// Token ids.
    pub tokens: Vec<u32>,
}

/// The two text endpoints, which differ only in their body shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

/// What every response and chunk of one request repeats.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    /// `chatcmpl-N` or `cmpl-N`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model as requested.
    pub model: String,
}

impl ResponseMeta {
    /// The meta of request number `n` to `endpoint` for `model`.
    pub fn new(endpoint: Endpoint, n: u64, model: &str) -> Self {
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        };
        Self {
            id: format!("{prefix}-{n}"),
            created: unix_seconds(),
            model: model.to_owned(),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// OpenAI's `finish_reason` for a plugin's.
fn finish_reason(finish: FinishReason) -> &'static str {
    match finish {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

/// The `usage` object of a completion.
pub fn usage(completion: &Completion) -> Value {
    json!({
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    })
}

impl Endpoint {
    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        }
    }

    /// The non-streaming response body.
    pub fn response(self, meta: &ResponseMeta, completion: &Completion) -> Value {
        let finish = finish_reason(completion.finish);
        let choice = match self {
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": finish,
                "logprobs": null,
            }),
            Endpoint::Completion => json!({
                "index": 0,
                "text": completion.text,
                "finish_reason": finish,
                "logprobs": null,
            }),
        };
        json!({
            "id": meta.id,
            "object": self.object(false),
            "created": meta.created,
            "model": meta.model,
            "system_fingerprint": completion.plugin,
            "choices": [choice],
            "usage": usage(completion),
        })
    }

    /// A stream chunk carrying `text` (and for chat, the assistant role on the first chunk).
    pub fn text_chunk(self, meta: &ResponseMeta, text: &str, first: bool) -> Value {
        let choice = match self {
            Endpoint::Chat if first => {
                json!({"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": null, "logprobs": null})
            }
            Endpoint::Chat => {
                json!({"index": 0, "delta": {"content": text}, "finish_reason": null, "logprobs": null})
            }
            Endpoint::Completion => {
                json!({"index": 0, "text": text, "finish_reason": null, "logprobs": null})
            }
        };
        self.chunk(meta, vec![choice], None)
    }

    /// The last chunk with a choice: the finish reason, plus the usage.
    pub fn finish_chunk(self, meta: &ResponseMeta, completion: &Completion) -> Value {
        let finish = finish_reason(completion.finish);
        let choice = match self {
            Endpoint::Chat => {
                json!({"index": 0, "delta": {}, "finish_reason": finish, "logprobs": null})
            }
            Endpoint::Completion => {
                json!({"index": 0, "text": "", "finish_reason": finish, "logprobs": null})
            }
        };
        let mut chunk = self.chunk(meta, vec![choice], Some(usage(completion)));
        chunk["system_fingerprint"] = completion.plugin.as_str().into();
        chunk
    }

    /// The usage-only chunk (`choices: []`) sent when `stream_options.include_usage` is set.
    pub fn usage_chunk(self, meta: &ResponseMeta, completion: &Completion) -> Value {
        self.chunk(meta, Vec::new(), Some(usage(completion)))
    }

    fn chunk(self, meta: &ResponseMeta, choices: Vec<Value>, usage: Option<Value>) -> Value {
        let mut chunk = json!({
            "id": meta.id,
            "object": self.object(true),
            "created": meta.created,
            "model": meta.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        chunk
    }
}

/// An embedding vector as the response carries it.
pub fn encode_embedding(vector: &[f32], encoding: Encoding) -> Value {
    match encoding {
        Encoding::Float => json!(vector),
        Encoding::Base64 => {
            let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
            Value::String(base64(&bytes))
        }
    }
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= group.len() {
                out.push(ALPHABET[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        default_max_tokens: 16,
        max_tokens_limit: 100,
    };

    fn sampling(body: Value) -> Sampling {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn maps_openai_fields_and_extras() {
        let params = sampling(json!({
            "max_tokens": 5, "temperature": 0.0, "top_p": 0.5, "seed": 7, "stop": "x",
            "top_k": 3, "min_p": 0.1, "repetition_penalty": 1.2
        }))
        .params(LIMITS)
        .unwrap();
        assert_eq!(params.max_new_tokens, 5);
        assert_eq!(params.temperature, 0.0);
        assert_eq!(params.top_k, 3);
        assert_eq!(params.seed, Some(7));
        assert_eq!(params.stop.len(), 1);
        let params =
            sampling(json!({"stop": ["a", "b"], "max_completion_tokens": 9, "max_tokens": 2}))
                .params(LIMITS)
                .unwrap();
        assert_eq!((params.max_new_tokens, params.stop.len()), (9, 2));
        assert_eq!(
            sampling(json!({})).params(LIMITS).unwrap().max_new_tokens,
            16
        );
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let cases = [
            (json!({"max_tokens": 101}), "max_tokens"),
            (json!({"max_completion_tokens": 0}), "max_completion_tokens"),
            (json!({"temperature": -1.0}), "temperature"),
            (json!({"top_p": 0.0}), "top_p"),
            (json!({"stop": [""]}), "stop"),
            (json!({"stop": vec!["x"; 17]}), "stop"),
            (json!({"stop": "x".repeat(257)}), "stop"),
            (json!({"temperature": 2.5}), "temperature"),
            (json!({"temperature": 1e39}), "temperature"),
            (json!({"top_p": 1.5}), "top_p"),
            (json!({"min_p": -0.1}), "min_p"),
            (json!({"repetition_penalty": 0.0}), "repetition_penalty"),
            (json!({"n": 2}), "n"),
        ];
        for (body, field) in cases {
            let error = sampling(body.clone()).params(LIMITS).unwrap_err();
            assert_eq!(error.param.as_deref(), Some(field), "{body}");
            assert_eq!(error.status, 400);
        }
    }

    fn chat_request(messages: Value) -> ChatCompletionRequest {
        serde_json::from_value(json!({"model": "m", "messages": messages})).unwrap()
    }

    #[test]
    fn only_known_roles_are_accepted() {
        let request = chat_request(json!([
            {"role": "developer", "content": "be brief"},
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"},
        ]));
        let roles: Vec<String> = request
            .messages()
            .unwrap()
            .iter()
            .map(|m| m.role.to_string())
            .collect();
        assert_eq!(roles, ["system", "system", "user", "assistant"]);
        for role in ["wizard", "{{ 7*7 }}", "tool", "function", "User", ""] {
            let request = chat_request(json!([
                {"role": "user", "content": "hi"},
                {"role": role, "content": "x"},
            ]));
            let error = request.messages().unwrap_err();
            assert_eq!(error.status, 400);
            assert_eq!(error.param.as_deref(), Some("messages[1].role"), "{role}");
        }
        let error = chat_request(json!([])).messages().unwrap_err();
        assert_eq!(error.param.as_deref(), Some("messages"));
    }

    #[test]
    fn base64_matches_the_standard_encoding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(
            encode_embedding(&[1.0], Encoding::Base64),
            json!("AACAPw==")
        );
    }
}
