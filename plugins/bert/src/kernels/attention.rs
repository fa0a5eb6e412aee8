//! Bidirectional multi-head attention over packed sequences (`shaders/bert/attention.wgsl`, or
//! its shared-rows variant `attention_shared.wgsl`).

use pio_gpu::{kernel, require_len, Dispatch, Gpu, GpuBuffer, Kernel, Reduction, Result};
use pio_plugin_api::{PluginError, PluginResult};

use super::{pipeline, Params};

/// A kernel of `$path` in each size of its arrays, by the head width it holds: the source
/// followed by `bert/head_<width>.wgsl` (`MAX_HEAD_VEC4`).
macro_rules! by_head_width {
    ($name:literal, $path:literal) => {
        [
            (
                32,
                kernel!($name, $path, "bert/common.wgsl", "bert/head_32.wgsl"),
            ),
            (
                64,
                kernel!($name, $path, "bert/common.wgsl", "bert/head_64.wgsl"),
            ),
            (
                128,
                kernel!($name, $path, "bert/common.wgsl", "bert/head_128.wgsl"),
            ),
        ]
    };
}

const SERIAL: [(u32, Kernel); 3] = by_head_width!("bert_attention", "bert/attention.wgsl");
const SHARED_ROWS: [(u32, Kernel); 3] =
    by_head_width!("bert_attention_shared", "bert/attention_shared.wgsl");
/// Largest head width the shaders' arrays hold.
const MAX_HEAD_DIM: u32 = SERIAL[SERIAL.len() - 1].0;
/// Queries per invocation of the serial kernel (each key and value loaded serves this many).
const QUERIES: u32 = 4;
/// Invocations per workgroup of the serial kernel.
const WORKGROUP_SIZE: u32 = 8;
/// Lanes of a shared-rows workgroup: queries sharing each key and value row.
const SHARED_ROWS_LANES: u32 = 8;

/// How the attention kernel shares work between invocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionVariant {
    /// Each invocation computes 4 queries of one head, loading every key and value row of its
    /// sequence itself (`attention.wgsl`): any device.
    Serial,
    /// The 8 lanes of a subgroup take 8 queries of one sequence and head; each lane loads an
    /// eighth of every key and value row and reads the rest through subgroup shuffles
    /// (`attention_shared.wgsl`): a row is loaded once per 8 queries. Needs
    /// [`pio_gpu::wgpu::Features::SUBGROUP`] with subgroups of at least 8 lanes.
    SharedRows,
}

impl AttentionVariant {
    /// The variant for `gpu`: shared rows on software adapters that have the subgroups it
    /// needs (llvmpipe makes each lane's load a load of its own, and a shuffle a vector
    /// permute), serial elsewhere (a GPU serves the same address to every lane at once).
    pub fn for_device(gpu: &Gpu) -> Self {
        if !gpu.adapter_info().device_type.is_hardware() && Self::SharedRows.runs_on(gpu) {
            Self::SharedRows
        } else {
            Self::Serial
        }
    }

    /// Whether `gpu` can run this variant.
    pub fn runs_on(self, gpu: &Gpu) -> bool {
        match self {
            Self::Serial => true,
            Self::SharedRows => Reduction::Subgroup {
                lanes: SHARED_ROWS_LANES,
            }
            .runs_on(gpu),
        }
    }
}

/// `ctx[t] = softmax(q k^T / sqrt(d)) v` per head, over the tokens of `t`'s sequence `b`
/// (`starts[b]..starts[b + 1]`), reading the fused `qkv` (`[tokens][3 * hidden]`, Q | K | V).
#[derive(Debug)]
pub struct Attention {
    heads: u32,
    head_dim: u32,
    variant: AttentionVariant,
    pipeline: pio_gpu::wgpu::ComputePipeline,
}

impl Attention {
    /// Compiles `variant` for `heads` heads of `head_dim` (a multiple of 4, at most 128).
    /// A variant `gpu` cannot run is an error (see [`AttentionVariant::runs_on`]).
    pub fn new(
        gpu: &Gpu,
        heads: u32,
        head_dim: u32,
        variant: AttentionVariant,
    ) -> PluginResult<Self> {
        if head_dim == 0 || head_dim % 4 != 0 || head_dim > MAX_HEAD_DIM {
            return Err(PluginError::model_load(format!(
                "attention: head width {head_dim} is not a multiple of 4 up to {MAX_HEAD_DIM}"
            )));
        }
        if !variant.runs_on(gpu) {
            return Err(PluginError::model_load(format!(
                "attention: the device cannot run the {variant:?} variant (it needs subgroups of \
                 at least {SHARED_ROWS_LANES} lanes)"
            )));
        }
        let mut constants = vec![
            ("HEADS", f64::from(heads)),
            ("HEAD_DIM", f64::from(head_dim)),
            ("SCALE", 1.0 / f64::from(head_dim).sqrt()),
        ];
        let kernels = match variant {
            AttentionVariant::Serial => {
                constants.extend([
                    ("QUERIES", f64::from(QUERIES)),
                    ("WORKGROUP_SIZE", f64::from(WORKGROUP_SIZE)),
                ]);
                SERIAL
            }
            AttentionVariant::SharedRows => SHARED_ROWS,
        };
        // The smallest arrays that hold the head.
        let (_, kernel) = kernels
            .into_iter()
            .find(|&(width, _)| head_dim <= width)
            .expect("head_dim is at most MAX_HEAD_DIM");
        Ok(Self {
            heads,
            head_dim,
            variant,
            pipeline: pipeline(gpu, kernel, &constants)?,
        })
    }

    /// The variant compiled.
    pub fn variant(&self) -> AttentionVariant {
        self.variant
    }

    /// Binds `qkv`, `starts` (`[batch + 1]` u32, see [`super::sequence_starts`]; no sequence
    /// longer than `shape.longest`) and `ctx` (`[tokens][hidden]`).
    pub fn bind(
        &self,
        gpu: &Gpu,
        qkv: &GpuBuffer,
        starts: &GpuBuffer,
        ctx: &GpuBuffer,
        params: &GpuBuffer,
        shape: Params,
    ) -> Result<Dispatch> {
        let hidden = u64::from(self.heads * self.head_dim);
        let t = u64::from(shape.tokens);
        require_len("attention", "qkv", qkv, t * 3 * hidden)?;
        require_len("attention", "starts", starts, u64::from(shape.batch) + 1)?;
        require_len("attention", "output", ctx, t * hidden)?;
        let query_groups = match self.variant {
            AttentionVariant::Serial => shape.longest.div_ceil(QUERIES).div_ceil(WORKGROUP_SIZE),
            AttentionVariant::SharedRows => shape.longest.div_ceil(SHARED_ROWS_LANES),
        };
        gpu.bind(
            "attention",
            &self.pipeline,
            &[qkv, starts, ctx, params],
            [query_groups, self.heads, shape.batch],
        )
    }
}
