//! # The Inference-PIO example plugin
//!
//! A complete plugin that needs no model file and no GPU: the template third-party authors copy,
//! and the fixture of the host's loader tests. It shows every part of the contract:
//!
//! - **metadata** ([`Plugin::metadata`]) is static and cheap;
//! - **configuration** arrives as JSON in [`Plugin::initialize`] and is validated there;
//! - **activation** allocates what serving needs and honours the context length;
//! - **text generation** streams one token at a time, honours `max_new_tokens`, stop strings
//!   (never emitting a stop string's text) and cancellation by the host;
//! - **batched generation** (`open_sequence` / `step_sequences` / `close_sequence`, see
//!   [`batch`]) gives exactly the tokens and text of `generate` / `chat` for the same request,
//!   so results never depend on how the host batches; `stats().details_json` reports
//!   `largest_batch` (the most sequences one step carried), `open_sequences` and `pid` (the
//!   process serving the instance: the host's, or a worker's);
//! - **embeddings** and a free-form JSON **infer** call;
//! - **errors** carry a kind and a message naming the problem; panics are caught by the glue.
//!
//! The "model" is deliberately trivial so the plumbing is easy to read: tokens are Unicode
//! characters, generation mirrors the prompt (its characters in reverse order), and embeddings
//! are L2-normalised hashed character trigrams.
//!
//! Configuration keys (all optional):
//! - `dimensions` (integer, default 64): embedding size;
//! - `fail_in` (string) and `fault` (string, default `"panic"`): fault injection for the host's
//!   tests — the named call (`initialize`, `activate`, `infer`, `generate`, `chat`,
//!   `open_sequence`, `step_sequences`, `close_sequence`) fails that way (see [`fault`]), to
//!   prove the host survives it;
//! - `ignore_limits` (boolean, default false): a test fixture for the host — generation
//!   ignores `max_new_tokens` and stop strings (it still ends with the mirrored prompt or the
//!   context, and still stops when the host's token callback says so), to prove the host
//!   enforces them itself. Never set it otherwise.

mod batch;
mod fault;
mod mirror;
mod trigram;

use pio_plugin_api::{
    export_plugin, semver::Version, ActivateOptions, Capability, ChatRequest, EmbedRequest,
    EmbedResponse, GenerateRequest, GenerateResponse, GenerationParams, Health, HealthStatus,
    ModelInfo, Plugin, PluginError, PluginMetadata, PluginResult, PluginStats, Prompt,
    SequenceOpened, SequenceRequest, SequenceStep, TokenStream,
};

use batch::OpenSequences;
use fault::FaultPlan;
use mirror::MirrorSequence;

/// Token ids are below this: one past the largest Unicode scalar value.
const VOCAB_SIZE: u32 = 0x11_0000;

/// Context length used when the host does not ask for one.
const DEFAULT_CONTEXT_LENGTH: u32 = 4096;

/// Validated configuration of the example plugin.
#[derive(Debug, Clone, PartialEq)]
struct Config {
    dimensions: usize,
    fault: Option<FaultPlan>,
    /// Test fixture: generate as if no `max_new_tokens` or stop string had been given.
    ignore_limits: bool,
}

impl Config {
    fn from_json(config: &pio_plugin_api::serde_json::Value) -> PluginResult<Self> {
        let object = config
            .as_object()
            .ok_or_else(|| PluginError::invalid_input("configuration must be a JSON object"))?;
        let dimensions = match object.get("dimensions") {
            None => 64,
            Some(value) => value
                .as_u64()
                .filter(|d| (1..=4096).contains(d))
                .ok_or_else(|| {
                    PluginError::invalid_input(format!(
                        "configuration 'dimensions' must be an integer in 1..=4096, got {value}"
                    ))
                })? as usize,
        };
        let ignore_limits = match object.get("ignore_limits") {
            None => false,
            Some(value) => value.as_bool().ok_or_else(|| {
                PluginError::invalid_input(format!(
                    "configuration 'ignore_limits' must be a boolean, got {value}"
                ))
            })?,
        };
        Ok(Self {
            dimensions,
            fault: FaultPlan::from_config(object)?,
            ignore_limits,
        })
    }

