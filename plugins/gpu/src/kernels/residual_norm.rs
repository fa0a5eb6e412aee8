//! A normalised residual add, `x[t] += rmsnorm(y[t]) * weight`
//! (`shaders/common/residual_rms_norm.wgsl`): Gemma's norms after attention and feed-forward.

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::dispatch::{groups, require_len, Dispatch, Params};
use crate::error::{GpuError, Result};
use crate::{kernel, Kernel};

const KERNEL: Kernel = kernel!("residual_rms_norm", "common/residual_rms_norm.wgsl");
/// One invocation per token: decode has one, prefill chunks up to a few dozen.
const WORKGROUP_SIZE: u32 = 8;

/// `x[t] += y[t] / sqrt(mean(y[t]²) + eps) * weight` for rows of `width` values.
#[derive(Debug)]
pub struct ResidualRmsNorm {
    width: u32,
    pipeline: wgpu::ComputePipeline,
}

impl ResidualRmsNorm {
    /// Compiles (or looks up) the pipeline for rows of `width` values (a multiple of 4) and
    /// the norm's `eps`.
    pub fn new(gpu: &Gpu, width: u32, eps: f32) -> Result<Self> {
        if width == 0 || width % 4 != 0 || !(eps.is_finite() && eps > 0.0) {
            return Err(GpuError::shape(
                "residual_rms_norm",
                format!("width {width} must be a positive multiple of 4 and eps {eps} positive"),
            ));
        }
        let constants = [
            ("WIDTH", f64::from(width)),
            ("EPS", f64::from(eps)),
            ("WORKGROUP_SIZE", f64::from(WORKGROUP_SIZE)),
        ];
        Ok(Self {
            width,
            pipeline: gpu.pipeline(KERNEL, "main", &constants)?,
        })
    }

    /// Binds `n_tokens` rows of `y`, the norm `weight` (`[width]`) and the residual stream `x`.
    pub fn bind(
        &self,
        gpu: &Gpu,
        y: &GpuBuffer,
        weight: &GpuBuffer,
        x: &GpuBuffer,
        n_tokens: u32,
    ) -> Result<Dispatch> {
        let len = u64::from(n_tokens) * u64::from(self.width);
        require_len("residual_rms_norm", "input", y, len)?;
        require_len(
            "residual_rms_norm",
            "norm weight",
            weight,
            self.width.into(),
        )?;
        require_len("residual_rms_norm", "residual", x, len)?;
        gpu.dispatch(
            "residual_rms_norm",
            &self.pipeline,
            &[y, weight, x],
            Params::count(n_tokens),
            [groups(n_tokens, WORKGROUP_SIZE), 1, 1],
        )
    }
}
