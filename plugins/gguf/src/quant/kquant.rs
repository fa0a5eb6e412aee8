//! The K-quants: 256-element super-blocks of smaller sub-blocks, each with its own scale (and
//! minimum), the sub-block scales themselves quantized against one f16 super-block scale.
//! Layouts (little-endian, `d` and `dmin` f16), as in GGML:
//! - `Q4_K` (144 bytes): `d`, `dmin`, 12 bytes of 6-bit sub-block scales `sc` and minimums `m`
//!   (packed as in [`scale_min`]), 128 bytes of nibbles. Sub-block `j` (32 elements) holds the
//!   low nibbles (`j` even) or high nibbles (`j` odd) of bytes `32 (j / 2)..32 (j / 2) + 32`;
//!   value = `d·sc[j] · q − dmin·m[j]`.
//! - `Q5_K` (176 bytes): `d`, `dmin`, 12 scale bytes, 32 bytes `qh`, 128 bytes of low nibbles
//!   as in Q4_K; bit 4 of element `32 j + l` is bit `j` of `qh[l]`; value as Q4_K.
//! - `Q6_K` (210 bytes): 128 bytes `ql`, 64 bytes `qh`, 16 signed 8-bit sub-block scales, `d`.
//!   Element `128 h + 32 k + l` (h < 2, k < 4, l < 32) has its low 4 bits in the low (`k < 2`)
//!   or high nibble of `ql[64 h + 32 (k % 2) + l]` and its high 2 bits at bit `2 k` of
//!   `qh[32 h + l]`; 16 sub-blocks of 16; value = `d·sc[e / 16] · (q − 32)`.
//!
//! [`SuperBlock`] is the one decoding of these layouts: the dequantizers here and the
//! device repacking in `pio-gpu` both start from it.
//!
//! The quantizers follow the structure of GGML's reference quantizers (per-sub-block scale and
//! minimum, the sub-block scales quantized to 6 or 8 bits against the largest, codes re-derived
//! from the stored scales with GGML's round-to-nearest-even) but choose each sub-block's scale
//! directly — Q4_K/Q5_K from its range (`(max − min) / nmax`, the minimum clamped to ≤ 0),
//! Q6_K from its element of largest magnitude (mapped to −32) — where GGML's `make_qkx2_quants`
//! and `make_qx_quants` search about twenty candidate scales for the smallest weighted squared
//! error. Their blocks decode with any GGML reader; their error is somewhat larger (bounded in
//! `tests/quant.rs`).

use half::f16;

use super::{assert_blocks, nearest_int, read_f16};
use crate::tensor::TensorType;

/// Elements per super-block.
pub const QK_K: usize = 256;

/// A K-quant super-block decoded into codes and per-sub-block scales: element `i` is
/// `scales[s] * codes[i] - mins[s]` with `s = i / sub_block` (GGML's arithmetic, so the
/// result is bit-exact with GGML's dequantizers).
#[derive(Debug, Clone, PartialEq)]
pub struct SuperBlock {
    /// Elements per sub-block: 32 (Q4_K, Q5_K) or 16 (Q6_K).
    pub sub_block: usize,
    /// Codes: 0..=15 (Q4_K), 0..=31 (Q5_K), −32..=31 (Q6_K).
    pub codes: [i8; QK_K],
    /// Scale of each sub-block (the first `QK_K / sub_block` are used): `d · sc`, exact in f32.
    pub scales: [f32; 16],
    /// Minimum subtracted in each sub-block: `dmin · m` (Q4_K, Q5_K; exact in f32), 0 (Q6_K).
    pub mins: [f32; 16],
}