    /// Fails as configured if `call` is the call named by `fail_in`.
    fn inject_fault(&self, call: &str) -> PluginResult<()> {
        self.fault
            .as_ref()
            .map_or(Ok(()), |plan| plan.trigger(call))
    }
}

/// State that exists only while the plugin is active.
#[derive(Debug)]
struct Active {
    context_length: u32,
    /// See [`Config::ignore_limits`].
    ignore_limits: bool,
    requests: u64,
    tokens: u64,
    sequences: OpenSequences,
}

impl Active {
    /// Checks a request against the context and starts its sequence.
    fn start(&self, prompt: Vec<u32>, params: &GenerationParams) -> PluginResult<MirrorSequence> {
        params.validate()?;
        let unlimited;
        let params = if self.ignore_limits {
            unlimited = GenerationParams {
                max_new_tokens: u32::MAX,
                stop: Default::default(),
                ..params.clone()
            };
            &unlimited
        } else {
            params
        };
        let prompt_len = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        if prompt_len >= self.context_length {
            return Err(PluginError::invalid_input(format!(
                "prompt has {prompt_len} tokens but the context holds {}",
                self.context_length
            )));
        }
        MirrorSequence::new(&prompt, params, self.context_length - prompt_len)
    }

    /// Counts a served request.
    fn record(&mut self, prompt_tokens: u32, generated_tokens: usize) {
        self.requests += 1;
        self.tokens += u64::from(prompt_tokens) + generated_tokens as u64;
    }
}

/// The example plugin.
#[derive(Debug, Default)]
pub struct ExamplePlugin {
    config: Option<Config>,
    active: Option<Active>,
}

impl ExamplePlugin {
    fn config(&self) -> PluginResult<&Config> {
        self.config
            .as_ref()
            .ok_or_else(|| PluginError::invalid_input("plugin is not initialized"))
    }

    fn active(&mut self) -> PluginResult<&mut Active> {
        self.active
            .as_mut()
            .ok_or_else(|| PluginError::invalid_input("plugin is not active"))
    }

    /// Runs the mirror "model" over `prompt` to its end, streaming its output.
    fn run(
        &mut self,
        prompt: Vec<u32>,
        params: &GenerationParams,
        stream: &mut TokenStream<'_>,
    ) -> PluginResult<GenerateResponse> {
        let active = self.active()?;
        let response = active.start(prompt, params)?.stream(stream);
        active.record(response.prompt_tokens, response.tokens.len());
        Ok(response)
    }
}

/// The prompt tokens of a completion request.
fn generate_prompt(request: &GenerateRequest) -> PluginResult<Vec<u32>> {
    match &request.prompt {
        Prompt::Text(text) => Ok(tokenize_chars(text)),
        Prompt::Tokens(tokens) => {
            detokenize_chars(tokens)?;
            Ok(tokens.to_vec())
        }
    }
}

/// The prompt tokens of a chat request: the mirror answers the last user message.
fn chat_prompt(request: &ChatRequest) -> PluginResult<Vec<u32>> {
    let last_user = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role.as_str() == "user")
        .ok_or_else(|| PluginError::invalid_input("chat needs at least one user message"))?;
    Ok(tokenize_chars(&last_user.content))
}

/// Tokens of the example "model" are Unicode scalar values.
fn tokenize_chars(text: &str) -> Vec<u32> {
    text.chars().map(u32::from).collect()
}

fn detokenize_chars(tokens: &[u32]) -> PluginResult<String> {
    tokens
        .iter()
        .map(|&t| {
            char::from_u32(t)
                .ok_or_else(|| PluginError::invalid_input(format!("token id {t} is out of range")))
        })
        .collect()
}

