//! The OpenAI wire format: request bodies as clients send them, their conversion into plugin
//! requests (validated, errors naming the field), and the response and stream-chunk bodies.

use std::time::{SystemTime, UNIX_EPOCH};

use pio_host::{
    ChatMessage, Constraint, FinishReason, GenerationParams, PositionLogprobs, Prompt,
    MAX_TOP_LOGPROBS,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{engine::Completion, error::ApiError, logprobs};

/// Most stop strings a request may give.
pub const MAX_STOP_STRINGS: usize = 16;

/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// Highest `temperature` accepted (OpenAI's range is 0 to 2).
const MAX_TEMPERATURE: f32 = 2.0;

/// Most choices one request may ask for: `n` times the number of prompts.
pub const MAX_CHOICES: u32 = 16;

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
    /// Extension (Ollama's): how long the plugin stays loaded after this request — a duration
    /// string (`"5m"`) or seconds; 0 unloads it right after, negative keeps it loaded.
    pub keep_alive: Option<Value>,
    /// Whether to answer with server-sent events.
    #[serde(default)]
    pub stream: bool,
    stream_options: Option<StreamOptions>,
    /// `json_object` or `json_schema`: the output is JSON, matching the schema if one is given.
    response_format: Option<ResponseFormat>,
    /// Extension: the output matches this regular expression as a whole.
    regex: Option<String>,
    /// Extension: the output matches this grammar, in llguidance's Lark dialect.
    grammar: Option<String>,
}

/// OpenAI's `response_format`, and llama.cpp's `json_object` with an inline `schema`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormat {
    Text,
    JsonObject { schema: Option<Value> },
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Clone, Deserialize)]
struct JsonSchemaFormat {
    schema: Option<Value>,
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

    /// Whether the request sets `max_tokens` (or `max_completion_tokens`) to 0.
    pub fn asks_no_tokens(&self) -> bool {
        self.max_completion_tokens.or(self.max_tokens) == Some(0)
    }

    /// How many choices to generate per prompt (`n`).
    pub fn choices(&self) -> Result<u32, ApiError> {
        match self.n.unwrap_or(1) {
            n @ 1..=MAX_CHOICES => Ok(n),
            n => Err(ApiError::invalid(
                "n",
                format!("n must be in 1..={MAX_CHOICES}, got {n}"),
            )),
        }
    }

    /// The grammar the output must match: `response_format`, or the `regex` / `grammar`
    /// extensions — at most one of them.
    pub fn constraint(&self) -> Result<Option<Constraint>, ApiError> {
        let format = match &self.response_format {
            None | Some(ResponseFormat::Text) => None,
            Some(ResponseFormat::JsonObject { schema: None }) => Some(Constraint::JsonObject),
            Some(ResponseFormat::JsonObject {
                schema: Some(schema),
            }) => Some(json_schema(schema)?),
            Some(ResponseFormat::JsonSchema {
                json_schema: format,
            }) => {
                let schema = format.schema.as_ref().ok_or_else(|| {
                    ApiError::invalid(
                        "response_format",
                        "response_format.json_schema.schema is missing",
                    )
                })?;
                Some(json_schema(schema)?)
            }
        };
        let given = [
            ("response_format", format),
            ("regex", self.regex.clone().map(Constraint::Regex)),
            ("grammar", self.grammar.clone().map(Constraint::Lark)),
        ];
        let mut given = given.into_iter().filter(|(_, c)| c.is_some());
        match (given.next(), given.next()) {
            (Some((_, constraint)), None) => Ok(constraint),
            (None, _) => Ok(None),
            (Some((first, _)), Some((second, _))) => Err(ApiError::invalid(
                second,
                format!("{first} and {second} both constrain the output; give one"),
            )),
        }
    }

