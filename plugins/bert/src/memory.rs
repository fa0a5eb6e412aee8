//! What the model takes on the device, computed from its configuration alone (so the host can
//! check its memory budget before activation) and reported by category once active.

use pio_gpu::WeightDtype;
use pio_plugin_api::{CategoryMemory, MemoryCategory};

use crate::config::ModelConfig;

/// Bytes pio-gpu allocates for a buffer of `bytes` (whole words, 16 at least).
pub(crate) fn buffer(bytes: u64) -> u64 {
    bytes.next_multiple_of(4).max(16)
}

/// Bytes of `values` f32 values.
fn floats(values: usize) -> u64 {
    buffer(values as u64 * 4)
}

/// Device bytes of the weights with the linear layers stored as `dtype` (what
/// [`DeviceWeights::upload`](crate::upload::DeviceWeights::upload) allocates).
pub fn weight_bytes(config: &ModelConfig, dtype: WeightDtype) -> u64 {
    let c = &config.bert;
    let (h, f) = (c.hidden_size, c.intermediate_size);
    let matrix = |rows: usize, cols: usize| buffer(rows as u64 * dtype.device_row_bytes(cols));
    let layer = matrix(3 * h, h)
        + matrix(h, h)
        + matrix(f, h)
        + matrix(h, f)
        + floats(3 * h)
        + floats(h)
        + floats(f)
        + floats(h)
        + 2 * floats(2 * h);
    layer * c.num_layers as u64
        + floats(c.vocab_size * h)
        + floats(c.max_position_embeddings * h)
        + floats(2 * h)
}

/// Device bytes of the activation buffers for `batch` sequences of `tokens` tokens in all
/// (what the model's workspace allocates).
pub fn workspace_bytes(config: &ModelConfig, batch: usize, tokens: usize) -> u64 {
    let c = &config.bert;
    let (h, f) = (c.hidden_size, c.intermediate_size);
    // The uniform parameters (four u32), then ids, starts, hidden, qkv, ctx, ffn, pooled.
    buffer(16)
        + floats(tokens)
        + floats(batch + 1)
        + floats(tokens * h)
        + floats(tokens * 3 * h)
        + floats(tokens * h)
        + floats(tokens * f)
        + floats(batch * h)
}

/// What an activation with `dtype` weights and batches of `max_batch` needs: the weights, and
/// the largest workspace (a full batch of the longest inputs), which is allocated at the first
/// batch that needs it.
pub fn estimate(config: &ModelConfig, dtype: WeightDtype, max_batch: usize) -> Vec<CategoryMemory> {
    let tokens = max_batch * config.max_seq_length;
    vec![
        CategoryMemory::new(MemoryCategory::Weights, weight_bytes(config, dtype), 0),
        CategoryMemory::new(
            MemoryCategory::Activations,
            workspace_bytes(config, max_batch, tokens),
            0,
        ),
    ]
}
