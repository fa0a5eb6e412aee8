//! Conversions between `f32` and GGML's storage formats.
//!
//! Block layouts follow GGML exactly (all little-endian):
//! - `Q4_0`: f16 `d`, 16 bytes of nibbles; byte `j` holds element `j` in its
//!   low nibble and element `j + 16` in its high nibble; value = `(q - 8) * d`.
//! - `Q4_1`: f16 `d`, f16 `m`, 16 bytes of nibbles as above; value = `q * d + m`.
//! - `Q8_0`: f16 `d`, 32 × i8; value = `q * d`.
//!
//! The quantizers reproduce GGML's reference (`*_ref`) quantizers bit for bit,
//! including their rounding.

use half::{bf16, f16};

use crate::error::{GgufError, Result};
use crate::tensor::TensorType;

/// Elements per block of the 32-element quant formats.
const QK: usize = 32;

fn read_f16(bytes: &[u8]) -> f32 {
    f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

/// Checks that `bytes` holds exactly `n_out` elements of `dtype` and returns
/// the block size and bytes per block.
fn check_lengths(dtype: TensorType, n_bytes: usize, n_out: usize) -> Result<(usize, usize)> {
    let (Some(block), Some(type_size)) = (dtype.block_size(), dtype.type_size()) else {
        return Err(GgufError::UnsupportedType(dtype));
    };
    let (block, type_size) = (block as usize, type_size as usize);
    if n_out % block != 0 {
        return Err(GgufError::BadLength {
            dtype,
            what: format!("{n_out} elements is not a multiple of the block size {block}"),
        });
    }
    let expected = n_out / block * type_size;
    if n_bytes != expected {
        return Err(GgufError::BadLength {
            dtype,
            what: format!("{n_out} elements need {expected} bytes, got {n_bytes}"),
        });
    }
    Ok((block, type_size))
}

/// Decodes `bytes` of type `dtype` into `out`, which must hold exactly the
/// number of elements `bytes` encodes.
///
/// Supported types: F32, F16, BF16, Q4_0, Q4_1, Q8_0. Others give
/// [`GgufError::UnsupportedType`].
pub fn dequantize(dtype: TensorType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    if !matches!(
        dtype,
        TensorType::F32
            | TensorType::F16
            | TensorType::BF16
            | TensorType::Q4_0
            | TensorType::Q4_1
            | TensorType::Q8_0
    ) {
        return Err(GgufError::UnsupportedType(dtype));
    }
    let (block, type_size) = check_lengths(dtype, bytes.len(), out.len())?;
    let blocks = bytes
        .chunks_exact(type_size)
        .zip(out.chunks_exact_mut(block));
    match dtype {
        TensorType::F32 => {
            blocks.for_each(|(b, o)| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        TensorType::F16 => blocks.for_each(|(b, o)| o[0] = read_f16(b)),
        TensorType::BF16 => {
            blocks.for_each(|(b, o)| o[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32())
        }
        TensorType::Q4_0 => blocks.for_each(|(b, o)| {
            let d = read_f16(b);
            for (j, &q) in b[2..18].iter().enumerate() {
                o[j] = (i32::from(q & 0x0f) - 8) as f32 * d;
                o[j + 16] = (i32::from(q >> 4) - 8) as f32 * d;
            }
        }),
        TensorType::Q4_1 => blocks.for_each(|(b, o)| {
            let (d, m) = (read_f16(b), read_f16(&b[2..]));
            for (j, &q) in b[4..20].iter().enumerate() {
                o[j] = f32::from(q & 0x0f) * d + m;
                o[j + 16] = f32::from(q >> 4) * d + m;
            }
        }),
        TensorType::Q8_0 => blocks.for_each(|(b, o)| {
            let d = read_f16(b);
            for (o, &q) in o.iter_mut().zip(&b[2..34]) {
                *o = f32::from(q as i8) * d;
            }
        }),
        _ => unreachable!("filtered above"),
    }
    Ok(())
}

/// Encodes `values` as `dtype`.
///
/// Supported types: F32, F16, BF16, Q4_0, Q4_1, Q8_0; the quantized ones need
/// a length that is a multiple of 32.
pub fn quantize(dtype: TensorType, values: &[f32]) -> Result<Vec<u8>> {
    let needs_blocks = matches!(
        dtype,
        TensorType::Q4_0 | TensorType::Q4_1 | TensorType::Q8_0
    );
    if needs_blocks && values.len() % QK != 0 {
        return Err(GgufError::BadLength {
            dtype,
            what: format!(
                "{} elements is not a multiple of the block size {QK}",
                values.len()
            ),
        });
    }
    Ok(match dtype {
        TensorType::F32 => encode_f32(values),
        TensorType::F16 => encode_f16(values),
        TensorType::BF16 => encode_bf16(values),
        TensorType::Q4_0 => quantize_q4_0(values),
        TensorType::Q4_1 => quantize_q4_1(values),
        TensorType::Q8_0 => quantize_q8_0(values),
        other => return Err(GgufError::UnsupportedType(other)),
    })
}

/// Little-endian `f32` bytes.
pub fn encode_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Little-endian IEEE half-precision bytes, rounded to nearest even like GGML.
pub fn encode_f16(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect()
}

/// Little-endian bfloat16 bytes, rounded to nearest even like GGML.
pub fn encode_bf16(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect()
}

fn assert_blocks(values: &[f32]) {
    assert!(
        values.len() % QK == 0,
        "quantizing {} values: length must be a multiple of {QK}",
        values.len()
    );
}

/// Quantizes to `Q4_0` exactly like GGML's `quantize_row_q4_0_ref`.
///
/// # Panics
/// If `values.len()` is not a multiple of 32 ([`quantize`] returns an error instead).
pub fn quantize_q4_0(values: &[f32]) -> Vec<u8> {
    assert_blocks(values);
    let mut out = Vec::with_capacity(values.len() / QK * 18);
    for x in values.chunks_exact(QK) {
        // The element of largest magnitude, with its sign, maps to -8.
        let max = x
            .iter()
            .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        // `as i8` truncates toward zero like C's `(int8_t)` cast; the argument is ≥ 0.5.
        let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
    }
    out
}

/// Quantizes to `Q4_1` exactly like GGML's `quantize_row_q4_1_ref`.
///
/// # Panics
/// If `values.len()` is not a multiple of 32 ([`quantize`] returns an error instead).
pub fn quantize_q4_1(values: &[f32]) -> Vec<u8> {
    assert_blocks(values);
    let mut out = Vec::with_capacity(values.len() / QK * 20);
    for x in values.chunks_exact(QK) {
        let min = x.iter().fold(f32::MAX, |m, &v| if v < m { v } else { m });
        let max = x.iter().fold(-f32::MAX, |m, &v| if v > m { v } else { m });
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
        let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
        out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
    }
    out
}

/// Quantizes to `Q8_0` exactly like GGML's `quantize_row_q8_0_ref`.
///
/// # Panics
/// If `values.len()` is not a multiple of 32 ([`quantize`] returns an error instead).
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    assert_blocks(values);
    let mut out = Vec::with_capacity(values.len() / QK * 34);
    for x in values.chunks_exact(QK) {
        let amax = x.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        // `f32::round` rounds half away from zero, like C's `roundf`.
        out.extend(x.iter().map(|&v| ((v * id).round() as i8) as u8));
    }
    out
}
