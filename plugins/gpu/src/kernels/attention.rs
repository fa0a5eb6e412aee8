//! Causal grouped-query attention over the KV cache (`shaders/llama/attention.wgsl`).

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::dispatch::{groups, require_len, Dispatch, Params};
use crate::error::{GpuError, Result};
use crate::kernels::kv_cache::{kv_kernels, KvKernels, KvLayer, KvType, KV_BLOCK_ROWS};
use crate::layout::RowLayout;

const KERNELS: KvKernels = kv_kernels!("attention", "llama/attention.wgsl");
/// Largest head width the shader's registers hold (`4 * MAX_HEAD_VEC4` in the WGSL).
pub const MAX_HEAD_DIM: u32 = 256;
/// One invocation per (head, token). llvmpipe runs a workgroup as 8 SIMD lanes; a full group
/// measured faster than 1 or 4 invocations per workgroup even with only 9 heads to decode.
const WORKGROUP_SIZE: u32 = 8;

/// Shape of an [`Attention`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionConfig {
    /// Query heads.
    pub n_heads: u32,
    /// Key/value heads; divides `n_heads`.
    pub n_kv_heads: u32,
    /// Values per head: a multiple of 4, at most [`MAX_HEAD_DIM`].
    pub head_dim: u32,
    /// Where each token's query heads are (stride and offset multiples of 4).
    pub q: RowLayout,
    /// Attend only to the last `n` positions, the token's own included (sliding-window
    /// attention; `n` > 0); `None`: to every earlier position.
    pub window: Option<u32>,
    /// How the cache stores keys and values.
    pub kv_type: KvType,
}

/// `out[t][h] = softmax(q[t][h] · K[row_t(0..=p_t)] / sqrt(head_dim)) · V[row_t(0..=p_t)]`
/// (with a window of `n`, only the last `n` of these positions) for each query head `h`,
/// reading kv head `h / (n_heads / n_kv_heads)`, where `p_t` is token `t`'s position and
/// `row_t(j)` the cache row of its position `j` through its sequence's block table (see
/// [`KvCache`](crate::KvCache)); out is `[T][n_heads * head_dim]`.
#[derive(Debug)]
pub struct Attention {
    config: AttentionConfig,
    pipeline: wgpu::ComputePipeline,
}

impl Attention {
    /// Compiles (or looks up) the pipeline for `config`.
    pub fn new(gpu: &Gpu, config: AttentionConfig) -> Result<Self> {
        let AttentionConfig {
            n_heads,
            n_kv_heads,
            head_dim,
            q,
            window,
            kv_type,
        } = config;
        let valid = n_kv_heads > 0
            && window != Some(0)
            && n_heads % n_kv_heads == 0
            && head_dim > 0
            && head_dim % 4 == 0
            && head_dim <= MAX_HEAD_DIM
            && q.stride % 4 == 0
            && q.offset % 4 == 0;
        if !valid {
            return Err(GpuError::shape(
                "attention",
                format!("unsupported shape {config:?}"),
            ));
        }
        let constants = [
            ("HEAD_DIM", f64::from(head_dim)),
            ("N_HEADS", f64::from(n_heads)),
            ("N_KV_HEADS", f64::from(n_kv_heads)),
            ("Q_STRIDE", f64::from(q.stride)),
            ("Q_OFFSET", f64::from(q.offset)),
            ("SCALE", 1.0 / f64::from(head_dim).sqrt()),
            ("WINDOW", f64::from(window.unwrap_or(0))),
            ("BLOCK", f64::from(KV_BLOCK_ROWS)),
            ("WORKGROUP_SIZE", f64::from(WORKGROUP_SIZE)),
        ];
        Ok(Self {
            config,
            pipeline: gpu.pipeline(KERNELS.get(kv_type), "main", &constants)?,
        })
    }

    /// Binds `n_tokens` query rows of `q`, their u32 `positions` and `table_starts` (where each
    /// token's block table starts in `blocks`), the u32 `blocks` of the tables, the layer's
    /// caches (which must already hold each token's positions `0..=positions[t]`) and `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        gpu: &Gpu,
        q: &GpuBuffer,
        positions: &GpuBuffer,
        table_starts: &GpuBuffer,
        blocks: &GpuBuffer,
        cache: KvLayer<'_>,
        out: &GpuBuffer,
        n_tokens: u32,
    ) -> Result<Dispatch> {
        let AttentionConfig {
            n_heads,
            n_kv_heads,
            head_dim,
            q: q_layout,
            kv_type,
            ..
        } = self.config;
        cache.expect("attention", n_kv_heads * head_dim, kv_type)?;
        let width = n_heads * head_dim;
        require_len(
            "attention",
            "query",
            q,
            q_layout.required_len(n_tokens, width),
        )?;
        require_len("attention", "position", positions, n_tokens.into())?;
        require_len(
            "attention",
            "block table start",
            table_starts,
            n_tokens.into(),
        )?;
        require_len("attention", "block table", blocks, 1)?;
        require_len(
            "attention",
            "output",
            out,
            u64::from(n_tokens) * u64::from(width),
        )?;
        let grid = [groups(n_heads, WORKGROUP_SIZE), n_tokens, 1];
        gpu.dispatch(
            "attention",
            &self.pipeline,
            &[
                q,
                positions,
                table_starts,
                blocks,
                cache.keys,
                cache.values,
                out,
            ],
            Params::count(n_tokens),
            grid,
        )
    }
}
