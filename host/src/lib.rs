//! # pio-host
//!
//! The Inference-PIO host library: plugin manifests and their checks, loading libraries from
//! shadow copies, the [`PluginManager`] and the `pio` command line. The `pio` binary only
//! parses arguments and calls [`cli::run`].

pub mod digest;
mod elf;
pub mod error;
pub mod files;
mod heap;
pub mod isolation;
pub mod loader;
pub mod manager;
pub mod manifest;
pub mod pack;
pub mod paths;
pub mod shadow;
pub mod state;
pub mod watch;

pub use error::{HostError, HostResult};
pub use manager::{DirectoryReport, PluginManager, PluginSummary, Served, Stuck, HOST_VERSION};
pub use manifest::{Manifest, ModelFile, MANIFEST_FILE};
pub use state::PluginState;
