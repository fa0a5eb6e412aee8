//! Register-tiled linear layer with bias and optional GELU (`shaders/bert/linear.wgsl`): the
//! fused Q|K|V projection and the feed-forward up-projection.

use pio_gpu::{kernel, require_len, Dispatch, Gpu, GpuBuffer, GpuError, Kernel, Result};
use pio_plugin_api::PluginResult;

use super::{pipeline, Params};
use crate::upload::DeviceMatrix;

const SHADER: Kernel = kernel!("bert_linear", "bert/linear.wgsl", "bert/common.wgsl");
/// Output rows per invocation (each x value loaded is used this many times; fixed in the WGSL).
const TILE_ROWS: u32 = 8;
/// Tokens per invocation (each weight chunk loaded is used this many times; fixed in the WGSL).
const TILE_TOKENS: u32 = 4;
/// Invocations per workgroup: one group of 8 neighbouring rows.
const WORKGROUP_SIZE: u32 = 8;

/// `out[t][n] = act(W[n] · x[t] + bias[n])` for a `W` of a fixed shape and format.
#[derive(Debug)]
pub struct Linear {
    rows: u32,
    cols: u32,
    pipeline: pio_gpu::wgpu::ComputePipeline,
}

impl Linear {
    /// Compiles the kernel for weights shaped like `weights`, with GELU if `gelu`.
    pub fn new(gpu: &Gpu, weights: &DeviceMatrix, gelu: bool) -> PluginResult<Self> {
        let constants = [
            ("ROWS", f64::from(weights.rows)),
            ("COLS", f64::from(weights.cols)),
            ("FORMAT", weights.format.shader_id()),
            ("GELU", if gelu { 1.0 } else { 0.0 }),
            ("WORKGROUP_SIZE", f64::from(WORKGROUP_SIZE)),
        ];
        Ok(Self {
            rows: weights.rows,
            cols: weights.cols,
            pipeline: pipeline(gpu, SHADER, &constants)?,
        })
    }

    /// Binds `weights` with its `bias`, input `x` (`[tokens][cols]`) and `out`
    /// (`[tokens][rows]`).
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        gpu: &Gpu,
        weights: &DeviceMatrix,
        bias: &GpuBuffer,
        x: &GpuBuffer,
        out: &GpuBuffer,
        params: &GpuBuffer,
        shape: Params,
    ) -> Result<Dispatch> {
        if (weights.rows, weights.cols) != (self.rows, self.cols) {
            return Err(GpuError::shape(
                "linear",
                format!(
                    "kernel built for {}x{}, weights are {}x{}",
                    self.rows, self.cols, weights.rows, weights.cols
                ),
            ));
        }
        let t = u64::from(shape.tokens);
        require_len("linear", "bias", bias, u64::from(self.rows))?;
        require_len("linear", "input", x, t * u64::from(self.cols))?;
        require_len("linear", "output", out, t * u64::from(self.rows))?;
        let invocations = self.rows.div_ceil(8 * TILE_ROWS) * 8;
        gpu.bind(
            "linear",
            &self.pipeline,
            &[&weights.words, &weights.scales, bias, x, out, params],
            [
                invocations.div_ceil(WORKGROUP_SIZE),
                shape.tokens.div_ceil(TILE_TOKENS),
                1,
            ],
        )
    }
}
