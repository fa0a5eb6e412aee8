//! The host's test fixtures, as a decorator around any plugin: [`TestFixtures`] takes its
//! configuration keys out before the plugin sees the rest, then injects the configured fault
//! ([`crate::fault`]) and, with `ignore_limits`, hands generation requests on without their
//! `max_new_tokens` and stop strings, so the host's tests can prove it enforces them itself.
//! With `device_bytes` (an integer), the plugin reports that many device bytes of weights in
//! its memory estimate and, while active, in its memory report — a pretend model, so the
//! host's memory-manager tests can fill a budget without real models.
//!
//! The host's tests also build *variants* of this plugin from the same sources (see
//! `build_variant` in the repository's `tests/support`), with environment variables read at
//! compile time:
//! - `PIO_EXAMPLE_NAME`: the plugin name in the metadata (default: the plugin's own);
//! - `PIO_EXAMPLE_UNBATCHED` (any value): leave out the `batched-generation` capability, so the
//!   host runs each sequence through one `generate` / `chat` call;
//! - `PIO_EXAMPLE_TOKEN_DELAY_MS`: sleep this long per token of a batched step (a step of n
//!   sequences sleeps n times): a slow model, so tests can act while a generation runs.
//!
//! and the cargo feature `no-root-module`, which leaves out the export (see `lib.rs`).
//!
//! None of this is part of a real plugin: authors copying this template export their
//! [`TextPlugin`](pio_plugin_kit::TextPlugin) directly and delete this module and `fault.rs`.

use std::borrow::Cow;

use std::time::Duration;

use pio_plugin_kit::{
    api::{
        abi_stable::std_types::RVec, serde_json, ActivateOptions, Capability, CategoryMemory,
        ChatRequest, CompressionReport, CompressionRequest, DecodeOptions, EmbedRequest,
        EmbedResponse, GenerateRequest, GenerateResponse, GenerationParams, Health, HealthStatus,
        MemoryCategory, MemoryFreed, MemoryReport, Plugin, PluginStats, PositionLogprobs, Prompt,
        SequenceOpened, SequenceRequest, SequenceStep, TokenStream,
    },
    PluginError, PluginMetadata, PluginResult,
};

use crate::fault::FaultPlan;

/// The build-time variant knobs (see the module documentation).
mod variant {
    pub const NAME: Option<&str> = option_env!("PIO_EXAMPLE_NAME");
    pub const UNBATCHED: bool = option_env!("PIO_EXAMPLE_UNBATCHED").is_some();
    pub const TOKEN_DELAY_MS: Option<&str> = option_env!("PIO_EXAMPLE_TOKEN_DELAY_MS");
}

/// The per-token delay of a slow variant.
fn token_delay() -> Option<Duration> {
    variant::TOKEN_DELAY_MS.map(|ms| {
        Duration::from_millis(ms.parse().expect("PIO_EXAMPLE_TOKEN_DELAY_MS is a number"))
    })
}

/// Plugin `P` with the host's test fixtures.
pub struct TestFixtures<P> {
    plugin: P,
    fault: Option<FaultPlan>,
    /// Generate as if no `max_new_tokens` or stop string had been given.
    ignore_limits: bool,
    /// Pretend device bytes of weights in the memory estimate and report.
    device_bytes: u64,
}

impl<P> TestFixtures<P> {
    /// Fails as configured if `call` is the call named by `fail_in`.
    fn inject_fault(&self, call: &str) -> PluginResult<()> {
        self.fault
            .as_ref()
            .map_or(Ok(()), |plan| plan.trigger(call))
    }

    /// `request`, without its limits when `ignore_limits` is set.
    fn limits<'a, R: Clone>(
        &self,
        request: &'a R,
        params: fn(&mut R) -> &mut GenerationParams,
    ) -> Cow<'a, R> {
        if !self.ignore_limits {
            return Cow::Borrowed(request);
        }
        let mut unlimited = request.clone();
        let params = params(&mut unlimited);
        params.max_new_tokens = u32::MAX;
        params.stop = RVec::new();
        Cow::Owned(unlimited)
    }
}

fn sequence_params(request: &mut SequenceRequest) -> &mut GenerationParams {
    match request {
        SequenceRequest::Generate(request) => &mut request.params,
        SequenceRequest::Chat(request) => &mut request.params,
    }
}

impl<P: Plugin> Plugin for TestFixtures<P> {
    fn metadata() -> PluginMetadata {
        let mut metadata = P::metadata();
        if let Some(name) = variant::NAME {
            metadata.name = name.to_owned();
        }
        if variant::UNBATCHED {
            metadata
                .capabilities
                .retain(|c| *c != Capability::BatchedGeneration);
        }
        metadata
    }

    fn new() -> PluginResult<Self> {
        Ok(Self {
            plugin: P::new()?,
            fault: None,
            ignore_limits: false,
            device_bytes: 0,
        })
    }

