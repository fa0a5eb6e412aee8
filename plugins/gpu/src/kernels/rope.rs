//! Rotary position embedding (`shaders/llama/rope.wgsl`) and its cos/sin table.

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::dispatch::{groups, require_len, Dispatch, Params};
use crate::error::{GpuError, Result};
use crate::layout::RowLayout;
use crate::pipeline::{kernel, Kernel};

const KERNEL: Kernel = kernel!("rope", "llama/rope.wgsl");
const WORKGROUP_SIZE: u32 = 64;

/// Rotation angle of pair `i` of a `head_dim`-wide head at `position`:
/// `position * base^(-2i / head_dim)`, computed in f64.
fn rope_angle(position: u32, pair: u32, head_dim: u32, base: f64) -> f64 {
    f64::from(position) * base.powf(-2.0 * f64::from(pair) / f64::from(head_dim))
}

/// `(cos, sin)` of every rotation angle for positions `0..max_positions`, on the device,
/// laid out `[max_positions][head_dim / 2]`.
#[derive(Debug)]
pub struct RopeTable {
    head_dim: u32,
    max_positions: u32,
    buffer: GpuBuffer,
}

impl RopeTable {
    /// Computes the table on the host (in f64) for frequency base `base` (`rope.freq_base`,
    /// 10000 for most Llamas) and uploads it.
    pub fn new(gpu: &Gpu, head_dim: u32, base: f64, max_positions: u32) -> Result<Self> {
        if head_dim == 0 || head_dim % 2 != 0 || max_positions == 0 {
            return Err(GpuError::shape(
                "rope table",
                format!(
                    "head_dim {head_dim} must be even and max_positions {max_positions} positive"
                ),
            ));
        }
        let mut values = Vec::with_capacity(max_positions as usize * head_dim as usize);
        for position in 0..max_positions {
            for pair in 0..head_dim / 2 {
                let (sin, cos) = rope_angle(position, pair, head_dim, base).sin_cos();
                values.extend([cos as f32, sin as f32]);
            }
        }
        Ok(Self {
            head_dim,
            max_positions,
            buffer: gpu.storage_from("rope cos/sin table", &values)?,
        })
    }

    /// Head width the table was built for.
    pub fn head_dim(&self) -> u32 {
        self.head_dim
    }

    /// Number of positions covered.
    pub fn max_positions(&self) -> u32 {
        self.max_positions
    }
}

/// Shape of a [`Rope`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RopeConfig {
    /// Values per head (even).
    pub head_dim: u32,
    /// Heads rotated per token. Q heads directly followed by K heads (a fused Q|K|V output) can
    /// be rotated by one dispatch: `n_head + n_head_kv` heads.
    pub n_heads: u32,
    /// Where each token's first head starts.
    pub layout: RowLayout,
    /// Positions covered by the table this kernel will be bound to.
    pub max_positions: u32,
}

/// In-place RoPE on `n_heads` heads per token, GGML "normal" (adjacent pairs) style.
#[derive(Debug)]
pub struct Rope {
    config: RopeConfig,
    pipeline: wgpu::ComputePipeline,
}

impl Rope {
    /// Compiles (or looks up) the pipeline for `config`.
    pub fn new(gpu: &Gpu, config: RopeConfig) -> Result<Self> {
        if config.head_dim == 0 || config.head_dim % 2 != 0 || config.max_positions == 0 {
            return Err(GpuError::shape(
                "rope",
                format!("unsupported shape {config:?}"),
            ));
        }
        let constants = [
            ("HEAD_DIM", f64::from(config.head_dim)),
            ("N_HEADS", f64::from(config.n_heads)),
            ("ROW_STRIDE", f64::from(config.layout.stride)),
            ("ROW_OFFSET", f64::from(config.layout.offset)),
            ("MAX_POSITIONS", f64::from(config.max_positions)),
            ("WORKGROUP_SIZE", f64::from(WORKGROUP_SIZE)),
        ];
        Ok(Self {
            config,
            pipeline: gpu.pipeline(KERNEL, "main", &constants)?,
        })
    }

    /// Rotates `n_tokens` rows of `x` in place, token `t` at `positions[t]` (u32).
    pub fn bind(
        &self,
        gpu: &Gpu,
        x: &GpuBuffer,
        table: &RopeTable,
        positions: &GpuBuffer,
        n_tokens: u32,
    ) -> Result<Dispatch> {
        let RopeConfig {
            head_dim,
            n_heads,
            layout,
            max_positions,
        } = self.config;
        if (table.head_dim, table.max_positions) != (head_dim, max_positions) {
            return Err(GpuError::shape(
                "rope",
                format!(
                    "kernel built for head_dim {head_dim} and {max_positions} positions, table has {} and {}",
                    table.head_dim, table.max_positions
                ),
            ));
        }
        require_len(
            "rope",
            "activation",
            x,
            layout.required_len(n_tokens, n_heads * head_dim),
        )?;
        require_len("rope", "position", positions, n_tokens.into())?;
        let grid = [groups(n_heads * head_dim / 2, WORKGROUP_SIZE), n_tokens, 1];
        gpu.dispatch(
            "rope",
            &self.pipeline,
            &[x, &table.buffer, positions],
            Params::count(n_tokens),
            grid,
        )
    }
}