impl Plugin for ExamplePlugin {
    fn metadata() -> PluginMetadata {
        PluginMetadata {
            name: "example".to_owned(),
            version: Version::parse(env!("CARGO_PKG_VERSION")).expect("crate version is semver"),
            plugin_api: pio_plugin_api::api_version(),
            host: ">=0.1.0, <0.2.0".parse().expect("valid requirement"),
            author: "Inference-PIO developers".to_owned(),
            description: "Model-free example: mirrors prompts and embeds character trigrams."
                .to_owned(),
            license: "MIT OR Apache-2.0".to_owned(),
            capabilities: vec![
                Capability::TextGeneration,
                Capability::Chat,
                Capability::Embeddings,
                Capability::BatchedGeneration,
            ],
            model: ModelInfo {
                architecture: Some("mirror".to_owned()),
                parameter_count: Some(0),
                quantization: None,
                context_length: Some(DEFAULT_CONTEXT_LENGTH),
                required_memory_bytes: Some(0),
            },
            tags: vec!["example".to_owned(), "template".to_owned()],
        }
    }

    fn new() -> PluginResult<Self> {
        Ok(Self::default())
    }

    fn initialize(&mut self, config: pio_plugin_api::serde_json::Value) -> PluginResult<()> {
        let config = Config::from_json(&config)?;
        config.inject_fault("initialize")?;
        self.config = Some(config);
        Ok(())
    }

    fn activate(&mut self, options: &ActivateOptions) -> PluginResult<()> {
        let config = self.config()?;
        config.inject_fault("activate")?;
        let ignore_limits = config.ignore_limits;
        let context_length = match options.context_length {
            0 => DEFAULT_CONTEXT_LENGTH,
            n => n,
        };
        self.active = Some(Active {
            context_length,
            ignore_limits,
            requests: 0,
            tokens: 0,
            sequences: OpenSequences::default(),
        });
        Ok(())
    }

    fn deactivate(&mut self) -> PluginResult<()> {
        self.active = None;
        Ok(())
    }

    fn infer(
        &mut self,
        request: pio_plugin_api::serde_json::Value,
    ) -> PluginResult<pio_plugin_api::serde_json::Value> {
        self.config()?.inject_fault("infer")?;
        self.active()?;
        let text = request
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| PluginError::invalid_input("request needs a string field 'text'"))?;
        let mirrored: String = text.chars().rev().collect();
        // The version lets callers attribute every response to the library that computed it.
        Ok(pio_plugin_api::serde_json::json!({
            "text": mirrored,
            "version": env!("CARGO_PKG_VERSION"),
        }))
    }

    fn tokenize(&mut self, text: &str, _add_special: bool) -> PluginResult<Vec<u32>> {
        Ok(tokenize_chars(text))
    }

    fn detokenize(&mut self, tokens: &[u32]) -> PluginResult<String> {
        detokenize_chars(tokens)
    }

    fn generate(
        &mut self,
        request: &GenerateRequest,
        stream: &mut TokenStream<'_>,
    ) -> PluginResult<GenerateResponse> {
        self.config()?.inject_fault("generate")?;
        self.run(generate_prompt(request)?, &request.params, stream)
    }

    fn chat(
        &mut self,
        request: &ChatRequest,
        stream: &mut TokenStream<'_>,
    ) -> PluginResult<GenerateResponse> {
        self.config()?.inject_fault("chat")?;
        self.run(chat_prompt(request)?, &request.params, stream)
    }

    fn open_sequence(&mut self, request: &SequenceRequest) -> PluginResult<SequenceOpened> {
        self.config()?.inject_fault("open_sequence")?;
        let (prompt, params) = match request {
            SequenceRequest::Generate(request) => (generate_prompt(request)?, &request.params),
            SequenceRequest::Chat(request) => (chat_prompt(request)?, &request.params),
        };
        let active = self.active()?;
        let sequence = active.start(prompt, params)?;
        let prompt_tokens = sequence.prompt_tokens();
        let id = active.sequences.open(sequence);
        Ok(SequenceOpened {
            id,
            prompt_tokens,
            // The mirror model keeps no per-token state worth reusing.
            cached_tokens: 0,
        })
    }

    fn step_sequences(&mut self, ids: &[u64]) -> PluginResult<Vec<SequenceStep>> {
        self.config()?.inject_fault("step_sequences")?;
        self.active()?.sequences.step(ids)
    }

    fn close_sequence(&mut self, id: u64) -> PluginResult<()> {
        self.config()?.inject_fault("close_sequence")?;
        let active = self.active()?;
        let sequence = active.sequences.close(id)?;
        active.record(sequence.prompt_tokens(), sequence.generated_tokens());
        Ok(())
    }

    fn embed(&mut self, request: &EmbedRequest) -> PluginResult<EmbedResponse> {
        let dimensions = self.config()?.dimensions;
        let active = self.active()?;
        let embeddings = request
            .inputs
            .iter()
            .map(|text| trigram::embed(text, dimensions).into())
            .collect();
        let prompt_tokens: usize = request.inputs.iter().map(|t| t.chars().count()).sum();
        active.requests += 1;
        active.tokens += prompt_tokens as u64;
        Ok(EmbedResponse {
            embeddings,
            dimensions: dimensions as u32,
            prompt_tokens: u32::try_from(prompt_tokens).unwrap_or(u32::MAX),
        })
    }

    fn stats(&self) -> PluginStats {
        let Some(active) = &self.active else {
            return PluginStats {
                host_memory_bytes: std::mem::size_of::<Self>() as u64,
                ..PluginStats::default()
            };
        };
        let details = pio_plugin_api::serde_json::json!({
            "largest_batch": active.sequences.largest_step(),
            "open_sequences": active.sequences.count(),
            "pid": std::process::id(),
            // Token ids are Unicode scalar values, all below this (surrogates are refused).
            "vocab_size": VOCAB_SIZE,
        });
        PluginStats {
            host_memory_bytes: std::mem::size_of::<Self>() as u64,
            requests: active.requests,
            tokens: active.tokens,
            details_json: details.to_string().into(),
            ..PluginStats::default()
        }
    }

    fn health(&self) -> Health {
        match (&self.config, &self.active) {
            (_, Some(_)) => Health::new(HealthStatus::Ok, "active"),
            (Some(_), None) => Health::new(HealthStatus::Unavailable, "initialized, not active"),
            (None, None) => Health::new(HealthStatus::Unavailable, "not initialized"),
        }
    }
}

