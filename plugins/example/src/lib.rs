//! # The Inference-PIO example plugin
//!
//! A complete plugin that needs no model file and no GPU: the template third-party authors copy,
//! and the fixture of the host's loader tests. It is written with the authoring kit
//! (`pio-plugin-kit`), so this file holds only what is particular to the model:
//!
//! - **configuration** ([`Config`]) is a serde type the kit parses and validates in
//!   `initialize`, with errors naming the key;
//! - **metadata** comes from `Cargo.toml` through [`metadata!`]; the API version and host range
//!   are the kit's;
//! - **activation** ([`Model::activate`]) builds the [`Mirror`], honouring the context length;
//! - **text generation** is [`TextModel::open`] / [`TextModel::step`] over token ids: the kit's
//!   driver adds stop strings (never emitting a stop string's text), `max_new_tokens`,
//!   cancellation by the host, timings and usage, and serves `generate`, `chat` and **batched
//!   generation** (`open_sequence` / `step_sequences` / `close_sequence`) from the same steps,
//!   so results never depend on how the host batches; the kit's stats details report
//!   `largest_batch` (the most sequences one step carried), `open_sequences`, `vocab_size` and
//!   `pid` (the process serving the instance: the host's, or a worker's);
//! - **embeddings** ([`Model::embed`]) and a free-form JSON **infer** call;
//! - **errors** carry a kind and a message naming the problem; panics are caught by the glue.
//!
//! The "model" is deliberately trivial so the plumbing is easy to read: tokens are Unicode
//! characters ([`CharTokenizer`]), generation mirrors the prompt (its characters in reverse
//! order), chat mirrors the last user message, and embeddings are L2-normalised hashed
//! character trigrams.
//!
//! Configuration keys (all optional):
//! - `dimensions` (integer in 1..=4096, default 64): embedding size;
//! - `fail_in` (string) and `fault` (string, default `"panic"`): fault injection for the host's
//!   tests — the named call (`initialize`, `activate`, `infer`, `generate`, `chat`,
//!   `open_sequence`, `step_sequences`, `close_sequence`) fails that way (see [`fault`]), to
//!   prove the host survives it;
//! - `ignore_limits` (boolean, default false): a test fixture for the host — generation
//!   ignores `max_new_tokens` and stop strings (it still ends with the mirrored prompt or the
//!   context, and still stops when the host's token callback says so), to prove the host
//!   enforces them itself. Never set it otherwise.
//!
//! The last two are the host's test fixtures, kept out of the model by a decorator
//! ([`fixture::TestFixtures`]); a real plugin exports its `TextPlugin` directly.

mod fault;
mod fixture;
mod trigram;

use pio_plugin_kit::{
    api::serde_json::{self, json},
    metadata, Activation, Capability, CategoryMemory, CharTokenizer, Config, Embeddings, Logprobs,
    MemoryCategory, MemoryUse, Message, Model, ModelInfo, Next, PluginError, PluginMetadata,
    PluginResult, Sampled, SequenceParams, StepOptions, TextModel, TextPlugin, Tokenizer,
};

/// Context length used when the host does not ask for one.
const DEFAULT_CONTEXT_LENGTH: u32 = 4096;

/// The example plugin: the mirror model with the host's test fixtures.
pub type ExamplePlugin = fixture::TestFixtures<TextPlugin<Mirror>>;

/// Configuration of the example plugin (the test fixtures' keys are taken out before).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    /// Embedding size.
    dimensions: usize,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        Self { dimensions: 64 }
    }
}

impl Config for MirrorConfig {
    fn validate(&self) -> Result<(), String> {
        match self.dimensions {
            1..=4096 => Ok(()),
            other => Err(format!("dimensions must be in 1..=4096, got {other}")),
        }
    }
}

/// The active mirror model.
#[derive(Debug)]
pub struct Mirror {
    context_length: u32,
    dimensions: usize,
    /// Host bytes of the open sequences' token buffers: the mirror's "KV cache".
    sequence_bytes: u64,
}

/// Host bytes of a sequence's token buffer.
fn sequence_bytes(sequence: &Vec<u32>) -> u64 {
    (sequence.capacity() * std::mem::size_of::<u32>()) as u64
}

impl Model for Mirror {
    type Config = MirrorConfig;
    type Tokenizer = CharTokenizer;

    fn metadata() -> PluginMetadata {
        metadata!("example")
            .capabilities([
                Capability::TextGeneration,
                Capability::Chat,
                Capability::Embeddings,
                Capability::BatchedGeneration,
            ])
            .model(ModelInfo {
                architecture: Some("mirror".to_owned()),
                parameter_count: Some(0),
                quantization: None,
                context_length: Some(DEFAULT_CONTEXT_LENGTH),
                required_memory_bytes: Some(0),
            })
            .tags(["example", "template"])
            .build()
    }

