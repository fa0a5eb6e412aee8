//! The Inference-PIO plugin: configuration, lifecycle and the mapping between the plugin API's
//! types and the [`Engine`].
//!
//! Configuration (the `initialize` JSON): `{"model": "/path/to/model.gguf"}`; the host supplies
//! its cached default model's path. Optional `"batch_slots"` (default 8) and `"batch_context"`
//! (default 1024) size batched generation: sequences open at once and the positions each slot
//! holds at first (slots grow, up to the model's context, when a sequence needs more and memory
//! allows). `initialize` reads the file's metadata and tensor table (no weights are loaded);
//! `activate` checks that the context fits the model and the memory (see [`crate::memory`]),
//! then creates the GPU device and uploads the weights; `deactivate` drops both.
//!
//! Errors the host acts on: a context or prompt too long, or a token id outside the
//! vocabulary, is `invalid_input`; `open_sequence` refusing with `out_of_memory` (the batch
//! slots cannot grow for this sequence) means the same request can run through `generate` /
//! `chat`, which need no batch cache.

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use pio_gguf::GgufFile;
use pio_gpu::DeviceOptions;
use pio_plugin_api::{
    semver::Version, ActivateOptions, Capability, ChatRequest, GenerateRequest, GenerateResponse,
    GenerationParams, Health, HealthStatus, ModelInfo, Plugin, PluginError, PluginMetadata,
    PluginResult, PluginStats, Prompt, SequenceOpened, SequenceRequest, SequenceStep, TokenStream,
};

use crate::batch::BatchSettings;
use crate::bench::{bench_batched, bench_run, BenchConfig};
use crate::engine::{Engine, ModelSummary};
use crate::error::Error;
use crate::generate::{GenerateConfig, Generation};
use crate::perplexity::Style;
use crate::runtime::DEFAULT_MAX_BATCH;
use crate::sampler::{SamplingParams, DEFAULT_REPEAT_LAST_N};

impl From<Error> for PluginError {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::InvalidParams(_)
            | Error::PromptTooLong { .. }
            | Error::ContextTooLong { .. }
            | Error::Text(pio_text::TextError::UnknownToken { .. }) => {
                PluginError::invalid_input(message)
            }
            Error::UnsupportedArchitecture(_)
            | Error::UnsupportedFeature { .. }
            | Error::UnsupportedTensorType { .. } => PluginError::incompatible(message),
            Error::InvalidModel(_) | Error::Gguf(_) | Error::Text(_) => {
                PluginError::model_load(message)
            }
            // `SequenceTooLong` from `open_sequence` is the host's cue to serve the request as a
            // single sequence (`generate` / `chat`): every out-of-memory refusal of
            // `open_sequence` is, since that path needs no batch cache.
            Error::OverBudget { .. } | Error::OutOfMemory(_) | Error::SequenceTooLong { .. } => {
                PluginError::out_of_memory(message)
            }
            // pio-gpu's one mapping: failed allocations stay `out_of_memory`.
            Error::Gpu(gpu) => PluginError::new(gpu.plugin_error_kind(), message),
            Error::Numerics(_) => PluginError::internal(message),
        }
    }
}

/// What `activate` produced.
struct Active {
    engine: Engine,
    activate_ms: f64,
    requests: u64,
    tokens: u64,
}

/// The Llama plugin instance.
#[derive(Default)]
pub struct LlamaPlugin {
    /// The model file and what it holds, after `initialize`.
    model: Option<ModelSummary>,
    /// Batched generation's sizes, from the configuration.
    batch: BatchSettings,
    active: Option<Active>,
}

impl LlamaPlugin {
    /// The token ids of a prompt (text is tokenized with BOS when the model adds one).
    fn prompt_tokens(&mut self, prompt: &Prompt) -> PluginResult<Vec<u32>> {
        Ok(match prompt {
            Prompt::Text(text) => self.active()?.engine.tokenize(text, true)?,
            Prompt::Tokens(tokens) => tokens.to_vec(),
        })
    }

