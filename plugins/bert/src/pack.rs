//! Weight storage formats and the device layout of linear-layer weights.
//!
//! A matrix `W[rows][cols]` is cut along its columns into *chunks* that fill one `vec4<u32>`:
//!
//! | format | columns per chunk | chunk contents |
//! |---|---|---|
//! | `f32`  | 4  | the four f32 bit patterns |
//! | `f16`  | 8  | word `i` = columns `2i` (low half) and `2i + 1` (high half) |
//! | `q8_0` | 16 | word `i` = columns `4i .. 4i + 3` as signed bytes, lowest byte first |
//!
//! Chunk `c` of row `n` is stored at index `c * rows + n`, so the kernels' neighbouring lanes
//! (neighbouring rows) read neighbouring 16-byte chunks. `q8_0` keeps one f32 scale per block of
//! 32 columns of a row (`value = q * scale`, `scale = max|w| / 127`), stored at
//! `(c32 * rows + n)`. The kernels dequantize with `dequant` in `shaders/bert/common.wgsl`.

use half::f16;
use pio_plugin_api::{PluginError, PluginResult};

/// Storage format of linear-layer weights on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// 32-bit floats, as in the model file.
    F32,
    /// IEEE half floats.
    F16,
    /// Signed 8-bit values with one f32 scale per 32 columns.
    Q8_0,
}

impl WeightFormat {
    /// Every format, f32 first.
    pub const ALL: [Self; 3] = [Self::F32, Self::F16, Self::Q8_0];

    /// Parses the configuration value: `"f32"`, `"f16"` or `"q8_0"`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "f32" => Some(Self::F32),
            "f16" => Some(Self::F16),
            "q8_0" => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// The configuration name of this format.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
        }
    }

    /// Columns in one 16-byte chunk.
    pub fn chunk_cols(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 8,
            Self::Q8_0 => 16,
        }
    }

    /// Columns must be a multiple of this (the chunk, or the 32-column Q8_0 block).
    pub fn col_multiple(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 8,
            Self::Q8_0 => 32,
        }
    }

    /// The `FORMAT` constant of the WGSL kernels.
    pub(crate) fn shader_id(self) -> f64 {
        match self {
            Self::F32 => 0.0,
            Self::F16 => 1.0,
            Self::Q8_0 => 2.0,
        }
    }
}

/// Columns per Q8_0 scale block.
const Q8_BLOCK: usize = 32;

/// A matrix in the device layout, still on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedMatrix {
    /// Storage format.
    pub format: WeightFormat,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// The chunks, four words each, chunk `c` of row `n` at `c * rows + n`.
    pub words: Vec<u32>,
    /// Q8_0 scales (`(c32 * rows + n)`); a single unused 0 for other formats.
    pub scales: Vec<f32>,
}

impl PackedMatrix {
    /// Packs row-major `weight[rows][cols]` into `format`.
    pub fn pack(
        weight: &[f32],
        rows: usize,
        cols: usize,
        format: WeightFormat,
    ) -> PluginResult<Self> {
        if rows == 0 || cols == 0 || cols % format.col_multiple() != 0 {
            return Err(PluginError::model_load(format!(
                "a {rows}x{cols} matrix cannot be stored as {}: columns must be a positive \
                 multiple of {}",
                format.name(),
                format.col_multiple()
            )));
        }
        if weight.len() != rows * cols {
            return Err(PluginError::internal(format!(
                "packing a {rows}x{cols} matrix from {} values",
                weight.len()
            )));
        }
        let per_chunk = format.chunk_cols();
        let chunks = cols / per_chunk;
        let mut words = vec![0u32; chunks * rows * 4];
        let mut scales = vec![0.0f32];
        if format == WeightFormat::Q8_0 {
            scales = vec![0.0; cols / Q8_BLOCK * rows];
            for n in 0..rows {
                for block in 0..cols / Q8_BLOCK {
                    let values = &weight[n * cols + block * Q8_BLOCK..][..Q8_BLOCK];
                    let max = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    scales[block * rows + n] = max / 127.0;
                }
            }
        }
        for n in 0..rows {
            let row = &weight[n * cols..][..cols];
            for c in 0..chunks {
                let values = &row[c * per_chunk..][..per_chunk];
                let chunk = &mut words[(c * rows + n) * 4..][..4];
                match format {
                    WeightFormat::F32 => {
                        for (word, v) in chunk.iter_mut().zip(values) {
                            *word = v.to_bits();
                        }
                    }
                    WeightFormat::F16 => {
                        for (word, pair) in chunk.iter_mut().zip(values.chunks_exact(2)) {
                            let lo = f16::from_f32(pair[0]).to_bits();
                            let hi = f16::from_f32(pair[1]).to_bits();
                            *word = u32::from(lo) | (u32::from(hi) << 16);
                        }
                    }
                    WeightFormat::Q8_0 => {
                        let scale = scales[(c * per_chunk / Q8_BLOCK) * rows + n];
                        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                        for (word, quad) in chunk.iter_mut().zip(values.chunks_exact(4)) {
                            *word = quad.iter().enumerate().fold(0u32, |acc, (i, v)| {
                                let q = (v * inv).round().clamp(-127.0, 127.0) as i8;
                                acc | (u32::from(q as u8) << (8 * i))
                            });
                        }
                    }
                }
            }
        }
        Ok(Self {
            format,
            rows,
            cols,
            words,
            scales,
        })
    }

    /// The row-major f32 matrix these words decode to (what the kernels compute with).
    #[cfg(test)]
    pub fn unpack(&self) -> Vec<f32> {
        let (rows, cols) = (self.rows, self.cols);
        let per_chunk = self.format.chunk_cols();
        let mut out = vec![0.0; rows * cols];
        for n in 0..rows {
            for k in 0..cols {
                let (c, i) = (k / per_chunk, k % per_chunk);
                let chunk = &self.words[(c * rows + n) * 4..][..4];
                out[n * cols + k] = match self.format {
                    WeightFormat::F32 => f32::from_bits(chunk[i]),
                    WeightFormat::F16 => {
                        f16::from_bits((chunk[i / 2] >> (16 * (i % 2))) as u16).to_f32()
                    }
                    WeightFormat::Q8_0 => {
                        let q = (chunk[i / 4] >> (8 * (i % 4))) as u8 as i8;
                        f32::from(q) * self.scales[(k / Q8_BLOCK) * rows + n]
                    }
                };
            }
        }
        out
    }
}
