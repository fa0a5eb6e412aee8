//! The safe authoring layer: the [`Plugin`] trait, the token stream handed to it, and the glue
//! that exposes a `Plugin` through the ABI with every panic caught.

use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::{
    prefix_type::WithMetadata,
    sabi_trait::TD_Opaque,
    std_types::{RErr, ROk, ROption, RResult, RSlice, RStr, RString, RVec},
};

use crate::abi::{
    PluginInstance, PluginInstanceBox, PluginMod, PluginModRef, TokenSink, TokenSinkRef,
    TokenSink_TO,
};
use crate::{
    ActivateOptions, ChatRequest, CompressionReport, CompressionRequest, DecodeOptions,
    EmbedRequest, EmbedResponse, ErrorKind, GenerateRequest, GenerateResponse, Health,
    HealthStatus, MemoryFreed, MemoryReport, PluginError, PluginMetadata, PluginResult,
    PluginStats, PositionLogprobs, Prompt, SequenceOpened, SequenceRequest, SequenceStep,
    StreamControl, TokenEvent,
};

/// A plugin, written as plain Rust. [`export_plugin!`](crate::export_plugin) turns it into a
/// loadable library.
///
/// Only `metadata`, `new`, `initialize`, `activate` and `deactivate` are required; the
/// operations a plugin does not offer answer [`ErrorKind::Unsupported`] by default. Calls on one
/// instance never overlap (the host serialises them), so `&mut self` needs no locking.
///
/// A panic in any method is caught by the glue and returned to the host as an
/// [`ErrorKind::Panic`] error; the instance is then considered broken and refuses further work.
pub trait Plugin: Send + Sized + 'static {
    /// What the plugin is. Must be cheap: no model loading, no device work.
    /// `plugin_api` is overwritten with the API version the plugin is compiled against.
    fn metadata() -> PluginMetadata;

    /// Creates an uninitialized instance. Must be cheap.
    fn new() -> PluginResult<Self>;

    /// Applies the configuration: the `config` object of the manifest merged with the host's.
    fn initialize(&mut self, config: serde_json::Value) -> PluginResult<()>;

    /// Acquires the device and loads the model.
    fn activate(&mut self, options: &ActivateOptions) -> PluginResult<()>;

    /// Releases the device and everything on it; `activate` may be called again afterwards.
    fn deactivate(&mut self) -> PluginResult<()>;

    /// Releases whatever remains before the instance is dropped.
    fn cleanup(&mut self) -> PluginResult<()> {
        Ok(())
    }

    /// A free-form JSON request.
    fn infer(&mut self, request: serde_json::Value) -> PluginResult<serde_json::Value> {
        let _ = request;
        Err(unsupported("infer"))
    }

    /// Text to token ids.
    fn tokenize(&mut self, text: &str, add_special: bool) -> PluginResult<Vec<u32>> {
        let _ = (text, add_special);
        Err(unsupported("tokenize"))
    }

    /// Token ids to text.
    fn detokenize(&mut self, tokens: &[u32]) -> PluginResult<String> {
        let _ = tokens;
        Err(unsupported("detokenize"))
    }

    /// Continues a prompt, sending every token to `stream` as it is produced.
    fn generate(
        &mut self,
        request: &GenerateRequest,
        stream: &mut TokenStream<'_>,
    ) -> PluginResult<GenerateResponse> {
        let _ = (request, stream);
        Err(unsupported("generate"))
    }

    /// Answers a conversation, sending every token to `stream` as it is produced.
    fn chat(
        &mut self,
        request: &ChatRequest,
        stream: &mut TokenStream<'_>,
    ) -> PluginResult<GenerateResponse> {
        let _ = (request, stream);
        Err(unsupported("chat"))
    }

    /// Embeds a batch of texts.
    fn embed(&mut self, request: &EmbedRequest) -> PluginResult<EmbedResponse> {
        let _ = request;
        Err(unsupported("embed"))
    }

    /// Memory use and counters.
    fn stats(&self) -> PluginStats {
        PluginStats::default()
    }

    /// Readiness.
    fn health(&self) -> Health;

    /// Opens a sequence for batched generation (capability `batched-generation`) and processes
    /// its prompt; the answer's id names it in later calls.
    fn open_sequence(&mut self, request: &SequenceRequest) -> PluginResult<SequenceOpened> {
        let _ = request;
        Err(unsupported("batched generation"))
    }

    /// Decodes one token for each of the open sequences `ids`, together.
    fn step_sequences(&mut self, ids: &[u64]) -> PluginResult<Vec<SequenceStep>> {
        let _ = ids;
        Err(unsupported("batched generation"))
    }

    /// Closes a sequence and frees what it holds.
    fn close_sequence(&mut self, id: u64) -> PluginResult<()> {
        let _ = id;
        Err(unsupported("batched generation"))
    }

    /// Opens a sequence that reports log-probabilities and/or obeys a grammar, as `options`
    /// ask (already validated).
    fn open_sequence_with(
        &mut self,
        request: &SequenceRequest,
        options: &DecodeOptions,
    ) -> PluginResult<SequenceOpened> {
        let _ = (request, options);
        Err(unsupported("log-probabilities and constrained decoding"))
    }

    /// Drains the log-probabilities of the tokens sequence `id` generated since the last call.
    fn sequence_logprobs(&mut self, id: u64) -> PluginResult<Vec<PositionLogprobs>> {
        let _ = id;
        Err(unsupported("log-probabilities"))
    }

    /// One entry per prompt token: its log-probability given those before it (NaN for the
    /// first, which has no context) and the `top` most likely tokens at its position.
    fn score(&mut self, prompt: &Prompt, top: u32) -> PluginResult<Vec<PositionLogprobs>> {
        let _ = (prompt, top);
        Err(unsupported("prompt log-probabilities"))
    }

    /// The memory the instance holds now, by category.
    fn memory_report(&mut self) -> PluginResult<MemoryReport> {
        Err(unsupported("memory reports"))
    }

    /// What activating with `options` would allocate, by category, computed without
    /// allocating.
    fn estimate_memory(&mut self, options: &ActivateOptions) -> PluginResult<MemoryReport> {
        let _ = options;
        Err(unsupported("memory estimates"))
    }

    /// Drops what can be rebuilt and reports what was freed.
    fn force_memory_cleanup(&mut self) -> PluginResult<MemoryFreed> {
        Err(unsupported("memory cleanup"))
    }

    /// Stores the tensors of `request.scope` in `request.format`.
    fn compress(&mut self, request: &CompressionRequest) -> PluginResult<CompressionReport> {
        let _ = request;
        Err(unsupported("compression"))
    }

    /// How the tensors are compressed now (`None`: as loaded).
    fn compression_stats(&mut self) -> PluginResult<Option<CompressionReport>> {
        Err(unsupported("compression"))
    }
}

