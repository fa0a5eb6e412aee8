//! Embedding lookup + LayerNorm (`shaders/bert/embed_norm.wgsl`).

use pio_gpu::{kernel, require_len, Dispatch, Gpu, GpuBuffer, Kernel, Result};
use pio_plugin_api::PluginResult;

use super::{pipeline, Params};

const SHADER: Kernel = kernel!(
    "bert_embed_norm",
    "bert/embed_norm.wgsl",
    "bert/common.wgsl"
);
const WORKGROUP_SIZE: u32 = 16;

/// `out[t] = LayerNorm(word[ids[t]] + pos_type[i])` for token `t`, position `i` of its sequence.
#[derive(Debug)]
pub struct EmbedNorm {
    hidden: u32,
    pipeline: pio_gpu::wgpu::ComputePipeline,
}

/// Device buffers of [`EmbedNorm::bind`].
#[derive(Debug, Clone, Copy)]
pub struct EmbedBuffers<'a> {
    /// `[vocab][hidden]` word embeddings.
    pub word: &'a GpuBuffer,
    /// `[positions][hidden]` position embeddings plus token-type row 0.
    pub pos_type: &'a GpuBuffer,
    /// LayerNorm gamma then beta, `2 * hidden`.
    pub norm: &'a GpuBuffer,
    /// `[tokens]` token ids (u32), the sequences packed.
    pub ids: &'a GpuBuffer,
    /// `[batch + 1]` where each sequence starts (see [`super::sequence_starts`]).
    pub starts: &'a GpuBuffer,
    /// `[tokens][hidden]` output.
    pub out: &'a GpuBuffer,
    /// The batch's [`Params`] uniform.
    pub params: &'a GpuBuffer,
}

impl EmbedNorm {
    /// Compiles the kernel for `hidden` (a multiple of 4) and LayerNorm epsilon `eps`.
    pub fn new(gpu: &Gpu, hidden: u32, eps: f32) -> PluginResult<Self> {
        let constants = [
            ("HIDDEN", f64::from(hidden)),
            ("EPS", f64::from(eps)),
            ("WORKGROUP_SIZE", f64::from(WORKGROUP_SIZE)),
        ];
        Ok(Self {
            hidden,
            pipeline: pipeline(gpu, SHADER, &constants)?,
        })
    }

    /// Binds `b` for a batch of shape `shape` (positions must fit in `pos_type`).
    pub fn bind(&self, gpu: &Gpu, b: EmbedBuffers<'_>, shape: Params) -> Result<Dispatch> {
        let h = u64::from(self.hidden);
        require_len(
            "embed_norm",
            "position",
            b.pos_type,
            u64::from(shape.longest) * h,
        )?;
        require_len("embed_norm", "norm", b.norm, 2 * h)?;
        require_len("embed_norm", "ids", b.ids, u64::from(shape.tokens))?;
        require_len("embed_norm", "starts", b.starts, u64::from(shape.batch) + 1)?;
        require_len("embed_norm", "output", b.out, u64::from(shape.tokens) * h)?;
        gpu.bind(
            "embed_norm",
            &self.pipeline,
            &[b.word, b.pos_type, b.norm, b.ids, b.starts, b.out, b.params],
            [shape.longest.div_ceil(WORKGROUP_SIZE), shape.batch, 1],
        )
    }
}
