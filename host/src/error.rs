//! The host's error type: every refusal names the plugin (or folder), the file and the reason.

use std::path::PathBuf;

use crate::types::PluginError;

use crate::state::PluginState;

/// Everything that can go wrong in the host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A manifest is missing, malformed or inconsistent.
    #[error("{path}: {reason}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file the host reads from a plugin folder (manifest, library, model) is not a regular
    /// file: reading a FIFO would block forever, a device such as `/dev/zero` never ends.
    #[error("{path}: not a regular file ({kind}); plugin folders may hold only regular files")]
    NotRegularFile {
        /// The file, as named (before following symlinks).
        path: PathBuf,
        /// What it is instead (`a FIFO`, `a character device`, ...).
        kind: &'static str,
    },
    /// A file the host reads whole is larger than it accepts.
    #[error("{path}: larger than the limit of {limit} bytes")]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// The most bytes accepted.
        limit: u64,
    },
    /// Two plugin folders declare the same `name@version`; the one serving it keeps serving.
    #[error("{folder}: declares {plugin}, which {serving} already serves; this folder is not loaded (remove one of the two folders or change its version)")]
    DuplicatePlugin {
        /// `name@version`.
        plugin: String,
        /// The folder that is not loaded.
        folder: PathBuf,
        /// The folder that serves the plugin.
        serving: PathBuf,
    },
    /// A manifest path leaves its plugin folder.
    #[error("plugin '{plugin}': {path}: {reason}")]
    PathEscape {
        /// The plugin.
        plugin: String,
        /// The path as written in the manifest.
        path: String,
        /// How it escapes.
        reason: String,
    },
    /// A plugin needs more device memory than the whole memory budget: no swapping makes room.
    #[error("plugin '{plugin}' needs {} of device memory to activate, more than the whole memory budget of {}; raise the budget (memory_budget, PIO_MEMORY_BUDGET, --memory-budget) or compress the model", crate::memory::format_size(*.need), crate::memory::format_size(*.budget))]
    OverBudget {
        /// The plugin.
        plugin: String,
        /// Its estimate, in bytes.
        need: u64,
        /// The budget, in bytes.
        budget: u64,
    },
    /// Plugin and host versions do not fit together.
    #[error("plugin '{plugin}' {version} {reason}")]
    Incompatible {
        /// The plugin.
        plugin: String,
        /// Its version.
        version: String,
        /// Which requirement fails, with both versions.
        reason: String,
    },
    /// A file's sha256 differs from the manifest's.
    #[error("plugin '{plugin}': {file}: sha256 is {actual}, the manifest says {expected}")]
    HashMismatch {
        /// The plugin.
        plugin: String,
        /// The file.
        file: PathBuf,
        /// The manifest's digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// The library could not be loaded as a plugin.
    #[error("plugin '{plugin}': {file}: {reason}")]
    Library {
        /// The plugin.
        plugin: String,
        /// The library file.
        file: PathBuf,
        /// Why it is not a loadable plugin.
        reason: String,
    },
    /// The library's own metadata disagrees with its manifest.
    #[error("plugin '{plugin}': {file}: the library says {field} is '{library}', the manifest says '{manifest}'")]
    MetadataMismatch {
        /// The plugin.
        plugin: String,
        /// The library file.
        file: PathBuf,
        /// The field that differs.
        field: &'static str,
        /// The manifest's value.
        manifest: String,
        /// The library's value.
        library: String,
    },
    /// No plugin of that name is known.
    #[error("no plugin named '{0}' (see `pio plugins list`)")]
    NotFound(String),
    /// A plugin of that name and version is already registered.
    #[error("plugin '{0}' is already registered")]
    AlreadyRegistered(String),
    /// The operation is not allowed in the plugin's current state.
    #[error("plugin '{plugin}': cannot {operation} while {state}")]
    InvalidTransition {
        /// The plugin.
        plugin: String,
        /// The refused operation.
        operation: &'static str,
        /// The state it is in.
        state: PluginState,
    },
    /// The plugin lacks the capability an operation needs.
    #[error("plugin '{plugin}' does not offer {capability}")]
    MissingCapability {
        /// The plugin.
        plugin: String,
        /// The capability.
        capability: &'static str,
    },
    /// The plugin instance a call was pinned to (it holds the call's open sequences) is no
    /// longer served: it was replaced by a reload or unloaded.
    #[error("plugin instance '{plugin}' (generation {generation}) is no longer served (replaced or unloaded); its open sequences are lost")]
    InstanceGone {
        /// `name@version` of the instance.
        plugin: String,
        /// Its reload generation.
        generation: u64,
    },
    /// The plugin returned an error.
    #[error("plugin '{plugin}' failed in {operation}: {error}")]
    Plugin {
        /// The plugin.
        plugin: String,
        /// The call.
        operation: &'static str,
        /// What it said.
        error: PluginError,
    },
    /// A worker process failed to answer a call (see [`crate::isolation`]).
    #[error("plugin '{plugin}' {error} (during {operation})")]
    Worker {
        /// The plugin.
        plugin: String,
        /// The call.
        operation: &'static str,
        /// How the worker failed.
        error: crate::isolation::WorkerError,
    },
    /// A worker process refused to load its plugin (the same checks as in process, run there).
    #[error("{reason} (checked in the plugin's worker process)")]
    WorkerRefused {
        /// The plugin.
        plugin: String,
        /// The check that failed, naming the plugin and file.
        reason: String,
    },
}

impl HostError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HostError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result type of the host library.
pub type HostResult<T> = Result<T, HostError>;