    fn activate(config: &MirrorConfig, activation: &Activation) -> PluginResult<Self> {
        Ok(Self {
            context_length: activation.context_length.unwrap_or(DEFAULT_CONTEXT_LENGTH),
            dimensions: config.dimensions,
            sequence_bytes: 0,
        })
    }

    /// No device memory: the model itself and its open sequences' token buffers (the
    /// mirror's "KV cache"), on the host.
    fn memory_report(&self) -> MemoryUse {
        MemoryUse {
            categories: vec![
                CategoryMemory::new(MemoryCategory::KvCache, 0, self.sequence_bytes),
                CategoryMemory::new(MemoryCategory::Other, 0, std::mem::size_of::<Self>() as u64),
            ],
        }
    }

    /// An activation holds the model itself; sequences come later.
    fn estimate_memory(_: &MirrorConfig, _: &Activation) -> PluginResult<MemoryUse> {
        Ok(MemoryUse {
            categories: vec![CategoryMemory::new(
                MemoryCategory::Other,
                0,
                std::mem::size_of::<Self>() as u64,
            )],
        })
    }

    fn tokenizer(&self) -> &CharTokenizer {
        &CharTokenizer
    }

    fn infer(&mut self, request: serde_json::Value) -> PluginResult<serde_json::Value> {
        let text = request
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| PluginError::invalid_input("request needs a string field 'text'"))?;
        let mirrored: String = text.chars().rev().collect();
        // The version lets callers attribute every response to the library that computed it.
        Ok(json!({
            "text": mirrored,
            "version": env!("CARGO_PKG_VERSION"),
        }))
    }

    fn embed(&mut self, texts: &[&str]) -> PluginResult<Embeddings> {
        let prompt_tokens: usize = texts.iter().map(|t| t.chars().count()).sum();
        Ok(Embeddings {
            vectors: texts
                .iter()
                .map(|text| trigram::embed(text, self.dimensions))
                .collect(),
            dimensions: self.dimensions as u32,
            prompt_tokens: u32::try_from(prompt_tokens).unwrap_or(u32::MAX),
        })
    }
}

impl TextModel for Mirror {
    /// The prompt's tokens not yet mirrored: the next one is the last.
    type Sequence = Vec<u32>;

    fn context_length(&self) -> u32 {
        self.context_length
    }

    /// The mirror answers the last user message.
    fn chat_prompt(&self, messages: &[Message]) -> PluginResult<Vec<u32>> {
        let last_user = messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .ok_or_else(|| PluginError::invalid_input("chat needs at least one user message"))?;
        Ok(last_user.content.chars().map(u32::from).collect())
    }

    fn open(&mut self, prompt: &[u32], _params: &SequenceParams) -> PluginResult<Vec<u32>> {
        let sequence = prompt.to_vec();
        self.sequence_bytes += sequence_bytes(&sequence);
        Ok(sequence)
    }

    fn close(&mut self, sequence: Vec<u32>) {
        self.sequence_bytes -= sequence_bytes(&sequence);
    }

    fn step(&mut self, rest: &mut Vec<u32>) -> PluginResult<Next> {
        // The kit opens no empty prompt and never steps a sequence past its `Final` token.
        let token = rest.pop().unwrap_or_default();
        Ok(match rest.is_empty() {
            true => Next::Final(token),
            false => Next::Token(token),
        })
    }

    /// The mirror is certain of every token it writes: probability 1 (log-probability 0), no
    /// alternative with any chance. It has no grammar support (its text is fixed), which the
    /// kit reports: its tokenizer names no end-of-generation token.
    fn step_with(
        &mut self,
        batch: &mut [&mut Vec<u32>],
        options: &[StepOptions<'_>],
    ) -> PluginResult<Vec<Sampled>> {
        batch
            .iter_mut()
            .zip(options)
            .map(|(rest, options)| {
                let next = self.step(rest)?;
                let certain = Logprobs {
                    logprob: 0.0,
                    top: vec![(next.token(), 0.0)],
                };
                Ok(Sampled {
                    next,
                    logprobs: options.logprobs.map(|_| certain),
                })
            })
            .collect()
    }

    /// The mirror has no view of what a text continues with: every character is equally
    /// likely (ties list the lowest ids first).
    fn score(&mut self, prompt: &[u32], top: u32) -> PluginResult<Vec<Logprobs>> {
        let uniform = -(f64::from(CharTokenizer.vocab_size())).ln() as f32;
        let alternatives: Vec<(u32, f32)> = (0..top).map(|token| (token, uniform)).collect();
        Ok(prompt[1..]
            .iter()
            .map(|_| Logprobs {
                logprob: uniform,
                top: alternatives.clone(),
            })
            .collect())
    }
}

// Left out only by the host's test of a library that is not a plugin.
#[cfg(not(feature = "no-root-module"))]
pio_plugin_kit::export_plugin!(ExamplePlugin);

#[cfg(test)]
mod tests {
    use pio_plugin_kit::api::{
        ActivateOptions, ChatMessage, ChatRequest, FinishReason, FnSink, GenerateRequest,
        GenerationParams, Plugin, Prompt, SequenceRequest, StreamControl, TokenEvent, TokenStream,
    };