impl SuperBlock {
    /// Decodes one block of `dtype` (`Q4_K`, `Q5_K` or `Q6_K`; `None` for other types).
    ///
    /// # Panics
    /// If `block` is shorter than the type's block.
    pub fn unpack(dtype: TensorType, block: &[u8]) -> Option<Self> {
        let mut out = Self {
            sub_block: 32,
            codes: [0; QK_K],
            scales: [0.0; 16],
            mins: [0.0; 16],
        };
        match dtype {
            TensorType::Q4_K | TensorType::Q5_K => {
                let (d, dmin) = (read_f16(block), read_f16(&block[2..]));
                let scales: &[u8; 12] = block[4..16].try_into().expect("12 scale bytes");
                for j in 0..8 {
                    let (sc, m) = scale_min(j, scales);
                    out.scales[j] = d * f32::from(sc);
                    out.mins[j] = dmin * f32::from(m);
                }
                let (qh, qs) = if dtype == TensorType::Q5_K {
                    (Some(&block[16..48]), &block[48..176])
                } else {
                    (None, &block[16..144])
                };
                for (i, code) in out.codes.iter_mut().enumerate() {
                    let (j, l) = (i / 32, i % 32);
                    let byte = qs[32 * (j / 2) + l];
                    let low = if j % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                    let high = qh.map_or(0, |qh| (qh[l] >> j) & 1);
                    *code = (low | high << 4) as i8;
                }
            }
            TensorType::Q6_K => {
                let (ql, qh, sc) = (&block[..128], &block[128..192], &block[192..208]);
                let d = read_f16(&block[208..]);
                out.sub_block = 16;
                for (s, &sc) in out.scales.iter_mut().zip(sc) {
                    *s = d * f32::from(sc as i8);
                }
                for (i, code) in out.codes.iter_mut().enumerate() {
                    let (h, k, l) = (i / 128, i % 128 / 32, i % 32);
                    let byte = ql[64 * h + 32 * (k % 2) + l];
                    let low = if k < 2 { byte & 0x0f } else { byte >> 4 };
                    let high = (qh[32 * h + l] >> (2 * k)) & 3;
                    *code = (low | high << 4) as i8 - 32;
                }
            }
            _ => return None,
        }
        Some(out)
    }

