//! f32 values into GGML's block layouts: how weights that come as f32 (safetensors models) are
//! stored in a compressed [`WeightDtype`] before [`QuantMatrix::upload`](crate::QuantMatrix).
//!
//! For F16, Q4_0, Q4_1 and Q8_0 the block formulas are llama.cpp's reference quantizers, with one
//! difference: the values are quantized against the scale (and minimum) *as stored*, rounded to
//! f16, rather than against the unrounded f32 scale, so the stored codes are the nearest to the
//! values for the scale the kernels actually multiply by. The 5-bit formats and the K-quants
//! are quantized by `pio-gguf` (GGML's reference quantizers; simplified scale search for the
//! K-quants).

use half::f16;

use crate::error::{GpuError, Result};
use crate::quant::{WeightDtype, BLOCK_ELEMENTS};

/// `values` (a whole number of `dtype`'s blocks, e.g. a row-major matrix whose rows are a
/// multiple of [`WeightDtype::block_elements`] wide) as GGUF tensor bytes in `dtype`.
pub fn quantize(dtype: WeightDtype, values: &[f32]) -> Result<Vec<u8>> {
    let block = dtype.block_elements();
    if values.len() % block != 0 {
        return Err(GpuError::shape(
            "quantize",
            format!(
                "{} values is not a whole number of {block}-element {dtype:?} blocks",
                values.len()
            ),
        ));
    }
    let quantize_block: fn(&[f32], &mut Vec<u8>) = match dtype {
        WeightDtype::F32 => |block, out| out.extend(block.iter().flat_map(|v| v.to_le_bytes())),
        WeightDtype::F16 => {
            |block, out| out.extend(block.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()))
        }
        WeightDtype::Q4_0 => quantize_q4_0,
        WeightDtype::Q4_1 => quantize_q4_1,
        WeightDtype::Q8_0 => quantize_q8_0,
        WeightDtype::Q5_0
        | WeightDtype::Q5_1
        | WeightDtype::Q4_K
        | WeightDtype::Q5_K
        | WeightDtype::Q6_K => {
            return pio_gguf::writer::quantize(dtype.gguf_type(), values)
                .map_err(|error| GpuError::shape("quantize", error.to_string()))
        }
    };
    let mut out = Vec::with_capacity(values.len() / block * dtype.gguf_row_bytes(block));
    for block in values.chunks_exact(BLOCK_ELEMENTS) {
        quantize_block(block, &mut out);
    }
    Ok(out)
}

/// The scale `value` rounded to f16 as stored, and its inverse (0 for a zero scale).
fn stored_scale(value: f32) -> (f16, f32) {
    let d = f16::from_f32(value);
    let inverse = if d.to_f32() == 0.0 {
        0.0
    } else {
        1.0 / d.to_f32()
    };
    (d, inverse)
}

/// Element `j` and `16 + j` share byte `j` of a Q4 block: low and high nibble.
fn push_nibbles(codes: &[u8; BLOCK_ELEMENTS], out: &mut Vec<u8>) {
    out.extend((0..16).map(|j| codes[j] | (codes[16 + j] << 4)));
}

/// Q4_0: `d` = the value of largest magnitude / −8, codes `round(v / d) + 8` in 0..=15.
fn quantize_q4_0(block: &[f32], out: &mut Vec<u8>) {
    let extreme = block
        .iter()
        .copied()
        .fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
    let (d, inverse) = stored_scale(extreme / -8.0);
    let mut codes = [0u8; BLOCK_ELEMENTS];
    for (code, &v) in codes.iter_mut().zip(block) {
        *code = (v * inverse + 8.5).clamp(0.0, 15.0) as u8;
    }
    out.extend(d.to_le_bytes());
    push_nibbles(&codes, out);
}

/// Q4_1: minimum `m`, `d` = (max − min) / 15, codes `round((v − m) / d)` in 0..=15.
fn quantize_q4_1(block: &[f32], out: &mut Vec<u8>) {
    let min = block.iter().copied().fold(f32::INFINITY, f32::min);
    let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (d, inverse) = stored_scale((max - min) / 15.0);
    let m = f16::from_f32(min);
    let mut codes = [0u8; BLOCK_ELEMENTS];
    for (code, &v) in codes.iter_mut().zip(block) {
        *code = ((v - m.to_f32()) * inverse + 0.5).clamp(0.0, 15.0) as u8;
    }
    out.extend(d.to_le_bytes());
    out.extend(m.to_le_bytes());
    push_nibbles(&codes, out);
}

/// Q8_0: `d` = max |v| / 127, codes `round(v / d)` in −127..=127.
fn quantize_q8_0(block: &[f32], out: &mut Vec<u8>) {
    let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let (d, inverse) = stored_scale(amax / 127.0);
    out.extend(d.to_le_bytes());
    out.extend(
        block
            .iter()
            .map(|&v| (v * inverse).round().clamp(-127.0, 127.0) as i8 as u8),
    );
}

#[cfg(all(test, feature = "reference"))]
mod tests {
    use super::*;
    use crate::reference::dequantize;

    /// Per dtype, the largest error of a round trip relative to the block's largest magnitude:
    /// half a quantization step (1/30 of the range for Q4_1, whose range max − min is at most
    /// 2·max|v|; 1/254 for Q8_0; 2^-11 for f16) — for Q4_0 a whole step, 1/8, since GGML's
    /// codes reach only +7 steps opposite the extreme — plus the f16 rounding of the scale and
    /// minimum (2^-11 relative, times at most 16 steps).
    #[test]
    fn round_trips_within_half_a_step() {
        let values: Vec<f32> = (0..4 * 32)
            .map(|i| ((i * 7919 % 113) as f32 / 56.0 - 1.0) * if i < 64 { 1.0 } else { 1e-3 })
            .collect();
        for (dtype, step) in [
            (WeightDtype::F32, 0.0),
            (WeightDtype::F16, 1.0 / 2048.0),
            (WeightDtype::Q4_0, 1.0 / 8.0 + 16.0 / 2048.0),
            (WeightDtype::Q4_1, 1.0 / 15.0 + 16.0 / 2048.0),
            (WeightDtype::Q8_0, 1.0 / 254.0 + 1.0 / 2048.0),
        ] {
            let raw = quantize(dtype, &values).unwrap();
            assert_eq!(raw.len(), 4 * dtype.gguf_row_bytes(32));
            let back = dequantize(dtype, 4, 32, &raw);
            for (block, got) in values.chunks(32).zip(back.chunks(32)) {
                let scale = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let worst = block
                    .iter()
                    .zip(got)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(
                    worst <= step * scale * 1.0001,
                    "{dtype:?}: error {worst:e} over {step} x {scale:e}"
                );
            }
        }
    }

    #[test]
    fn zero_blocks_and_partial_blocks() {
        let raw = quantize(WeightDtype::Q8_0, &[0.0; 32]).unwrap();
        assert!(dequantize(WeightDtype::Q8_0, 1, 32, &raw)
            .iter()
            .all(|&v| v == 0.0));
        let error = quantize(WeightDtype::Q4_1, &[1.0; 33]).unwrap_err();
        assert!(error.to_string().contains("33 values"), "{error}");
    }
}
