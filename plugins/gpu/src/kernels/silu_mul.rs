//! SwiGLU activation `silu(gate) * up` (`shaders/common/silu_mul.wgsl`).

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::dispatch::{groups, require_len, Dispatch, Params};
use crate::error::Result;
use crate::layout::RowLayout;
use crate::pipeline::{kernel, Kernel};

const KERNEL: Kernel = kernel!("silu_mul", "common/silu_mul.wgsl");
const WORKGROUP_SIZE: u32 = 64;

/// Shape of a [`SiluMul`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiluMulConfig {
    /// Values per token (the feed-forward width).
    pub width: u32,
    /// Where the gate rows are.
    pub gate: RowLayout,
    /// Where the up rows are.
    pub up: RowLayout,
}

/// `out[t][i] = silu(gate[t][i]) * up[t][i]`, output `[T][width]`.
#[derive(Debug)]
pub struct SiluMul {
    config: SiluMulConfig,
    pipeline: wgpu::ComputePipeline,
}

impl SiluMul {
    /// Compiles (or looks up) the pipeline for `config`.
    pub fn new(gpu: &Gpu, config: SiluMulConfig) -> Result<Self> {
        let constants = [
            ("WIDTH", f64::from(config.width)),
            ("GATE_STRIDE", f64::from(config.gate.stride)),
            ("GATE_OFFSET", f64::from(config.gate.offset)),
            ("UP_STRIDE", f64::from(config.up.stride)),
            ("UP_OFFSET", f64::from(config.up.offset)),
            ("WORKGROUP_SIZE", f64::from(WORKGROUP_SIZE)),
        ];
        Ok(Self {
            config,
            pipeline: gpu.pipeline(KERNEL, "main", &constants)?,
        })
    }

    /// Binds `n_tokens` rows; `gate` and `up` may be the same buffer.
    pub fn bind(
        &self,
        gpu: &Gpu,
        gate: &GpuBuffer,
        up: &GpuBuffer,
        out: &GpuBuffer,
        n_tokens: u32,
    ) -> Result<Dispatch> {
        let SiluMulConfig {
            width,
            gate: g,
            up: u,
        } = self.config;
        require_len("silu_mul", "gate", gate, g.required_len(n_tokens, width))?;
        require_len("silu_mul", "up", up, u.required_len(n_tokens, width))?;
        require_len(
            "silu_mul",
            "output",
            out,
            u64::from(n_tokens) * u64::from(width),
        )?;
        let grid = [groups(width, WORKGROUP_SIZE), n_tokens, 1];
        gpu.dispatch(
            "silu_mul",
            &self.pipeline,
            &[gate, up, out],
            Params::count(n_tokens),
            grid,
        )
    }
}
