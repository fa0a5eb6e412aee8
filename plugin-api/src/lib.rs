//! # pio-plugin-api
//!
//! The stable ABI between the Inference-PIO host (`pio`) and its plugins, and the only crate a
//! plugin author depends on.
//!
//! An author implements the plain Rust trait [`Plugin`] and calls [`export_plugin!`] once; the
//! macro generates the `abi_stable` root module, and the glue behind it turns every panic into an
//! [`ErrorKind::Panic`] error so nothing unwinds across the boundary.
//!
//! ```ignore
//! use pio_plugin_api::{export_plugin, Plugin, PluginMetadata, PluginResult};
//!
//! pub struct MyPlugin;
//! impl Plugin for MyPlugin { /* ... */ }
//! export_plugin!(MyPlugin);
//! ```
//!
//! See `plugins/example` in the repository for a complete, documented plugin.
//!
//! ## Versioning
//! This crate follows semver. A host accepts a plugin whose API version is in its band (same
//! major version; same minor version while the major is 0); `abi_stable` then checks the type
//! layouts at load. Later versions in a band only append to the prefix types in [`abi`], and
//! `abi_stable` accepts a library with *more* prefix fields than the host knows, never fewer:
//! a plugin built against a newer API in the band loads in an older host, while a plugin built
//! against an older API loads in a newer host only if nothing was appended in between.

pub mod abi;
mod author;
mod error;
mod metadata;
mod request;
mod response;

pub use abi::{PluginInstance, PluginInstanceBox, PluginModRef, TokenSinkRef};
pub use author::{root_module, FnSink, Plugin, TokenStream};
pub use error::{ErrorKind, PluginError, PluginResult};
pub use metadata::{validate_plugin_name, Capability, ModelInfo, PluginMetadata};
pub use request::{
    ActivateOptions, ChatMessage, ChatRequest, EmbedRequest, GenerateRequest, GenerationParams,
    Prompt, SequenceRequest,
};
pub use response::{
    EmbedResponse, FinishReason, GenerateResponse, Health, HealthStatus, PluginStats,
    SequenceOpened, SequenceStep, StreamControl, Timings, TokenEvent,
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