    use super::*;

    fn active_plugin() -> ExamplePlugin {
        let mut plugin = ExamplePlugin::new().unwrap();
        plugin.initialize(serde_json::json!({})).unwrap();
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

    fn details(plugin: &ExamplePlugin) -> serde_json::Value {
        serde_json::from_str(&plugin.stats().details_json).unwrap()
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
    fn memory_reports_the_open_sequences_and_the_pretend_device_bytes() {
        use pio_plugin_kit::api::{MemoryCategory, MemoryReport};
        let host = |report: &MemoryReport, c: MemoryCategory| {
            report
                .categories
                .iter()
                .find(|m| m.category == c)
                .map(|m| (m.device_bytes, m.host_bytes))
        };
        let mut plugin = ExamplePlugin::new().unwrap();
        plugin
            .initialize(serde_json::json!({"device_bytes": 4096}))
            .unwrap();
        let options = ActivateOptions::default();
        let estimate = plugin.estimate_memory(&options).unwrap();
        assert_eq!(estimate.device_bytes(), 4096);
        assert!(plugin.memory_report().unwrap().categories.is_empty());
        plugin.activate(&options).unwrap();
        let report = plugin.memory_report().unwrap();
        assert_eq!(report.device_bytes(), 4096);
        assert_eq!(host(&report, MemoryCategory::KvCache), Some((0, 0)));
        let request = SequenceRequest::Generate(GenerateRequest {
            prompt: Prompt::Text("hello".into()),
            params: GenerationParams::greedy(8),
        });
        let opened = plugin.open_sequence(&request).unwrap();
        let report = plugin.memory_report().unwrap();
        assert_eq!(host(&report, MemoryCategory::KvCache), Some((0, 5 * 4)));
        plugin.close_sequence(opened.id).unwrap();
        let report = plugin.memory_report().unwrap();
        assert_eq!(host(&report, MemoryCategory::KvCache), Some((0, 0)));
        plugin.deactivate().unwrap();
        assert!(plugin.memory_report().unwrap().categories.is_empty());
        let error = plugin
            .initialize(serde_json::json!({"device_bytes": "lots"}))
            .unwrap_err();
        assert!(error.message.contains("device_bytes"), "{error:?}");
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
            .initialize(serde_json::json!({"ignore_limits": true}))
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
            .initialize(serde_json::json!({"ignore_limits": 1}))
            .unwrap_err();
        assert!(error.message.contains("ignore_limits"), "{error:?}");
    }

    #[test]
    fn fixture_keys_are_taken_out_before_the_model_parses_its_configuration() {
        let mut plugin = ExamplePlugin::new().unwrap();
        let error = plugin
            .initialize(serde_json::json!({"dimension": 8}))
            .unwrap_err();
        assert!(
            error.message.contains("unknown field `dimension`"),
            "{error:?}"
        );
        let error = plugin
            .initialize(serde_json::json!({"dimensions": 0}))
            .unwrap_err();
        assert!(
            error.message.contains("dimensions must be in 1..=4096"),
            "{error:?}"
        );
        plugin
            .initialize(serde_json::json!({
                "dimensions": 8,
                "fail_in": "generate",
                "fault": "error",
                "plugin_dir": "/plugins/example",
            }))
            .unwrap();
        plugin.activate(&ActivateOptions::default()).unwrap();
        let mut sink = FnSink(|_: &TokenEvent| StreamControl::Continue);
        let request = GenerateRequest {
            prompt: Prompt::Text("ab".into()),
            params: GenerationParams::greedy(5),
        };
        let error = plugin
            .generate(&request, &mut TokenStream::new(sink.as_sink()))
            .unwrap_err();
        assert_eq!(error.message.as_str(), "fault injected in generate");
        let id = plugin
            .open_sequence(&SequenceRequest::Generate(request))
            .unwrap()
            .id;
        assert_eq!(
            plugin.step_sequences(&[id]).unwrap()[0].event.text.as_str(),
            "b"
        );
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