    /// Element `i`, dequantized.
    pub fn value(&self, i: usize) -> f32 {
        let s = i / self.sub_block;
        self.scales[s] * f32::from(self.codes[i]) - self.mins[s]
    }
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) from the 12 packed bytes (GGML's
/// `get_scale_min_k4`): bytes 0-3 hold scales 0-3 and bytes 4-7 minimums 0-3 in their low 6
/// bits; scales and minimums 4-7 have their low 4 bits in bytes 8-11 (scale low nibble,
/// minimum high nibble) and their top 2 bits in the top bits of bytes 0-3 and 4-7.
pub fn scale_min(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The inverse of [`scale_min`]: 8 scales and minimums (each < 64) packed into 12 bytes.
fn pack_scale_min(scales: &[u8; 8], mins: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (scales[j], mins[j]);
        if j < 4 {
            q[j] = ls;
            q[j + 4] = lm;
        } else {
            q[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            q[j - 4] |= (ls >> 4) << 6;
            q[j] |= (lm >> 4) << 6;
        }
    }
    q
}

fn dequantize_with(dtype: TensorType, block: &[u8], out: &mut [f32]) {
    let sb = SuperBlock::unpack(dtype, block).expect("a K-quant type");
    for (i, o) in out.iter_mut().enumerate() {
        *o = sb.value(i);
    }
}

pub(crate) fn dequantize_q4_k(block: &[u8], out: &mut [f32]) {
    dequantize_with(TensorType::Q4_K, block, out);
}

pub(crate) fn dequantize_q5_k(block: &[u8], out: &mut [f32]) {
    dequantize_with(TensorType::Q5_K, block, out);
}

pub(crate) fn dequantize_q6_k(block: &[u8], out: &mut [f32]) {
    dequantize_with(TensorType::Q6_K, block, out);
}

/// Quantizes to `Q4_K` (see the module docs for how it differs from GGML's quantizer).
///
/// # Panics
/// If `values.len()` is not a multiple of 256 ([`quantize`](super::quantize) returns an error
/// instead).
pub fn quantize_q4_k(values: &[f32]) -> Vec<u8> {
    quantize_scale_min(values, 15)
}

/// Quantizes to `Q5_K` (see the module docs for how it differs from GGML's quantizer).
///
/// # Panics
/// If `values.len()` is not a multiple of 256 ([`quantize`](super::quantize) returns an error
/// instead).
pub fn quantize_q5_k(values: &[f32]) -> Vec<u8> {
    quantize_scale_min(values, 31)
}

/// Q4_K (`nmax` = 15) and Q5_K (31).
fn quantize_scale_min(values: &[f32], nmax: u8) -> Vec<u8> {
    assert_blocks(values, QK_K);
    let five_bits = nmax == 31;
    let mut out = Vec::with_capacity(values.len() / QK_K * if five_bits { 176 } else { 144 });
    for x in values.chunks_exact(QK_K) {
        // Per sub-block: scale (max − min) / nmax and the minimum, clamped to ≤ 0, negated.
        let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
        for (j, sub) in x.chunks_exact(32).enumerate() {
            let min = sub.iter().copied().fold(f32::MAX, f32::min).min(0.0);
            let max = sub.iter().copied().fold(-f32::MAX, f32::max);
            scales[j] = (max - min) / f32::from(nmax);
            mins[j] = -min;
        }
        let max_scale = scales.iter().copied().fold(0.0, f32::max);
        let max_min = mins.iter().copied().fold(0.0, f32::max);
        let inv = |m: f32| if m > 0.0 { 63.0 / m } else { 0.0 };
        let (inv_scale, inv_min) = (inv(max_scale), inv(max_min));
        let six_bits = |v: f32, inv: f32| nearest_int(inv * v).min(63) as u8;
        let ls: [u8; 8] = std::array::from_fn(|j| six_bits(scales[j], inv_scale));
        let lm: [u8; 8] = std::array::from_fn(|j| six_bits(mins[j], inv_min));
        let d = f16::from_f32(max_scale / 63.0);
        let dmin = f16::from_f32(max_min / 63.0);
        // Codes against the scales as stored.
        let mut codes = [0u8; QK_K];
        for (j, (sub, codes)) in x
            .chunks_exact(32)
            .zip(codes.chunks_exact_mut(32))
            .enumerate()
        {
            let dj = d.to_f32() * f32::from(ls[j]);
            if dj == 0.0 {
                continue;
            }
            let dm = dmin.to_f32() * f32::from(lm[j]);
            for (c, &v) in codes.iter_mut().zip(sub) {
                *c = nearest_int((v + dm) / dj).clamp(0, i32::from(nmax)) as u8;
            }
        }
        out.extend(d.to_le_bytes());
        out.extend(dmin.to_le_bytes());
        out.extend(pack_scale_min(&ls, &lm));
        if five_bits {
            let mut qh = [0u8; 32];
            for (i, &c) in codes.iter().enumerate() {
                qh[i % 32] |= (c >> 4) << (i / 32);
            }
            out.extend(qh);
        }
        // Sub-blocks 2k and 2k + 1 share bytes 32k..32k + 32: low and high nibble.
        for pair in codes.chunks_exact(64) {
            out.extend((0..32).map(|l| (pair[l] & 0x0f) | (pair[32 + l] & 0x0f) << 4));
        }
    }
    out
}

/// Quantizes to `Q6_K` (see the module docs for how it differs from GGML's quantizer).
///
/// # Panics
/// If `values.len()` is not a multiple of 256 ([`quantize`](super::quantize) returns an error
/// instead).
pub fn quantize_q6_k(values: &[f32]) -> Vec<u8> {
    assert_blocks(values, QK_K);
    let mut out = Vec::with_capacity(values.len() / QK_K * 210);
    for x in values.chunks_exact(QK_K) {
        // Per sub-block of 16: the element of largest magnitude, with its sign, maps to −32.
        let scales: [f32; 16] = std::array::from_fn(|s| {
            let extreme =
                x[16 * s..16 * s + 16]
                    .iter()
                    .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            extreme / -32.0
        });
        let max_scale = scales
            .iter()
            .copied()
            .fold(0.0f32, |m, s| if s.abs() > m.abs() { s } else { m });
        // GGML's GROUP_MAX_EPS: a (nearly) zero block is stored as zeros.
        if max_scale.abs() < 1e-15 {
            out.extend([0u8; 210]);
            continue;
        }
        let iscale = -128.0 / max_scale;
        let d = f16::from_f32(1.0 / iscale);
        let ls: [i8; 16] = std::array::from_fn(|s| nearest_int(iscale * scales[s]).min(127) as i8);
        let mut codes = [32u8; QK_K];
        for (s, (sub, codes)) in x
            .chunks_exact(16)
            .zip(codes.chunks_exact_mut(16))
            .enumerate()
        {
            let ds = d.to_f32() * f32::from(ls[s]);
            if ds == 0.0 {
                continue;
            }
            for (c, &v) in codes.iter_mut().zip(sub) {
                *c = (nearest_int(v / ds).clamp(-32, 31) + 32) as u8;
            }
        }
        let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
        for h in 0..2 {
            let c = &codes[128 * h..128 * h + 128];
            for l in 0..32 {
                ql[64 * h + l] = (c[l] & 0x0f) | (c[l + 64] & 0x0f) << 4;
                ql[64 * h + 32 + l] = (c[l + 32] & 0x0f) | (c[l + 96] & 0x0f) << 4;
                qh[32 * h + l] = (c[l] >> 4)
                    | (c[l + 32] >> 4) << 2
                    | (c[l + 64] >> 4) << 4
                    | (c[l + 96] >> 4) << 6;
            }
        }
        out.extend(ql);
        out.extend(qh);
        out.extend(ls.map(|s| s as u8));
        out.extend(d.to_le_bytes());
    }
    out
}
