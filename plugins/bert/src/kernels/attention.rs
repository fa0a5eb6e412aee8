//! Bidirectional masked multi-head attention (`shaders/bert/attention.wgsl`).

use pio_gpu::{kernel, require_len, Dispatch, Gpu, GpuBuffer, Kernel, Result};
use pio_plugin_api::{PluginError, PluginResult};

use super::{pipeline, Params};

const SHADER: Kernel = kernel!("bert_attention", "bert/attention.wgsl", "bert/common.wgsl");
/// Queries per invocation (each key and value loaded serves this many).
const QUERIES: u32 = 4;
const WORKGROUP_SIZE: u32 = 8;
/// Largest head width the shader's arrays hold.
const MAX_HEAD_DIM: u32 = 128;

/// `ctx[t] = softmax(q k^T / sqrt(d)) v` per head, over the first `lengths[b]` tokens of `t`'s
/// sequence `b`, reading the fused `qkv` (`[tokens][3 * hidden]`, Q | K | V).
#[derive(Debug)]
pub struct Attention {
    heads: u32,
    head_dim: u32,
    pipeline: pio_gpu::wgpu::ComputePipeline,
}

impl Attention {
    /// Compiles the kernel for `heads` heads of `head_dim` (a multiple of 4, at most 128).
    pub fn new(gpu: &Gpu, heads: u32, head_dim: u32) -> PluginResult<Self> {
        if head_dim == 0 || head_dim % 4 != 0 || head_dim > MAX_HEAD_DIM {
            return Err(PluginError::model_load(format!(
                "attention: head width {head_dim} is not a multiple of 4 up to {MAX_HEAD_DIM}"
            )));
        }
        let constants = [
            ("HEADS", f64::from(heads)),
            ("HEAD_DIM", f64::from(head_dim)),
            ("QUERIES", f64::from(QUERIES)),
            ("SCALE", 1.0 / f64::from(head_dim).sqrt()),
            ("WORKGROUP_SIZE", f64::from(WORKGROUP_SIZE)),
        ];
        Ok(Self {
            heads,
            head_dim,
            pipeline: pipeline(gpu, SHADER, &constants)?,
        })
    }

    /// Binds `qkv`, `lengths` (`[batch]` u32, each in `1..=seq_len`) and `ctx`
    /// (`[tokens][hidden]`).
    pub fn bind(
        &self,
        gpu: &Gpu,
        qkv: &GpuBuffer,
        lengths: &GpuBuffer,
        ctx: &GpuBuffer,
        params: &GpuBuffer,
        shape: Params,
    ) -> Result<Dispatch> {
        let hidden = u64::from(self.heads * self.head_dim);
        let t = u64::from(shape.tokens);
        require_len("attention", "qkv", qkv, t * 3 * hidden)?;
        require_len("attention", "lengths", lengths, u64::from(shape.batch))?;
        require_len("attention", "output", ctx, t * hidden)?;
        gpu.bind(
            "attention",
            &self.pipeline,
            &[qkv, lengths, ctx, params],
            [
                shape.seq_len.div_ceil(QUERIES).div_ceil(WORKGROUP_SIZE),
                self.heads,
                shape.batch,
            ],
        )
    }
}
