//! [`PluginObject`]: a plugin instance in whichever API layout its library was built with, and
//! [`PluginModule`], the root module it comes from. The host reads the current layout first and
//! falls back to the frozen earlier ones of its band (see `pio_plugin_api::abi::v0_1_1` and
//! `v0_1_0`); calls
//! an older layout lacks answer [`ErrorKind::Unsupported`](pio_plugin_api::ErrorKind) naming the
//! plugin's API version.

use pio_plugin_api::{
    abi::{v0_1_0, v0_1_1},
    abi_stable::std_types::{RErr, ROption, RResult, RSlice, RStr, RString, RVec},
    ActivateOptions, ChatRequest, CompressionReport, CompressionRequest, DecodeOptions,
    EmbedRequest, EmbedResponse, GenerateRequest, GenerateResponse, Health, MemoryFreed,
    MemoryReport, PluginError, PluginInstanceBox, PluginModRef, PluginStats, PositionLogprobs,
    Prompt, SequenceOpened, SequenceRequest, SequenceStep, TokenSinkRef,
};

/// A library's root module, in the layout the library was built with.
#[derive(Clone, Copy)]
pub enum PluginModule {
    /// This host's API version.
    Current(PluginModRef),
    /// `pio-plugin-api` 0.1.1.
    V0_1_1(v0_1_1::PluginModRef),
    /// `pio-plugin-api` 0.1.0.
    V0_1_0(v0_1_0::PluginModRef),
}

impl PluginModule {
    /// The plugin's metadata as JSON.
    pub fn metadata_json(&self) -> RResult<RString, PluginError> {
        match self {
            Self::Current(module) => (module.metadata_json())(),
            Self::V0_1_1(module) => (module.metadata_json())(),
            Self::V0_1_0(module) => (module.metadata_json())(),
        }
    }

    /// A new, uninitialized instance.
    pub fn new_instance(&self) -> Result<PluginObject, PluginError> {
        match self {
            Self::Current(module) => (module.new_instance())()
                .into_result()
                .map(PluginObject::Current),
            Self::V0_1_1(module) => (module.new_instance())()
                .into_result()
                .map(PluginObject::V0_1_1),
            Self::V0_1_0(module) => (module.new_instance())()
                .into_result()
                .map(PluginObject::V0_1_0),
        }
    }
}

/// A plugin instance in the layout of its library's API version.
pub enum PluginObject {
    /// This host's API version.
    Current(PluginInstanceBox),
    /// `pio-plugin-api` 0.1.1.
    V0_1_1(v0_1_1::PluginInstanceBox),
    /// `pio-plugin-api` 0.1.0.
    V0_1_0(v0_1_0::PluginInstanceBox),
}

/// Runs the same call on the instance whatever its layout (the 0.1.0 methods exist in all).
macro_rules! on_any_layout {
    ($object:expr, $instance:ident => $call:expr) => {
        match $object {
            PluginObject::Current($instance) => $call,
            PluginObject::V0_1_1($instance) => $call,
            PluginObject::V0_1_0($instance) => $call,
        }
    };
}

/// Runs a call of API 0.1.1 on a layout that has it; 0.1.0 answers unsupported.
macro_rules! since_0_1_1 {
    ($object:expr, $what:expr, $instance:ident => $call:expr) => {
        match $object {
            PluginObject::Current($instance) => $call,
            PluginObject::V0_1_1($instance) => $call,
            PluginObject::V0_1_0(_) => too_old($what, "0.1.0"),
        }
    };
}

/// Runs a call of API 0.1.2 on a layout that has it; older ones answer unsupported.
macro_rules! since_0_1_2 {
    ($object:expr, $what:expr, $instance:ident => $call:expr) => {
        match $object {
            PluginObject::Current($instance) => $call,
            PluginObject::V0_1_1(_) => too_old($what, "0.1.1"),
            PluginObject::V0_1_0(_) => too_old($what, "0.1.0"),
        }
    };
}

/// The answer of an older layout to a call it does not have.
fn too_old<T>(what: &str, version: &str) -> RResult<T, PluginError> {
    RErr(PluginError::unsupported(format!(
        "{what}: the plugin was built against pio-plugin-api {version}, which lacks them"
    )))
}

#[allow(missing_docs)] // Each method is the ABI call of the same name.
impl PluginObject {
    pub fn initialize(&mut self, config_json: RStr<'_>) -> RResult<(), PluginError> {
        on_any_layout!(self, i => i.initialize(config_json))
    }

