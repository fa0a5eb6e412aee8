//! The Inference-PIO plugin: the Llama model on the authoring kit. The kit holds the
//! lifecycle, the API's types and the generation driver (stop strings, limits, cancellation,
//! timings, usage, batched sequences); this module holds the configuration, activation, stats
//! and the `infer` operations of an [`Engine`], and maps the crate's errors to the API's kinds.
//!
//! Configuration (the `initialize` JSON, see [`Settings`]): `{"model": "model.gguf"}`, a path
//! relative to the plugin's folder or absolute; the host supplies its cached default model's
//! path. Optional `"kv_blocks"` (default 512, the memory of 8192 positions) sizes the block
//! pool of batched sequences' keys and values (blocks of 16 positions, see
//! [`crate::kv_pool`]): how many sequences can be open at once follows from their lengths and
//! the prefixes they share. Optional `"weights"`: `"as-stored"` (default) or a type such as
//! `"q8_0"` the weight matrices are converted to as they load (an F32 or F16 model runs
//! compressed without rewriting its file). `activate` reads
//! the file's metadata and tensor table, checks that the context fits the model and the memory
//! (see [`crate::memory`]), then creates the GPU device and uploads the weights; `deactivate`
//! drops both.
//!
//! Errors the host acts on: a context or prompt too long, or a token id outside the
//! vocabulary, is `invalid_input`; `open_sequence` refusing with `out_of_memory` (the block
//! pool cannot hold this sequence now) means the request can wait for open sequences to close,
//! or run through `generate` / `chat`, which need no block of the pool.

use std::path::PathBuf;

use pio_gpu::{DeviceOptions, KvType, TuneMode, TuneSettings};
use pio_plugin_kit::{
    metadata, Activation, Capability, Compression, CompressionScope, Config, Freed, FreedMemory,
    MemoryCategory, MemoryUse, Model, ModelInfo, ModelStats, PluginError, PluginMetadata,
    PluginResult,
};

use crate::batch::DEFAULT_KV_BLOCKS;
use crate::bench::{bench_batched, bench_run, profile_steps, BenchConfig, ProfileConfig};
use crate::compress;
use crate::engine::{Engine, LoadOptions};
use crate::error::Error;
use crate::perplexity::Style;
use crate::runtime::{GpuModel, PipelineStats, StreamStats};
use crate::storage::{Storage, WeightStorage};
use crate::surgery;
use crate::tokenizer::GgufTokenizer;

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
            // `KvPoolFull` from `open_sequence` is the host's cue to retry when open sequences
            // have closed, or to serve the request as a single sequence (`generate` / `chat`),
            // which needs no block of the pool.
            Error::OverBudget { .. }
            | Error::BudgetTooSmallToStream { .. }
            | Error::OutOfMemory(_)
            | Error::KvPoolFull(_) => PluginError::out_of_memory(message),
            // pio-gpu's one mapping: failed allocations stay `out_of_memory`.
            Error::Gpu(gpu) => PluginError::new(gpu.plugin_error_kind(), message),
            Error::Numerics(_) | Error::Streaming(_) => PluginError::internal(message),
        }
    }
}

/// The plugin's configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The GGUF file: relative to the plugin's folder, or absolute.
    pub model: PathBuf,
    /// Blocks of 16 positions in the pool batched sequences share.
    #[serde(default = "default_kv_blocks")]
    pub kv_blocks: usize,
    /// Storage of the weight matrices on the device: `"as-stored"` (the default) or a type the
    /// kernels read, converted at load (see [`WeightStorage`]).
    #[serde(default, deserialize_with = "weight_storage")]
    pub weights: WeightStorage,
    /// Storage of the KV cache: `"f32"` (the default) or `"f16"` (half the memory per
    /// position; see [`KvType`]).
    #[serde(default, deserialize_with = "kv_type")]
    pub kv_type: KvType,
    /// The devices to split the layers over, in order: each an adapter index or a fragment
    /// of its name as `pio devices` lists them, or `"auto"` for the one the host would pick;
    /// the same adapter twice is two logical devices on it, and `"SELECTOR*N"` is `N` of them
    /// (`"auto*2"`). Empty (the default): one device.
    #[serde(default, deserialize_with = "device_list")]
    pub devices: Vec<String>,
    /// Layers per device of `devices`, in order (e.g. `[15, 15]`); empty (the default): the
    /// planner splits them by each layer's cost and each device's memory
    /// ([`crate::partition`]).
    #[serde(default)]
    pub split: Vec<usize>,
    /// How each matrix kernel's tile is chosen: `"auto"` (candidates timed per kernel shape at
    /// the first activation on an adapter, the fastest cached per adapter and driver; later
    /// activations read the cache), `"off"` (the adapter class's tiles, no search),
    /// `"retune"` (search every shape again, overwriting the cache) or `"gpus"` (the default:
    /// `auto` on a hardware adapter, `off` on a software one, where the first search costs
    /// tens of seconds and measured no gain). See [`pio_gpu::Tuner`].
    #[serde(default, deserialize_with = "tuning_mode")]
    pub tuning: TuneMode,
    /// The folder of the tuning cache files; default `$XDG_CACHE_HOME/pio/tuning`, else
    /// `~/.cache/pio/tuning`.
    #[serde(default)]
    pub tuning_cache_dir: Option<PathBuf>,
}

fn tuning_mode<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<TuneMode, D::Error> {
    let name = <String as serde::Deserialize>::deserialize(deserializer)?;
    TuneMode::from_name(&name).map_err(serde::de::Error::custom)
}

fn kv_type<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<KvType, D::Error> {
    let name = <String as serde::Deserialize>::deserialize(deserializer)?;
    KvType::from_name(&name).map_err(serde::de::Error::custom)
}

/// The most devices the `devices` setting may name.
const MAX_DEVICES: usize = 64;

