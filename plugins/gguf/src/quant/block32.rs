//! The 32-element block formats. Layouts (all little-endian), `d` and `m` f16:
//! - `Q4_0`: `d`, 16 bytes of nibbles; byte `j` holds element `j` in its low nibble and
//!   element `j + 16` in its high nibble; value = `(q - 8) * d`.
//! - `Q4_1`: `d`, `m`, 16 bytes of nibbles as above; value = `q * d + m`.
//! - `Q5_0`: `d`, a 32-bit `qh` whose bit `j` is bit 4 of element `j`, 16 bytes of low
//!   nibbles as above; value = `(q - 16) * d`.
//! - `Q5_1`: `d`, `m`, `qh`, 16 bytes of low nibbles; value = `q * d + m`.
//! - `Q8_0`: `d`, 32 × i8; value = `q * d`.
//!
//! The quantizers reproduce GGML's reference (`quantize_row_*_ref`) quantizers bit for bit,
//! including their rounding.

use half::f16;

use super::{assert_blocks, read_f16};

/// Elements per block.
const QK: usize = 32;

/// Low nibbles of `qs` (byte `j` → element `j`), then the high ones (→ element `j + 16`).
fn nibbles(qs: &[u8]) -> impl Iterator<Item = u8> + '_ {
    qs.iter().map(|q| q & 0x0f).chain(qs.iter().map(|q| q >> 4))
}

/// The 5-bit codes of a Q5 block: low nibbles from `qs`, bit 4 of element `j` from bit `j`
/// of `qh`.
fn codes5<'a>(qh: &[u8], qs: &'a [u8]) -> impl Iterator<Item = u8> + 'a {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    nibbles(qs)
        .enumerate()
        .map(move |(j, low)| low | (((qh >> j) & 1) as u8) << 4)
}

pub(crate) fn dequantize_q4_0(b: &[u8], out: &mut [f32]) {
    let d = read_f16(b);
    for (o, q) in out.iter_mut().zip(nibbles(&b[2..18])) {
        *o = (i32::from(q) - 8) as f32 * d;
    }
}

pub(crate) fn dequantize_q4_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (read_f16(b), read_f16(&b[2..]));
    for (o, q) in out.iter_mut().zip(nibbles(&b[4..20])) {
        *o = f32::from(q) * d + m;
    }
}

pub(crate) fn dequantize_q5_0(b: &[u8], out: &mut [f32]) {
    let d = read_f16(b);
    for (o, q) in out.iter_mut().zip(codes5(&b[2..6], &b[6..22])) {
        *o = (i32::from(q) - 16) as f32 * d;
    }
}

pub(crate) fn dequantize_q5_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (read_f16(b), read_f16(&b[2..]));
    for (o, q) in out.iter_mut().zip(codes5(&b[4..8], &b[8..24])) {
        *o = f32::from(q) * d + m;
    }
}

pub(crate) fn dequantize_q8_0(b: &[u8], out: &mut [f32]) {
    let d = read_f16(b);
    for (o, &q) in out.iter_mut().zip(&b[2..34]) {
        *o = f32::from(q as i8) * d;
    }
}

