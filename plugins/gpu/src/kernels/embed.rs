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

/// The table an [`Embed`] reads: rows `first_row .. first_row + rows` of a vocabulary (all of
/// it, or one shard of a vocabulary too large for one buffer).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmbedTable {
    /// Storage type.
    pub dtype: WeightDtype,
    /// Rows of this table.
    pub rows: u32,
    /// Values per row, a multiple of 32.
    pub cols: u32,
    /// The token id of the table's first row.
    pub first_row: u32,
    /// Factor on every looked-up row (a finite number).
    pub scale: f32,
}

/// Gathers and dequantizes rows of a table, scaled: `out[t] = table[ids[t] - first_row] *
/// scale` for the tokens whose id is one of the table's rows; out `[T][cols]`, other tokens'
/// rows untouched.
#[derive(Debug)]
pub struct Embed {
    table: EmbedTable,
    pipeline: wgpu::ComputePipeline,
}

impl Embed {
    /// Compiles (or looks up) the pipeline for `table`.
    pub fn new(gpu: &Gpu, table: EmbedTable) -> Result<Self> {
        let EmbedTable {
            dtype,
            rows,
            cols,
            first_row,
            scale,
        } = table;
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
            ("FIRST_ROW", f64::from(first_row)),
            ("SCALE", f64::from(scale)),
            ("WORKGROUP_SIZE", f64::from(WORKGROUP_SIZE)),
        ];
        Ok(Self {
            table,
            pipeline: gpu.pipeline(KERNEL, "main", &constants)?,
        })
    }

    /// Binds the table, `n_tokens` u32 token ids and the output.
    pub fn bind(
        &self,
        gpu: &Gpu,
        table: &QuantMatrix,
        ids: &GpuBuffer,
        out: &GpuBuffer,
        n_tokens: u32,
    ) -> Result<Dispatch> {
        let EmbedTable {
            dtype, rows, cols, ..
        } = self.table;
        if (table.dtype(), table.rows(), table.cols()) != (dtype, rows, cols) {
            return Err(GpuError::shape(
                "embed",
                format!(
                    "kernel built for {dtype:?} {rows}x{cols}, table is {:?} {}x{}",
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
            u64::from(n_tokens) * u64::from(cols),
        )?;
        let grid = [groups(cols / 8, WORKGROUP_SIZE), n_tokens, 1];
        gpu.dispatch(
            "embed",
            &self.pipeline,
            &[table.buffer(), ids, out],
            Params::count(n_tokens),
            grid,
        )
    }
}