/// The `devices` setting with every `SELECTOR*N` written out as `N` entries (at most
/// [`MAX_DEVICES`] in all).
fn device_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let entries = <Vec<String> as serde::Deserialize>::deserialize(deserializer)?;
    let mut devices = Vec::with_capacity(entries.len());
    for entry in entries {
        let (selector, count) = match entry.rsplit_once('*') {
            None => (entry.trim(), 1),
            Some((selector, count)) => match count.trim().parse::<usize>() {
                Ok(n) if n > 0 && n <= MAX_DEVICES => (selector.trim(), n),
                _ => {
                    return Err(serde::de::Error::custom(format!(
                        "device {entry:?}: the count after `*` must be a number from 1 to \
                         {MAX_DEVICES}"
                    )))
                }
            },
        };
        devices.extend(std::iter::repeat_n(selector.to_owned(), count));
        if devices.len() > MAX_DEVICES {
            return Err(serde::de::Error::custom(format!(
                "{} devices: at most {MAX_DEVICES}",
                devices.len()
            )));
        }
    }
    Ok(devices)
}

fn weight_storage<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<WeightStorage, D::Error> {
    let name = <String as serde::Deserialize>::deserialize(deserializer)?;
    WeightStorage::from_name(&name).map_err(serde::de::Error::custom)
}

fn default_kv_blocks() -> usize {
    DEFAULT_KV_BLOCKS
}

impl Config for Settings {
    fn validate(&self) -> Result<(), String> {
        if self.kv_blocks == 0 {
            return Err("kv_blocks must be at least 1, got 0".into());
        }
        if !self.split.is_empty() && self.split.len() != self.devices.len().max(1) {
            return Err(format!(
                "split has {} layer counts for {} devices: give one per device",
                self.split.len(),
                self.devices.len().max(1)
            ));
        }
        Ok(())
    }
}

impl Model for Engine {
    type Config = Settings;
    type Tokenizer = GgufTokenizer;

    fn metadata() -> PluginMetadata {
        metadata!("llama")
            .capabilities([
                Capability::TextGeneration,
                Capability::Chat,
                Capability::BatchedGeneration,
            ])
            // The model is only known at activation; `stats` reports it in its details.
            .model(ModelInfo {
                architecture: Some("llama".to_owned()),
                ..ModelInfo::default()
            })
            .tags(["llama", "gguf", "gpu"])
            .build()
    }

    fn activate(settings: &Settings, activation: &Activation) -> PluginResult<Self> {
        let options = load_options(settings, activation);
        Ok(Engine::load(&activation.resolve(&settings.model), options)?)
    }

    /// From the file's metadata and tensor table (see [`Engine::estimate`]), the block pool
    /// included (it is allocated at the first batched sequence); host bytes exclude the
    /// tokenizer, which is built only at activation.
    fn estimate_memory(settings: &Settings, activation: &Activation) -> PluginResult<MemoryUse> {
        let options = load_options(settings, activation);
        let needs = Engine::estimate(&activation.resolve(&settings.model), &options)?;
        Ok(MemoryUse {
            categories: needs.categories(true, 0, 0, 0),
        })
    }

    /// Weights, KV cache (the model's own, and the block pool once allocated, with the
    /// pool's size and use), activations and scratch from the sizes the engine was built
    /// with; the device bytes allocated beyond those (pipelines, uniforms, staging) and the
    /// tokenizer and read-back host memory are `other`.
    fn memory_report(&self) -> MemoryUse {
        let needs = self.memory_needs();
        let pool = self.kv_pool();
        let pool_used = pool.in_use() as u64 * self.kv_block_bytes();
        let pool_allocated = self.model().has_batch_cache();
        let categories = needs.categories(pool_allocated, pool_used, 0, 0);
        let accounted: u64 = categories.iter().map(|c| c.device_bytes).sum();
        let allocated = self.model().allocated_bytes();
        let other_host = self.host_bytes().saturating_sub(needs.host);
        MemoryUse {
            categories: needs.categories(
                pool_allocated,
                pool_used,
                allocated.saturating_sub(accounted),
                other_host,
            ),
        }
    }

    /// Drops the block pool's cached blocks (prefixes of closed sequences): they return to
    /// the pool's free blocks, reported as KV-cache bytes freed — the pool's buffers stay
    /// allocated (sized at activation), so the process's device memory does not shrink.
    fn force_memory_cleanup(&mut self) -> Freed {
        let blocks = self.kv_pool_mut().drop_cached() as u64;
        Freed {
            categories: vec![FreedMemory {
                category: MemoryCategory::KvCache,
                device_bytes: blocks * self.kv_block_bytes(),
                host_bytes: 0,
            }],
        }
    }

