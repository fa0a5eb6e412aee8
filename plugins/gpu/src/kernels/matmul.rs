//! Quantized matrix × activations (`shaders/common/matmul.wgsl`): projections, feed-forward and
//! the LM head.

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::dispatch::{groups, require_len, Dispatch, Params};
use crate::error::{GpuError, Result};
use crate::pipeline::{kernel, Kernel};
use crate::quant::{QuantMatrix, WeightDtype, BLOCK_ELEMENTS, ROW_GROUP};

const KERNEL: Kernel = kernel!("matmul", "common/matmul.wgsl", "common/quant.wgsl");
/// Largest register tile side the shader's arrays hold (`MAX_TILE` in the WGSL).
pub const MAX_TILE: u32 = 8;

/// Register tile of one invocation: rows of W × tokens of x.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatmulTile {
    /// Output rows per invocation (1..=8): each x value loaded is used this many times.
    /// Invocation `i` computes rows `(i / 8 * rows + k) * 8 + i % 8` for `k < rows`.
    pub rows: u32,
    /// Tokens per invocation (1..=8): each weight dequantized is used this many times.
    pub tokens: u32,
    /// Invocations per workgroup (a multiple of 8 keeps row groups within a workgroup).
    pub workgroup_size: u32,
}

impl MatmulTile {
    /// For one token (decode): 4 rows per invocation, small workgroups.
    pub const DECODE: Self = Self {
        rows: 4,
        tokens: 1,
        workgroup_size: 16,
    };
    /// For many tokens (prefill): 8 rows × 4 tokens per invocation.
    pub const PREFILL: Self = Self {
        rows: 8,
        tokens: 4,
        workgroup_size: 8,
    };
}

/// Shape of a [`Matmul`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatmulConfig {
    /// Storage type of W.
    pub dtype: WeightDtype,
    /// Rows of W (output features).
    pub rows: u32,
    /// Columns of W (input features, a multiple of 32).
    pub cols: u32,
    /// Register tile.
    pub tile: MatmulTile,
    /// Add the product to `out` instead of overwriting it (fuses a residual add).
    pub accumulate: bool,
}

/// `out[t][r] = sum_c W[r][c] * x[t][c]` (`+= ` with `accumulate`): x is `[T][cols]`,
/// out is `[T][rows]`.
#[derive(Debug)]
pub struct Matmul {
    config: MatmulConfig,
    pipeline: wgpu::ComputePipeline,
}

impl Matmul {
    /// Compiles (or looks up) the pipeline for `config`.
    pub fn new(gpu: &Gpu, config: MatmulConfig) -> Result<Self> {
        let MatmulConfig {
            dtype,
            rows,
            cols,
            tile,
            accumulate,
        } = config;
        let tile_ok = |n: u32| (1..=MAX_TILE).contains(&n);
        if !tile_ok(tile.rows) || !tile_ok(tile.tokens) || tile.workgroup_size == 0 {
            return Err(GpuError::shape(
                "matmul",
                format!("unsupported tile {tile:?}"),
            ));
        }
        if rows == 0 || cols == 0 || cols as usize % BLOCK_ELEMENTS != 0 {
            return Err(GpuError::shape(
                "matmul",
                format!("{rows}x{cols}: rows must be positive, columns a positive multiple of 32"),
            ));
        }
        let [dtype_id, block_words] = dtype.shader_constants();
        let constants = [
            dtype_id,
            block_words,
            ("ROWS", f64::from(rows)),
            ("COLS", f64::from(cols)),
            ("ROWS_PER_INVOCATION", f64::from(tile.rows)),
            ("TOKENS_PER_INVOCATION", f64::from(tile.tokens)),
            ("ACCUMULATE", if accumulate { 1.0 } else { 0.0 }),
            ("WORKGROUP_SIZE", f64::from(tile.workgroup_size)),
        ];
        Ok(Self {
            config,
            pipeline: gpu.pipeline(KERNEL, "main", &constants)?,
        })
    }

    /// The shape this kernel was built for.
    pub fn config(&self) -> &MatmulConfig {
        &self.config
    }

    /// Binds `weights` (of this kernel's dtype and shape), `n_tokens` rows of `x` and `out`.
    pub fn bind(
        &self,
        gpu: &Gpu,
        weights: &QuantMatrix,
        x: &GpuBuffer,
        out: &GpuBuffer,
        n_tokens: u32,
    ) -> Result<Dispatch> {
        let MatmulConfig {
            dtype,
            rows,
            cols,
            tile,
            ..
        } = self.config;
        if (weights.dtype(), weights.rows(), weights.cols()) != (dtype, rows, cols) {
            return Err(GpuError::shape(
                "matmul",
                format!(
                    "kernel built for {dtype:?} {rows}x{cols}, weights are {:?} {}x{}",
                    weights.dtype(),
                    weights.rows(),
                    weights.cols()
                ),
            ));
        }
        require_len("matmul", "input", x, u64::from(n_tokens) * u64::from(cols))?;
        require_len(
            "matmul",
            "output",
            out,
            u64::from(n_tokens) * u64::from(rows),
        )?;
        let row_group = ROW_GROUP as u32;
        let invocations = groups(rows, row_group * tile.rows) * row_group;
        let grid = [
            groups(invocations, tile.workgroup_size),
            groups(n_tokens, tile.tokens),
            1,
        ];
        gpu.dispatch(
            "matmul",
            &self.pipeline,
            &[weights.buffer(), x, out],
            Params::count(n_tokens),
            grid,
        )
    }
}
