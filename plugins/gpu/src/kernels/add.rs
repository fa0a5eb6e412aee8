//! In-place residual add (`shaders/common/add.wgsl`).

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::dispatch::{groups, require_len, Dispatch, Params};
use crate::error::Result;
use crate::pipeline::{kernel, Kernel};

const KERNEL: Kernel = kernel!("add", "common/add.wgsl");
const WORKGROUP_SIZE: u32 = 64;
/// Workgroups per row of the 2-D grid long inputs are spread over.
const GRID_WIDTH: u32 = 1024;

/// `acc[i] += x[i]` over a flat range of f32 values.
#[derive(Debug)]
pub struct Add {
    pipeline: wgpu::ComputePipeline,
}

impl Add {
    /// Compiles (or looks up) the pipeline.
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let constants = [("WORKGROUP_SIZE", f64::from(WORKGROUP_SIZE))];
        Ok(Self {
            pipeline: gpu.pipeline(KERNEL, "main", &constants)?,
        })
    }

    /// Adds the first `len` values of `x` to those of `acc`.
    pub fn bind(&self, gpu: &Gpu, acc: &GpuBuffer, x: &GpuBuffer, len: u32) -> Result<Dispatch> {
        require_len("add", "accumulator", acc, len.into())?;
        require_len("add", "addend", x, len.into())?;
        let workgroups = groups(len, WORKGROUP_SIZE);
        let grid = [
            workgroups.min(GRID_WIDTH),
            groups(workgroups, GRID_WIDTH),
            1,
        ];
        gpu.dispatch("add", &self.pipeline, &[acc, x], Params::count(len), grid)
    }
}