fn unsupported(operation: &str) -> PluginError {
    PluginError::unsupported(format!("this plugin does not implement {operation}"))
}

/// The host's receiver of generated tokens, as seen by a plugin.
pub struct TokenStream<'a> {
    sink: TokenSinkRef<'a>,
    stopped: bool,
}

impl<'a> TokenStream<'a> {
    /// Wraps a sink received through the ABI.
    pub fn new(sink: TokenSinkRef<'a>) -> Self {
        Self {
            sink,
            stopped: false,
        }
    }

    /// Sends one token; returns what the receiver wants next. Once it has answered
    /// [`StreamControl::Stop`], later sends are not delivered and answer `Stop` again.
    pub fn send(&mut self, event: TokenEvent) -> StreamControl {
        if self.stopped {
            return StreamControl::Stop;
        }
        let control = self.sink.on_token(&event);
        self.stopped = control == StreamControl::Stop;
        control
    }

    /// Whether the receiver has asked to stop.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }
}

/// A [`TokenSink`] made from a closure. A panic in the closure is caught and means "stop", so
/// a host-side bug cannot unwind into plugin code.
pub struct FnSink<F>(pub F);

impl<F: FnMut(&TokenEvent) -> StreamControl> TokenSink for FnSink<F> {
    fn on_token(&mut self, event: &TokenEvent) -> StreamControl {
        catch_unwind(AssertUnwindSafe(|| (self.0)(event))).unwrap_or(StreamControl::Stop)
    }
}

