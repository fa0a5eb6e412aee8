//! The one error type that crosses the plugin boundary.

use std::fmt;

use abi_stable::{std_types::RString, StableAbi};
use serde::{Deserialize, Serialize};

/// What went wrong, coarsely; the message says the rest.
#[repr(u8)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request or configuration is malformed or out of range.
    InvalidInput,
    /// The plugin cannot work with this host, device or model (versions, formats, features).
    Incompatible,
    /// A model file could not be read, verified or understood.
    ModelLoad,
    /// A host or device allocation failed or would exceed the memory budget.
    OutOfMemory,
    /// The caller asked the work to stop before it finished.
    Cancelled,
    /// The plugin does not offer this operation (see its capabilities).
    Unsupported,
    /// The plugin panicked; the panic was caught at the boundary.
    Panic,
    /// Anything else that is the plugin's own fault.
    Internal,
}

impl ErrorKind {
    /// A short, stable, lowercase name, as used in logs and API error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Incompatible => "incompatible",
            ErrorKind::ModelLoad => "model_load",
            ErrorKind::OutOfMemory => "out_of_memory",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Panic => "panic",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error returned by a plugin: a kind plus a human-readable message.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// The category of the failure.
    pub kind: ErrorKind,
    /// What failed, naming the offending file, tensor, field or limit.
    pub message: RString,
}

impl PluginError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: RString::from(message.into()),
        }
    }

    /// [`ErrorKind::InvalidInput`].
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// [`ErrorKind::Incompatible`].
    pub fn incompatible(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Incompatible, message)
    }

    /// [`ErrorKind::ModelLoad`].
    pub fn model_load(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ModelLoad, message)
    }

    /// [`ErrorKind::OutOfMemory`].
    pub fn out_of_memory(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::OutOfMemory, message)
    }

    /// [`ErrorKind::Cancelled`].
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Cancelled, message)
    }

    /// [`ErrorKind::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// [`ErrorKind::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for PluginError {}

/// Result type of the safe authoring layer.
pub type PluginResult<T> = Result<T, PluginError>;