export_plugin!(ExamplePlugin);

#[cfg(test)]
mod tests {
    use pio_plugin_api::{
        ChatMessage, FinishReason, FnSink, StreamControl, TokenEvent, TokenStream,
    };

    use super::*;

    fn active_plugin() -> ExamplePlugin {
        let mut plugin = ExamplePlugin::new().unwrap();
        plugin
            .initialize(pio_plugin_api::serde_json::json!({}))
            .unwrap();
        plugin.activate(&ActivateOptions::default()).unwrap();
        plugin
    }

    /// The events and finish reason of `request` run alone through `generate` / `chat`.
    fn alone(request: &SequenceRequest) -> (Vec<TokenEvent>, FinishReason) {
        let mut events = Vec::new();
        let mut sink = FnSink(|e: &TokenEvent| {
            events.push(e.clone());
            StreamControl::Continue
        });
        let mut stream = TokenStream::new(sink.as_sink());
        let mut plugin = active_plugin();
        let finish = match request {
            SequenceRequest::Generate(r) => plugin.generate(r, &mut stream),
            SequenceRequest::Chat(r) => plugin.chat(r, &mut stream),
        }
        .unwrap()
        .finish_reason;
        drop(stream);
        (events, finish)
    }

    fn details(plugin: &ExamplePlugin) -> pio_plugin_api::serde_json::Value {
        pio_plugin_api::serde_json::from_str(&plugin.stats().details_json).unwrap()
    }

    fn generate(prompt: &str, max_new_tokens: u32, stop: &[&str]) -> SequenceRequest {
        let mut params = GenerationParams::greedy(max_new_tokens);
        params.stop = stop.iter().map(|s| (*s).into()).collect();
        SequenceRequest::Generate(GenerateRequest {
            prompt: Prompt::Text(prompt.into()),
            params,
        })
    }

