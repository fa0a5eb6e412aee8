//! Launchers of the BERT-specific kernels (WGSL in `shaders/bert/`, embedded at compile time
//! with `pio_gpu::kernel!`, `shaders/bert/common.wgsl` prepended): embeddings + LayerNorm,
//! masked bidirectional attention, pooling. The linear layers are pio-gpu's [`pio_gpu::Linear`]
//! with its bias epilogues.
//!
//! Each kernel is a struct created once per model (`new` compiles its pipeline, through
//! pio-gpu's pipeline cache, with the model's shapes as override constants) whose `bind` checks
//! buffer sizes and returns a `pio_gpu::Dispatch` for one batch shape.
//!
//! Activations are f32, row-major, one row per token; a batch is `batch` sequences padded to
//! `seq_len` tokens (token `t` is position `t % seq_len` of sequence `t / seq_len`), described
//! to the kernels by one [`Params`] uniform per forward pass.

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
    /// `batch * seq_len`.
    pub tokens: u32,
    /// Tokens per (padded) sequence.
    pub seq_len: u32,
    /// Sequences.
    pub batch: u32,
    unused: u32,
}

impl Params {
    /// `batch` sequences padded to `seq_len` tokens.
    pub fn new(batch: u32, seq_len: u32) -> Self {
        Self {
            tokens: batch * seq_len,
            seq_len,
            batch,
            unused: 0,
        }
    }
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
