//! # pio-plugin-kit
//!
//! The authoring kit for Inference-PIO plugins: an author writes the model, the kit writes the
//! plugin. It sits beside [`pio_plugin_api`] (the stable ABI, re-exported as [`api`]) and turns
//! a few plain Rust traits into a complete [`Plugin`](api::Plugin):
//!
//! - **Lifecycle.** An author declares a [`Config`] type (deserialized from the manifest's and
//!   the host's configuration and validated, with errors naming the key) and a [`Model`] — the
//!   *active* state, built by [`Model::activate`]. The kit holds the state machine (created →
//!   initialized → active → initialized), so model code has no `Option`s to unwrap and no
//!   "not active" checks.
//! - **Metadata.** [`metadata!`] fills a [`Metadata`] builder from the plugin's `Cargo.toml`
//!   (version, authors, license, description); the API version and the default host range come
//!   from the kit ([`default_host_range`]), never by hand.
//! - **Embeddings.** A [`Model`] overriding [`Model::embed`] is a complete embeddings plugin
//!   ([`EmbeddingPlugin`]); a text model may embed too.
//! - **Generation.** A [`TextModel`] implements [`open`](TextModel::open) /
//!   [`step`](TextModel::step) / [`close`](TextModel::close) over token ids. The kit's one
//!   driver handles stop strings (held back across token boundaries, never emitted),
//!   `max_new_tokens`, the context limit, cancellation, timings and usage counts, and serves
//!   `generate`, `chat` and batched sequences from it — so all three give the same tokens and
//!   text for the same request by construction. A model that runs a sequence alone faster
//!   than in a batch (its own cache, sampling on the device) overrides
//!   [`open_alone`](TextModel::open_alone), which `generate` and `chat` open theirs with.
//! - **Plain types.** Authors see [`Activation`], [`SequenceParams`] (with [`Sampling`]),
//!   [`Message`], [`Next`], [`ModelStats`], [`Embeddings`]; the `abi_stable` types stay behind
//!   [`TextPlugin`] and [`EmbeddingPlugin`].
//!
//! ## A complete plugin
//!
//! A model that answers every prompt with its characters in reverse order. Everything below
//! the model's own logic (`open` and `step`) is glue:
//!
//! ```
//! use pio_plugin_kit::{
//!     export_text_model, metadata, Activation, Capability, CharTokenizer, Model, Next,
//!     NoConfig, PluginMetadata, PluginResult, SequenceParams, TextModel,
//! };
//!
//! struct Reverse;
//!
//! impl Model for Reverse {
//!     type Config = NoConfig;
//!     type Tokenizer = CharTokenizer;
//!     fn metadata() -> PluginMetadata {
//!         metadata!("reverse").capabilities([Capability::TextGeneration]).build()
//!     }
//!     fn activate(_: &NoConfig, _: &Activation) -> PluginResult<Self> {
//!         Ok(Reverse)
//!     }
//!     fn tokenizer(&self) -> &CharTokenizer {
//!         &CharTokenizer
//!     }
//! }
//!
//! impl TextModel for Reverse {
//!     /// The tokens still to say, last first.
//!     type Sequence = Vec<u32>;
//!     fn context_length(&self) -> u32 {
//!         4096
//!     }
//!     fn open(&mut self, prompt: &[u32], _: &SequenceParams) -> PluginResult<Vec<u32>> {
//!         Ok(prompt.to_vec())
//!     }
//!     fn step(&mut self, rest: &mut Vec<u32>) -> PluginResult<Next> {
//!         // `open` never sees an empty prompt and the kit stops after a `Final` token.
//!         let token = rest.pop().unwrap_or_default();
//!         Ok(if rest.is_empty() { Next::Final(token) } else { Next::Token(token) })
//!     }
//! }
//!
//! export_text_model!(Reverse);
//! ```
//!
//! `plugins/example-minimal` is a plugin of this size as a crate (it echoes the prompt in
//! capitals), loaded by the host in its tests;
//! `plugins/example` is the full template (chat, embeddings, batched generation, `infer`, and
//! the host's test fixtures as a [`Plugin`](api::Plugin) decorator).
//!
//! ## Model surgery operations
//!
//! A text plugin may offer model surgery through [`Model::infer`] with two operations, which
//! `pio surgery analyze|apply` sends to whatever plugin serves the model (the Llama plugin
//! implements both; a plugin without them answers `unsupported`). Layers and heads are
//! numbered as in the loaded model file; a head is `[layer, head]`, a query head.
//!
//! - `{"op": "surgery.analyze", "text": TEXT, "max_tokens": N, "measure": K, "keep_layers":
//!   [N, ...], "keep_heads": [[L, H], ...]}` scores the loaded model on the first `N` tokens of
//!   `TEXT` (default 256; without `text`, a calibration text of the plugin's choice, which it
//!   documents) and answers `{"tokens", "baseline_perplexity", "layers": [{"layer",
//!   "block_influence", "kept", "perplexity_without"?}], "heads": [{"layer", "head",
//!   "importance", "kept", "perplexity_without"?}]}`, each list least important first.
//!   `block_influence` is ShortGPT's `1 − mean cos(hidden in, hidden out)`; `importance` is the
//!   plugin's own (documented) head score; `kept` marks what the keep lists preserve (a kept
//!   layer's heads, and a layer with a kept head), which is ranked but never a candidate;
//!   `perplexity_without` is the calibration perplexity with only that component removed,
//!   present for the first `K` (default 4) candidates of each list. A keep list naming a
//!   component the model lacks is `invalid_input`.
//! - `{"op": "surgery.apply", "out": PATH, "remove_layers": [N, ...], "remove_heads": [[L, H],
//!   ...], "keep_layers": [N, ...], "keep_heads": [[L, H], ...]}` writes the loaded model's file
//!   without those components to `PATH` — a removed head taken out of the projections, not
//!   silenced — and answers `{"out", "layers_before", "layers_after", "removed_heads",
//!   "heads_after", "kv_heads_after", "bytes_before", "bytes_after"}` (the last two lists per
//!   layer left). Removing every layer or every head of a layer, an index out of range, a head
//!   of a removed layer, or anything a keep list names is `invalid_input`, and nothing is
//!   written. For GGUF models, `pio_gguf::surgery` does the file transform (its documentation
//!   gives the rule that keeps grouped-query attention exact).
//!
//! ## Design
//!
//! - *A companion crate, not more of the API crate*: the API crate is the ABI contract and
//!   changes only by the rules below; the kit is ordinary Rust that can grow and change (in a
//!   minor version of its own) without touching any `#[repr(C)]` type. A plugin built with the
//!   kit exports exactly what a hand-written [`Plugin`](api::Plugin) exports.
//! - *The trait is implemented by the active state*: `activate` returns `Self`, so "active" is a
//!   type, not a flag; the configuration is a separate type because it exists before and after
//!   activation.
//! - *Sequences are the unit of generation*: a streaming `generate` is one sequence stepped to
//!   its end, a batch step is [`TextModel::step_batch`] over several; the kit turns tokens into
//!   events in one place ([`Next`] says how a token ends a sequence). A model whose forward pass
//!   batches overrides `step_batch`; the others get batching from `step` for free.
//! - *Stop strings and limits are the kit's*, because every model needs the same rules and the
//!   host checks them again: a plugin that drifted from them would be caught by the host's
//!   output guard, one that uses the kit cannot drift.
//!
//! ## Versioning
//!
//! What a host accepts depends only on the `pio-plugin-api` version a plugin was built
//! against: see [the API's versioning rules](pio_plugin_api#versioning-for-authors).
//! [`default_host_range`] encodes the band: a plugin built with API `0.1.x` declares the hosts
//! `>=0.1.0, <0.2.0`. The kit itself is not part of the ABI: a new kit version in the API's
//! band changes nothing a host can see, so upgrading it is a rebuild, never a migration of
//! hosts.