    fn initialize(&mut self, mut config: serde_json::Value) -> PluginResult<()> {
        // A configuration that is not an object is the plugin's to refuse.
        if let Some(object) = config.as_object_mut() {
            self.fault = FaultPlan::take(object)?;
            self.ignore_limits = match object.remove("ignore_limits") {
                None => false,
                Some(value) => value.as_bool().ok_or_else(|| {
                    PluginError::invalid_input(format!(
                        "configuration 'ignore_limits' must be a boolean, got {value}"
                    ))
                })?,
            };
            self.device_bytes = match object.remove("device_bytes") {
                None => 0,
                Some(value) => value.as_u64().ok_or_else(|| {
                    PluginError::invalid_input(format!(
                        "configuration 'device_bytes' must be a non-negative integer, got {value}"
                    ))
                })?,
            };
        }
        self.plugin.initialize(config)?;
        self.inject_fault("initialize")
    }

    fn activate(&mut self, options: &ActivateOptions) -> PluginResult<()> {
        self.inject_fault("activate")?;
        self.plugin.activate(options)
    }

    fn deactivate(&mut self) -> PluginResult<()> {
        self.plugin.deactivate()
    }

    fn cleanup(&mut self) -> PluginResult<()> {
        self.plugin.cleanup()
    }

    fn infer(&mut self, request: serde_json::Value) -> PluginResult<serde_json::Value> {
        self.inject_fault("infer")?;
        self.plugin.infer(request)
    }

    fn tokenize(&mut self, text: &str, add_special: bool) -> PluginResult<Vec<u32>> {
        self.plugin.tokenize(text, add_special)
    }

    fn detokenize(&mut self, tokens: &[u32]) -> PluginResult<String> {
        self.plugin.detokenize(tokens)
    }

    fn generate(
        &mut self,
        request: &GenerateRequest,
        stream: &mut TokenStream<'_>,
    ) -> PluginResult<GenerateResponse> {
        self.inject_fault("generate")?;
        let request = self.limits(request, |r| &mut r.params);
        self.plugin.generate(&request, stream)
    }

    fn chat(
        &mut self,
        request: &ChatRequest,
        stream: &mut TokenStream<'_>,
    ) -> PluginResult<GenerateResponse> {
        self.inject_fault("chat")?;
        let request = self.limits(request, |r| &mut r.params);
        self.plugin.chat(&request, stream)
    }

    fn embed(&mut self, request: &EmbedRequest) -> PluginResult<EmbedResponse> {
        self.plugin.embed(request)
    }

    fn stats(&self) -> PluginStats {
        self.plugin.stats()
    }

    fn health(&self) -> Health {
        self.plugin.health()
    }

    fn open_sequence(&mut self, request: &SequenceRequest) -> PluginResult<SequenceOpened> {
        self.inject_fault("open_sequence")?;
        let request = self.limits(request, sequence_params);
        self.plugin.open_sequence(&request)
    }

    fn step_sequences(&mut self, ids: &[u64]) -> PluginResult<Vec<SequenceStep>> {
        self.inject_fault("step_sequences")?;
        if let Some(delay) = token_delay() {
            std::thread::sleep(delay * ids.len() as u32);
        }
        self.plugin.step_sequences(ids)
    }

    fn close_sequence(&mut self, id: u64) -> PluginResult<()> {
        self.inject_fault("close_sequence")?;
        self.plugin.close_sequence(id)
    }

    fn open_sequence_with(
        &mut self,
        request: &SequenceRequest,
        options: &DecodeOptions,
    ) -> PluginResult<SequenceOpened> {
        self.inject_fault("open_sequence")?;
        let request = self.limits(request, sequence_params);
        self.plugin.open_sequence_with(&request, options)
    }

    fn sequence_logprobs(&mut self, id: u64) -> PluginResult<Vec<PositionLogprobs>> {
        self.plugin.sequence_logprobs(id)
    }

    fn score(&mut self, prompt: &Prompt, top: u32) -> PluginResult<Vec<PositionLogprobs>> {
        self.plugin.score(prompt, top)
    }

    fn estimate_memory(&mut self, options: &ActivateOptions) -> PluginResult<MemoryReport> {
        let estimate = self.plugin.estimate_memory(options)?;
        Ok(self.with_device_bytes(estimate))
    }

    fn memory_report(&mut self) -> PluginResult<MemoryReport> {
        let report = self.plugin.memory_report()?;
        let active = self.plugin.health().status == HealthStatus::Ok;
        Ok(match active {
            true => self.with_device_bytes(report),
            false => report,
        })
    }

    fn force_memory_cleanup(&mut self) -> PluginResult<MemoryFreed> {
        self.plugin.force_memory_cleanup()
    }

    fn compress(&mut self, request: &CompressionRequest) -> PluginResult<CompressionReport> {
        self.plugin.compress(request)
    }

    fn compression_stats(&mut self) -> PluginResult<Option<CompressionReport>> {
        self.plugin.compression_stats()
    }
}

impl<P> TestFixtures<P> {
    /// `report` with the pretend weights of `device_bytes` added.
    fn with_device_bytes(&self, mut report: MemoryReport) -> MemoryReport {
        if self.device_bytes > 0 {
            report.categories.push(CategoryMemory::new(
                MemoryCategory::Weights,
                self.device_bytes,
                0,
            ));
        }
        report
    }
}
