//! Weight matrices kept in their (quantized) storage type on the device.
//!
//! GGUF stores blocks of 32 elements in 18- or 34-byte records, which are not 4-byte aligned and
//! would cost the kernels several unaligned loads per word. At upload each block is repacked into
//! whole 32-bit words:
//!
//! | dtype | words per 32 elements | block layout (words) |
//! |---|---|---|
//! | F32  | 32 | the 32 values |
//! | F16  | 16 | pairs of halves, element `2i` in the low 16 bits of word `i` |
//! | Q4_0 | 5  | `d` as f32 bits; 4 words of nibbles |
//! | Q4_1 | 6  | `d` as f32 bits; `m` as f32 bits; 4 words of nibbles |
//! | Q8_0 | 9  | `d` as f32 bits; 8 words of four i8 each |
//!
//! Nibble and byte words keep GGUF's byte order: byte `j` of quant word `w` is GGUF quant byte
//! `4w + j`. So for Q4 word `w`, byte `j`, the low nibble is element `4w + j` and the high nibble
//! element `16 + 4w + j`; for Q8_0 it is element `4w + j`.
//!
//! Rows are then interleaved in groups of [`ROW_GROUP`] (the row count padded with zero rows to a
//! multiple of it): word `w` of block `b` of row `r` is at
//! `((r / ROW_GROUP * blocks_per_row + b) * block_words + w) * ROW_GROUP + r % ROW_GROUP`.
//! A matmul invocation per row then reads the word next to its neighbour's, which matters on
//! SIMD-on-CPU drivers like llvmpipe (each lane's load is a separate scalar load; neighbours share
//! cache lines) and coalesces on real GPUs. The kernels dequantize with
//! `shaders/common/quant.wgsl`.

use half::f16;

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::error::{GpuError, Result};
use crate::quantize::quantize;

/// Elements per quantization block (and per packed block of every dtype).
pub const BLOCK_ELEMENTS: usize = 32;

/// Rows interleaved word by word in the device layout (`ROW_GROUP` in `quant.wgsl`).
pub const ROW_GROUP: usize = 8;

/// Storage type of a weight matrix, in GGML's block layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightDtype {
    /// 32-bit floats.
    F32,
    /// IEEE half floats.
    F16,
    /// Blocks of 32: f16 scale `d`, 16 bytes of 4-bit `q`; value = (q − 8)·d.
    Q4_0,
    /// Blocks of 32: f16 scale `d`, f16 minimum `m`, 16 bytes of 4-bit `q`; value = q·d + m.
    Q4_1,
    /// Blocks of 32: f16 scale `d`, 32 signed bytes `q`; value = q·d.
    Q8_0,
}

impl WeightDtype {
    /// All supported dtypes.
    pub const ALL: [Self; 5] = [Self::F32, Self::F16, Self::Q4_0, Self::Q4_1, Self::Q8_0];

    /// GGML's lowercase name of the dtype: `f32`, `f16`, `q4_0`, `q4_1`, `q8_0` (as in
    /// configuration files).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q8_0 => "q8_0",
        }
    }

    /// The dtype called `name` (see [`WeightDtype::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|dtype| dtype.name() == name)
    }

    /// Bytes one GGUF row of `cols` elements takes (`cols` must be a multiple of 32).
    pub fn gguf_row_bytes(self, cols: usize) -> usize {
        let blocks = cols / BLOCK_ELEMENTS;
        blocks
            * match self {
                Self::F32 => 128,
                Self::F16 => 64,
                Self::Q4_0 => 18,
                Self::Q4_1 => 20,
                Self::Q8_0 => 34,
            }
    }

    /// 32-bit words one block of 32 elements takes once repacked.
    pub(crate) fn packed_block_words(self) -> u32 {
        match self {
            Self::F32 => 32,
            Self::F16 => 16,
            Self::Q4_0 => 5,
            Self::Q4_1 => 6,
            Self::Q8_0 => 9,
        }
    }

    /// The `DTYPE` constant identifying this dtype in `shaders/common/quant.wgsl`.
    pub(crate) fn shader_id(self) -> f64 {
        match self {
            Self::F32 => 0.0,
            Self::F16 => 1.0,
            Self::Q4_0 => 2.0,
            Self::Q4_1 => 3.0,
            Self::Q8_0 => 4.0,
        }
    }

    /// The override constants that select this dtype in kernels including `quant.wgsl`.
    pub(crate) fn shader_constants(self) -> [(&'static str, f64); 2] {
        [
            ("DTYPE", self.shader_id()),
            ("BLOCK_WORDS", f64::from(self.packed_block_words())),
        ]
    }
}