impl<F: FnMut(&TokenEvent) -> StreamControl> FnSink<F> {
    /// Borrows the closure as a sink that can cross the boundary.
    pub fn as_sink(&mut self) -> TokenSinkRef<'_> {
        TokenSink_TO::from_ptr(abi_stable::sabi_types::RMut::new(self), TD_Opaque)
    }
}

/// Adapts a [`Plugin`] to the ABI's [`PluginInstance`], catching panics.
struct Exported<P: Plugin> {
    /// `None` once dropped; see [`Drop`].
    plugin: Option<P>,
    /// The operation that panicked, if any: the instance refuses work after a panic.
    panicked_in: Option<&'static str>,
}

impl<P: Plugin> Exported<P> {
    fn call<T>(
        &mut self,
        operation: &'static str,
        work: impl FnOnce(&mut P) -> PluginResult<T>,
    ) -> RResult<T, PluginError> {
        if let Some(earlier) = self.panicked_in {
            return RErr(PluginError::new(
                ErrorKind::Panic,
                format!("instance is unusable: it panicked earlier in {earlier}"),
            ));
        }
        let Some(plugin) = self.plugin.as_mut() else {
            return RErr(PluginError::internal("instance already dropped"));
        };
        match catch_unwind(AssertUnwindSafe(|| work(plugin))) {
            Ok(result) => result.into(),
            Err(payload) => {
                self.panicked_in = Some(operation);
                RErr(PluginError::new(
                    ErrorKind::Panic,
                    format!(
                        "plugin panicked in {operation}: {}",
                        panic_message(&*payload)
                    ),
                ))
            }
        }
    }
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

fn parse_json(what: &str, text: RStr<'_>) -> PluginResult<serde_json::Value> {
    serde_json::from_str(text.as_str())
        .map_err(|e| PluginError::invalid_input(format!("{what} is not valid JSON: {e}")))
}

impl<P: Plugin> PluginInstance for Exported<P> {
    fn initialize(&mut self, config_json: RStr<'_>) -> RResult<(), PluginError> {
        self.call("initialize", |p| {
            p.initialize(parse_json("configuration", config_json)?)
        })
    }

    fn activate(&mut self, options: &ActivateOptions) -> RResult<(), PluginError> {
        self.call("activate", |p| p.activate(options))
    }

    fn deactivate(&mut self) -> RResult<(), PluginError> {
        self.call("deactivate", |p| p.deactivate())
    }

    fn cleanup(&mut self) -> RResult<(), PluginError> {
        self.call("cleanup", |p| p.cleanup())
    }

    fn infer(&mut self, request_json: RStr<'_>) -> RResult<RString, PluginError> {
        self.call("infer", |p| {
            let response = p.infer(parse_json("request", request_json)?)?;
            Ok(RString::from(response.to_string()))
        })
    }

    fn tokenize(&mut self, text: RStr<'_>, add_special: bool) -> RResult<RVec<u32>, PluginError> {
        self.call("tokenize", |p| {
            p.tokenize(text.as_str(), add_special).map(RVec::from)
        })
    }

    fn detokenize(&mut self, tokens: RVec<u32>) -> RResult<RString, PluginError> {
        self.call("detokenize", |p| p.detokenize(&tokens).map(RString::from))
    }

    fn generate(
        &mut self,
        request: &GenerateRequest,
        sink: TokenSinkRef<'_>,
    ) -> RResult<GenerateResponse, PluginError> {
        self.call("generate", |p| {
            p.generate(request, &mut TokenStream::new(sink))
        })
    }

    fn chat(
        &mut self,
        request: &ChatRequest,
        sink: TokenSinkRef<'_>,
    ) -> RResult<GenerateResponse, PluginError> {
        self.call("chat", |p| p.chat(request, &mut TokenStream::new(sink)))
    }

    fn embed(&mut self, request: &EmbedRequest) -> RResult<EmbedResponse, PluginError> {
        self.call("embed", |p| p.embed(request))
    }

    fn open_sequence(&mut self, request: &SequenceRequest) -> RResult<SequenceOpened, PluginError> {
        self.call("open_sequence", |p| p.open_sequence(request))
    }

    fn step_sequences(&mut self, ids: RSlice<'_, u64>) -> RResult<RVec<SequenceStep>, PluginError> {
        self.call("step_sequences", |p| {
            p.step_sequences(ids.as_slice()).map(RVec::from)
        })
    }

