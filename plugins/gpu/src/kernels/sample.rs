//! Token sampling on the device (`shaders/common/sample.wgsl`): repetition penalty, then greedy,
//! or top-k / top-p / min-p and a temperature-scaled draw, so a decode step reads back one
//! token id instead of a row of logits.

use bytemuck::{Pod, Zeroable};

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::dispatch::{require_len, Dispatch, Params};
use crate::error::{GpuError, Result};
use crate::{kernel, Kernel};

const KERNEL: Kernel = kernel!("sample", "common/sample.wgsl");

/// Most distinct token ids one step can penalize.
pub const MAX_PENALTY_TOKENS: usize = 1024;

/// The result the kernel writes when a logit is NaN or infinite.
const NOT_FINITE: u32 = u32::MAX;

/// How to pick one token (see `sample.wgsl` for the exact rule).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleSettings {
    /// Take the largest (penalized) logit; every other field but the penalty is ignored.
    pub greedy: bool,
    /// Softmax temperature of the draw (positive).
    pub temperature: f32,
    /// Keep the `top_k` largest logits (0: all).
    pub top_k: u32,
    /// Keep the smallest set of largest logits holding this much probability (1: all).
    pub top_p: f32,
    /// Keep tokens at least `min_p` times as likely as the most likely one (0: all).
    pub min_p: f32,
    /// Penalty for the ids passed to [`DeviceSampler::set`] (1: none).
    pub repetition_penalty: f32,
    /// The draw's uniform random number in `[0, 1)`.
    pub uniform: f32,
}

/// `Settings` in the WGSL.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct RawSettings {
    n_penalty: u32,
    top_k: u32,
    greedy: u32,
    pad: u32,
    temperature: f32,
    top_p: f32,
    min_p: f32,
    repetition_penalty: f32,
    uniform: f32,
    pad2: [u32; 3],
}

/// The sampling kernel with its settings, penalty-id and result buffers.
#[derive(Debug)]
pub struct DeviceSampler {
    vocab: u32,
    pipeline: wgpu::ComputePipeline,
    settings: GpuBuffer,
    penalty_ids: GpuBuffer,
    result: GpuBuffer,
}

impl DeviceSampler {
    /// Device bytes one sampler allocates: its settings, penalty ids and result.
    pub const DEVICE_BYTES: u64 =
        (std::mem::size_of::<RawSettings>() + MAX_PENALTY_TOKENS * 4 + 4) as u64;

    /// Compiles (or looks up) the kernel for rows of `vocab` logits and allocates its buffers.
    pub fn new(gpu: &Gpu, vocab: u32) -> Result<Self> {
        if vocab == 0 {
            return Err(GpuError::shape("sample", "an empty vocabulary".to_owned()));
        }
        Ok(Self {
            vocab,
            pipeline: gpu.pipeline(KERNEL, "main", &[])?,
            settings: gpu.storage_zeroed(
                "sampling settings",
                std::mem::size_of::<RawSettings>() as u64,
            )?,
            penalty_ids: gpu.storage_zeroed("penalty ids", MAX_PENALTY_TOKENS as u64 * 4)?,
            result: gpu.storage_zeroed("sampled token", 4)?,
        })
    }

    /// Binds the first `vocab` values of `logits` (penalized in place when sampling runs).
    pub fn bind(&self, gpu: &Gpu, logits: &GpuBuffer) -> Result<Dispatch> {
        require_len("sample", "logits", logits, self.vocab.into())?;
        gpu.dispatch(
            "sample",
            &self.pipeline,
            &[logits, &self.penalty_ids, &self.settings, &self.result],
            Params::count(self.vocab),
            [1, 1, 1],
        )
    }

    /// Queues the settings and the distinct `penalty_ids` for the next run.
    pub fn set(&self, gpu: &Gpu, settings: &SampleSettings, penalty_ids: &[u32]) -> Result<()> {
        if penalty_ids.len() > MAX_PENALTY_TOKENS {
            return Err(GpuError::shape(
                "sample",
                format!(
                    "{} penalized tokens, at most {MAX_PENALTY_TOKENS}",
                    penalty_ids.len()
                ),
            ));
        }
        if !settings.greedy && settings.temperature <= 0.0 {
            return Err(GpuError::shape(
                "sample",
                format!("temperature {} must be positive", settings.temperature),
            ));
        }
        let raw = RawSettings {
            n_penalty: penalty_ids.len() as u32,
            top_k: settings.top_k,
            greedy: settings.greedy.into(),
            pad: 0,
            temperature: settings.temperature,
            top_p: settings.top_p,
            min_p: settings.min_p,
            repetition_penalty: settings.repetition_penalty,
            uniform: settings.uniform,
            pad2: [0; 3],
        };
        gpu.write(&self.settings, 0, &[raw])?;
        if !penalty_ids.is_empty() {
            gpu.write(&self.penalty_ids, 0, penalty_ids)?;
        }
        Ok(())
    }

    /// The buffer the sampled id is written to (one u32).
    pub fn result(&self) -> &GpuBuffer {
        &self.result
    }

    /// Interprets the value read back from [`DeviceSampler::result`]: the token id, or `None`
    /// when a logit was NaN or infinite.
    pub fn token(&self, raw: u32) -> Option<u32> {
        (raw != NOT_FINITE && raw < self.vocab).then_some(raw)
    }
}
