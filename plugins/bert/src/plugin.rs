//! [`BertPlugin`]: the `pio_plugin_api::Plugin` implementation (capability: embeddings).

use std::sync::Arc;
use std::time::Instant;

use pio_gpu::{DeviceOptions, Gpu};
use pio_plugin_api::abi_stable::std_types::ROption;
use pio_plugin_api::serde_json::{json, Value};
use pio_plugin_api::{
    semver::Version, ActivateOptions, Capability, CategoryCompression, CategoryMemory,
    CompressionReport, CompressionRequest, CompressionScope, EmbedRequest, EmbedResponse,
    FreedMemory, Health, HealthStatus, MemoryCategory, MemoryFreed, MemoryReport, ModelInfo,
    Plugin, PluginError, PluginMetadata, PluginResult, PluginStats, QualityChange,
};

use crate::compare::{compare_compression, default_agreement};
use crate::embedder::{Embedder, ModelFiles};
use crate::memory;
use crate::settings::{weight_dtype, Settings, WEIGHT_DTYPES};
use crate::tokenize::BertTokenizer;

/// State that exists only while the plugin is active.
#[derive(Debug)]
struct Active {
    gpu: Arc<Gpu>,
    embedder: Embedder,
    activate_ms: f64,
    requests: u64,
    tokens: u64,
    /// The last compression, once one was asked for.
    compression: Option<CompressionReport>,
}

/// The BERT sentence-embedding plugin.
#[derive(Debug, Default)]
pub struct BertPlugin {
    settings: Option<Settings>,
    /// The tokenizer, available from `initialize` on (tokenize/detokenize need no device).
    tokenizer: Option<BertTokenizer>,
    active: Option<Active>,
}

impl BertPlugin {
    fn settings(&self) -> PluginResult<&Settings> {
        self.settings
            .as_ref()
            .ok_or_else(|| PluginError::invalid_input("plugin is not initialized"))
    }

    fn active(&mut self) -> PluginResult<&mut Active> {
        self.active
            .as_mut()
            .ok_or_else(|| PluginError::invalid_input("plugin is not active"))
    }

    fn tokenizer(&self) -> PluginResult<&BertTokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| PluginError::invalid_input("plugin is not initialized"))
    }
}

impl Plugin for BertPlugin {
    fn metadata() -> PluginMetadata {
        PluginMetadata {
            name: "bert".to_owned(),
            version: Version::parse(env!("CARGO_PKG_VERSION")).expect("crate version is semver"),
            plugin_api: pio_plugin_api::api_version(),
            host: ">=0.1.0, <0.2.0".parse().expect("valid requirement"),
            author: "Inference-PIO developers".to_owned(),
            description: "BERT sentence embeddings (sentence-transformers models such as \
                          all-MiniLM-L6-v2) computed with fused WGSL kernels."
                .to_owned(),
            license: "MIT OR Apache-2.0".to_owned(),
            capabilities: vec![Capability::Embeddings],
            model: ModelInfo {
                architecture: Some("bert".to_owned()),
                parameter_count: None,
                quantization: None,
                context_length: None,
                required_memory_bytes: None,
            },
            tags: vec!["embeddings".to_owned(), "bert".to_owned()],
        }
    }

    fn new() -> PluginResult<Self> {
        Ok(Self::default())
    }

    fn initialize(&mut self, config: Value) -> PluginResult<()> {
        let settings = Settings::from_json(&config)?;
        // Validate the configuration files and the tokenizer now, so a bad model directory is
        // reported at load time; weights are read at activation.
        let model_config = crate::config::ModelConfig::load(&settings.model)?;
        self.tokenizer = Some(BertTokenizer::load(
            &settings.model.join("tokenizer.json"),
            model_config.max_seq_length,
            model_config.bert.vocab_size,
        )?);
        self.settings = Some(settings);
        Ok(())
    }

