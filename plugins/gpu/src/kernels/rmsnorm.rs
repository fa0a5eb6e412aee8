//! RMSNorm (`shaders/common/rmsnorm.wgsl`).

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::dispatch::{groups, require_len, Dispatch, Params};
use crate::error::{GpuError, Result};
use crate::pipeline::{kernel, Kernel};

const KERNEL: Kernel = kernel!("rmsnorm", "common/rmsnorm.wgsl");
/// One invocation per token; small groups keep a handful of tokens spread over the cores.
const WORKGROUP_SIZE: u32 = 4;

/// `out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight` over rows of `cols` values.
#[derive(Debug)]
pub struct RmsNorm {
    cols: u32,
    pipeline: wgpu::ComputePipeline,
}

impl RmsNorm {
    /// Compiles (or looks up) the pipeline for rows of `cols` values (a multiple of 4).
    pub fn new(gpu: &Gpu, cols: u32, eps: f32) -> Result<Self> {
        if cols == 0 || cols % 4 != 0 {
            return Err(GpuError::shape(
                "rmsnorm",
                format!("{cols} columns is not a positive multiple of 4"),
            ));
        }
        let constants = [
            ("COLS", f64::from(cols)),
            ("EPS", f64::from(eps)),
            ("WORKGROUP_SIZE", f64::from(WORKGROUP_SIZE)),
        ];
        Ok(Self {
            cols,
            pipeline: gpu.pipeline(KERNEL, "main", &constants)?,
        })
    }

    /// Normalises `n_tokens` rows of `x` (`[T][cols]`) into `out` with the f32 `weight` vector.
    pub fn bind(
        &self,
        gpu: &Gpu,
        x: &GpuBuffer,
        weight: &GpuBuffer,
        out: &GpuBuffer,
        n_tokens: u32,
    ) -> Result<Dispatch> {
        let len = u64::from(n_tokens) * u64::from(self.cols);
        require_len("rmsnorm", "input", x, len)?;
        require_len("rmsnorm", "weight", weight, self.cols.into())?;
        require_len("rmsnorm", "output", out, len)?;
        let grid = [groups(n_tokens, WORKGROUP_SIZE), 1, 1];
        gpu.dispatch(
            "rmsnorm",
            &self.pipeline,
            &[x, weight, out],
            Params::count(n_tokens),
            grid,
        )
    }
}