    /// Weights: every type the kernels read; the KV cache: f32 or f16.
    fn compression_formats(&self, scope: CompressionScope) -> &'static [&'static str] {
        compress::formats(scope)
    }

    /// Loads the model again with `scope` stored in `format` (see [`compress::compress`]:
    /// refused while batched sequences are open) and serves the new one from then on.
    fn compress(&mut self, format: &str, scope: CompressionScope) -> PluginResult<Compression> {
        let (compressed, report) = compress::compress(self, format, scope)?;
        *self = compressed;
        Ok(report)
    }

    fn compression_stats(&self) -> Option<Compression> {
        self.compression().cloned()
    }

    fn tokenizer(&self) -> &GgufTokenizer {
        self.tokenizer()
    }

    fn stats(&self) -> ModelStats {
        let summary = self.summary();
        let model = self.model();
        let hp = &summary.spec.hparams;
        let pool = self.kv_pool();
        let kv_type = self.options().storage.kv;
        let details = [
            ("model", summary.path.display().to_string().into()),
            ("architecture", summary.spec.architecture.into()),
            ("parameter_count", summary.parameter_count.into()),
            ("quantization", summary.quantization.clone().into()),
            ("weights", summary.weights.name().into()),
            ("weight_bytes", summary.weight_bytes.into()),
            ("trained_context_length", hp.context_length.into()),
            ("layers", hp.n_layer.into()),
            ("embedding_length", hp.n_embd.into()),
            ("adapter", model.adapters().into()),
            ("kv_type", kv_type.name().into()),
            ("kv_blocks", pool.n_blocks().into()),
            ("kv_blocks_available", pool.available().into()),
            ("context_length", model.context().into()),
            ("dispatches_per_token", model.dispatches_per_token().into()),
            (
                "required_memory_bytes",
                summary
                    .required_device_bytes(model.context(), model.max_batch(), kv_type)
                    .into(),
            ),
        ];
        ModelStats {
            device_memory_bytes: model.allocated_bytes(),
            host_memory_bytes: self.host_bytes(),
            details: details
                .into_iter()
                .chain(streaming_details(model.streaming()))
                .chain(pipeline_details(&model.pipeline_stats()))
                .chain([("tuning", tuning_details(model))])
                .map(|(key, value)| (key.to_owned(), value))
                .collect(),
        }
    }

    /// Free-form operations:
    /// - `{"op": "perplexity", "text": TEXT, "window": N}` answers
    ///   `{"perplexity", "mean_nll", "scored_tokens", "windows", "window"}` (windows as described
    ///   in [`crate::perplexity::perplexity`]);
    /// - `{"op": "bench", "prompt_lengths": [N, ...], "decode_prompt": N, "decode_tokens": N,
    ///   "batch_sizes": [N, ...]}` runs [`bench_run`] once, and [`bench_batched`] for each batch
    ///   size (32-token prompts, `decode_tokens` steps), and answers their measurements plus
    ///   `dispatches_per_token`, `dispatches_per_layer` and `adapter`; with `"per_kernel":
    ///   {"decode_position": N, "prefill_tokens": N, "repeats": N}` (or `true`, for 128, 64
    ///   and 5) also `per_kernel`, each dispatch of a decode and a prefill step timed and summed
    ///   by kernel ([`profile_steps`]);
    /// - `{"op": "surgery.analyze", ...}` and `{"op": "surgery.apply", ...}` on the loaded
    ///   model's file: see [`surgery::infer_analyze`] and [`surgery::infer_apply`].
    fn infer(&mut self, request: serde_json::Value) -> PluginResult<serde_json::Value> {
        match request.get("op").and_then(|op| op.as_str()) {
            Some("bench") => bench(self, &request),
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
                let result = self.perplexity(text, window, style)?;
                Ok(serde_json::json!({
                    "perplexity": result.perplexity,
                    "mean_nll": result.mean_nll,
                    "scored_tokens": result.scored_tokens,
                    "windows": result.windows,
                    "window": window,
                }))
            }
            Some("surgery.analyze") => Ok(surgery::infer_analyze(self, &request)?),
            Some("surgery.apply") => Ok(surgery::infer_apply(self, &request)?),
            other => Err(PluginError::unsupported(format!(
                "unknown op {other:?}; this plugin's infer supports \"perplexity\", \"bench\", \
                 \"surgery.analyze\" and \"surgery.apply\""
            ))),
        }
    }
}

/// How to load the engine for `settings` and the host's `activation`.
fn load_options(settings: &Settings, activation: &Activation) -> LoadOptions {
    LoadOptions {
        device: DeviceOptions {
            adapter: activation.adapter.clone(),
            ..DeviceOptions::default()
        },
        context_length: activation.context_length.unwrap_or(0) as usize,
        memory_budget: activation.memory_budget_bytes.unwrap_or(0),
        kv_blocks: settings.kv_blocks,
        storage: Storage {
            weights: settings.weights,
            kv: settings.kv_type,
        },
        devices: settings
            .devices
            .iter()
            .map(|device| DeviceOptions {
                adapter: match device.trim() {
                    "auto" => activation.adapter.clone(),
                    selector => Some(selector.to_owned()),
                },
                ..DeviceOptions::default()
            })
            .collect(),
        split: settings.split.clone(),
        tuning: TuneSettings {
            mode: settings.tuning,
            cache_dir: settings.tuning_cache_dir.clone(),
        },
    }
}

/// How the matrix kernels' tiles were chosen (the `tuning` detail of the stats and of a
/// benchmark's answer): `mode`, `searches` (kernel shapes searched in this activation, over
/// every device), `search_seconds`, `devices` (per device, how its kernels read storage:
/// `load_width` and `activation_reads`), and `kernels`, one entry per device and kernel shape with
/// its `device` index, `shape`, `variant` (the tile), `ms` (one launch, as measured) and
/// `source` (`searched`, `cached` or `default`).
fn tuning_details(model: &GpuModel) -> serde_json::Value {
    let reports = model.tuning();
    let kernels: Vec<serde_json::Value> = reports
        .iter()
        .enumerate()
        .flat_map(|(device, report)| {
            report.choices.iter().map(move |choice| {
                let mut entry = serde_json::to_value(choice).unwrap_or_default();
                entry["device"] = device.into();
                entry
            })
        })
        .collect();
    // How each device's kernels read storage: the variants chosen per device, not per shape.
    let reads: Vec<serde_json::Value> = model
        .gpus()
        .map(|gpu| {
            serde_json::json!({
                "load_width": gpu.load_width(),
                "activation_reads": gpu.activation_reads(),
            })
        })
        .collect();
    serde_json::json!({
        "mode": reports.first().map_or("off", |r| r.mode),
        "searches": reports.iter().map(|r| r.searches).sum::<usize>(),
        "search_seconds": reports.iter().map(|r| r.search_seconds).sum::<f64>(),
        "devices": reads,
        "kernels": kernels,
    })
}

/// What streaming layers from the file has done (`streamed_layers` 0 when nothing streams):
/// the ring's bytes, the layers and bytes written into it, the loader's time and the part of
/// it the steps waited for (what compute did not hide).
fn streaming_details(stats: Option<StreamStats>) -> Vec<(&'static str, serde_json::Value)> {
    let stats = stats.unwrap_or_default();
    vec![
        ("streamed_layers", stats.layers.into()),
        ("stream_ring_bytes", stats.ring_bytes.into()),
        ("stream_layers_written", stats.layers_written.into()),
        ("stream_bytes_written", stats.bytes_written.into()),
        ("stream_load_seconds", stats.load_time.as_secs_f64().into()),
        ("stream_wait_seconds", stats.wait_time.as_secs_f64().into()),
    ]
}