    /// The token ids of a conversation rendered with the chat template.
    fn chat_tokens(&mut self, messages: &[pio_plugin_api::ChatMessage]) -> PluginResult<Vec<u32>> {
        let messages: Vec<pio_text::ChatMessage> = messages
            .iter()
            .map(|m| pio_text::ChatMessage::new(m.role.as_str(), m.content.as_str()))
            .collect();
        Ok(self.active()?.engine.chat_prompt(&messages)?)
    }

    fn active(&mut self) -> PluginResult<&mut Active> {
        self.active
            .as_mut()
            .ok_or_else(|| PluginError::invalid_input("the plugin is not activated"))
    }

    /// Runs a generation from prompt token ids, streaming to `stream`.
    fn run(
        &mut self,
        prompt: Vec<u32>,
        params: &GenerationParams,
        stream: &mut TokenStream<'_>,
    ) -> PluginResult<GenerateResponse> {
        params.validate()?;
        let config = generate_config(params);
        let active = self.active()?;
        let g: Generation = active
            .engine
            .generate(&prompt, &config, &mut |e| stream.send(e.clone()))?;
        active.requests += 1;
        active.tokens += (g.prompt_tokens + g.tokens.len()) as u64;
        Ok(GenerateResponse {
            text: g.text.into(),
            tokens: g.tokens.into(),
            prompt_tokens: g.prompt_tokens as u32,
            finish_reason: g.finish_reason,
            timings: g.timings,
        })
    }
}

/// The [`BenchConfig`] and batch sizes of a `bench` request; absent fields take `pio bench`'s
/// defaults.
fn bench_config(request: &serde_json::Value) -> PluginResult<(BenchConfig, Vec<usize>)> {
    let count = |field: &str, default: usize| -> PluginResult<usize> {
        match request.get(field) {
            None => Ok(default),
            Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                PluginError::invalid_input(format!(
                    "bench: '{field}' must be a non-negative integer"
                ))
            }),
        }
    };
    let counts = |field: &str, default: &[usize]| -> PluginResult<Vec<usize>> {
        match request.get(field) {
            None => Ok(default.to_vec()),
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(|n| n.as_u64().map(|n| n as usize)).collect())
                .ok_or_else(|| {
                    PluginError::invalid_input(format!(
                        "bench: '{field}' must be an array of integers"
                    ))
                }),
        }
    };
    let config = BenchConfig {
        prompt_lengths: counts("prompt_lengths", &[128, 512])?,
        decode_prompt: count("decode_prompt", 128)?,
        decode_tokens: count("decode_tokens", 128)?,
    };
    Ok((config, counts("batch_sizes", &[])?))
}

/// The generation loop's configuration for the API's parameters. Without a seed, one is drawn
/// from the clock.
fn generate_config(params: &GenerationParams) -> GenerateConfig {
    let seed = params.seed.into_option().unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    GenerateConfig {
        max_new_tokens: params.max_new_tokens as usize,
        sampling: SamplingParams {
            temperature: params.temperature,
            top_k: params.top_k as usize,
            top_p: params.top_p,
            min_p: params.min_p,
            repetition_penalty: params.repetition_penalty,
            repeat_last_n: DEFAULT_REPEAT_LAST_N,
            seed,
        },
        stop_strings: params.stop.iter().map(|s| s.to_string()).collect(),
        eog_ids: Vec::new(),
    }
}

impl Plugin for LlamaPlugin {
    fn metadata() -> PluginMetadata {
        PluginMetadata {
            name: "llama".to_owned(),
            version: Version::parse(env!("CARGO_PKG_VERSION")).expect("crate version is semver"),
            plugin_api: pio_plugin_api::api_version(),
            host: ">=0.1.0, <0.2.0".parse().expect("valid requirement"),
            author: "Inference-PIO developers".to_owned(),
            description: "Llama-architecture GGUF text generation on the GPU (wgpu)".to_owned(),
            license: "MIT OR Apache-2.0".to_owned(),
            capabilities: vec![
                Capability::TextGeneration,
                Capability::Chat,
                Capability::BatchedGeneration,
            ],
            // The model is only known after `initialize`; `stats` reports it in `details_json`.
            model: ModelInfo {
                architecture: Some("llama".to_owned()),
                ..ModelInfo::default()
            },
            tags: vec!["llama".to_owned(), "gguf".to_owned(), "gpu".to_owned()],
        }
    }

