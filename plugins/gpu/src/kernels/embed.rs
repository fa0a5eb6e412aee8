//! Embedding lookup (`shaders/common/embed.wgsl`).

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::dispatch::{groups, require_len, Dispatch, Params};
use crate::error::{GpuError, Result};
use crate::quant::{QuantMatrix, WeightDtype, BLOCK_ELEMENTS};
use crate::{kernel, Kernel};

const KERNEL: Kernel = kernel!(
    "embed",
    "common/embed.wgsl",
    "common/packed.wgsl",
    "common/quant.wgsl"
);
const WORKGROUP_SIZE: u32 = 32;

/// Gathers and dequantizes rows of a table, scaled: `out[t] = table[ids[t]] * scale`, out
/// `[T][cols]`.
#[derive(Debug)]
pub struct Embed {
    dtype: WeightDtype,
    rows: u32,
    cols: u32,
    pipeline: wgpu::ComputePipeline,
}

impl Embed {
    /// Compiles (or looks up) the pipeline for a `rows` × `cols` table of `dtype` whose rows
    /// are multiplied by `scale` (a finite number).
    pub fn new(gpu: &Gpu, dtype: WeightDtype, rows: u32, cols: u32, scale: f32) -> Result<Self> {
        if rows == 0 || cols == 0 || cols as usize % BLOCK_ELEMENTS != 0 || !scale.is_finite() {
            return Err(GpuError::shape(
                "embed",
                format!(
                    "{rows}x{cols} scaled by {scale}: rows must be positive, columns a positive \
                     multiple of 32, the scale finite"
                ),
            ));
        }
        let [dtype_id, block_words] = dtype.shader_constants();
        let constants = [
            dtype_id,
            block_words,
            ("ROWS", f64::from(rows)),
            ("COLS", f64::from(cols)),
            ("SCALE", f64::from(scale)),
            ("WORKGROUP_SIZE", f64::from(WORKGROUP_SIZE)),
        ];
        Ok(Self {
            dtype,
            rows,
            cols,
            pipeline: gpu.pipeline(KERNEL, "main", &constants)?,
        })
    }

    /// Binds the table, `n_tokens` u32 token ids and the output. Ids must be below the table's
    /// row count (larger ones read the last row).
    pub fn bind(
        &self,
        gpu: &Gpu,
        table: &QuantMatrix,
        ids: &GpuBuffer,
        out: &GpuBuffer,
        n_tokens: u32,
    ) -> Result<Dispatch> {
        if (table.dtype(), table.rows(), table.cols()) != (self.dtype, self.rows, self.cols) {
            return Err(GpuError::shape(
                "embed",
                format!(
                    "kernel built for {:?} {}x{}, table is {:?} {}x{}",
                    self.dtype,
                    self.rows,
                    self.cols,
                    table.dtype(),
                    table.rows(),
                    table.cols()
                ),
            ));
        }
        require_len("embed", "token id", ids, n_tokens.into())?;
        require_len(
            "embed",
            "output",
            out,
            u64::from(n_tokens) * u64::from(self.cols),
        )?;
        let grid = [groups(self.cols / 8, WORKGROUP_SIZE), n_tokens, 1];
        gpu.dispatch(
            "embed",
            &self.pipeline,
            &[table.buffer(), ids, out],
            Params::count(n_tokens),
            grid,
        )
    }
}
