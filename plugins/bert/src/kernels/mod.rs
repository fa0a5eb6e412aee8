//! Launchers of the BERT-specific kernels (WGSL in `shaders/bert/`, embedded at compile time
//! with `pio_gpu::kernel!`, `shaders/bert/common.wgsl` prepended): embeddings + LayerNorm,
//! masked bidirectional attention, pooling. The linear layers are pio-gpu's [`pio_gpu::Linear`]
//! with its bias epilogues.
//!
//! Each kernel is a struct created once per model (`new` compiles its pipeline, through
//! pio-gpu's pipeline cache, with the model's shapes as override constants) whose `bind` checks
//! buffer sizes and returns a `pio_gpu::Dispatch` for one batch shape.
//!
//! Activations are f32, row-major, one row per token; a batch is `batch` sequences packed one
//! after another without padding (sequence `b` is tokens `starts[b]..starts[b + 1]`, the
//! `starts` buffer of [`sequence_starts`]), described to the kernels by that buffer and one
//! [`Params`] uniform per forward pass. No kernel computes anything for padding: the linear
//! layers, most of the work, run on exactly the batch's tokens.

pub mod attention;
pub mod embed_norm;
pub mod pool;

use bytemuck::{Pod, Zeroable};
use pio_gpu::{Gpu, Kernel};
use pio_plugin_api::PluginResult;

/// The shape of one batch, as the kernels see it (`struct Params` in `common.wgsl`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct Params {
    /// Tokens of all sequences together.
    pub tokens: u32,
    /// Tokens of the longest sequence.
    pub longest: u32,
    /// Sequences.
    pub batch: u32,
    unused: u32,
}

impl Params {
    /// The shape of sequences of `lengths` tokens, packed.
    pub fn for_lengths(lengths: &[u32]) -> Self {
        Self {
            tokens: lengths.iter().sum(),
            longest: lengths.iter().copied().max().unwrap_or(0),
            batch: lengths.len() as u32,
            unused: 0,
        }
    }
}

/// Where each of sequences of `lengths` tokens starts when they are packed, and after them
/// the total: `batch + 1` offsets, sequence `b` being tokens `starts[b]..starts[b + 1]`.
pub fn sequence_starts(lengths: &[u32]) -> Vec<u32> {
    std::iter::once(0)
        .chain(lengths.iter().scan(0, |end, &len| {
            *end += len;
            Some(*end)
        }))
        .collect()
}

/// Compiles `kernel`'s `main` with the given override constants (cached per device).
pub(crate) fn pipeline(
    gpu: &Gpu,
    kernel: Kernel,
    constants: &[(&'static str, f64)],
) -> PluginResult<pio_gpu::wgpu::ComputePipeline> {
    gpu.pipeline(kernel, "main", constants)
        .map_err(|e| e.into_plugin_error(kernel.name))
}