/// How the forward passes used the devices: `devices` (one object per device: `adapter`,
/// `layers` as `[first, end)`, `allocated_bytes`, `peak_bytes`, `busy_seconds`),
/// `pipeline_seconds` (wall time of the forward passes), `transferred_bytes` and
/// `transferred_bytes_per_token` (hidden states between devices), and `pipeline_bubble` (the
/// devices' idle share of that time).
fn pipeline_details(stats: &PipelineStats) -> Vec<(&'static str, serde_json::Value)> {
    let devices: Vec<serde_json::Value> = stats
        .devices
        .iter()
        .map(|d| {
            serde_json::json!({
                "adapter": d.adapter,
                "layers": [d.layers.start, d.layers.end],
                "allocated_bytes": d.allocated_bytes,
                "peak_bytes": d.peak_bytes,
                "busy_seconds": d.busy.as_secs_f64(),
            })
        })
        .collect();
    vec![
        ("devices", devices.into()),
        ("pipeline_seconds", stats.wall.as_secs_f64().into()),
        ("transferred_bytes", stats.transferred_bytes.into()),
        (
            "transferred_bytes_per_token",
            stats.bytes_per_token().into(),
        ),
        ("pipeline_bubble", stats.bubble().into()),
    ]
}

/// The `bench` operation (see [`Model::infer`]).
fn bench(engine: &mut Engine, request: &serde_json::Value) -> PluginResult<serde_json::Value> {
    let (config, batch_sizes) = bench_config(request)?;
    let json = |value: Result<serde_json::Value, serde_json::Error>| {
        value.map_err(|e| PluginError::internal(format!("cannot serialize the benchmark: {e}")))
    };
    let mut answer = json(serde_json::to_value(bench_run(
        engine.model_mut(),
        &config,
    )?))?;
    let batched = batch_sizes
        .iter()
        .map(|&n| bench_batched(engine, n, 32, config.decode_tokens))
        .collect::<PluginResult<Vec<_>>>()?;
    answer["batched"] = json(serde_json::to_value(batched))?;
    let model = engine.model();
    if let Some(profile) = profile_config(request, model.max_batch())? {
        answer["per_kernel"] = json(serde_json::to_value(profile_steps(model, &profile)?))?;
    }
    answer["dispatches_per_token"] = model.dispatches_per_token().into();
    answer["dispatches_per_layer"] = model.dispatches_per_layer().into();
    answer["adapter"] = model.adapters().into();
    answer["device_peak_bytes"] = model.peak_allocated_bytes().into();
    answer["pipeline"] = pipeline_details(&model.pipeline_stats())
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
    answer["streaming"] = streaming_details(model.streaming())
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
    answer["tuning"] = tuning_details(model);
    Ok(answer)
}

/// The `per_kernel` field of a `bench` request: absent or `false` for none, `true` for the
/// defaults, or an object overriding some of them; the prefill is at most `max_batch` tokens.
fn profile_config(
    request: &serde_json::Value,
    max_batch: usize,
) -> PluginResult<Option<ProfileConfig>> {
    let defaults = ProfileConfig {
        decode_position: 128,
        prefill_tokens: 64,
        repeats: 5,
    };
    let fields = match request.get("per_kernel") {
        None | Some(serde_json::Value::Bool(false)) => return Ok(None),
        Some(serde_json::Value::Bool(true)) => serde_json::Map::new(),
        Some(serde_json::Value::Object(fields)) => fields.clone(),
        Some(other) => {
            return Err(PluginError::invalid_input(format!(
                "bench: 'per_kernel' must be a boolean or an object, not {other}"
            )))
        }
    };
    let field = |name: &str, default: usize| -> PluginResult<usize> {
        match fields.get(name) {
            None => Ok(default),
            Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                PluginError::invalid_input(format!(
                    "bench: 'per_kernel.{name}' must be a non-negative integer"
                ))
            }),
        }
    };
    Ok(Some(ProfileConfig {
        decode_position: field("decode_position", defaults.decode_position)?,
        prefill_tokens: field("prefill_tokens", defaults.prefill_tokens)?.min(max_batch),
        repeats: field("repeats", defaults.repeats)?,
    }))
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

#[cfg(test)]
mod tests {
    use pio_plugin_kit::api::{
        ActivateOptions, ChatMessage, ChatRequest, ErrorKind, FinishReason, GenerateRequest,
        GenerationParams, HealthStatus, Plugin, Prompt, SequenceRequest,
    };

    use super::*;
    use crate::engine::ModelSummary;
    use crate::runtime::DEFAULT_MAX_BATCH;
    use crate::test_model::{
        active_plugin, alone, details, run_to_end, smollm2, tiny_file, tokens_request, LlamaPlugin,
        TinyConfig,
    };

    fn initialized(path: &std::path::Path) -> LlamaPlugin {
        let mut p = LlamaPlugin::new().unwrap();
        p.initialize(serde_json::json!({ "model": path, "tuning": "off" }))
            .unwrap();
        p
    }

    fn activate(p: &mut LlamaPlugin, context_length: u32) -> PluginResult<()> {
        p.activate(&ActivateOptions {
            context_length,
            ..ActivateOptions::default()
        })
    }

    fn text_request(text: &str, params: GenerationParams) -> SequenceRequest {
        SequenceRequest::Generate(GenerateRequest {
            prompt: Prompt::Text(text.into()),
            params,
        })
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
        assert_eq!(m.author, "Inference-PIO developers");
        assert!(m.has(Capability::TextGeneration) && m.has(Capability::Chat));
        assert!(m.has(Capability::BatchedGeneration));
    }

