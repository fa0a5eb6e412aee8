//! The KV cache and the kernel writing into it (`shaders/llama/kv_cache.wgsl`).

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::dispatch::{groups, require_len, Dispatch, Params};
use crate::error::{GpuError, Result};
use crate::layout::RowLayout;
use crate::pipeline::{kernel, Kernel};

const KERNEL: Kernel = kernel!("kv_cache", "llama/kv_cache.wgsl");
const WORKGROUP_SIZE: u32 = 64;

/// Keys and values of every layer for positions `0..max_positions`.
///
/// Layout: per layer, one K and one V f32 buffer, each `[max_positions][n_kv_heads * head_dim]`
/// (position-major; within a position, head `h` occupies `h * head_dim .. (h + 1) * head_dim`).
/// Rows are written by [`KvWrite`] and read by [`Attention`](crate::kernels::attention::Attention).
#[derive(Debug)]
pub struct KvCache {
    max_positions: u32,
    kv_dim: u32,
    layers: Vec<(GpuBuffer, GpuBuffer)>,
}

impl KvCache {
    /// Allocates zeroed caches for `n_layers` layers.
    pub fn new(
        gpu: &Gpu,
        n_layers: u32,
        max_positions: u32,
        n_kv_heads: u32,
        head_dim: u32,
    ) -> Result<Self> {
        let kv_dim = n_kv_heads * head_dim;
        let bytes = u64::from(max_positions) * u64::from(kv_dim) * 4;
        let layers = (0..n_layers)
            .map(|layer| {
                Ok((
                    gpu.storage_zeroed(&format!("layer {layer} K cache"), bytes)?,
                    gpu.storage_zeroed(&format!("layer {layer} V cache"), bytes)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            max_positions,
            kv_dim,
            layers,
        })
    }

    /// Positions each layer holds.
    pub fn max_positions(&self) -> u32 {
        self.max_positions
    }

    /// Values per position: `n_kv_heads * head_dim`.
    pub fn kv_dim(&self) -> u32 {
        self.kv_dim
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// The K and V caches of `layer`.
    pub fn layer(&self, layer: usize) -> Result<KvLayer<'_>> {
        let (keys, values) = self.layers.get(layer).ok_or_else(|| {
            GpuError::shape(
                "kv cache",
                format!(
                    "layer {layer} asked of a cache of {} layers",
                    self.layers.len()
                ),
            )
        })?;
        Ok(KvLayer {
            keys,
            values,
            max_positions: self.max_positions,
            kv_dim: self.kv_dim,
        })
    }
}

/// One layer's K and V caches (see [`KvCache`] for the layout).
#[derive(Debug, Clone, Copy)]
pub struct KvLayer<'a> {
    /// K cache, `[max_positions][kv_dim]`.
    pub keys: &'a GpuBuffer,
    /// V cache, `[max_positions][kv_dim]`.
    pub values: &'a GpuBuffer,
    /// Positions held.
    pub max_positions: u32,
    /// Values per position.
    pub kv_dim: u32,
}

impl KvLayer<'_> {
    /// Checks that this layer has the shape a kernel was built for.
    pub(crate) fn expect_shape(
        &self,
        context: &'static str,
        kv_dim: u32,
        max_positions: u32,
    ) -> Result<()> {
        if (self.kv_dim, self.max_positions) != (kv_dim, max_positions) {
            return Err(GpuError::shape(
                context,
                format!(
                    "kernel built for kv_dim {kv_dim} and {max_positions} positions, cache has {} and {}",
                    self.kv_dim, self.max_positions
                ),
            ));
        }
        Ok(())
    }
}

/// Shape of a [`KvWrite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvWriteConfig {
    /// Values per position: `n_kv_heads * head_dim`.
    pub kv_dim: u32,
    /// Where each token's K row is in its source buffer.
    pub k: RowLayout,
    /// Where each token's V row is in its source buffer.
    pub v: RowLayout,
    /// Positions in the cache.
    pub max_positions: u32,
}

/// Copies K and V rows of `T` tokens into one layer's cache at their positions (one dispatch for
/// both). Positions at or past `max_positions` are dropped.
#[derive(Debug)]
pub struct KvWrite {
    config: KvWriteConfig,
    pipeline: wgpu::ComputePipeline,
}

impl KvWrite {
    /// Compiles (or looks up) the pipeline for `config`.
    pub fn new(gpu: &Gpu, config: KvWriteConfig) -> Result<Self> {
        let constants = [
            ("KV_DIM", f64::from(config.kv_dim)),
            ("K_STRIDE", f64::from(config.k.stride)),
            ("K_OFFSET", f64::from(config.k.offset)),
            ("V_STRIDE", f64::from(config.v.stride)),
            ("V_OFFSET", f64::from(config.v.offset)),
            ("MAX_POSITIONS", f64::from(config.max_positions)),
            ("WORKGROUP_SIZE", f64::from(WORKGROUP_SIZE)),
        ];
        Ok(Self {
            config,
            pipeline: gpu.pipeline(KERNEL, "main", &constants)?,
        })
    }

    /// Binds `n_tokens` K rows of `k` and V rows of `v` (may be the same buffer), their u32
    /// `positions`, and the layer's caches to write.
    pub fn bind(
        &self,
        gpu: &Gpu,
        k: &GpuBuffer,
        v: &GpuBuffer,
        positions: &GpuBuffer,
        cache: KvLayer<'_>,
        n_tokens: u32,
    ) -> Result<Dispatch> {
        let KvWriteConfig {
            kv_dim,
            k: k_layout,
            v: v_layout,
            max_positions,
        } = self.config;
        cache.expect_shape("kv write", kv_dim, max_positions)?;
        require_len("kv write", "K", k, k_layout.required_len(n_tokens, kv_dim))?;
        require_len("kv write", "V", v, v_layout.required_len(n_tokens, kv_dim))?;
        require_len("kv write", "position", positions, n_tokens.into())?;
        let grid = [groups(kv_dim, WORKGROUP_SIZE), n_tokens, 1];
        gpu.dispatch(
            "kv_write",
            &self.pipeline,
            &[k, v, positions, cache.keys, cache.values],
            Params::count(n_tokens),
            grid,
        )
    }
}
