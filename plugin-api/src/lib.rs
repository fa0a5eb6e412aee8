//! # pio-plugin-api
//!
//! The stable ABI between the Inference-PIO host (`pio`) and its plugins.
//!
//! An author implements the plain Rust trait [`Plugin`] and calls [`export_plugin!`] once; the
//! macro generates the `abi_stable` root module, and the glue behind it turns every panic into an
//! [`ErrorKind::Panic`] error so nothing unwinds across the boundary.
//!
//! ```
//! use pio_plugin_api::{
//!     export_plugin, semver, serde_json, ActivateOptions, Health, HealthStatus, ModelInfo,
//!     Plugin, PluginMetadata, PluginResult,
//! };
//!
//! pub struct MyPlugin;
//!
//! impl Plugin for MyPlugin {
//!     fn metadata() -> PluginMetadata {
//!         PluginMetadata {
//!             name: "my-plugin".to_owned(),
//!             version: semver::Version::new(0, 1, 0),
//!             plugin_api: pio_plugin_api::api_version(),
//!             host: ">=0.1.0, <0.2.0".parse().unwrap(),
//!             author: String::new(),
//!             description: String::new(),
//!             license: String::new(),
//!             capabilities: Vec::new(),
//!             model: ModelInfo::default(),
//!             tags: Vec::new(),
//!         }
//!     }
//!     fn new() -> PluginResult<Self> {
//!         Ok(MyPlugin)
//!     }
//!     fn initialize(&mut self, _config: serde_json::Value) -> PluginResult<()> {
//!         Ok(())
//!     }
//!     fn activate(&mut self, _options: &ActivateOptions) -> PluginResult<()> {
//!         Ok(())
//!     }
//!     fn deactivate(&mut self) -> PluginResult<()> {
//!         Ok(())
//!     }
//!     fn health(&self) -> Health {
//!         Health::new(HealthStatus::Ok, "ready")
//!     }
//! }
//!
//! export_plugin!(MyPlugin);
//! ```
//!
//! Most authors do not implement [`Plugin`] by hand: the authoring kit (`pio-plugin-kit`)
//! implements it for a model (lifecycle, metadata from `Cargo.toml`, stop strings, limits,
//! batched generation). See `plugins/example-minimal` for the smallest plugin and
//! `plugins/example` for a complete, documented one.
//!
//! ## Versioning, for authors
//!
//! This crate follows Cargo's semver. What a host does with a plugin depends only on the
//! `pio-plugin-api` version the plugin was built against, which [`export_plugin!`] records in
//! its metadata and the host checks before the library's code runs. A *band* is what Cargo calls compatible
//! versions: the same major version, and the same minor version while the major is 0.
//!
//! - **Compatible change** (`0.1.0` → `0.1.1` while the major is 0; `1.1` → `1.2` after; a
//!   fix, or an addition that keeps every layout): fields appended to the root module's prefix
//!   type, methods appended to the instance's vtable after its last prefix field (each with a
//!   default), new metadata JSON fields (a missing one takes its default). A host loads a
//!   plugin built against a *newer* version of its band (it ignores what it does not know),
//!   and one built against an *older* version of its band through a frozen copy of that
//!   version's layout ([`abi::v0_1_0`], [`abi::v0_1_1`]: `abi_stable`'s layout check refuses a library with
//!   fewer vtable methods than the host's type, so every release that appends keeps the
//!   previous layout frozen); the calls the older layout lacks answer
//!   [`ErrorKind::Unsupported`] naming the plugin's API version.
//! - **Breaking change** (`0.1` → `0.2` while the major is 0; `1.x` → `2.0` after): anything
//!   else — a field, method or type changed or removed, a variant added to an ABI enum. A host
//!   refuses a plugin of another band before loading its code, with an error naming both
//!   versions (`plugin 'x' 0.1.0 needs pio-plugin-api ^0.2, this host has 0.1.0`); rebuild
//!   the plugin against the host's API.
//!
//! Mechanically: a host accepts a plugin whose API version is in its band; `abi_stable` then
//! checks the type layouts at load. Later versions in a band only append to the prefix types in
//! [`abi`], and `abi_stable` accepts a library with *more* prefix fields than the host knows,
//! never fewer. Plugin metadata crosses as JSON ([`PluginMetadata`]), so it grows without any
//! layout change.

#![deny(missing_docs)]

pub mod abi;
mod author;
mod error;
mod memory;
mod metadata;
mod request;
mod response;

pub use abi::{PluginInstance, PluginInstanceBox, PluginModRef, TokenSinkRef};
pub use author::{root_module, FnSink, Plugin, TokenStream};
pub use error::{ErrorKind, PluginError, PluginResult};
pub use memory::{
    CategoryCompression, CategoryMemory, CompressionReport, CompressionRequest, CompressionScope,
    FreedMemory, MemoryCategory, MemoryFreed, MemoryReport, QualityChange,
};
pub use metadata::{validate_plugin_name, Capability, ModelInfo, PluginMetadata};
pub use request::{
    ActivateOptions, ChatMessage, ChatRequest, Constraint, DecodeOptions, EmbedRequest,
    GenerateRequest, GenerationParams, Prompt, SequenceRequest, MAX_TOP_LOGPROBS,
};
pub use response::{
    EmbedResponse, FinishReason, GenerateResponse, Health, HealthStatus, PluginStats,
    PositionLogprobs, SequenceOpened, SequenceStep, StreamControl, Timings, TokenEvent,
    TokenLogprob,
};

/// Re-exported so the [`export_plugin!`] expansion and plugins need no direct dependency on them.
pub use abi_stable;
pub use semver;
pub use serde_json;

/// The version of this crate, which a plugin records as the API version it was built against.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// [`API_VERSION`] parsed.
pub fn api_version() -> semver::Version {
    semver::Version::parse(API_VERSION).expect("the crate version is valid semver")
}