    pub fn activate(&mut self, options: &ActivateOptions) -> RResult<(), PluginError> {
        on_any_layout!(self, i => i.activate(options))
    }

    pub fn deactivate(&mut self) -> RResult<(), PluginError> {
        on_any_layout!(self, i => i.deactivate())
    }

    pub fn cleanup(&mut self) -> RResult<(), PluginError> {
        on_any_layout!(self, i => i.cleanup())
    }

    pub fn infer(&mut self, request_json: RStr<'_>) -> RResult<RString, PluginError> {
        on_any_layout!(self, i => i.infer(request_json))
    }

    pub fn tokenize(
        &mut self,
        text: RStr<'_>,
        add_special: bool,
    ) -> RResult<RVec<u32>, PluginError> {
        on_any_layout!(self, i => i.tokenize(text, add_special))
    }

    pub fn detokenize(&mut self, tokens: RVec<u32>) -> RResult<RString, PluginError> {
        on_any_layout!(self, i => i.detokenize(tokens))
    }

    pub fn generate(
        &mut self,
        request: &GenerateRequest,
        sink: TokenSinkRef<'_>,
    ) -> RResult<GenerateResponse, PluginError> {
        on_any_layout!(self, i => i.generate(request, sink))
    }

    pub fn chat(
        &mut self,
        request: &ChatRequest,
        sink: TokenSinkRef<'_>,
    ) -> RResult<GenerateResponse, PluginError> {
        on_any_layout!(self, i => i.chat(request, sink))
    }

    pub fn embed(&mut self, request: &EmbedRequest) -> RResult<EmbedResponse, PluginError> {
        on_any_layout!(self, i => i.embed(request))
    }

    pub fn stats(&self) -> PluginStats {
        on_any_layout!(self, i => i.stats())
    }

    pub fn health(&self) -> Health {
        on_any_layout!(self, i => i.health())
    }

    pub fn open_sequence(
        &mut self,
        request: &SequenceRequest,
    ) -> RResult<SequenceOpened, PluginError> {
        on_any_layout!(self, i => i.open_sequence(request))
    }

    pub fn step_sequences(
        &mut self,
        ids: RSlice<'_, u64>,
    ) -> RResult<RVec<SequenceStep>, PluginError> {
        on_any_layout!(self, i => i.step_sequences(ids))
    }

    pub fn close_sequence(&mut self, id: u64) -> RResult<(), PluginError> {
        on_any_layout!(self, i => i.close_sequence(id))
    }

    pub fn open_sequence_with(
        &mut self,
        request: &SequenceRequest,
        options: &DecodeOptions,
    ) -> RResult<SequenceOpened, PluginError> {
        since_0_1_1!(self, "log-probabilities and constrained decoding", i => {
            i.open_sequence_with(request, options)
        })
    }

    pub fn sequence_logprobs(&mut self, id: u64) -> RResult<RVec<PositionLogprobs>, PluginError> {
        since_0_1_1!(self, "log-probabilities", i => i.sequence_logprobs(id))
    }

    pub fn score(
        &mut self,
        prompt: &Prompt,
        top: u32,
    ) -> RResult<RVec<PositionLogprobs>, PluginError> {
        since_0_1_1!(self, "prompt log-probabilities", i => i.score(prompt, top))
    }

    pub fn memory_report(&mut self) -> RResult<MemoryReport, PluginError> {
        since_0_1_2!(self, "memory reports", i => i.memory_report())
    }

    pub fn estimate_memory(
        &mut self,
        options: &ActivateOptions,
    ) -> RResult<MemoryReport, PluginError> {
        since_0_1_2!(self, "memory estimates", i => i.estimate_memory(options))
    }

    pub fn force_memory_cleanup(&mut self) -> RResult<MemoryFreed, PluginError> {
        since_0_1_2!(self, "memory cleanup", i => i.force_memory_cleanup())
    }

    pub fn compress(
        &mut self,
        request: &CompressionRequest,
    ) -> RResult<CompressionReport, PluginError> {
        since_0_1_2!(self, "compression", i => i.compress(request))
    }

    pub fn compression_stats(&mut self) -> RResult<ROption<CompressionReport>, PluginError> {
        since_0_1_2!(self, "compression", i => i.compression_stats())
    }
}