    fn new() -> PluginResult<Self> {
        Ok(Self::default())
    }

    fn initialize(&mut self, config: serde_json::Value) -> PluginResult<()> {
        let path = config
            .get("model")
            .and_then(|m| m.as_str())
            .map(PathBuf::from)
            .ok_or_else(|| {
                PluginError::invalid_input(
                    "configuration needs \"model\": the path of a Llama GGUF file",
                )
            })?;
        let defaults = BatchSettings::default();
        let count = |field: &str, default: usize| -> PluginResult<usize> {
            match config.get(field) {
                None => Ok(default),
                Some(v) => v
                    .as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| n as usize)
                    .ok_or_else(|| {
                        PluginError::invalid_input(format!(
                            "configuration field \"{field}\" must be a positive integer, got {v}"
                        ))
                    }),
            }
        };
        let batch = BatchSettings {
            slots: count("batch_slots", defaults.slots)?,
            slot_context: count("batch_context", defaults.slot_context)?,
        };
        let file = GgufFile::open(&path).map_err(Error::from)?;
        self.model = Some(ModelSummary::read(&file)?);
        self.batch = batch;
        Ok(())
    }

    fn activate(&mut self, options: &ActivateOptions) -> PluginResult<()> {
        let summary = self
            .model
            .as_ref()
            .ok_or_else(|| PluginError::invalid_input("activate before initialize"))?;
        let start = Instant::now();
        let device = DeviceOptions {
            adapter: options.adapter.clone().into_option().map(|a| a.to_string()),
            ..DeviceOptions::default()
        };
        self.active = None;
        let engine = Engine::load(
            &summary.path,
            &device,
            options.context_length as usize,
            options.memory_budget_bytes,
            self.batch,
        )?;
        self.active = Some(Active {
            engine,
            activate_ms: start.elapsed().as_secs_f64() * 1e3,
            requests: 0,
            tokens: 0,
        });
        Ok(())
    }

    fn deactivate(&mut self) -> PluginResult<()> {
        self.active = None;
        Ok(())
    }

    /// Free-form operations:
    /// - `{"op": "perplexity", "text": TEXT, "window": N, "style": "plain" | "llama.cpp"}`
    ///   answers `{"perplexity", "mean_nll", "scored_tokens", "windows", "window"}` (windows as
    ///   described in [`crate::perplexity::perplexity`], or with `"llama.cpp"` in
    ///   [`crate::perplexity::perplexity_llama_cpp`]; `style` defaults to `plain`);
    /// - `{"op": "bench", "prompt_lengths": [N, ...], "decode_prompt": N, "decode_tokens": N,
    ///   "batch_sizes": [N, ...]}` runs [`bench_run`] once, and [`bench_batched`] for each batch
    ///   size (32-token prompts, `decode_tokens` steps), and answers their measurements plus
    ///   `dispatches_per_token`, `dispatches_per_layer` and `adapter`.
    fn infer(&mut self, request: serde_json::Value) -> PluginResult<serde_json::Value> {
        match request.get("op").and_then(|op| op.as_str()) {
            Some("bench") => {
                let (config, batch_sizes) = bench_config(&request)?;
                let engine = &mut self.active()?.engine;
                let json = |value: Result<serde_json::Value, serde_json::Error>| {
                    value.map_err(|e| {
                        PluginError::internal(format!("cannot serialize the benchmark: {e}"))
                    })
                };
                let mut answer = json(serde_json::to_value(bench_run(
                    engine.model_mut(),
                    &config,
                )?))?;
                let batched = batch_sizes
                    .iter()
                    .map(|&n| bench_batched(engine, n, 32, config.decode_tokens))
                    .collect::<Result<Vec<_>, Error>>()?;
                answer["batched"] = json(serde_json::to_value(batched))?;
                let model = engine.model();
                answer["dispatches_per_token"] = model.dispatches_per_token().into();
                answer["dispatches_per_layer"] = model.dispatches_per_layer().into();
                answer["adapter"] = model.gpu().adapter_info().to_string().into();
                Ok(answer)
            }
            Some("perplexity") => {
                let text = request["text"].as_str().ok_or_else(|| {
                    PluginError::invalid_input("perplexity needs a string field 'text'")
                })?;
                let window = request["window"].as_u64().ok_or_else(|| {
                    PluginError::invalid_input("perplexity needs an integer field 'window'")
                })? as usize;
                let style = match request.get("style") {
                    None => Style::Plain,
                    Some(name) => name.as_str().and_then(Style::from_name).ok_or_else(|| {
                        PluginError::invalid_input(format!(
                            "perplexity style {name} is not \"plain\" or \"llama.cpp\""
                        ))
                    })?,
                };
                let active = self.active()?;
                let result = active.engine.perplexity(text, window, style)?;
                active.requests += 1;
                active.tokens += result.scored_tokens as u64;
                Ok(serde_json::json!({
                    "perplexity": result.perplexity,
                    "mean_nll": result.mean_nll,
                    "scored_tokens": result.scored_tokens,
                    "windows": result.windows,
                    "window": window,
                }))
            }
            other => Err(PluginError::unsupported(format!(
                "unknown op {other:?}; this plugin's infer supports \"perplexity\" and \"bench\""
            ))),
        }
    }

    fn tokenize(&mut self, text: &str, add_special: bool) -> PluginResult<Vec<u32>> {
        Ok(self.active()?.engine.tokenize(text, add_special)?)
    }

    fn detokenize(&mut self, tokens: &[u32]) -> PluginResult<String> {
        Ok(self.active()?.engine.detokenize(tokens)?)
    }

    fn generate(
        &mut self,
        request: &GenerateRequest,
        stream: &mut TokenStream<'_>,
    ) -> PluginResult<GenerateResponse> {
        let prompt = self.prompt_tokens(&request.prompt)?;
        self.run(prompt, &request.params, stream)
    }

    fn chat(
        &mut self,
        request: &ChatRequest,
        stream: &mut TokenStream<'_>,
    ) -> PluginResult<GenerateResponse> {
        let prompt = self.chat_tokens(&request.messages)?;
        self.run(prompt, &request.params, stream)
    }

    fn open_sequence(&mut self, request: &SequenceRequest) -> PluginResult<SequenceOpened> {
        let (prompt, params) = match request {
            SequenceRequest::Generate(r) => (self.prompt_tokens(&r.prompt)?, &r.params),
            SequenceRequest::Chat(r) => (self.chat_tokens(&r.messages)?, &r.params),
        };
        params.validate()?;
        let config = generate_config(params);
        let active = self.active()?;
        let opened = active.engine.open_sequence(&prompt, &config)?;
        active.requests += 1;
        active.tokens += prompt.len() as u64;
        Ok(SequenceOpened {
            id: opened.id,
            prompt_tokens: prompt.len() as u32,
            cached_tokens: opened.cached_tokens as u32,
        })
    }

    fn step_sequences(&mut self, ids: &[u64]) -> PluginResult<Vec<SequenceStep>> {
        let active = self.active()?;
        let stepped = active.engine.step_sequences(ids)?;
        active.tokens += stepped.len() as u64;
        Ok(stepped
            .into_iter()
            .map(|s| SequenceStep {
                id: s.id,
                event: s.event,
                finish: s.finish.into(),
            })
            .collect())
    }

    fn close_sequence(&mut self, id: u64) -> PluginResult<()> {
        Ok(self.active()?.engine.close_sequence(id)?)
    }

    fn stats(&self) -> PluginStats {
        let mut stats = PluginStats::default();
        let mut details = serde_json::Map::new();
        if let Some(m) = &self.model {
            let hp = &m.spec.hparams;
            details.insert("model".into(), m.path.display().to_string().into());
            details.insert("architecture".into(), m.spec.architecture.into());
            details.insert("parameter_count".into(), m.parameter_count.into());
            details.insert("quantization".into(), m.quantization.clone().into());
            details.insert("trained_context_length".into(), hp.context_length.into());
            details.insert("layers".into(), hp.n_layer.into());
            details.insert("embedding_length".into(), hp.n_embd.into());
            details.insert("vocab_size".into(), hp.vocab_size.into());
            // At the trained context until activation says otherwise (below).
            let batch = DEFAULT_MAX_BATCH.min(hp.context_length);
            details.insert(
                "required_memory_bytes".into(),
                m.required_device_bytes(hp.context_length, batch).into(),
            );
        }
        if let Some(a) = &self.active {
            let model = a.engine.model();
            let gpu = model.gpu();
            stats.device_memory_bytes = gpu.allocated_bytes();
            stats.host_memory_bytes = a.engine.host_bytes();
            stats.activate_ms = a.activate_ms;
            stats.requests = a.requests;
            stats.tokens = a.tokens;
            details.insert("adapter".into(), gpu.adapter_info().to_string().into());
            let batch = a.engine.batch();
            details.insert("batch_slots".into(), batch.settings().slots.into());
            details.insert("batch_context".into(), batch.settings().slot_context.into());
            details.insert("open_sequences".into(), batch.open_count().into());
            details.insert("context_length".into(), model.context().into());
            details.insert(
                "required_memory_bytes".into(),
                a.engine
                    .summary()
                    .required_device_bytes(model.context(), model.max_batch())
                    .into(),
            );
        }
        stats.details_json = serde_json::Value::Object(details).to_string().into();
        stats
    }

    fn health(&self) -> Health {
        match (&self.model, &self.active) {
            (_, Some(_)) => Health::new(HealthStatus::Ok, "active"),
            (Some(_), None) => Health::new(HealthStatus::Unavailable, "initialized, not active"),
            (None, None) => Health::new(HealthStatus::Unavailable, "not initialized"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_model::{smollm2, tiny_llama_bytes, TinyConfig};
    use pio_plugin_api::{ChatMessage, ErrorKind, FinishReason, FnSink, StreamControl, TokenEvent};

    fn tiny_file(dir: &tempfile::TempDir, cfg: &TinyConfig) -> PathBuf {
        let path = dir.path().join("tiny.gguf");
        std::fs::write(&path, tiny_llama_bytes(cfg)).unwrap();
        path
    }

    fn initialized(path: &std::path::Path) -> LlamaPlugin {
        let mut p = LlamaPlugin::new().unwrap();
        p.initialize(serde_json::json!({ "model": path })).unwrap();
        p
    }

    /// Runs `f` with a token stream collecting events.
    fn streaming<T>(
        f: impl FnOnce(&mut TokenStream<'_>) -> T,
        control: impl Fn(usize) -> StreamControl,
    ) -> (T, Vec<TokenEvent>) {
        let mut events = Vec::new();
        let mut sink = FnSink(|e: &TokenEvent| {
            events.push(e.clone());
            control(events.len())
        });
        let out = f(&mut TokenStream::new(sink.as_sink()));
        (out, events)
    }

    #[test]
    fn an_unknown_token_id_is_invalid_input_naming_it() {
        let e = PluginError::from(Error::Text(pio_text::TextError::UnknownToken {
            id: 999_999,
            vocab_size: 49_152,
        }));
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(e.message.contains("999999"), "{}", e.message);
    }

    #[test]
    fn metadata_is_static_and_names_capabilities() {
        let m = LlamaPlugin::metadata();
        assert_eq!(m.name, "llama");
        assert!(m.has(Capability::TextGeneration) && m.has(Capability::Chat));
    }

    #[test]
    fn configuration_errors_are_typed() {
        let mut p = LlamaPlugin::new().unwrap();
        let e = p.initialize(serde_json::json!({})).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        let e = p
            .initialize(serde_json::json!({ "model": "/nonexistent.gguf" }))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::ModelLoad);
        let dir = tempfile::tempdir().unwrap();
        let cfg = TinyConfig {
            architecture: "falcon",
            ..TinyConfig::default()
        };
        let e = p
            .initialize(serde_json::json!({ "model": tiny_file(&dir, &cfg) }))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Incompatible);
        assert!(e.message.contains("falcon"), "{}", e.message);
        let request = GenerateRequest {
            prompt: Prompt::Tokens(vec![1].into()),
            params: GenerationParams::greedy(1),
        };
        let e = streaming(|s| p.generate(&request, s), |_| StreamControl::Continue)
            .0
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(e.message.contains("not activated"), "{}", e.message);
    }

    #[test]
    fn lifecycle_generate_stream_cancel_and_stats() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = initialized(&tiny_file(&dir, &TinyConfig::default()));
        assert_eq!(p.health().status, HealthStatus::Unavailable);
        let before: serde_json::Value = serde_json::from_str(&p.stats().details_json).unwrap();
        p.activate(&ActivateOptions {
            context_length: 64,
            ..ActivateOptions::default()
        })
        .unwrap();
        assert_eq!(p.health().status, HealthStatus::Ok);
        let stats = p.stats();
        assert!(stats.device_memory_bytes > 0 && stats.host_memory_bytes > 0);
        let details: serde_json::Value = serde_json::from_str(&stats.details_json).unwrap();
        assert_eq!(details["context_length"], 64);
        assert_eq!(details["architecture"], "llama");
        // The estimate for the trained context (256) exceeds the one for the 64 positions used,
        // and the estimate used covers what was actually allocated to within 10%.
        let (at_trained, at_64) = (
            before["required_memory_bytes"].as_u64().unwrap(),
            details["required_memory_bytes"].as_u64().unwrap(),
        );
        assert!(at_trained > at_64);
        let allocated = stats.device_memory_bytes as f64;
        assert!(
            (at_64 as f64 - allocated).abs() < 0.1 * allocated,
            "{at_64} vs {allocated}"
        );

        let ids = p.tokenize("hello world", false).unwrap();
        assert_eq!(p.detokenize(&ids).unwrap(), "hello world");

        let request = GenerateRequest {
            prompt: Prompt::Text("The cat".into()),
            params: GenerationParams {
                max_new_tokens: 12,
                temperature: 0.9,
                seed: Some(42).into(),
                ..GenerationParams::default()
            },
        };
        let (a, events) = streaming(
            |s| p.generate(&request, s).unwrap(),
            |_| StreamControl::Continue,
        );
        let (b, _) = streaming(
            |s| p.generate(&request, s).unwrap(),
            |_| StreamControl::Continue,
        );
        assert_eq!(a.tokens, b.tokens, "same seed, same tokens");
        let streamed: String = events.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(streamed, a.text.as_str());
        assert_eq!(events.len(), a.tokens.len());

        let (c, events) = streaming(
            |s| p.generate(&request, s).unwrap(),
            |n| {
                if n == 3 {
                    StreamControl::Stop
                } else {
                    StreamControl::Continue
                }
            },
        );
        if a.tokens.len() > 3 {
            assert_eq!(c.finish_reason, FinishReason::Cancelled);
            assert_eq!((events.len(), c.tokens.len()), (3, 3));
        }

        let bad = GenerateRequest {
            params: GenerationParams {
                top_p: 0.0,
                ..GenerationParams::default()
            },
            ..request.clone()
        };
        let e = streaming(|s| p.generate(&bad, s), |_| StreamControl::Continue)
            .0
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        let long = GenerateRequest {
            prompt: Prompt::Tokens(vec![5; 65].into()),
            ..request
        };
        let e = streaming(|s| p.generate(&long, s), |_| StreamControl::Continue)
            .0
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(
            e.message.contains("65") && e.message.contains("64"),
            "{}",
            e.message
        );
        assert_eq!(p.stats().requests, 3);
        // Token ids outside the vocabulary are the caller's mistake, named.
        let e = p.detokenize(&[5, 100_000]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput, "{e}");
        assert!(e.message.contains("100000"), "{}", e.message);

        p.deactivate().unwrap();
        assert_eq!(p.stats().device_memory_bytes, 0);
        assert_eq!(p.health().status, HealthStatus::Unavailable);
        assert!(p.tokenize("x", false).is_err());
    }

    #[test]
    #[ignore = "needs the SmolLM2 model: pio models fetch"]
    fn smollm2_chat_through_the_plugin() {
        let path = smollm2();
        let mut p = initialized(&path);
        p.activate(&ActivateOptions {
            context_length: 256,
            ..ActivateOptions::default()
        })
        .unwrap();
        let request = ChatRequest {
            messages: vec![ChatMessage::new("user", "What is the capital of France?")].into(),
            params: GenerationParams {
                stop: vec![" Paris".into()].into(),
                ..GenerationParams::greedy(32)
            },
        };
        let (r, _) = streaming(
            |s| p.chat(&request, s).unwrap(),
            |_| StreamControl::Continue,
        );
        // The stop string ends generation and is not part of the text.
        assert_eq!(r.text.as_str(), "The capital of France is");
        assert_eq!(r.finish_reason, FinishReason::Stop);
    }
    #[test]
    fn batched_generation_through_the_plugin_api() {
        let dir = tempfile::tempdir().unwrap();
        let path = tiny_file(&dir, &TinyConfig::default());
        let mut p = LlamaPlugin::new().unwrap();
        let bad = p
            .initialize(serde_json::json!({ "model": path, "batch_slots": 0 }))
            .unwrap_err();
        assert_eq!(bad.kind, ErrorKind::InvalidInput);
        assert!(bad.message.contains("batch_slots"), "{}", bad.message);
        p.initialize(serde_json::json!({ "model": path, "batch_slots": 2, "batch_context": 32 }))
            .unwrap();
        assert!(LlamaPlugin::metadata().has(Capability::BatchedGeneration));
        p.activate(&ActivateOptions {
            context_length: 64,
            ..ActivateOptions::default()
        })
        .unwrap();
        let generate = SequenceRequest::Generate(GenerateRequest {
            prompt: Prompt::Tokens(vec![3, 4, 5].into()),
            params: GenerationParams::greedy(3),
        });
        let chat = SequenceRequest::Chat(ChatRequest {
            messages: vec![ChatMessage::new("user", "hi")].into(),
            params: GenerationParams::greedy(3),
        });
        let a = p.open_sequence(&generate).unwrap();
        let b = p.open_sequence(&chat).unwrap();
        assert_eq!(a.prompt_tokens, 3);
        assert!(b.prompt_tokens > 3, "the chat template adds tokens");
        let details: serde_json::Value = serde_json::from_str(&p.stats().details_json).unwrap();
        assert_eq!(details["batch_slots"], 2);
        assert_eq!(details["batch_context"], 32);
        assert_eq!(details["open_sequences"], 2);
        let steps = p.step_sequences(&[a.id, b.id]).unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!((steps[0].id, steps[1].id), (a.id, b.id));
        p.close_sequence(a.id).unwrap();
        assert_eq!(
            p.close_sequence(a.id).unwrap_err().kind,
            ErrorKind::InvalidInput
        );
        // A prompt longer than the model's context (64, not the slot's 32) is refused, naming
        // both lengths.
        let long = SequenceRequest::Generate(GenerateRequest {
            prompt: Prompt::Tokens(vec![5; 65].into()),
            params: GenerationParams::greedy(3),
        });
        let e = p.open_sequence(&long).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput, "{e}");
        assert!(
            e.message.contains("65") && e.message.contains("64"),
            "{}",
            e.message
        );
    }

    #[test]
    fn absurd_contexts_are_refused_before_anything_is_allocated() {
        // Trained for 256 positions: more is refused, naming both.
        let dir = tempfile::tempdir().unwrap();
        let mut p = initialized(&tiny_file(&dir, &TinyConfig::default()));
        for context in [1_000_000_000, u32::MAX] {
            let e = p
                .activate(&ActivateOptions {
                    context_length: context,
                    ..ActivateOptions::default()
                })
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidInput, "{e}");
            assert!(
                e.message.contains(&context.to_string()) && e.message.contains("256"),
                "{}",
                e.message
            );
            assert_eq!(p.health().status, HealthStatus::Unavailable);
            assert_eq!(p.stats().device_memory_bytes, 0);
        }

        // A model claiming a 2^32 - 1 position context: its own context and any large one
        // need buffers no device has (each layer's K cache: 128 bytes a position).
        let dir = tempfile::tempdir().unwrap();
        let huge = TinyConfig {
            context_length: u32::MAX as usize,
            ..TinyConfig::default()
        };
        let mut p = initialized(&tiny_file(&dir, &huge));
        for context in [0, 1_000_000_000, u32::MAX] {
            let e = p
                .activate(&ActivateOptions {
                    context_length: context,
                    ..ActivateOptions::default()
                })
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::OutOfMemory, "{e}");
            let positions = if context == 0 { u32::MAX } else { context };
            let bytes = u64::from(positions) * 128;
            assert!(
                e.message
                    .contains(&format!("a context of {positions} positions"))
                    && e.message.contains(&bytes.to_string())
                    && e.message.contains("largest storage buffer"),
                "{}",
                e.message
            );
            assert_eq!(p.stats().device_memory_bytes, 0);
        }
        // What fits still activates.
        p.activate(&ActivateOptions {
            context_length: 64,
            ..ActivateOptions::default()
        })
        .unwrap();
        assert_eq!(p.health().status, HealthStatus::Ok);
    }

    /// A batched sequence and the same request generated alone.
    fn batched_and_alone(
        p: &mut LlamaPlugin,
        request: &GenerateRequest,
    ) -> (Vec<u32>, GenerateResponse) {
        let opened = p
            .open_sequence(&SequenceRequest::Generate(request.clone()))
            .unwrap();
        let mut tokens = Vec::new();
        loop {
            let step = p.step_sequences(&[opened.id]).unwrap().remove(0);
            tokens.push(step.event.token);
            if step.finish.into_option().is_some() {
                p.close_sequence(opened.id).unwrap();
                break;
            }
        }
        let (alone, _) = streaming(
            |s| p.generate(request, s).unwrap(),
            |_| StreamControl::Continue,
        );
        (tokens, alone)
    }

    #[test]
    fn a_prompt_longer_than_a_default_batch_slot_is_served() {
        // A 1500-token prompt in a 2048-position context: longer than the default slot of
        // 1024 positions.
        let dir = tempfile::tempdir().unwrap();
        let cfg = TinyConfig {
            context_length: 2048,
            ..TinyConfig::default()
        };
        let path = tiny_file(&dir, &cfg);
        let mut p = initialized(&path);
        assert_eq!(BatchSettings::default().slot_context, 1024);
        p.activate(&ActivateOptions {
            context_length: 2048,
            ..ActivateOptions::default()
        })
        .unwrap();
        let prompt: Vec<u32> = (0..1500).map(|i| (i * 37 + 11) % 290).collect();
        for params in [
            GenerationParams::greedy(12),
            GenerationParams {
                max_new_tokens: 12,
                temperature: 0.9,
                seed: Some(3).into(),
                ..GenerationParams::default()
            },
        ] {
            let request = GenerateRequest {
                prompt: Prompt::Tokens(prompt.clone().into()),
                params,
            };
            let (batched, alone) = batched_and_alone(&mut p, &request);
            assert_eq!(batched, alone.tokens.to_vec());
        }
        let details: serde_json::Value = serde_json::from_str(&p.stats().details_json).unwrap();
        assert_eq!(details["batch_context"], 2048, "the slots grew");

        // Under a device budget that leaves no room to grow, the sequence is refused as out of
        // memory (the host's cue to run it alone), and alone it runs.
        let summary = p.model.clone().unwrap();
        let budget = summary
            .memory_needs(&crate::memory::MemoryConfig {
                context: 2048,
                max_batch: DEFAULT_MAX_BATCH,
                batch_rows: 8 * 1024,
                copied_batch_rows: 0,
            })
            .device;
        p.activate(&ActivateOptions {
            context_length: 2048,
            memory_budget_bytes: budget,
            ..ActivateOptions::default()
        })
        .unwrap();
        let request = GenerateRequest {
            prompt: Prompt::Tokens(prompt.into()),
            params: GenerationParams::greedy(4),
        };
        let e = p
            .open_sequence(&SequenceRequest::Generate(request.clone()))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::OutOfMemory, "{e}");
        assert!(
            e.message.contains("1503 positions") && e.message.contains("single sequence"),
            "{}",
            e.message
        );
        let (alone, _) = streaming(
            |s| p.generate(&request, s).unwrap(),
            |_| StreamControl::Continue,
        );
        assert_eq!(alone.tokens.len(), 4);
    }
}
