//! Per-head RMSNorm of queries and keys followed by RoPE (`shaders/llama/qk_norm_rope.wgsl`),
//! after a [`QkvRope`](crate::QkvRope) built without RoPE.

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::dispatch::{groups, require_len, Dispatch, Params};
use crate::error::{GpuError, Result};
use crate::kernels::kv_cache::{kv_kernels, KvKernels, KvLayer, KvType};
use crate::kernels::rope::RopeTable;

const KERNELS: KvKernels = kv_kernels!("qk_norm_rope", "llama/qk_norm_rope.wgsl");
/// One invocation per (head, token); a full 8-lane group as for attention.
const WORKGROUP_SIZE: u32 = 8;

/// Shape of a [`QkNormRope`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QkNormRopeConfig {
    /// Query heads.
    pub n_heads: u32,
    /// Key heads.
    pub n_kv_heads: u32,
    /// Values per head, a multiple of 4.
    pub head_dim: u32,
    /// The norms' epsilon.
    pub eps: f32,
    /// How the cache stores keys.
    pub kv_type: KvType,
}

/// Every query head of `q[t]` and key head of cache row `cache_rows[t]` is RMS-normalised with
/// its weight (`[head_dim]`, one for queries, one for keys), then rotated by RoPE at
/// `positions[t]`, in place. A token past the RoPE table or the cache is left alone.
#[derive(Debug)]
pub struct QkNormRope {
    config: QkNormRopeConfig,
    pipeline: wgpu::ComputePipeline,
}

impl QkNormRope {
    /// Compiles (or looks up) the pipeline.
    pub fn new(gpu: &Gpu, config: QkNormRopeConfig) -> Result<Self> {
        let QkNormRopeConfig {
            n_heads,
            n_kv_heads,
            head_dim,
            eps,
            kv_type,
        } = config;
        if n_heads == 0
            || n_kv_heads == 0
            || head_dim == 0
            || head_dim % 4 != 0
            || !(eps.is_finite() && eps > 0.0)
        {
            return Err(GpuError::shape(
                "qk_norm_rope",
                format!("unsupported shape {config:?}"),
            ));
        }
        let constants = [
            ("HEAD_DIM", f64::from(head_dim)),
            ("N_HEADS", f64::from(n_heads)),
            ("N_KV_HEADS", f64::from(n_kv_heads)),
            ("EPS", f64::from(eps)),
            ("WORKGROUP_SIZE", f64::from(WORKGROUP_SIZE)),
        ];
        Ok(Self {
            config,
            pipeline: gpu.pipeline(KERNELS.get(kv_type), "main", &constants)?,
        })
    }

    /// Binds `n_tokens` query rows of `q` (`[T][n_heads * head_dim]`), their u32 `positions`
    /// and `cache_rows`, the RoPE `table`, the two norm weights and the layer's `cache` (whose
    /// key rows the tokens wrote).
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        gpu: &Gpu,
        q: &GpuBuffer,
        positions: &GpuBuffer,
        cache_rows: &GpuBuffer,
        table: &RopeTable,
        q_weight: &GpuBuffer,
        k_weight: &GpuBuffer,
        cache: KvLayer<'_>,
        n_tokens: u32,
    ) -> Result<Dispatch> {
        let c = self.config;
        cache.expect("qk_norm_rope", c.n_kv_heads * c.head_dim, c.kv_type)?;
        if table.head_dim() != c.head_dim {
            return Err(GpuError::shape(
                "qk_norm_rope",
                format!(
                    "RoPE table for head_dim {}, kernel built for {}",
                    table.head_dim(),
                    c.head_dim
                ),
            ));
        }
        let n = u64::from(n_tokens);
        require_len(
            "qk_norm_rope",
            "query",
            q,
            n * u64::from(c.n_heads * c.head_dim),
        )?;
        require_len("qk_norm_rope", "position", positions, n)?;
        require_len("qk_norm_rope", "cache row", cache_rows, n)?;
        require_len(
            "qk_norm_rope",
            "query norm weight",
            q_weight,
            c.head_dim.into(),
        )?;
        require_len(
            "qk_norm_rope",
            "key norm weight",
            k_weight,
            c.head_dim.into(),
        )?;
        gpu.dispatch(
            "qk_norm_rope",
            &self.pipeline,
            &[
                q,
                cache.keys,
                positions,
                cache_rows,
                table.buffer(),
                q_weight,
                k_weight,
            ],
            Params::count(n_tokens),
            [
                groups(c.n_heads + c.n_kv_heads, WORKGROUP_SIZE),
                n_tokens,
                1,
            ],
        )
    }
}
