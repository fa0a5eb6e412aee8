//! Conversions between `f32` and GGML's storage formats.
//!
//! [`block32`] holds the 32-element formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), [`kquant`] the
//! 256-element super-block formats (Q4_K, Q5_K, Q6_K). Block layouts follow GGML exactly;
//! dequantization does GGML's arithmetic in GGML's order, so it is bit-exact with GGML's (and
//! the `gguf` Python package's) dequantizers (checked on real blocks in `tests/real_blocks.rs`).

pub mod block32;
pub mod kquant;

use half::{bf16, f16};

use crate::error::{GgufError, Result};
use crate::tensor::TensorType;

pub(crate) fn read_f16(bytes: &[u8]) -> f32 {
    f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

/// GGML's `nearest_int`: round to nearest, ties to even (the `1.5 * 2^23` trick).
pub(crate) fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
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

/// Decodes one block's bytes into its elements.
type BlockDecoder = fn(&[u8], &mut [f32]);

/// The block decoder of `dtype`, if this crate decodes it.
fn block_decoder(dtype: TensorType) -> Option<BlockDecoder> {
    Some(match dtype {
        TensorType::F32 => |b, o| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        TensorType::F16 => |b, o| o[0] = read_f16(b),
        TensorType::BF16 => |b, o| o[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        TensorType::Q4_0 => block32::dequantize_q4_0,
        TensorType::Q4_1 => block32::dequantize_q4_1,
        TensorType::Q5_0 => block32::dequantize_q5_0,
        TensorType::Q5_1 => block32::dequantize_q5_1,
        TensorType::Q8_0 => block32::dequantize_q8_0,
        TensorType::Q4_K => kquant::dequantize_q4_k,
        TensorType::Q5_K => kquant::dequantize_q5_k,
        TensorType::Q6_K => kquant::dequantize_q6_k,
        _ => return None,
    })
}

/// Whether [`dequantize`] decodes `dtype`.
pub fn can_dequantize(dtype: TensorType) -> bool {
    block_decoder(dtype).is_some()
}

/// Decodes `bytes` of type `dtype` into `out`, which must hold exactly the
/// number of elements `bytes` encodes.
///
/// Supported types: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K. Others
/// give [`GgufError::UnsupportedType`].
pub fn dequantize(dtype: TensorType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let decode = block_decoder(dtype).ok_or(GgufError::UnsupportedType(dtype))?;
    let (block, type_size) = check_lengths(dtype, bytes.len(), out.len())?;
    for (b, o) in bytes
        .chunks_exact(type_size)
        .zip(out.chunks_exact_mut(block))
    {
        decode(b, o);
    }
    Ok(())
}

/// Encodes `values` as `dtype`.
///
/// Supported types: F32, F16, BF16, the 32-element formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0:
/// lengths a multiple of 32) and the K-quants Q4_K, Q5_K, Q6_K (lengths a multiple of 256).
pub fn quantize(dtype: TensorType, values: &[f32]) -> Result<Vec<u8>> {
    type Quantizer = fn(&[f32]) -> Vec<u8>;
    let quantizer: Quantizer = match dtype {
        TensorType::F32 => encode_f32,
        TensorType::F16 => encode_f16,
        TensorType::BF16 => encode_bf16,
        TensorType::Q4_0 => block32::quantize_q4_0,
        TensorType::Q4_1 => block32::quantize_q4_1,
        TensorType::Q5_0 => block32::quantize_q5_0,
        TensorType::Q5_1 => block32::quantize_q5_1,
        TensorType::Q8_0 => block32::quantize_q8_0,
        TensorType::Q4_K => kquant::quantize_q4_k,
        TensorType::Q5_K => kquant::quantize_q5_k,
        TensorType::Q6_K => kquant::quantize_q6_k,
        other => return Err(GgufError::UnsupportedType(other)),
    };
    let block = dtype.block_size().unwrap_or(1) as usize;
    if values.len() % block != 0 {
        return Err(GgufError::BadLength {
            dtype,
            what: format!(
                "{} elements is not a multiple of the block size {block}",
                values.len()
            ),
        });
    }
    Ok(quantizer(values))
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

/// Panics unless `values` is a whole number of `block`-element blocks (the public quantizers'
/// precondition; [`quantize`] returns an error instead).
fn assert_blocks(values: &[f32], block: usize) {
    assert!(
        values.len() % block == 0,
        "quantizing {} values: length must be a multiple of {block}",
        values.len()
    );
}