    fn activate(&mut self, options: &ActivateOptions) -> PluginResult<()> {
        let settings = self.settings()?.clone();
        let start = Instant::now();
        self.active = None;
        let gpu = Gpu::new(&DeviceOptions {
            adapter: options
                .adapter
                .as_ref()
                .map(|a| a.to_string())
                .into_option(),
            ..DeviceOptions::default()
        })
        .map_err(|e| e.into_plugin_error("opening the GPU device"))?;
        let gpu = Arc::new(gpu);
        let files = ModelFiles::load(&settings.model)?;
        let embedder = Embedder::new(
            Arc::clone(&gpu),
            &files,
            settings.weights,
            settings.max_batch,
        )?;
        if let Some(budget) = std::num::NonZeroU64::new(options.memory_budget_bytes) {
            if gpu.allocated_bytes() > budget.get() {
                return Err(PluginError::out_of_memory(format!(
                    "the model needs {} bytes of device memory, the budget is {budget}",
                    gpu.allocated_bytes()
                )));
            }
        }
        self.active = Some(Active {
            gpu,
            embedder,
            activate_ms: start.elapsed().as_secs_f64() * 1e3,
            requests: 0,
            tokens: 0,
            compression: None,
        });
        Ok(())
    }

    fn deactivate(&mut self) -> PluginResult<()> {
        self.active = None;
        Ok(())
    }

    fn infer(&mut self, request: Value) -> PluginResult<Value> {
        let settings = self.settings()?.clone();
        let active = self.active()?;
        match request.get("op").and_then(Value::as_str) {
            Some("compare_compression") => {
                let files = ModelFiles::load(&settings.model)?;
                compare_compression(&active.gpu, &files, settings.max_batch, &request)
            }
            other => Err(PluginError::invalid_input(format!(
                "unknown infer op {other:?}; supported: \"compare_compression\""
            ))),
        }
    }

    fn tokenize(&mut self, text: &str, add_special: bool) -> PluginResult<Vec<u32>> {
        self.tokenizer()?.encode_with(text, add_special)
    }

    fn detokenize(&mut self, tokens: &[u32]) -> PluginResult<String> {
        self.tokenizer()?.decode(tokens)
    }

    fn embed(&mut self, request: &EmbedRequest) -> PluginResult<EmbedResponse> {
        let active = self.active()?;
        let embeddings = active.embedder.embed(&request.inputs)?;
        active.requests += 1;
        active.tokens += embeddings.tokens as u64;
        Ok(EmbedResponse {
            embeddings: embeddings.vectors.into_iter().map(Into::into).collect(),
            dimensions: active.embedder.dimensions() as u32,
            prompt_tokens: u32::try_from(embeddings.tokens).unwrap_or(u32::MAX),
        })
    }

    fn stats(&self) -> PluginStats {
        let Some(active) = &self.active else {
            return PluginStats::default();
        };
        let details = json!({
            "adapter": active.gpu.adapter_info(),
            "model": self.settings.as_ref().map(|s| s.model.display().to_string()),
            "weights": active.embedder.model().dtype().name(),
            "weight_bytes": active.embedder.model().weight_bytes(),
            "peak_device_bytes": active.gpu.peak_allocated_bytes(),
            "dimensions": active.embedder.dimensions(),
            "max_seq_length": active.embedder.tokenizer().max_seq_length(),
        });
        PluginStats {
            device_memory_bytes: active.gpu.allocated_bytes(),
            host_memory_bytes: 0,
            activate_ms: active.activate_ms,
            requests: active.requests,
            tokens: active.tokens,
            details_json: details.to_string().into(),
        }
    }

    fn estimate_memory(&mut self, _options: &ActivateOptions) -> PluginResult<MemoryReport> {
        let settings = self.settings()?;
        let config = crate::config::ModelConfig::load(&settings.model)?;
        Ok(MemoryReport {
            categories: memory::estimate(&config, settings.weights, settings.max_batch).into(),
        })
    }

