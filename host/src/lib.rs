//! # pio-host
//!
//! The Inference-PIO plugin host library: plugin manifests and their checks, loading libraries
//! from shadow copies, the [`PluginManager`], the directory watcher and out-of-process workers
//! (including the worker's own entry point, [`isolation::worker::serve`]).
//!
//! **API boundary.** The manager takes and returns the plain Rust types of [`types`]; the ABI
//! types of `pio-plugin-api` are converted there and stay inside this crate (the worker
//! protocol carries them on its wire). The HTTP server (`pio-server`) and the `pio` binary
//! build on this crate only.

pub mod digest;
mod elf;
pub mod error;
pub mod files;
mod heap;
pub mod isolation;
pub mod loader;
pub mod manager;
pub mod manifest;
pub mod memory;
pub mod object;
pub mod pack;
pub mod paths;
pub mod shadow;
pub mod state;
pub mod types;
pub mod watch;

pub use error::{HostError, HostResult};
pub use manager::{DirectoryReport, PluginManager, PluginSummary, Served, Stuck, HOST_VERSION};
pub use manifest::{validate_plugin_name, Manifest, ModelFile, MANIFEST_FILE};
pub use memory::{KeepAlive, Lease, MemoryPolicy, SwapStats};
pub use state::PluginState;
pub use types::{
    ActivateOptions, Capability, CategoryCompression, CategoryMemory, ChatMessage, ChatRequest,
    CompressionReport, CompressionRequest, CompressionScope, Constraint, DecodeOptions,
    EmbedRequest, EmbedResponse, ErrorKind, FinishReason, FreedMemory, GenerateRequest,
    GenerateResponse, GenerationParams, Health, HealthStatus, MemoryCategory, MemoryFreed,
    MemoryReport, ModelInfo, PluginError, PluginMetadata, PluginStats, PositionLogprobs, Prompt,
    QualityChange, SequenceOpened, SequenceRequest, SequenceStep, StreamControl, Timings,
    TokenEvent, TokenLogprob, MAX_TOP_LOGPROBS,
};
