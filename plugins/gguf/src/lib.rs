//! Memory-mapped GGUF reader and writer.
//!
//! [`GgufFile::open`] maps a GGUF v2/v3 file, parses its metadata and tensor
//! table, and hands out [`TensorView`]s that borrow tensor bytes straight
//! from the map. Every count, offset and size is validated against the file
//! length, so corrupt input gives a [`GgufError`] naming the file, never a
//! panic. [`dequantize`] decodes F32/F16/BF16, the 32-element formats (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0) and the K-quants (Q4_K, Q5_K, Q6_K; [`SuperBlock`] is their decoded form), bit-exact
//! with GGML; [`GgufWriter`] builds valid v3 files, quantizing with GGML's reference quantizers
//! (simplified for the K-quants), for tests and requantized models. [`split`] reads and writes
//! llama.cpp's split models: [`GgufFile::open`] on the first shard opens the whole model.

mod error;
mod parse;
mod quant;
mod reader;
pub mod requantize;
mod shard;
pub mod split;
pub mod surgery;
mod tensor;
mod value;
pub mod writer;

pub use error::{FragmentProblem, GgufError, Result};
pub use quant::kquant::{SuperBlock, QK_K};
pub use quant::{can_dequantize, dequantize};
pub use reader::{GgufFile, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC};
pub use tensor::{TensorInfo, TensorType, TensorView};
pub use value::{MetadataValue, ValueType};
pub use writer::GgufWriter;
