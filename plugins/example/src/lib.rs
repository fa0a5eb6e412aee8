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
//! - **embeddings** and a free-form JSON **infer** call;
//! - **errors** carry a kind and a message naming the problem; panics are caught by the glue.
//!
//! The "model" is deliberately trivial so the plumbing is easy to read: tokens are Unicode
//! characters, generation mirrors the prompt (its characters in reverse order), and embeddings
//! are L2-normalised hashed character trigrams.
//!
//! Configuration keys (all optional):
//! - `dimensions` (integer, default 64): embedding size;
//! - `fail_in` (string): fault injection for the host's tests — `"initialize"` or `"infer"`
//!   makes that call panic, to prove the host survives it.

mod mirror;
mod trigram;

use pio_plugin_api::{
    export_plugin, semver::Version, ActivateOptions, Capability, ChatRequest, EmbedRequest,
    EmbedResponse, GenerateRequest, GenerateResponse, Health, HealthStatus, ModelInfo, Plugin,
    PluginError, PluginMetadata, PluginResult, PluginStats, Prompt, TokenStream,
};

use mirror::MirrorGenerator;

/// Context length used when the host does not ask for one.
const DEFAULT_CONTEXT_LENGTH: u32 = 4096;

/// Validated configuration of the example plugin.
#[derive(Debug, Clone, PartialEq)]
struct Config {
    dimensions: usize,
    fail_in: Option<String>,
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
        let fail_in = object
            .get("fail_in")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        Ok(Self {
            dimensions,
            fail_in,
        })
    }

    fn should_fail_in(&self, operation: &str) -> bool {
        self.fail_in.as_deref() == Some(operation)
    }
}

/// State that exists only while the plugin is active.
#[derive(Debug)]
struct Active {
    context_length: u32,
    requests: u64,
    tokens: u64,
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

    /// Runs the mirror "model" over `prompt`, streaming its output.
    fn run(
        &mut self,
        prompt: Vec<u32>,
        params: &pio_plugin_api::GenerationParams,
        stream: &mut TokenStream<'_>,
    ) -> PluginResult<GenerateResponse> {
        params.validate()?;
        let active = self.active()?;
        let prompt_len = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        if prompt_len >= active.context_length {
            return Err(PluginError::invalid_input(format!(
                "prompt has {prompt_len} tokens but the context holds {}",
                active.context_length
            )));
        }
        let room = active.context_length - prompt_len;
        let response = MirrorGenerator::new(&prompt, params, room).run(stream)?;
        active.requests += 1;
        active.tokens += u64::from(prompt_len) + response.tokens.len() as u64;
        Ok(response)
    }
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
        if config.should_fail_in("initialize") {
            panic!("fault injected in initialize");
        }
        self.config = Some(config);
        Ok(())
    }

    fn activate(&mut self, options: &ActivateOptions) -> PluginResult<()> {
        self.config()?;
        let context_length = match options.context_length {
            0 => DEFAULT_CONTEXT_LENGTH,
            n => n,
        };
        self.active = Some(Active {
            context_length,
            requests: 0,
            tokens: 0,
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
        if self.config()?.should_fail_in("infer") {
            panic!("fault injected in infer");
        }
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
        let prompt = match &request.prompt {
            Prompt::Text(text) => tokenize_chars(text),
            Prompt::Tokens(tokens) => {
                detokenize_chars(tokens)?;
                tokens.to_vec()
            }
        };
        self.run(prompt, &request.params, stream)
    }

    fn chat(
        &mut self,
        request: &ChatRequest,
        stream: &mut TokenStream<'_>,
    ) -> PluginResult<GenerateResponse> {
        let last_user = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role.as_str() == "user")
            .ok_or_else(|| PluginError::invalid_input("chat needs at least one user message"))?;
        self.run(tokenize_chars(&last_user.content), &request.params, stream)
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
        let (requests, tokens) = self
            .active
            .as_ref()
            .map_or((0, 0), |a| (a.requests, a.tokens));
        PluginStats {
            host_memory_bytes: std::mem::size_of::<Self>() as u64,
            requests,
            tokens,
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