    /// Whether a stream should end with a usage-only chunk (`stream_options.include_usage`).
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// A JSON Schema given in a request, checked to be an object (the plugin compiles it).
fn json_schema(schema: &Value) -> Result<Constraint, ApiError> {
    if !schema.is_object() {
        return Err(ApiError::invalid(
            "response_format",
            "the JSON schema must be an object",
        ));
    }
    Ok(Constraint::JsonSchema(schema.to_string()))
}

/// The log-probabilities a request asks for: `Some(n)` for the chosen tokens' and the `n` most
/// likely alternatives', `None` for none.
fn top_logprobs(field: &'static str, n: Option<u32>) -> Result<Option<u32>, ApiError> {
    match n {
        Some(n) if n > MAX_TOP_LOGPROBS => Err(ApiError::invalid(
            field,
            format!("{field} must be at most {MAX_TOP_LOGPROBS}, got {n}"),
        )),
        n => Ok(n),
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
    #[serde(default)]
    logprobs: bool,
    top_logprobs: Option<u32>,
    /// Only for completions; refused here with a clear error.
    echo: Option<Value>,
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
    /// The log-probabilities asked for (`logprobs`, `top_logprobs`); refuses `echo`, which only
    /// completions have.
    pub fn logprobs(&self) -> Result<Option<u32>, ApiError> {
        if self.echo.is_some() {
            return Err(ApiError::invalid(
                "echo",
                "echo is not supported on chat completions; use /v1/completions",
            ));
        }
        match (self.logprobs, self.top_logprobs) {
            (false, Some(_)) => Err(ApiError::invalid(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            )),
            (false, None) => Ok(None),
            (true, n) => top_logprobs("top_logprobs", Some(n.unwrap_or(0))),
        }
    }

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
    logprobs: Option<u32>,
    /// Whether the text starts with the prompt (and the log-probabilities with the prompt's).
    #[serde(default)]
    pub echo: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptIn {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

impl CompletionRequest {
    /// The prompts: a string or token ids, or an array of either (each prompt gets `n`
    /// choices, in order).
    pub fn prompts(&self) -> Result<Vec<Prompt>, ApiError> {
        let prompts: Vec<Prompt> = match &self.prompt {
            PromptIn::Text(text) => vec![Prompt::Text(text.clone())],
            PromptIn::Tokens(tokens) => vec![Prompt::Tokens(tokens.clone())],
            PromptIn::Texts(texts) => texts.iter().cloned().map(Prompt::Text).collect(),
            PromptIn::TokenLists(lists) => lists.iter().cloned().map(Prompt::Tokens).collect(),
        };
        let empty = |p: &Prompt| matches!(p, Prompt::Tokens(tokens) if tokens.is_empty());
        if prompts.is_empty() || prompts.iter().any(empty) {
            return Err(ApiError::invalid(
                "prompt",
                "prompt must be a string, non-empty token ids, or a non-empty array of either",
            ));
        }
        let choices = prompts.len() as u64 * u64::from(self.sampling.choices()?);
        if choices > u64::from(MAX_CHOICES) {
            return Err(ApiError::invalid(
                "prompt",
                format!(
                    "{} prompts with n = {} make {choices} choices; at most {MAX_CHOICES} are accepted",
                    prompts.len(),
                    self.sampling.choices()?
                ),
            ));
        }
        Ok(prompts)
    }

    /// The log-probabilities asked for (`logprobs`: how many alternatives per token).
    pub fn logprobs(&self) -> Result<Option<u32>, ApiError> {
        top_logprobs("logprobs", self.logprobs)
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
    /// Extension: see [`Sampling::keep_alive`].
    pub keep_alive: Option<Value>,
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
    /// The plugin; optional when one text plugin is served.
    pub model: Option<String>,
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
    /// The plugin; optional when one text plugin is served.
    pub model: Option<String>,
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

/// One choice of a response: what one sequence generated, where it goes in `choices`, and the
/// prompt it echoes.
#[derive(Debug, Clone)]
pub struct Choice {
    /// The choice's `index`: prompt number × `n` + choice number.
    pub index: u32,
    /// Whether this is the first choice of its prompt (the prompt's tokens count once).
    pub counts_prompt: bool,
    /// What was generated.
    pub completion: Completion,
    /// The prompt the text starts with (completions' `echo`).
    pub echo: Option<Echo>,
}

/// The prompt a completion echoes: its text, and its tokens' log-probabilities when the request
/// asked for log-probabilities.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    /// The prompt's text.
    pub text: String,
    /// One entry per prompt token (the first without a log-probability).
    pub logprobs: Vec<PositionLogprobs>,
}

/// The `usage` object of the choices of one request: each prompt's tokens once, every
/// choice's generated tokens.
pub fn usage<'a>(choices: impl IntoIterator<Item = (bool, &'a Completion)>) -> Value {
    let (mut prompt, mut generated) = (0u64, 0u64);
    for (counts_prompt, completion) in choices {
        if counts_prompt {
            prompt += u64::from(completion.prompt_tokens);
        }
        generated += u64::from(completion.completion_tokens);
    }
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": generated,
        "total_tokens": prompt + generated,
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

    /// The `logprobs` of a choice or chunk: `null` unless the request asked for them.
    fn logprobs(self, positions: Option<&[PositionLogprobs]>, text_offset: usize) -> Value {
        match (self, positions) {
            (_, None) => Value::Null,
            (Endpoint::Chat, Some(positions)) => logprobs::chat(positions),
            (Endpoint::Completion, Some(positions)) => logprobs::completion(positions, text_offset),
        }
    }

    /// The non-streaming response body; `logprobs` says whether the request asked for them.
    pub fn response(self, meta: &ResponseMeta, choices: &[Choice], logprobs: bool) -> Value {
        let bodies: Vec<Value> = choices
            .iter()
            .map(|choice| {
                let completion = &choice.completion;
                let finish = finish_reason(completion.finish);
                match self {
                    Endpoint::Chat => json!({
                        "index": choice.index,
                        "message": {"role": "assistant", "content": completion.text},
                        "finish_reason": finish,
                        "logprobs": self.logprobs(logprobs.then_some(&completion.logprobs), 0),
                    }),
                    Endpoint::Completion => {
                        let echo = choice.echo.clone().unwrap_or_default();
                        let positions: Vec<PositionLogprobs> =
                            [echo.logprobs, completion.logprobs.clone()].concat();
                        json!({
                            "index": choice.index,
                            "text": echo.text + &completion.text,
                            "finish_reason": finish,
                            "logprobs": self.logprobs(logprobs.then_some(&positions), 0),
                        })
                    }
                }
            })
            .collect();
        let plugin = choices.first().map_or("", |c| c.completion.plugin.as_str());
        json!({
            "id": meta.id,
            "object": self.object(false),
            "created": meta.created,
            "model": meta.model,
            "system_fingerprint": plugin,
            "choices": bodies,
            "usage": usage(choices.iter().map(|c| (c.counts_prompt, &c.completion))),
        })
    }

    /// A stream chunk of choice `index` carrying `text` (for chat, the assistant role on the
    /// first chunk) and the log-probabilities of the tokens that made it, when asked for;
    /// `text_offset` is where the text starts in the choice's whole text.
    pub fn text_chunk(
        self,
        meta: &ResponseMeta,
        index: u32,
        text: &str,
        first: bool,
        logprobs: Option<&[PositionLogprobs]>,
        text_offset: usize,
    ) -> Value {
        let logprobs = self.logprobs(logprobs, text_offset);
        let choice = match self {
            Endpoint::Chat if first => {
                json!({"index": index, "delta": {"role": "assistant", "content": text}, "finish_reason": null, "logprobs": logprobs})
            }
            Endpoint::Chat => {
                json!({"index": index, "delta": {"content": text}, "finish_reason": null, "logprobs": logprobs})
            }
            Endpoint::Completion => {
                json!({"index": index, "text": text, "finish_reason": null, "logprobs": logprobs})
            }
        };
        self.chunk(meta, vec![choice], None)
    }

    /// The last chunk of choice `index`: its finish reason, the log-probabilities not sent yet,
    /// and its usage.
    pub fn finish_chunk(
        self,
        meta: &ResponseMeta,
        choice: &Choice,
        logprobs: Option<&[PositionLogprobs]>,
        text_offset: usize,
    ) -> Value {
        let completion = &choice.completion;
        let finish = finish_reason(completion.finish);
        let logprobs = self.logprobs(logprobs, text_offset);
        let body = match self {
            Endpoint::Chat => {
                json!({"index": choice.index, "delta": {}, "finish_reason": finish, "logprobs": logprobs})
            }
            Endpoint::Completion => {
                json!({"index": choice.index, "text": "", "finish_reason": finish, "logprobs": logprobs})
            }
        };
        let usage = usage([(choice.counts_prompt, completion)]);
        let mut chunk = self.chunk(meta, vec![body], Some(usage));
        chunk["system_fingerprint"] = completion.plugin.as_str().into();
        chunk
    }

    /// The usage-only chunk (`choices: []`) sent when `stream_options.include_usage` is set.
    pub fn usage_chunk(self, meta: &ResponseMeta, usage: Value) -> Value {
        self.chunk(meta, Vec::new(), Some(usage))
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
        ];
        for (body, field) in cases {
            let error = sampling(body.clone()).params(LIMITS).unwrap_err();
            assert_eq!(error.param.as_deref(), Some(field), "{body}");
            assert_eq!(error.status, 400);
        }
    }

    #[test]
    fn choices_and_constraints_are_checked() {
        assert_eq!(sampling(json!({})).choices().unwrap(), 1);
        assert_eq!(sampling(json!({"n": 16})).choices().unwrap(), 16);
        for n in [0, 17] {
            let error = sampling(json!({ "n": n })).choices().unwrap_err();
            assert_eq!(error.param.as_deref(), Some("n"));
        }
        let constraint = |body: Value| sampling(body).constraint();
        assert_eq!(constraint(json!({})).unwrap(), None);
        assert_eq!(
            constraint(json!({"response_format": {"type": "text"}})).unwrap(),
            None
        );
        assert_eq!(
            constraint(json!({"response_format": {"type": "json_object"}})).unwrap(),
            Some(Constraint::JsonObject)
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let format = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}});
        assert_eq!(
            constraint(json!({ "response_format": format })).unwrap(),
            Some(Constraint::JsonSchema(schema.to_string()))
        );
        assert_eq!(
            constraint(json!({"regex": "[0-9]+"})).unwrap(),
            Some(Constraint::Regex("[0-9]+".to_owned()))
        );
        let cases = [
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_object", "schema": [1]}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_object"}, "regex": "a"}),
                "regex",
            ),
            (json!({"regex": "a", "grammar": "start: \"a\""}), "grammar"),
        ];
        for (body, field) in cases {
            let error = constraint(body.clone()).unwrap_err();
            assert_eq!(error.param.as_deref(), Some(field), "{body}");
            assert_eq!(error.status, 400);
        }
        assert!(
            serde_json::from_value::<Sampling>(json!({"response_format": {"type": "yaml"}}))
                .is_err()
        );
    }

    #[test]
    fn logprobs_fields_are_checked_per_endpoint() {
        let chat = |extra: Value| {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value::<ChatCompletionRequest>(body)
                .unwrap()
                .logprobs()
        };
        assert_eq!(chat(json!({})).unwrap(), None);
        assert_eq!(chat(json!({"logprobs": true})).unwrap(), Some(0));
        assert_eq!(
            chat(json!({"logprobs": true, "top_logprobs": 20})).unwrap(),
            Some(20)
        );
        for (extra, field) in [
            (
                json!({"logprobs": true, "top_logprobs": 21}),
                "top_logprobs",
            ),
            (json!({"top_logprobs": 2}), "top_logprobs"),
            (json!({"echo": true}), "echo"),
        ] {
            let error = chat(extra.clone()).unwrap_err();
            assert_eq!(error.param.as_deref(), Some(field), "{extra}");
        }
        let completion = |body: Value| serde_json::from_value::<CompletionRequest>(body).unwrap();
        let request =
            completion(json!({"model": "m", "prompt": [[1, 2], [3]], "n": 2, "logprobs": 5}));
        assert_eq!(request.prompts().unwrap().len(), 2);
        assert_eq!(request.logprobs().unwrap(), Some(5));
        let request = completion(json!({"model": "m", "prompt": ["a", "b", "c"], "n": 6}));
        let error = request.prompts().unwrap_err();
        assert!(error.message.contains("18 choices"), "{}", error.message);
        let request = completion(json!({"model": "m", "prompt": "a", "logprobs": 21}));
        assert_eq!(
            request.logprobs().unwrap_err().param.as_deref(),
            Some("logprobs")
        );
        let request = completion(json!({"model": "m", "prompt": [[1], []]}));
        assert_eq!(
            request.prompts().unwrap_err().param.as_deref(),
            Some("prompt")
        );
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