    fn close_sequence(&mut self, id: u64) -> RResult<(), PluginError> {
        self.call("close_sequence", |p| p.close_sequence(id))
    }

    fn open_sequence_with(
        &mut self,
        request: &SequenceRequest,
        options: &DecodeOptions,
    ) -> RResult<SequenceOpened, PluginError> {
        self.call("open_sequence_with", |p| {
            options.validate()?;
            p.open_sequence_with(request, options)
        })
    }

    fn sequence_logprobs(&mut self, id: u64) -> RResult<RVec<PositionLogprobs>, PluginError> {
        self.call("sequence_logprobs", |p| {
            p.sequence_logprobs(id).map(RVec::from)
        })
    }

    fn score(&mut self, prompt: &Prompt, top: u32) -> RResult<RVec<PositionLogprobs>, PluginError> {
        self.call("score", |p| {
            if top > crate::MAX_TOP_LOGPROBS {
                return Err(PluginError::invalid_input(format!(
                    "top_logprobs must be at most {}, got {top}",
                    crate::MAX_TOP_LOGPROBS
                )));
            }
            p.score(prompt, top).map(RVec::from)
        })
    }

    fn memory_report(&mut self) -> RResult<MemoryReport, PluginError> {
        self.call("memory_report", |p| p.memory_report())
    }

    fn estimate_memory(&mut self, options: &ActivateOptions) -> RResult<MemoryReport, PluginError> {
        self.call("estimate_memory", |p| p.estimate_memory(options))
    }

    fn force_memory_cleanup(&mut self) -> RResult<MemoryFreed, PluginError> {
        self.call("force_memory_cleanup", |p| p.force_memory_cleanup())
    }

    fn compress(
        &mut self,
        request: &CompressionRequest,
    ) -> RResult<CompressionReport, PluginError> {
        self.call("compress", |p| p.compress(request))
    }

    fn compression_stats(&mut self) -> RResult<ROption<CompressionReport>, PluginError> {
        self.call("compression_stats", |p| {
            p.compression_stats().map(ROption::from)
        })
    }

    fn stats(&self) -> PluginStats {
        match &self.plugin {
            Some(plugin) => catch_unwind(AssertUnwindSafe(|| plugin.stats())).unwrap_or_default(),
            None => PluginStats::default(),
        }
    }