    /// `devices` and `split` split the layers over logical devices: the same greedy text as on
    /// one, the stats name each device's layers and what crossed between them; a device that
    /// does not exist, or a split that does not add up, fails activation naming it.
    #[test]
    fn layers_split_over_devices_generate_what_one_device_generates() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TinyConfig {
            n_layer: 4,
            ..TinyConfig::default()
        };
        let path = tiny_file(&dir, &cfg);
        let request = tokens_request(&[1, 2, 3, 4, 5], GenerationParams::greedy(8));
        let generate = |config: serde_json::Value| {
            let mut plugin = active_plugin(config, 64);
            let (response, _) = alone(&mut plugin, &request, None);
            (response.unwrap().text.to_string(), details(&plugin))
        };
        let (one, one_details) = generate(serde_json::json!({ "model": path, "tuning": "off" }));
        assert_eq!(one_details["devices"].as_array().unwrap().len(), 1);
        let (auto, auto_details) =
            generate(serde_json::json!({ "model": path, "devices": ["auto*2"], "tuning": "off" }));
        assert_eq!(auto, one);
        let devices = auto_details["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 2);
        // The planner keeps the head's device lighter: it has no more layers than the first.
        let layers = |d: &serde_json::Value| {
            d["layers"][1].as_u64().unwrap() - d["layers"][0].as_u64().unwrap()
        };
        assert!(layers(&devices[1]) <= layers(&devices[0]), "{devices:?}");
        assert!(auto_details["transferred_bytes"].as_u64().unwrap() > 0);
        let (split, split_details) = generate(
            serde_json::json!({ "model": path, "devices": ["auto", "auto"], "split": [1, 3], "tuning": "off" }),
        );
        assert_eq!(split, one);
        assert_eq!(
            split_details["devices"][0]["layers"],
            serde_json::json!([0, 1])
        );

        let mut p = initialized(&path);
        let config = serde_json::json!({ "model": path, "devices": ["auto", "no such adapter"], "tuning": "off" });
        p.initialize(config).unwrap();
        let e = activate(&mut p, 64).unwrap_err();
        assert!(e.message.contains("no such adapter"), "{e}");
        let config = serde_json::json!({ "model": path, "devices": ["auto", "auto"], "split": [1, 1], "tuning": "off" });
        p.initialize(config).unwrap();
        let e = activate(&mut p, 64).unwrap_err();
        assert!(
            e.message
                .contains("adds up to 2 layers, but the model has 4"),
            "{e}"
        );
        let config = serde_json::json!({ "model": path, "devices": ["auto", "auto"], "split": [3], "tuning": "off" });
        let e = p.initialize(config).unwrap_err();
        assert!(
            e.message.contains("split has 1 layer counts for 2 devices"),
            "{e}"
        );
        let config = serde_json::json!({ "model": path, "devices": ["auto*0"], "tuning": "off" });
        let e = p.initialize(config).unwrap_err();
        assert!(e.message.contains("\"auto*0\": the count after `*`"), "{e}");
        let config = serde_json::json!({ "model": path, "devices": ["auto*18446744073709551615"] });
        let e = p.initialize(config).unwrap_err();
        assert!(e.message.contains("a number from 1 to 64"), "{e}");
        let config = serde_json::json!({ "model": path, "devices": ["auto*5"] });
        p.initialize(config).unwrap();
        let e = activate(&mut p, 64).unwrap_err();
        assert!(e.message.contains("5 devices for 4 layers"), "{e}");
    }

    #[test]
    fn configuration_and_model_errors_are_typed_and_named() {
        let mut p = LlamaPlugin::new().unwrap();
        let e = p.initialize(serde_json::json!({})).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert_eq!(e.message.as_str(), "configuration: missing field `model`");
        let e = p
            .initialize(serde_json::json!({ "model": "m.gguf", "kv_blocks": 0 }))
            .unwrap_err();
        assert_eq!(
            e.message.as_str(),
            "configuration: kv_blocks must be at least 1, got 0"
        );
        // The slots the pool replaced are an unknown key now.
        let e = p
            .initialize(serde_json::json!({ "model": "m.gguf", "batch_slots": 2 }))
            .unwrap_err();
        assert!(e.message.contains("unknown field `batch_slots`"), "{e}");
        let e = p
            .initialize(serde_json::json!({ "model": "m.gguf", "kv_type": "q3" }))
            .unwrap_err();
        assert!(
            e.message.contains("kv_type") && e.message.contains("expected one of f32, f16"),
            "{e}"
        );
        let e = p
            .initialize(serde_json::json!({ "model": "m.gguf", "tuning": "fast" }))
            .unwrap_err();
        assert!(
            e.message.contains("tuning")
                && e.message
                    .contains("expected one of gpus, auto, off, retune"),
            "{e}"
        );

        // The file is read at activation, relative to the plugin's folder.
        let dir = tempfile::tempdir().unwrap();
        p.initialize(serde_json::json!({ "model": "missing.gguf", "plugin_dir": dir.path() }))
            .unwrap();
        let e = activate(&mut p, 64).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ModelLoad);
        let missing = dir.path().join("missing.gguf");
        assert!(e.message.contains(&missing.display().to_string()), "{e}");