/// Checks `cols` and the raw byte count of a `rows` × `cols` GGUF matrix.
pub(crate) fn check_gguf_shape(
    context: &'static str,
    dtype: WeightDtype,
    rows: usize,
    cols: usize,
    raw_len: usize,
) -> Result<()> {
    if cols == 0 || cols % BLOCK_ELEMENTS != 0 {
        return Err(GpuError::shape(
            context,
            format!("{cols} columns is not a positive multiple of {BLOCK_ELEMENTS}"),
        ));
    }
    let expected = rows * dtype.gguf_row_bytes(cols);
    if raw_len != expected {
        return Err(GpuError::shape(
            context,
            format!("{rows}x{cols} {dtype:?} needs {expected} bytes, got {raw_len}"),
        ));
    }
    Ok(())
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

fn word_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Repacks one GGUF block (`block`, exactly one block's bytes) into `out`.
fn repack_block(dtype: WeightDtype, block: &[u8], out: &mut Vec<u32>) {
    match dtype {
        WeightDtype::F32 | WeightDtype::F16 => {
            out.extend(block.chunks_exact(4).map(|w| word_at(w, 0)));
        }
        WeightDtype::Q4_0 => {
            out.push(f16_at(block, 0).to_bits());
            out.extend(block[2..18].chunks_exact(4).map(|w| word_at(w, 0)));
        }
        WeightDtype::Q4_1 => {
            out.push(f16_at(block, 0).to_bits());
            out.push(f16_at(block, 2).to_bits());
            out.extend(block[4..20].chunks_exact(4).map(|w| word_at(w, 0)));
        }
        WeightDtype::Q8_0 => {
            out.push(f16_at(block, 0).to_bits());
            out.extend(block[2..34].chunks_exact(4).map(|w| word_at(w, 0)));
        }
    }
}

/// Repacks a whole GGUF matrix (shape already checked) into the interleaved word layout of this
/// module.
fn repack(dtype: WeightDtype, rows: usize, cols: usize, raw: &[u8]) -> Vec<u32> {
    let block_bytes = dtype.gguf_row_bytes(BLOCK_ELEMENTS);
    let row_bytes = dtype.gguf_row_bytes(cols);
    let row_words = cols / BLOCK_ELEMENTS * dtype.packed_block_words() as usize;
    let mut words = vec![0u32; rows.next_multiple_of(ROW_GROUP) * row_words];
    let mut packed = Vec::with_capacity(row_words);
    for (row, raw_row) in raw.chunks_exact(row_bytes).enumerate() {
        packed.clear();
        for block in raw_row.chunks_exact(block_bytes) {
            repack_block(dtype, block, &mut packed);
        }
        // Word i of the row (block i / block_words, word i % block_words) lands at
        // (group * row_words + i) * ROW_GROUP + lane.
        let (group, lane) = (row / ROW_GROUP, row % ROW_GROUP);
        for (i, &word) in packed.iter().enumerate() {
            words[(group * row_words + i) * ROW_GROUP + lane] = word;
        }
    }
    words
}

/// A `rows` × `cols` weight matrix on the device, still in its storage dtype (repacked, see the
/// module docs). Used by the matmul and embedding kernels.
#[derive(Debug)]
pub struct QuantMatrix {
    dtype: WeightDtype,
    rows: u32,
    cols: u32,
    buffer: GpuBuffer,
}

impl QuantMatrix {
    /// Uploads a matrix given as raw GGUF tensor bytes: `rows` rows of `cols` elements each,
    /// rows contiguous, in `dtype`'s GGML block layout. `cols` must be a multiple of 32.
    ///
    /// Rows of several matrices of the same dtype and width may be concatenated (e.g. Q, K and V
    /// projections) to compute them with one matmul dispatch.
    pub fn upload(
        gpu: &Gpu,
        dtype: WeightDtype,
        rows: usize,
        cols: usize,
        raw: &[u8],
    ) -> Result<Self> {
        check_gguf_shape("weight upload", dtype, rows, cols, raw.len())?;
        let (rows_u32, cols_u32) = match (u32::try_from(rows), u32::try_from(cols)) {
            (Ok(r), Ok(c)) if rows > 0 => (r, c),
            _ => {
                return Err(GpuError::shape(
                    "weight upload",
                    format!("{rows}x{cols} is not a supported matrix shape"),
                ))
            }
        };
        let words = repack(dtype, rows, cols, raw);
        let buffer = gpu.storage_from(&format!("{dtype:?} {rows}x{cols} weights"), &words)?;
        Ok(Self {
            dtype,
            rows: rows_u32,
            cols: cols_u32,
            buffer,
        })
    }

    /// Uploads a row-major `rows` × `cols` f32 matrix stored as `dtype` (quantized with
    /// [`quantize`](crate::quantize)): how weights that come as f32 are compressed on the
    /// device. `cols` must be a multiple of 32.
    pub fn from_f32(
        gpu: &Gpu,
        dtype: WeightDtype,
        rows: usize,
        cols: usize,
        values: &[f32],
    ) -> Result<Self> {
        if values.len() != rows * cols || cols % BLOCK_ELEMENTS != 0 {
            return Err(GpuError::shape(
                "weight upload",
                format!(
                    "{} values do not form a {rows}x{cols} matrix with rows a multiple of \
                     {BLOCK_ELEMENTS} wide",
                    values.len()
                ),
            ));
        }
        Self::upload(gpu, dtype, rows, cols, &quantize(dtype, values)?)
    }

    /// Uploads the gate and up projections of a gated FFN (each `ff` × `cols` raw GGUF bytes in
    /// `dtype`) as one `2 ff` × `cols` matrix whose row group `g` holds gate rows `4g..4g + 4`
    /// followed by up rows `4g..4g + 4`, the layout [`Epilogue::SwiGlu`](crate::Epilogue::SwiGlu) reads. `ff` must be
    /// a multiple of 4.
    pub fn upload_gate_up(
        gpu: &Gpu,
        dtype: WeightDtype,
        ff: usize,
        cols: usize,
        gate: &[u8],
        up: &[u8],
    ) -> Result<Self> {
        const HALF: usize = ROW_GROUP / 2;
        check_gguf_shape("gate upload", dtype, ff, cols, gate.len())?;
        check_gguf_shape("up upload", dtype, ff, cols, up.len())?;
        if ff % HALF != 0 {
            return Err(GpuError::shape(
                "gate/up upload",
                format!("FFN width {ff} is not a multiple of {HALF}"),
            ));
        }
        let quad = HALF * dtype.gguf_row_bytes(cols);
        let mut interleaved = Vec::with_capacity(gate.len() + up.len());
        for (g, u) in gate.chunks_exact(quad).zip(up.chunks_exact(quad)) {
            interleaved.extend_from_slice(g);
            interleaved.extend_from_slice(u);
        }
        Self::upload(gpu, dtype, 2 * ff, cols, &interleaved)
    }

    /// Storage dtype.
    pub fn dtype(&self) -> WeightDtype {
        self.dtype
    }

    /// Number of rows (output features of a matmul, vocabulary size of an embedding).
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Number of columns (input features, embedding width).
    pub fn cols(&self) -> u32 {
        self.cols
    }

    /// The repacked words on the device.
    pub fn buffer(&self) -> &GpuBuffer {
        &self.buffer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repacks_q4_0_block_into_scale_and_words() {
        let mut block = vec![0u8; 18];
        block[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        for (i, byte) in block[2..].iter_mut().enumerate() {
            *byte = i as u8;
        }
        let words = repack(WeightDtype::Q4_0, 1, 32, &block);
        // One row padded to a group of 8, interleaved: row 0's words every 8th word.
        assert_eq!(words.len(), 5 * ROW_GROUP);
        assert_eq!(f32::from_bits(words[0]), 0.5);
        assert_eq!(words[ROW_GROUP], u32::from_le_bytes([0, 1, 2, 3]));
        assert_eq!(words[4 * ROW_GROUP], u32::from_le_bytes([12, 13, 14, 15]));
        assert!(words
            .iter()
            .enumerate()
            .all(|(i, &w)| i % ROW_GROUP == 0 || w == 0));
    }

    #[test]
    fn rejects_wrong_sizes() {
        assert!(check_gguf_shape("t", WeightDtype::Q8_0, 2, 32, 68).is_ok());
        assert!(check_gguf_shape("t", WeightDtype::Q8_0, 2, 32, 67).is_err());
        assert!(check_gguf_shape("t", WeightDtype::F32, 1, 33, 132).is_err());
    }
}
