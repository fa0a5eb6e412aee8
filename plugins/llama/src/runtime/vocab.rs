//! The vocabulary-sized matrices (the token embedding, the output projection) in row shards.
//!
//! A device binds at most so many bytes per buffer (128 MiB on lavapipe): Gemma 3's 262 144 ×
//! 640 Q8_0 embedding takes 189 MiB once repacked. Such a matrix is uploaded as consecutive row
//! ranges, each within the limit (one shard when it fits, as SmolLM2's does), and every kernel
//! over it runs once per shard: the embedding lookup of a shard writes the tokens whose ids are
//! its rows, and the head of a shard writes its columns of every logit row.

use pio_gguf::TensorView;
use pio_gpu::{Gpu, QuantMatrix, ROW_GROUP};

use crate::error::{Error, Result};
use crate::storage::WeightStorage;

/// One shard: rows `first_row .. first_row + matrix.rows()` of the whole matrix.
pub(super) struct Shard {
    pub first_row: u32,
    pub matrix: QuantMatrix,
}

/// A `rows` × `cols` matrix as row shards that each fit one device buffer.
pub(super) struct VocabMatrix {
    pub shards: Vec<Shard>,
}

impl VocabMatrix {
    /// Uploads `t` (`rows` × `cols`, in the type `storage` gives it) in as few shards as the
    /// device's buffer limit allows; every shard but the last holds a whole number of 8-row
    /// groups.
    pub fn upload(
        gpu: &Gpu,
        storage: WeightStorage,
        t: &TensorView,
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        let (dtype, data) = storage.group_bytes(&[t])?;
        let data = &data[0];
        let limit = gpu.max_storage_buffer_bytes();
        let fit = (limit / dtype.device_row_bytes(cols)) as usize / ROW_GROUP * ROW_GROUP;
        if fit == 0 {
            return Err(Error::InvalidModel(format!(
                "tensor `{}`: {ROW_GROUP} rows of {cols} values do not fit the device's largest \
                 buffer ({limit} bytes)",
                t.info.name
            )));
        }
        let row_bytes = dtype.gguf_row_bytes(cols);
        let shards = (0..rows)
            .step_by(fit)
            .map(|first| {
                let n = fit.min(rows - first);
                let bytes = &data[first * row_bytes..(first + n) * row_bytes];
                Ok(Shard {
                    first_row: first as u32,
                    matrix: QuantMatrix::upload(gpu, dtype, n, cols, bytes)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(VocabMatrix { shards })
    }
}
