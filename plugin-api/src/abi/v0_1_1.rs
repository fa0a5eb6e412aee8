//! The ABI as released in `pio-plugin-api` 0.1.1, frozen: the layouts a plugin built against
//! 0.1.1 exports. A host loads such a plugin through these types when the current layout check
//! refuses it (`abi_stable` refuses a library whose vtable has fewer methods than the host's
//! type, so the memory and compression calls appended in 0.1.2 would otherwise lock every 0.1.1
//! plugin out), and answers the calls 0.1.1 lacks as unsupported.
//!
//! Never edit this file: it must stay byte-for-byte the layout that was released. The type
//! names match the current ones on purpose — `abi_stable` compares names, not module paths.

// abi_stable's derive and trait macros define impls inside generated constants.
#![allow(non_local_definitions)]
#![allow(missing_docs)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RErr, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

use super::TokenSinkRef;
use crate::{
    ActivateOptions, ChatRequest, DecodeOptions, EmbedRequest, EmbedResponse, GenerateRequest,
    GenerateResponse, Health, PluginError, PluginStats, PositionLogprobs, Prompt, SequenceOpened,
    SequenceRequest, SequenceStep,
};

/// One plugin instance: the object behind every call after loading.
///
/// Lifecycle: `initialize` (once, with the configuration) → `activate` (allocates the device
/// and loads the model) → `generate` / `chat` / `embed` / `infer` / `tokenize` / `detokenize`
/// any number of times → `deactivate` (releases the device; `activate` may follow again) →
/// `cleanup` (once, before the instance is dropped).
///
/// Batched generation (capability `batched-generation`, methods after `health`): the host opens
/// sequences, then repeatedly steps any set of open ones together — one token each per step, in
/// one forward pass — and closes each when it finishes or its client leaves. Sequences may be
/// opened and closed between steps (continuous batching).
#[sabi_trait]
pub trait PluginInstance: Send {
    /// Applies the JSON configuration (model path, options). No device work happens here.
    fn initialize(&mut self, config_json: RStr<'_>) -> RResult<(), PluginError>;
    /// Acquires the device, loads the model and prepares kernels.
    fn activate(&mut self, options: &ActivateOptions) -> RResult<(), PluginError>;
    /// Releases the device and everything allocated on it.
    fn deactivate(&mut self) -> RResult<(), PluginError>;
    /// Releases every remaining resource before the instance is dropped.
    fn cleanup(&mut self) -> RResult<(), PluginError>;
    /// A free-form request and response, both JSON.
    fn infer(&mut self, request_json: RStr<'_>) -> RResult<RString, PluginError>;
    /// Text to token ids; `add_special` adds the model's BOS and similar tokens.
    fn tokenize(&mut self, text: RStr<'_>, add_special: bool) -> RResult<RVec<u32>, PluginError>;
    /// Token ids to text.
    fn detokenize(&mut self, tokens: RVec<u32>) -> RResult<RString, PluginError>;
    /// Continues a prompt, streaming every token to `sink`.
    fn generate(
        &mut self,
        request: &GenerateRequest,
        sink: TokenSinkRef<'_>,
    ) -> RResult<GenerateResponse, PluginError>;
    /// Answers a conversation, streaming every token to `sink`.
    fn chat(
        &mut self,
        request: &ChatRequest,
        sink: TokenSinkRef<'_>,
    ) -> RResult<GenerateResponse, PluginError>;
    /// Embeds a batch of texts.
    fn embed(&mut self, request: &EmbedRequest) -> RResult<EmbedResponse, PluginError>;
    /// Memory use and counters.
    fn stats(&self) -> PluginStats;
    /// Readiness.
    #[sabi(last_prefix_field)]
    fn health(&self) -> Health;

    /// Opens a sequence for batched generation and processes its prompt.
    fn open_sequence(&mut self, request: &SequenceRequest) -> RResult<SequenceOpened, PluginError> {
        let _ = request;
        RErr(PluginError::unsupported("batched generation"))
    }
    /// Decodes one token for each of the open sequences `ids` in one forward pass.
    fn step_sequences(&mut self, ids: RSlice<'_, u64>) -> RResult<RVec<SequenceStep>, PluginError> {
        let _ = ids;
        RErr(PluginError::unsupported("batched generation"))
    }
    /// Closes a sequence (finished or abandoned) and frees what it holds.
    fn close_sequence(&mut self, id: u64) -> RResult<(), PluginError> {
        let _ = id;
        RErr(PluginError::unsupported("batched generation"))
    }

    /// Opens a sequence as [`open_sequence`](PluginInstance::open_sequence) does, reporting
    /// log-probabilities and obeying a grammar as `options` ask (API 0.1.1).
    fn open_sequence_with(
        &mut self,
        request: &SequenceRequest,
        options: &DecodeOptions,
    ) -> RResult<SequenceOpened, PluginError> {
        let _ = (request, options);
        RErr(PluginError::unsupported(
            "log-probabilities and constrained decoding",
        ))
    }
    /// The log-probabilities of the tokens sequence `id` generated since the last call, in
    /// order (for a sequence opened with `logprobs`; API 0.1.1).
    fn sequence_logprobs(&mut self, id: u64) -> RResult<RVec<PositionLogprobs>, PluginError> {
        let _ = id;
        RErr(PluginError::unsupported("log-probabilities"))
    }
    /// Scores a prompt: one entry per prompt token (as the plugin tokenizes it), each with
    /// its log-probability given the tokens before it and the `top` most likely tokens at
    /// its position. The first token has no context: its log-probability is NaN and it has no
    /// alternatives (API 0.1.1).
    fn score(&mut self, prompt: &Prompt, top: u32) -> RResult<RVec<PositionLogprobs>, PluginError> {
        let _ = (prompt, top);
        RErr(PluginError::unsupported("prompt log-probabilities"))
    }
}

/// An owned, type-erased plugin instance.
pub type PluginInstanceBox = PluginInstance_TO<'static, RBox<()>>;

/// The root module a plugin library exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The plugin's [`PluginMetadata`](crate::PluginMetadata) as JSON. Cheap: loads no model.
    pub metadata_json: extern "C" fn() -> RResult<RString, PluginError>,
    /// Creates a new, uninitialized instance.
    #[sabi(last_prefix_field)]
    pub new_instance: extern "C" fn() -> RResult<PluginInstanceBox, PluginError>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "pio_plugin";
    const NAME: &'static str = "pio_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