        let cfg = TinyConfig {
            architecture: "falcon",
            ..TinyConfig::default()
        };
        tiny_file(&dir, &cfg);
        p.initialize(
            serde_json::json!({ "model": "tiny.gguf", "plugin_dir": dir.path(), "tuning": "off" }),
        )
        .unwrap();
        let e = activate(&mut p, 64).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Incompatible);
        assert!(e.message.contains("falcon"), "{e}");
        let (outcome, _) = alone(
            &mut p,
            &tokens_request(&[1], GenerationParams::greedy(1)),
            None,
        );
        let e = outcome.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(e.message.contains("not active"), "{e}");
    }

    #[test]
    fn memory_is_estimated_before_activation_reported_and_cleaned_up() {
        use pio_plugin_kit::api::{MemoryCategory, MemoryReport};
        let category = |report: &MemoryReport, c: MemoryCategory| {
            *report.categories.iter().find(|m| m.category == c).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = tiny_file(&dir, &TinyConfig::default());
        let mut p = initialized(&path);
        let options = ActivateOptions {
            context_length: 64,
            ..ActivateOptions::default()
        };
        let estimate = p.estimate_memory(&options).unwrap();
        assert!(
            p.stats().device_memory_bytes == 0,
            "estimating allocates nothing"
        );
        p.activate(&options).unwrap();
        let report = p.memory_report().unwrap();
        let allocated = p.stats().device_memory_bytes;
        for c in [MemoryCategory::Weights, MemoryCategory::Activations] {
            assert_eq!(category(&estimate, c), category(&report, c), "{c:?}");
        }
        // The block pool is allocated at the first batched sequence: counted in the estimate,
        // reported as capacity until then.
        let (kv, kv_estimate) = (
            category(&report, MemoryCategory::KvCache),
            category(&estimate, MemoryCategory::KvCache),
        );
        assert_eq!(kv.capacity_bytes, kv_estimate.capacity_bytes);
        assert_eq!(
            kv.device_bytes + kv.capacity_bytes,
            kv_estimate.device_bytes
        );
        assert!(kv.capacity_bytes > 0 && kv.used_bytes == 0, "{kv:?}");
        // The report accounts for every allocated byte (what the sizes do not explain is
        // `other`).
        assert!(
            report.device_bytes() >= allocated,
            "{report:?} vs {allocated}"
        );

        let request = text_request("The cat sat on the mat", GenerationParams::greedy(4));
        let opened = p.open_sequence(&request).unwrap();
        let report = p.memory_report().unwrap();
        let kv = category(&report, MemoryCategory::KvCache);
        assert!(kv.used_bytes > 0, "{kv:?}");
        assert_eq!(kv.device_bytes, kv_estimate.device_bytes);
        // Now everything the estimate counted is allocated, and the estimate covers it.
        let allocated = p.stats().device_memory_bytes;
        assert!(
            estimate.device_bytes() >= allocated,
            "{estimate:?} vs {allocated}"
        );
        assert!(report.device_bytes() >= allocated);
        p.close_sequence(opened.id).unwrap();
        // The closed prompt's blocks stay cached until the cleanup drops them.
        let freed = p.force_memory_cleanup().unwrap();
        assert_eq!(freed.categories.len(), 1);
        assert!(freed.categories[0].device_bytes > 0, "{freed:?}");
        assert_eq!(
            p.force_memory_cleanup().unwrap().categories[0].device_bytes,
            0
        );
        let again = p.open_sequence(&request).unwrap();
        assert_eq!(again.cached_tokens, 0, "the prefix cache was dropped");
        p.close_sequence(again.id).unwrap();
    }

    #[test]
    fn compression_serves_the_new_storage_and_waits_for_open_sequences() {
        use pio_plugin_kit::api::{CompressionRequest, CompressionScope, MemoryCategory};
        let dir = tempfile::tempdir().unwrap();
        let path = tiny_file(&dir, &TinyConfig::default());
        let mut p = initialized(&path);
        activate(&mut p, 64).unwrap();
        let f16 = CompressionRequest {
            scope: CompressionScope::KvCache,
            format: "f16".into(),
        };
        let request = text_request("The cat sat on the mat", GenerationParams::greedy(4));
        let opened = p.open_sequence(&request).unwrap();
        let e = p.compress(&f16).unwrap_err();
        assert!(e.message.contains("batched sequences are open"), "{e}");
        p.close_sequence(opened.id).unwrap();
        assert_eq!(p.compression_stats().unwrap(), None);

        let report = p.compress(&f16).unwrap();
        assert_eq!(details(&p)["kv_type"], "f16");
        assert_eq!(p.compression_stats().unwrap(), Some(report.clone()));
        let kv = report
            .categories
            .iter()
            .find(|c| c.category == MemoryCategory::KvCache)
            .unwrap();
        assert_eq!(kv.bytes_after * 2, kv.bytes_before);
        assert_eq!(
            report.quality.into_option().unwrap().metric.as_str(),
            "perplexity"
        );
        // The new engine serves.
        let opened = p.open_sequence(&request).unwrap();
        p.close_sequence(opened.id).unwrap();

        let q8 = CompressionRequest {
            scope: CompressionScope::KvCache,
            format: "q8_0".into(),
        };
        let e = p.compress(&q8).unwrap_err();
        assert!(e.message.contains("supported formats: f32, f16"), "{e}");
    }

    /// The `tuning` and `tuning_cache_dir` settings reach the runtime, and the stats carry
    /// what the tuner did: the first activation searches and writes the cache folder, the
    /// second reads every tile from it.
    #[test]
    fn tuning_settings_and_stats() {
        let dir = tempfile::tempdir().unwrap();
        let path = tiny_file(&dir, &TinyConfig::default());
        let cache = dir.path().join("tuning");
        let config = serde_json::json!({
            "model": path, "tuning": "auto", "tuning_cache_dir": cache,
        });
        let first = details(&active_plugin(config.clone(), 64))["tuning"].clone();
        assert_eq!(first["mode"], "auto");
        let searches = first["searches"].as_u64().unwrap();
        assert!(searches > 0 && first["search_seconds"].as_f64().unwrap() > 0.0);
        let kernels = first["kernels"].as_array().unwrap();
        assert_eq!(kernels.len() as u64, searches);
        assert!(kernels.iter().all(|k| k["source"] == "searched"
            && k["variant"].as_str().unwrap().contains("wg")
            && k["device"] == 0));
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
        let devices = first["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 1, "{first}");
        assert!(["bits32", "bits64"].contains(&devices[0]["load_width"].as_str().unwrap()));
        assert!(["own", "shared"].contains(&devices[0]["activation_reads"].as_str().unwrap()));
        let second = details(&active_plugin(config, 64))["tuning"].clone();
        assert_eq!(second["searches"], 0);
        let off = serde_json::json!({ "model": path, "tuning": "off" });
        let off = details(&active_plugin(off, 64))["tuning"].clone();
        assert_eq!(
            (off["mode"].as_str(), off["searches"].as_u64()),
            (Some("off"), Some(0))
        );
        // The default, `gpus`, searches nothing on a software adapter (the tests' lavapipe).
        let untouched = dir.path().join("untouched");
        let default = serde_json::json!({ "model": path, "tuning_cache_dir": untouched });
        let default = details(&active_plugin(default, 64))["tuning"].clone();
        assert_eq!(default["searches"], 0, "{default}");
        assert!(!untouched.exists());
    }

    #[test]
    fn lifecycle_generate_stream_cancel_and_stats() {
        let dir = tempfile::tempdir().unwrap();
        let path = tiny_file(&dir, &TinyConfig::default());
        let mut p = initialized(&path);
        assert_eq!(p.health().status, HealthStatus::Unavailable);
        activate(&mut p, 64).unwrap();
        assert_eq!(p.health().status, HealthStatus::Ok);
        let stats = p.stats();
        assert!(stats.device_memory_bytes > 0 && stats.host_memory_bytes > 0);
        let details = details(&p);
        assert_eq!(details["context_length"], 64);
        assert_eq!(details["architecture"], "llama");
        let summary = ModelSummary::read(
            &pio_gguf::GgufFile::open(&path).unwrap(),
            crate::storage::WeightStorage::AsStored,
        )
        .unwrap();
        assert_eq!(details["vocab_size"], summary.spec.hparams.vocab_size);
        // The estimate for the trained context (256) exceeds the one for the 64 positions used,
        // and the estimate used covers what was actually allocated to within 10%.
        let at_trained = summary.required_device_bytes(256, DEFAULT_MAX_BATCH, KvType::F32);
        let at_64 = details["required_memory_bytes"].as_u64().unwrap();
        assert!(at_trained > at_64);
        let allocated = stats.device_memory_bytes as f64;
        assert!(
            (at_64 as f64 - allocated).abs() < 0.1 * allocated,
            "{at_64} vs {allocated}"
        );

        let ids = p.tokenize("hello world", false).unwrap();
        assert_eq!(p.detokenize(&ids).unwrap(), "hello world");

        let params = GenerationParams {
            max_new_tokens: 12,
            temperature: 0.9,
            seed: Some(42).into(),
            ..GenerationParams::default()
        };
        let request = text_request("The cat", params.clone());
        let (a, events) = alone(&mut p, &request, None);
        let a = a.unwrap();
        let (b, _) = alone(&mut p, &request, None);
        assert_eq!(a.tokens, b.unwrap().tokens, "same seed, same tokens");
        let streamed: String = events.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(streamed, a.text.as_str());
        assert_eq!(events.len(), a.tokens.len());

        let (c, events) = alone(&mut p, &request, Some(3));
        let c = c.unwrap();
        if a.tokens.len() > 3 {
            assert_eq!(c.finish_reason, FinishReason::Cancelled);
            assert_eq!((events.len(), c.tokens.len()), (3, 3));
        }

        let bad = text_request(
            "The cat",
            GenerationParams {
                top_p: 0.0,
                ..params.clone()
            },
        );
        let e = alone(&mut p, &bad, None).0.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        let long = tokens_request(&[5; 65], params);
        let e = alone(&mut p, &long, None).0.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert_eq!(
            e.message.as_str(),
            "prompt has 65 tokens but the context holds 64"
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
        let mut p = active_plugin(serde_json::json!({ "model": smollm2() }), 256);
        let request = SequenceRequest::Chat(ChatRequest {
            messages: vec![ChatMessage::new("user", "What is the capital of France?")].into(),
            params: GenerationParams {
                stop: vec![" Paris".into()].into(),
                ..GenerationParams::greedy(32)
            },
        });
        let (r, _) = alone(&mut p, &request, None);
        let r = r.unwrap();
        // The stop string ends generation and is not part of the text.
        assert_eq!(r.text.as_str(), "The capital of France is");
        assert_eq!(r.finish_reason, FinishReason::Stop);
        // Batched, the same request gives the same events.
        let (_, events) = alone(&mut p, &request, None);
        let id = p.open_sequence(&request).unwrap().id;
        assert_eq!(run_to_end(&mut p, id), events);
    }

    #[test]
    fn batched_generation_through_the_plugin_api() {
        let dir = tempfile::tempdir().unwrap();
        let path = tiny_file(&dir, &TinyConfig::default());
        let config = serde_json::json!({ "model": path, "kv_blocks": 12, "tuning": "off" });
        let mut p = active_plugin(config, 64);
        let generate = tokens_request(&[3, 4, 5], GenerationParams::greedy(3));
        let chat = SequenceRequest::Chat(ChatRequest {
            messages: vec![ChatMessage::new("user", "hi")].into(),
            params: GenerationParams::greedy(3),
        });
        let a = p.open_sequence(&generate).unwrap();
        let b = p.open_sequence(&chat).unwrap();
        assert_eq!(a.prompt_tokens, 3);
        assert!(b.prompt_tokens > 3, "the chat template adds tokens");
        let details = details(&p);
        assert_eq!(details["kv_blocks"], 12);
        assert_eq!(details["open_sequences"], 2);
        let steps = p.step_sequences(&[a.id, b.id]).unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!((steps[0].id, steps[1].id), (a.id, b.id));
        p.close_sequence(a.id).unwrap();
        assert_eq!(
            p.close_sequence(a.id).unwrap_err().kind,
            ErrorKind::InvalidInput
        );
        // A prompt longer than the model's context is refused, naming both lengths.
        let e = p
            .open_sequence(&tokens_request(&[5; 65], GenerationParams::greedy(3)))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput, "{e}");
        assert_eq!(
            e.message.as_str(),
            "prompt has 65 tokens but the context holds 64"
        );
    }

    #[test]
    fn absurd_contexts_are_refused_before_anything_is_allocated() {
        // Trained for 256 positions: more is refused, naming both.
        let dir = tempfile::tempdir().unwrap();
        let mut p = initialized(&tiny_file(&dir, &TinyConfig::default()));
        for context in [1_000_000_000, u32::MAX] {
            let e = activate(&mut p, context).unwrap_err();
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
            let e = activate(&mut p, context).unwrap_err();
            assert_eq!(e.kind, ErrorKind::OutOfMemory, "{e}");
            let positions = if context == 0 { u32::MAX } else { context };
            // Whole blocks of 16 positions.
            let bytes = u64::from(positions).next_multiple_of(16) * 128;
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
        activate(&mut p, 64).unwrap();
        assert_eq!(p.health().status, HealthStatus::Ok);
    }

    #[test]
    fn a_prompt_of_many_blocks_is_served_or_refused_by_the_pool_size() {
        // A 1500-token prompt in a 2048-position context: 94 blocks of the default pool.
        let dir = tempfile::tempdir().unwrap();
        let cfg = TinyConfig {
            context_length: 2048,
            ..TinyConfig::default()
        };
        let path = tiny_file(&dir, &cfg);
        let mut p = initialized(&path);
        activate(&mut p, 2048).unwrap();
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
            let request = tokens_request(&prompt, params);
            let id = p.open_sequence(&request).unwrap().id;
            let batched = run_to_end(&mut p, id);
            let (_, events) = alone(&mut p, &request, None);
            assert_eq!(batched, events);
        }

        // A pool of 64 blocks (1024 positions) cannot hold it: refused as out of memory,
        // naming the pool (the host's cue to run it alone), and alone it runs.
        p.deactivate().unwrap();
        p.initialize(serde_json::json!({ "model": path, "kv_blocks": 64, "tuning": "off" }))
            .unwrap();
        activate(&mut p, 2048).unwrap();
        let request = tokens_request(&prompt, GenerationParams::greedy(4));
        let e = p.open_sequence(&request).unwrap_err();
        assert_eq!(e.kind, ErrorKind::OutOfMemory, "{e}");
        assert!(
            e.message.contains("1503 positions") && e.message.contains("pool of 64 blocks"),
            "{}",
            e.message
        );
        let (response, _) = alone(&mut p, &request, None);
        assert_eq!(response.unwrap().tokens.len(), 4);
    }
}

/// Log-probabilities on the real model against the CPU reference.
#[cfg(test)]
mod logprob_tests {
    use pio_gguf::GgufFile;
    use pio_plugin_kit::api::{
        abi_stable::std_types::ROption, DecodeOptions, Plugin, PositionLogprobs, Prompt,
    };
    use pio_plugin_kit::Logprobs;

    use crate::forward::Forward;
    use crate::reference::ReferenceModel;
    use crate::test_model::{active_plugin, sampled, smollm2, tokens_request};

    /// The log-probability tolerance: the GPU's logits agree with the reference's within 1e-3
    /// (`smollm2_matches_reference`), and a log-softmax value moves by at most twice the largest
    /// logit difference (the value itself and the log-sum-exp).
    const TOLERANCE: f32 = 2e-3;

    /// `got`, reported for `token` at a position whose reference logits are `row`, agrees with
    /// the reference's full-vocabulary log-softmax: the token's value, and each listed
    /// alternative's (most likely first).
    fn check(got: &PositionLogprobs, row: &[f32], token: u32, top: usize) {
        let reference = |token: u32| Logprobs::from_logits(row, token, 0).logprob;
        assert_eq!(got.chosen.token, token);
        let close = |a: f32, b: f32| (a - b).abs() < TOLERANCE;
        assert!(
            close(got.chosen.logprob, reference(token)),
            "token {token}: {} against {}",
            got.chosen.logprob,
            reference(token)
        );
        assert_eq!(got.top.len(), top);
        let expected_best = Logprobs::from_logits(row, token, 1).top[0].1;
        assert!(close(got.top[0].logprob, expected_best), "{got:?}");
        for pair in got.top.windows(2) {
            assert!(
                pair[0].logprob >= pair[1].logprob,
                "most likely first: {got:?}"
            );
        }
        for alternative in &got.top {
            assert!(
                close(alternative.logprob, reference(alternative.token)),
                "{got:?}"
            );
        }
    }

    /// Log-probabilities of generated tokens (batched steps) and of a prompt (`score`, what
    /// `echo` reports) are the CPU reference's full-vocabulary log-softmax within
    /// [`TOLERANCE`].
    #[test]
    #[ignore = "needs the SmolLM2 model: pio models fetch"]
    fn logprobs_and_prompt_scores_match_the_cpu_reference() {
        let path = smollm2();
        let mut plugin = active_plugin(serde_json::json!({ "model": path, "tuning": "off" }), 128);
        // "<|im_start|>user\nThe capital" and some arbitrary ids.
        let prompt = [1, 4093, 198, 504, 3575, 3223, 28, 1029, 8130, 49, 2];
        let options = DecodeOptions {
            logprobs: ROption::RSome(5),
            constraint: ROption::RNone,
        };
        let request = tokens_request(&prompt, sampled(6, 0.0, 0));
        let id = plugin.open_sequence_with(&request, &options).unwrap().id;
        let (mut generated, mut reported) = (Vec::new(), Vec::new());
        loop {
            let step = plugin.step_sequences(&[id]).unwrap().remove(0);
            generated.push(step.event.token);
            reported.extend(plugin.sequence_logprobs(id).unwrap());
            if step.finish.is_some() {
                break;
            }
        }
        plugin.close_sequence(id).unwrap();
        let scored = plugin
            .score(&Prompt::Tokens(prompt.to_vec().into()), 3)
            .unwrap();

        let file = GgufFile::open(&path).unwrap();
        let mut reference = ReferenceModel::load(&file, 128).unwrap();
        let all: Vec<u32> = prompt.iter().chain(&generated).copied().collect();
        let logits = reference.forward(&all, 0, true).unwrap();
        let vocab = logits.len() / all.len();
        // Token `position` is predicted by the logits of the position before it.
        let row = |position: usize| &logits[(position - 1) * vocab..position * vocab];
        assert_eq!(reported.len(), generated.len());
        for (j, (got, &token)) in reported.iter().zip(&generated).enumerate() {
            check(got, row(prompt.len() + j), token, 5);
        }
        assert_eq!(scored.len(), prompt.len());
        assert!(scored[0].chosen.logprob.is_nan() && scored[0].top.is_empty());
        for (i, got) in scored.iter().enumerate().skip(1) {
            check(got, row(i), prompt[i], 3);
        }
    }
}