    #[test]
    fn batched_steps_give_exactly_what_generate_and_chat_give() {
        let requests = [
            generate("hello world", 100, &[]),
            generate("abcdef", 3, &[]),
            generate("abcdefgh", 100, &["dc"]),
            generate("xyz", 100, &["yX"]),
            SequenceRequest::Chat(ChatRequest {
                messages: vec![ChatMessage::new("user", "héllo")].into(),
                params: GenerationParams::greedy(100),
            }),
        ];
        let mut plugin = active_plugin();
        let mut open: Vec<(u64, usize)> = Vec::new();
        for (i, request) in requests.iter().enumerate() {
            open.push((plugin.open_sequence(request).unwrap().id, i));
        }
        let mut got = vec![(Vec::new(), None); requests.len()];
        while !open.is_empty() {
            let ids: Vec<u64> = open.iter().map(|(id, _)| *id).collect();
            let steps = plugin.step_sequences(&ids).unwrap();
            assert_eq!(steps.iter().map(|s| s.id).collect::<Vec<_>>(), ids);
            for (step, (id, i)) in steps.into_iter().zip(open.clone()) {
                got[i].0.push(step.event);
                if let Some(finish) = step.finish.into_option() {
                    got[i].1 = Some(finish);
                    plugin.close_sequence(id).unwrap();
                    open.retain(|(open_id, _)| *open_id != id);
                }
            }
        }
        for (request, (events, finish)) in requests.iter().zip(got) {
            assert_eq!((events, finish.unwrap()), alone(request), "{request:?}");
        }
        let details = details(&plugin);
        assert_eq!(details["largest_batch"], requests.len());
        assert_eq!(details["open_sequences"], 0);
        assert_eq!(plugin.stats().requests, requests.len() as u64);
    }

    #[test]
    fn a_refused_step_changes_nothing() {
        let mut plugin = active_plugin();
        let id = plugin.open_sequence(&generate("ab", 10, &[])).unwrap().id;
        let error = plugin.step_sequences(&[id, id + 1]).unwrap_err();
        assert!(error.message.contains("no open sequence"), "{error:?}");
        let error = plugin.step_sequences(&[id, id]).unwrap_err();
        assert!(error.message.contains("twice"), "{error:?}");
        assert_eq!(details(&plugin)["largest_batch"], 0);

        let first = plugin.step_sequences(&[id]).unwrap();
        assert_eq!(
            (first[0].event.index, first[0].event.text.as_str()),
            (0, "b")
        );
        let last = plugin.step_sequences(&[id]).unwrap();
        assert_eq!(last[0].finish.into_option(), Some(FinishReason::Stop));
        let error = plugin.step_sequences(&[id]).unwrap_err();
        assert!(error.message.contains("has finished"), "{error:?}");
        plugin.close_sequence(id).unwrap();
        assert!(plugin.close_sequence(id).is_err());
    }

    #[test]
    fn ignore_limits_generates_past_max_tokens_and_stops() {
        let mut plugin = ExamplePlugin::new().unwrap();
        plugin
            .initialize(pio_plugin_api::serde_json::json!({"ignore_limits": true}))
            .unwrap();
        plugin.activate(&ActivateOptions::default()).unwrap();
        let id = plugin
            .open_sequence(&generate("abcdef", 2, &["dc"]))
            .unwrap()
            .id;
        let mut text = String::new();
        loop {
            let step = plugin.step_sequences(&[id]).unwrap().remove(0);
            text.push_str(&step.event.text);
            if step.finish.into_option().is_some() {
                break;
            }
        }
        assert_eq!(text, "fedcba");
        let error = ExamplePlugin::new()
            .unwrap()
            .initialize(pio_plugin_api::serde_json::json!({"ignore_limits": 1}))
            .unwrap_err();
        assert!(error.message.contains("ignore_limits"), "{error:?}");
    }

    #[test]
    fn open_checks_the_request_like_generate() {
        let mut plugin = active_plugin();
        plugin.deactivate().unwrap();
        plugin
            .activate(&ActivateOptions {
                context_length: 4,
                ..ActivateOptions::default()
            })
            .unwrap();
        let error = plugin
            .open_sequence(&generate("abcdef", 10, &[]))
            .unwrap_err();
        assert!(error.message.contains("context holds 4"), "{error:?}");
        let error = plugin.open_sequence(&generate("", 10, &[])).unwrap_err();
        assert!(error.message.contains("empty"), "{error:?}");
        assert_eq!(details(&plugin)["open_sequences"], 0);
    }
}
