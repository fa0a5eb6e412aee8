//! Split models in llama.cpp's `gguf-split` format: a model in several GGUF files ("shards"),
//! each a valid GGUF file, named `PREFIX-00001-of-0000N.gguf`, ...; the first holds the model's
//! metadata, every one the split keys ([`SPLIT_NO`], [`SPLIT_COUNT`], [`SPLIT_TENSORS_COUNT`])
//! and its share of the tensors, in order.
//!
//! [`crate::GgufFile::open`] on the first shard opens the whole model (`open.rs`); [`split`]
//! cuts a model into shards and writes a [`Manifest`] beside them (every shard's size and
//! SHA-256, checked when the model is opened), [`merge`] writes a split model back as one file.
//!
//! ```no_run
//! use std::path::Path;
//! use pio_gguf::{split, GgufFile};
//!
//! let model = GgufFile::open("SmolLM2.gguf")?;
//! let manifest = split::split(&model, split::Limit::Tensors(1), Path::new("out/SmolLM2"))?;
//! let shards = GgufFile::open("out/SmolLM2-00001-of-00272.gguf")?;
//! assert_eq!(shards.tensors(), model.tensors());
//! split::merge(&shards, Path::new("SmolLM2.merged.gguf"))?;
//! # Ok::<(), pio_gguf::GgufError>(())
//! ```

mod digest;
mod keys;
mod manifest;
mod name;
pub(crate) mod open;
mod write;

pub use keys::{SPLIT_COUNT, SPLIT_NO, SPLIT_TENSORS_COUNT};
pub use manifest::{FileEntry, Manifest};
pub use name::ShardName;
pub use write::{merge, split, Limit};