    /// Weights, the activation buffers as large as the largest batch so far made them, and
    /// the rest of the device bytes (kernel constants, pooling) as `other`. Inactive: nothing.
    fn memory_report(&mut self) -> PluginResult<MemoryReport> {
        let Some(active) = &self.active else {
            return Ok(MemoryReport::default());
        };
        let model = active.embedder.model();
        let (weights, workspace) = (model.weight_bytes(), model.workspace_bytes());
        let other = active
            .gpu
            .allocated_bytes()
            .saturating_sub(weights + workspace);
        Ok(MemoryReport {
            categories: vec![
                CategoryMemory::new(MemoryCategory::Weights, weights, 0),
                CategoryMemory::new(MemoryCategory::Activations, workspace, 0),
                CategoryMemory::new(MemoryCategory::Other, other, 0),
            ]
            .into(),
        })
    }

    /// Drops the activation buffers; the next batch allocates them again.
    fn force_memory_cleanup(&mut self) -> PluginResult<MemoryFreed> {
        let Some(active) = &mut self.active else {
            return Ok(MemoryFreed::default());
        };
        let freed = active.embedder.model_mut().drop_workspace();
        Ok(MemoryFreed {
            categories: vec![FreedMemory {
                category: MemoryCategory::Activations,
                device_bytes: freed,
                host_bytes: 0,
            }]
            .into(),
        })
    }

    /// Uploads the linear layers' weights again in `format` (`f32`, `f16` or `q8_0`; the model
    /// has no KV cache), with the mean cosine similarity of the built-in sentences' embeddings
    /// to the f32 model's measured before and after. The old weights serve until the new ones
    /// are uploaded; both are on the device meanwhile.
    fn compress(&mut self, request: &CompressionRequest) -> PluginResult<CompressionReport> {
        let dtype = match request.scope {
            CompressionScope::Weights => weight_dtype(&request.format),
            CompressionScope::KvCache => None,
        }
        .ok_or_else(|| {
            let formats: Vec<_> = WEIGHT_DTYPES.iter().map(|d| d.name()).collect();
            PluginError::invalid_input(format!(
                "cannot compress {} to '{}': supported formats: {} (weights; the model has no \
                 KV cache)",
                request.scope.as_str(),
                request.format,
                formats.join(", ")
            ))
        })?;
        let settings = self.settings()?.clone();
        let active = self.active()?;
        let current = active.embedder.model().dtype();
        let files = ModelFiles::load(&settings.model)?;
        let measured =
            default_agreement(&active.gpu, &files, settings.max_batch, &[current, dtype])?;
        let embedder = Embedder::new(Arc::clone(&active.gpu), &files, dtype, settings.max_batch)?;
        let report = CompressionReport {
            method: format!("{} weights", dtype.name()).into(),
            categories: vec![CategoryCompression {
                category: MemoryCategory::Weights,
                bytes_before: active.embedder.model().weight_bytes(),
                bytes_after: embedder.model().weight_bytes(),
            }]
            .into(),
            quality: ROption::RSome(QualityChange {
                metric: "mean cosine to f32 embeddings".into(),
                before: measured[0].mean_cosine,
                after: measured[1].mean_cosine,
            }),
        };
        active.embedder = embedder;
        active.compression = Some(report.clone());
        Ok(report)
    }

    /// The last [`compress`](Plugin::compress) of this activation (`None`: as activated).
    fn compression_stats(&mut self) -> PluginResult<Option<CompressionReport>> {
        Ok(self.active.as_ref().and_then(|a| a.compression.clone()))
    }

    fn health(&self) -> Health {
        match (&self.settings, &self.active) {
            (_, Some(_)) => Health::new(HealthStatus::Ok, "active"),
            (Some(_), None) => Health::new(HealthStatus::Unavailable, "initialized, not active"),
            (None, None) => Health::new(HealthStatus::Unavailable, "not initialized"),
        }
    }
}