    fn health(&self) -> Health {
        if let Some(operation) = self.panicked_in {
            return Health::new(
                HealthStatus::Unavailable,
                format!("panicked in {operation}"),
            );
        }
        let Some(plugin) = &self.plugin else {
            return Health::new(HealthStatus::Unavailable, "dropped");
        };
        catch_unwind(AssertUnwindSafe(|| plugin.health())).unwrap_or_else(|payload| {
            Health::new(
                HealthStatus::Unavailable,
                format!("health check panicked: {}", panic_message(&*payload)),
            )
        })
    }
}

impl<P: Plugin> Drop for Exported<P> {
    fn drop(&mut self) {
        let plugin = self.plugin.take();
        // A panicking destructor must not unwind into the host.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(plugin)));
    }
}

extern "C" fn metadata_json<P: Plugin>() -> RResult<RString, PluginError> {
    let result = catch_unwind(|| {
        let mut metadata = P::metadata();
        metadata.plugin_api = crate::api_version();
        serde_json::to_string(&metadata)
            .map(RString::from)
            .map_err(|e| PluginError::internal(format!("metadata does not serialize: {e}")))
    });
    match result {
        Ok(result) => result.into(),
        Err(payload) => RErr(PluginError::new(
            ErrorKind::Panic,
            format!("plugin panicked in metadata: {}", panic_message(&*payload)),
        )),
    }
}

extern "C" fn new_instance<P: Plugin>() -> RResult<PluginInstanceBox, PluginError> {
    match catch_unwind(P::new) {
        Ok(Ok(plugin)) => {
            let exported = Exported {
                plugin: Some(plugin),
                panicked_in: None,
            };
            ROk(PluginInstanceBox::from_value(exported, TD_Opaque))
        }
        Ok(Err(error)) => RErr(error),
        Err(payload) => RErr(PluginError::new(
            ErrorKind::Panic,
            format!("plugin panicked in new: {}", panic_message(&*payload)),
        )),
    }
}

/// Builds the root module of plugin `P`. Called once per library by the code that
/// [`export_plugin!`](crate::export_plugin) generates.
pub fn root_module<P: Plugin>() -> PluginModRef {
    let module = PluginMod {
        metadata_json: metadata_json::<P>,
        new_instance: new_instance::<P>,
    };
    // Called once per loaded library; the module lives as long as the library, which is never
    // unloaded.
    PluginModRef(Box::leak(Box::new(WithMetadata::new(module))).static_as_prefix())
}

/// Exports a [`Plugin`] implementation as the library's root module.
///
/// Use it once, at the crate root of a `cdylib` crate, on the type implementing [`Plugin`]
/// (the crate documentation has a complete example):
/// ```text
/// pio_plugin_api::export_plugin!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        /// The header `abi_stable` looks up to find this library's root module.
        // The symbol name is abi_stable's `ROOT_MODULE_LOADER_NAME` (checked by a test in
        // pio-plugin-api), so the plugin crate needs no direct abi_stable dependency.
        #[doc(hidden)]
        #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
        pub static PIO_PLUGIN_LIB_HEADER: $crate::abi_stable::library::LibHeader = {
            extern "C" fn erased_root_module() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(
                    $crate::root_module::<$plugin>,
                )
            }
            // SAFETY: the constructor returns the root module of type `PluginModRef`, the same
            // type passed as the type parameter, exactly as `#[export_root_module]` does.
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::PluginModRef>(
                    erased_root_module,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plugin implementing only what is required.
    struct Minimal;

    impl Plugin for Minimal {
        fn metadata() -> PluginMetadata {
            unreachable!("not used by these tests")
        }
        fn new() -> PluginResult<Self> {
            Ok(Minimal)
        }
        fn initialize(&mut self, _config: serde_json::Value) -> PluginResult<()> {
            Ok(())
        }
        fn activate(&mut self, _options: &ActivateOptions) -> PluginResult<()> {
            Ok(())
        }
        fn deactivate(&mut self) -> PluginResult<()> {
            Ok(())
        }
        fn health(&self) -> Health {
            Health::new(HealthStatus::Ok, "ok")
        }
        fn step_sequences(&mut self, ids: &[u64]) -> PluginResult<Vec<SequenceStep>> {
            panic!("stepping {ids:?}");
        }
    }

    #[test]
    fn batched_generation_defaults_to_unsupported_and_panics_become_errors() {
        let mut exported = Exported {
            plugin: Some(Minimal),
            panicked_in: None,
        };
        let request = SequenceRequest::Generate(GenerateRequest {
            prompt: crate::Prompt::Text("hi".into()),
            params: crate::GenerationParams::greedy(1),
        });
        let error = exported.open_sequence(&request).unwrap_err();
        assert_eq!(error.kind, ErrorKind::Unsupported);
        assert!(error.message.contains("batched generation"), "{error:?}");
        assert_eq!(
            exported.close_sequence(3).unwrap_err().kind,
            ErrorKind::Unsupported
        );
        let error = exported
            .step_sequences(RSlice::from_slice(&[1, 2]))
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Panic);
        assert!(error.message.contains("stepping [1, 2]"), "{error:?}");
    }

    #[test]
    fn memory_and_compression_calls_default_to_unsupported() {
        let mut exported = Exported {
            plugin: Some(Minimal),
            panicked_in: None,
        };
        let error = exported.memory_report().unwrap_err();
        assert_eq!(error.kind, ErrorKind::Unsupported);
        assert!(error.message.contains("memory reports"), "{error:?}");
        assert_eq!(
            exported
                .estimate_memory(&ActivateOptions::default())
                .unwrap_err()
                .kind,
            ErrorKind::Unsupported
        );
        assert_eq!(
            exported.force_memory_cleanup().unwrap_err().kind,
            ErrorKind::Unsupported
        );
        let request = CompressionRequest {
            scope: crate::CompressionScope::Weights,
            format: "q8_0".into(),
        };
        assert_eq!(
            exported.compress(&request).unwrap_err().kind,
            ErrorKind::Unsupported
        );
        assert_eq!(
            exported.compression_stats().unwrap_err().kind,
            ErrorKind::Unsupported
        );
    }

    #[test]
    fn exported_symbol_is_abi_stables_root_module_loader_name() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}