/// The element of largest magnitude, with its sign (the first of equals, like GGML).
fn signed_extreme(x: &[f32]) -> f32 {
    x.iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

/// Appends 32 codes as nibbles (low: element `j`, high: element `j + 16`), and when `qh` is
/// given their bit 4 as a 32-bit mask first.
fn push_codes(codes: &[u8; QK], with_qh: bool, out: &mut Vec<u8>) {
    if with_qh {
        let qh = (0..QK).fold(0u32, |qh, j| qh | u32::from(codes[j] >> 4) << j);
        out.extend_from_slice(&qh.to_le_bytes());
    }
    out.extend((0..16).map(|j| (codes[j] & 0x0f) | (codes[j + 16] & 0x0f) << 4));
}

/// Quantizes to `Q4_0` exactly like GGML's `quantize_row_q4_0_ref`.
///
/// # Panics
/// If `values.len()` is not a multiple of 32 ([`quantize`](super::quantize) returns an error
/// instead).
pub fn quantize_q4_0(values: &[f32]) -> Vec<u8> {
    quantize_offset(values, 8, false)
}

/// Quantizes to `Q5_0` exactly like GGML's `quantize_row_q5_0_ref`.
///
/// # Panics
/// If `values.len()` is not a multiple of 32 ([`quantize`](super::quantize) returns an error
/// instead).
pub fn quantize_q5_0(values: &[f32]) -> Vec<u8> {
    quantize_offset(values, 16, true)
}

/// Q4_0 (`half` = 8) and Q5_0 (`half` = 16): the element of largest magnitude, with its sign,
/// maps to code 0 (value `-half`), codes are `x / d + half` rounded half up, clamped to
/// `2 half - 1`.
fn quantize_offset(values: &[f32], half: u8, with_qh: bool) -> Vec<u8> {
    assert_blocks(values, QK);
    let block_bytes = 2 + usize::from(with_qh) * 4 + 16;
    let mut out = Vec::with_capacity(values.len() / QK * block_bytes);
    for x in values.chunks_exact(QK) {
        let d = signed_extreme(x) / -f32::from(half);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        // One constant (8.5, 16.5) as in GGML: `(v * id + half) + 0.5` would round twice.
        let offset = f32::from(half) + 0.5;
        let mut codes = [0u8; QK];
        for (c, &v) in codes.iter_mut().zip(x) {
            // `as i8` truncates toward zero like C's `(int8_t)` cast; the argument is ≥ 0.5.
            *c = ((v * id + offset) as i8).min(2 * half as i8 - 1) as u8;
        }
        push_codes(&codes, with_qh, &mut out);
    }
    out
}

/// Quantizes to `Q4_1` exactly like GGML's `quantize_row_q4_1_ref`.
///
/// # Panics
/// If `values.len()` is not a multiple of 32 ([`quantize`](super::quantize) returns an error
/// instead).
pub fn quantize_q4_1(values: &[f32]) -> Vec<u8> {
    quantize_min(values, 15, false)
}

/// Quantizes to `Q5_1` exactly like GGML's `quantize_row_q5_1_ref`.
///
/// # Panics
/// If `values.len()` is not a multiple of 32 ([`quantize`](super::quantize) returns an error
/// instead).
pub fn quantize_q5_1(values: &[f32]) -> Vec<u8> {
    quantize_min(values, 31, true)
}

/// Q4_1 (`nmax` = 15) and Q5_1 (31): `d = (max - min) / nmax`, codes `(x - min) / d` rounded
/// half up.
fn quantize_min(values: &[f32], nmax: u8, with_qh: bool) -> Vec<u8> {
    assert_blocks(values, QK);
    let block_bytes = 4 + usize::from(with_qh) * 4 + 16;
    let mut out = Vec::with_capacity(values.len() / QK * block_bytes);
    for x in values.chunks_exact(QK) {
        let min = x.iter().fold(f32::MAX, |m, &v| if v < m { v } else { m });
        let max = x.iter().fold(-f32::MAX, |m, &v| if v > m { v } else { m });
        let d = (max - min) / f32::from(nmax);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
        let mut codes = [0u8; QK];
        for (c, &v) in codes.iter_mut().zip(x) {
            *c = (((v - min) * id + 0.5) as i8).min(nmax as i8) as u8;
        }
        push_codes(&codes, with_qh, &mut out);
    }
    out
}

/// Quantizes to `Q8_0` exactly like GGML's `quantize_row_q8_0_ref`.
///
/// # Panics
/// If `values.len()` is not a multiple of 32 ([`quantize`](super::quantize) returns an error
/// instead).
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    assert_blocks(values, QK);
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