#![deny(missing_docs)]

mod calls;
mod config;
mod decoding;
mod embedding;
mod guide;
mod lifecycle;
mod logprobs;
mod memory;
mod metadata;
mod model;
mod sequences;
mod stop;
mod text;
mod tokenizer;

pub use config::{parse_config, Config, NoConfig};
pub use embedding::EmbeddingPlugin;
pub use logprobs::{Logprobs, TokenSet};
pub use memory::{Compression, Freed, MemoryUse, QualityChange};
pub use metadata::{default_host_range, Metadata};
pub use model::{
    Activation, Embeddings, Message, Model, ModelStats, Next, Sampled, Sampling, SequenceParams,
    StepOptions, TextModel,
};
pub use stop::{StopMatcher, StopStep};
pub use text::TextPlugin;
pub use tokenizer::{CharTokenizer, Decoder, Tokenizer};

/// The stable ABI crate, for what the kit does not wrap.
pub use pio_plugin_api as api;
pub use pio_plugin_api::{
    export_plugin, Capability, CategoryCompression, CategoryMemory, CompressionScope, ErrorKind,
    FinishReason, FreedMemory, MemoryCategory, ModelInfo, PluginError, PluginMetadata,
    PluginResult,
};

/// Exports a [`TextModel`] as the library's plugin: use it once, at the crate root of a
/// `cdylib` crate. The ABI's root module is generated by
/// [`export_plugin!`](pio_plugin_api::export_plugin) for [`TextPlugin`]`<M>`.
#[macro_export]
macro_rules! export_text_model {
    ($model:ty) => {
        $crate::api::export_plugin!($crate::TextPlugin<$model>);
    };
}

/// Exports a [`Model`] that embeds (see [`EmbeddingPlugin`]): use it once, at the crate root of
/// a `cdylib` crate.
#[macro_export]
macro_rules! export_embedding_model {
    ($model:ty) => {
        $crate::api::export_plugin!($crate::EmbeddingPlugin<$model>);
    };
}
