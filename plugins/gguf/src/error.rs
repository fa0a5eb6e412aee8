//! The error type shared by the reader, the tensor accessors and the writer.

use std::path::PathBuf;

use crate::tensor::TensorType;

/// Everything that can go wrong while reading, decoding or writing GGUF data.
///
/// Errors about a file name that file (`path`); errors about metadata or
/// tensors also name the key or tensor involved.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened, mapped or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The file is not valid GGUF: bad magic, truncated, or an offset, size
    /// or count that does not fit the file.
    #[error("{}: malformed GGUF at byte {offset}: {what}", path.display())]
    Malformed {
        /// The file concerned.
        path: PathBuf,
        /// Byte offset in the file where the problem was detected.
        offset: u64,
        /// Human-readable description of the problem.
        what: String,
    },

    /// The file uses a GGUF version this crate does not read.
    #[error("{}: unsupported GGUF version {version} (only versions 2 and 3 are supported)", path.display())]
    UnsupportedVersion {
        /// The file concerned.
        path: PathBuf,
        /// The version number found in the header.
        version: u32,
    },

    /// A required metadata key is absent.
    #[error("{}: metadata key `{key}` not found", path.display())]
    MissingKey {
        /// The file concerned.
        path: PathBuf,
        /// The key that was looked up.
        key: String,
    },

    /// A metadata value does not have the type (or range) the caller asked for.
    #[error("{}: metadata key `{key}`: expected {expected}, found {found}", path.display())]
    MetadataType {
        /// The file concerned.
        path: PathBuf,
        /// The key that was looked up.
        key: String,
        /// What the caller expected, e.g. "an integer that fits in u32".
        expected: &'static str,
        /// A description of the value actually stored.
        found: String,
    },

    /// No tensor with this name exists in the file.
    #[error("{}: tensor `{name}` not found", path.display())]
    MissingTensor {
        /// The file concerned.
        path: PathBuf,
        /// The tensor name that was looked up.
        name: String,
    },

    /// A tensor's type, shape or data placement is invalid.
    #[error("{}: tensor `{name}`: {what}", path.display())]
    InvalidTensor {
        /// The file concerned.
        path: PathBuf,
        /// The tensor concerned.
        name: String,
        /// Human-readable description of the problem.
        what: String,
    },

    /// An operation (dequantization, quantization, sizing) is not available
    /// for this tensor type.
    #[error("tensor type {0} is not supported by this operation")]
    UnsupportedType(TensorType),

    /// A buffer handed to a conversion routine has the wrong length.
    #[error("{dtype}: {what}")]
    BadLength {
        /// The tensor type being converted.
        dtype: TensorType,
        /// Human-readable description of the mismatch.
        what: String,
    },

    /// The writer was given inconsistent input.
    #[error("GGUF writer: {0}")]
    Writer(String),

    /// A model surgery names a component the model does not have, removes every layer, or
    /// contradicts its keep lists (see [`crate::surgery`]).
    #[error("surgery: {0}")]
    Surgery(String),
}

/// Shorthand for results whose error is [`GgufError`].
pub type Result<T, E = GgufError> = std::result::Result<T, E>;
