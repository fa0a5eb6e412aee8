//! Linear layer + bias + residual + LayerNorm in one kernel (`shaders/bert/linear_norm.wgsl`):
//! the attention output projection and the feed-forward down-projection.

use pio_gpu::{kernel, require_len, Dispatch, Gpu, GpuBuffer, GpuError, Kernel, Result};
use pio_plugin_api::{PluginError, PluginResult};

use super::{pipeline, Params};
use crate::upload::DeviceMatrix;

const SHADER: Kernel = kernel!(
    "bert_linear_norm",
    "bert/linear_norm.wgsl",
    "bert/common.wgsl"
);
/// Tokens per workgroup (each weight chunk loaded is used this many times).
const TILE_TOKENS: u32 = 4;
/// Most rows one invocation holds (`MAX_TILE` in the WGSL).
const MAX_TILE_ROWS: u32 = 8;
/// Largest workgroup (`MAX_WORKGROUP` in the WGSL).
const MAX_WORKGROUP: u32 = 256;

/// `out[t] = LayerNorm(W x[t] + bias + residual[t])` for a `W` of a fixed shape and format.
#[derive(Debug)]
pub struct LinearNorm {
    rows: u32,
    cols: u32,
    pipeline: pio_gpu::wgpu::ComputePipeline,
}

impl LinearNorm {
    /// Compiles the kernel for weights shaped like `weights` and LayerNorm epsilon `eps`.
    /// A workgroup holds a whole output row, so `rows` may be at most 2048.
    pub fn new(gpu: &Gpu, weights: &DeviceMatrix, eps: f32) -> PluginResult<Self> {
        let rows = weights.rows;
        // Invocations cover all rows with at most MAX_TILE_ROWS each, in whole groups of 8.
        let workgroup = rows.div_ceil(MAX_TILE_ROWS).next_multiple_of(8);
        if workgroup > MAX_WORKGROUP {
            return Err(PluginError::model_load(format!(
                "linear_norm: {rows} output features is more than the kernel's {}",
                MAX_WORKGROUP * MAX_TILE_ROWS
            )));
        }
        let tile_rows = rows.div_ceil(workgroup);
        let constants = [
            ("ROWS", f64::from(rows)),
            ("COLS", f64::from(weights.cols)),
            ("FORMAT", weights.format.shader_id()),
            ("TILE_ROWS", f64::from(tile_rows)),
            ("TILE_TOKENS", f64::from(TILE_TOKENS)),
            ("EPS", f64::from(eps)),
            ("WORKGROUP_SIZE", f64::from(workgroup)),
        ];
        Ok(Self {
            rows,
            cols: weights.cols,
            pipeline: pipeline(gpu, SHADER, &constants)?,
        })
    }

    /// Binds `weights`, `aux` (bias, gamma, beta: `3 * rows`), input `x` (`[tokens][cols]`),
    /// `residual` and `out` (both `[tokens][rows]`, distinct buffers).
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        gpu: &Gpu,
        weights: &DeviceMatrix,
        aux: &GpuBuffer,
        x: &GpuBuffer,
        residual: &GpuBuffer,
        out: &GpuBuffer,
        params: &GpuBuffer,
        shape: Params,
    ) -> Result<Dispatch> {
        if (weights.rows, weights.cols) != (self.rows, self.cols) {
            return Err(GpuError::shape(
                "linear_norm",
                format!(
                    "kernel built for {}x{}, weights are {}x{}",
                    self.rows, self.cols, weights.rows, weights.cols
                ),
            ));
        }
        let t = u64::from(shape.tokens);
        require_len(
            "linear_norm",
            "bias/gamma/beta",
            aux,
            3 * u64::from(self.rows),
        )?;
        require_len("linear_norm", "input", x, t * u64::from(self.cols))?;
        require_len(
            "linear_norm",
            "residual",
            residual,
            t * u64::from(self.rows),
        )?;
        require_len("linear_norm", "output", out, t * u64::from(self.rows))?;
        gpu.bind(
            "linear_norm",
            &self.pipeline,
            &[
                &weights.words,
                &weights.scales,
                aux,
                x,
                residual,
                out,
                params,
            ],
            [1, shape.tokens.div_ceil(TILE_TOKENS), 1],
        )
    }
}
