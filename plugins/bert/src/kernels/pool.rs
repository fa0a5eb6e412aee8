//! Sentence pooling + L2 normalisation on the device (`shaders/bert/pool.wgsl`).

use pio_gpu::{kernel, require_len, Dispatch, Gpu, GpuBuffer, Kernel, Result};
use pio_plugin_api::{PluginError, PluginResult};

use super::{pipeline, Params};
use crate::config::Pooling;

const SHADER: Kernel = kernel!("bert_pool", "bert/pool.wgsl", "bert/common.wgsl");
const WORKGROUP_SIZE: u32 = 32;
/// vec4 feature groups one invocation holds (`MAX_PER_LANE` in the WGSL).
const MAX_PER_LANE: u32 = 32;

/// `out[b] = normalize(pool(x[starts[b]..starts[b + 1]]))`.
#[derive(Debug)]
pub struct Pool {
    hidden: u32,
    pipeline: pio_gpu::wgpu::ComputePipeline,
}

impl Pool {
    /// Compiles the kernel for `hidden` features (a multiple of 4, at most 4096).
    pub fn new(gpu: &Gpu, hidden: u32, pooling: Pooling, normalize: bool) -> PluginResult<Self> {
        if hidden % 4 != 0 || hidden > 4 * MAX_PER_LANE * WORKGROUP_SIZE {
            return Err(PluginError::model_load(format!(
                "pool: {hidden} features is not a multiple of 4 up to {}",
                4 * MAX_PER_LANE * WORKGROUP_SIZE
            )));
        }
        let constants = [
            ("HIDDEN", f64::from(hidden)),
            ("MODE", pooling.shader_mode()),
            ("NORMALIZE", if normalize { 1.0 } else { 0.0 }),
            ("WORKGROUP_SIZE", f64::from(WORKGROUP_SIZE)),
        ];
        Ok(Self {
            hidden,
            pipeline: pipeline(gpu, SHADER, &constants)?,
        })
    }

    /// Binds `x` (`[tokens][hidden]`), `starts` (`[batch + 1]`, see
    /// [`super::sequence_starts`]; no sequence empty) and `out` (`[batch][hidden]`).
    pub fn bind(
        &self,
        gpu: &Gpu,
        x: &GpuBuffer,
        starts: &GpuBuffer,
        out: &GpuBuffer,
        params: &GpuBuffer,
        shape: Params,
    ) -> Result<Dispatch> {
        let h = u64::from(self.hidden);
        require_len("pool", "input", x, u64::from(shape.tokens) * h)?;
        require_len("pool", "starts", starts, u64::from(shape.batch) + 1)?;
        require_len("pool", "output", out, u64::from(shape.batch) * h)?;
        gpu.bind(
            "pool",
            &self.pipeline,
            &[x, starts, out, params],
            [shape.batch, 1, 1],
        )
    }
}
