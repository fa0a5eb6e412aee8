//! Block layouts, GGML rounding and error bounds of the quantizers.

use half::f16;
use pio_gguf::writer::{
    encode_bf16, encode_f16, quantize, quantize_q4_0, quantize_q4_1, quantize_q8_0,
};
use pio_gguf::{dequantize, GgufError, SuperBlock, TensorType, QK_K};

fn decode(dtype: TensorType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n];
    dequantize(dtype, bytes, &mut out).unwrap();
    out
}

/// Deterministic pseudo-random values in [-scale, scale).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn f16_of(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

#[test]
fn q4_0_layout_low_nibbles_first() {
    let mut block = f16::from_f32(0.5).to_le_bytes().to_vec();
    block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let out = decode(TensorType::Q4_0, &block, 32);
    for j in 0..16 {
        assert_eq!(out[j], (j as f32 - 8.0) * 0.5);
        assert_eq!(out[j + 16], (7.0 - j as f32) * 0.5);
    }
}

#[test]
fn q4_1_layout() {
    let mut block = f16::from_f32(0.25).to_le_bytes().to_vec();
    block.extend(f16::from_f32(-1.0).to_le_bytes());
    block.extend((0..16u8).map(|j| j | (3 << 4)));
    let out = decode(TensorType::Q4_1, &block, 32);
    for j in 0..16 {
        assert_eq!(out[j], j as f32 * 0.25 - 1.0);
        assert_eq!(out[j + 16], 3.0 * 0.25 - 1.0);
    }
}

#[test]
fn q8_0_layout() {
    let mut block = f16::from_f32(2.0).to_le_bytes().to_vec();
    block.extend((0..32i8).map(|j| (j * 4 - 64) as u8));
    let out = decode(TensorType::Q8_0, &block, 32);
    for (j, v) in out.iter().enumerate() {
        assert_eq!(*v, (j as f32 * 4.0 - 64.0) * 2.0);
    }
}

#[test]
fn float_encodings() {
    assert_eq!(
        encode_f16(&[1.0, -2.0, 65504.0]),
        [0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b]
    );
    // Ties round to even: 1 + 2^-11 → 1.0, 1 + 3·2^-11 → 1 + 2^-9.
    assert_eq!(encode_f16(&[1.0 + 2f32.powi(-11)]), [0x00, 0x3c]);
    assert_eq!(encode_f16(&[1.0 + 3.0 * 2f32.powi(-11)]), [0x02, 0x3c]);
    assert_eq!(encode_bf16(&[1.0, -0.5]), [0x80, 0x3f, 0x00, 0xbf]);
    let values = [0.0, 1.5, -3.25, 1024.0];
    assert_eq!(decode(TensorType::F16, &encode_f16(&values), 4), values);
    assert_eq!(decode(TensorType::BF16, &encode_bf16(&values), 4), values);
    assert_eq!(
        decode(
            TensorType::F32,
            &quantize(TensorType::F32, &values).unwrap(),
            4
        ),
        values
    );
}

#[test]
fn ggml_rounding_rules() {
    // Q8_0 rounds half away from zero (C roundf): with amax 127, d = 1.
    let mut x = vec![0.0f32; 32];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = -2.5;
    x[3] = 0.5;
    let q = quantize_q8_0(&x);
    assert_eq!(&q[..2], f16::from_f32(1.0).to_le_bytes());
    assert_eq!(&q[2..6], [127, 3, (-3i8) as u8, 1]);

    // Q4_0 maps the signed extreme to -8; the opposite extreme clamps to 7.
    let mut x = vec![0.0f32; 32];
    x[0] = 8.0; // max by magnitude → d = -1
    x[1] = -8.0; // would be +8, clamped to q = 15
    x[2] = 1.5; // 1.5·(-1) + 8.5 = 7 → q = 7 → value 1
    let out = decode(TensorType::Q4_0, &quantize_q4_0(&x), 32);
    assert_eq!(&out[..3], [8.0, -7.0, 1.0]);
    assert_eq!(out[3], 0.0);

    // Q4_1 rounds half up on (x - min) / d.
    let mut x: Vec<f32> = (0..32).map(|j| (j % 16) as f32).collect();
    x[5] = 4.5;
    x[6] = 5.49;
    let out = decode(TensorType::Q4_1, &quantize_q4_1(&x), 32);
    assert_eq!(out[5], 5.0);
    assert_eq!(out[6], 5.0);
    assert_eq!(out[15], 15.0);

    // All-zero blocks stay zero.
    for dtype in [TensorType::Q4_0, TensorType::Q4_1, TensorType::Q8_0] {
        let bytes = quantize(dtype, &[0.0; 64]).unwrap();
        assert_eq!(decode(dtype, &bytes, 64), [0.0; 64], "{dtype}");
    }
}

/// Error bounds derived from each format, per block:
/// - Q8_0: `d = amax/127`, `q = round(x/d)`, stored scale `d16 = f16(d)`:
///   `|x - q·d16| ≤ d/2 + |q|·|d - d16| ≤ d/2 + 127·|d - d16|`.
/// - Q4_0: `d = max/-8`, `q = round(x/d)` in [-8, 7]: `≤ |d|/2` except where
///   `x/d > 7.5` is clamped to 7 (`≤ |d|`), plus `8·|d - d16|`.
/// - Q4_1: `d = (max-min)/15`, `q = round((x-min)/d)` in [0, 15]:
///   `≤ d/2 + 15·|d - d16| + |min - f16(min)|`.
#[test]
fn quantize_dequantize_error_bounds() {
    let slack = 1e-6;
    for seed in 0..20 {
        let scale = [1e-3, 0.1, 1.0, 30.0][seed as usize % 4];
        let x = values(32 * 64, seed, scale);

        let out = decode(TensorType::Q8_0, &quantize_q8_0(&x), x.len());
        for (xb, ob) in x.chunks(32).zip(out.chunks(32)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let tol = d / 2.0 + 127.0 * (d - f16_of(d)).abs() + slack * amax;
            for (a, b) in xb.iter().zip(ob) {
                assert!((a - b).abs() <= tol, "Q8_0 {a} → {b}, tol {tol}");
            }
        }

        let out = decode(TensorType::Q4_0, &quantize_q4_0(&x), x.len());
        for (xb, ob) in x.chunks(32).zip(out.chunks(32)) {
            let max = xb
                .iter()
                .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = max / -8.0;
            let f16_err = 8.0 * (d - f16_of(d)).abs() + slack * max.abs();
            for (a, b) in xb.iter().zip(ob) {
                let step = if a / d > 7.5 { d.abs() } else { d.abs() / 2.0 };
                assert!((a - b).abs() <= step + f16_err, "Q4_0 {a} → {b}, d {d}");
            }
        }

        let out = decode(TensorType::Q4_1, &quantize_q4_1(&x), x.len());
        for (xb, ob) in x.chunks(32).zip(out.chunks(32)) {
            let min = xb.iter().copied().fold(f32::MAX, f32::min);
            let max = xb.iter().copied().fold(f32::MIN, f32::max);
            let d = (max - min) / 15.0;
            let tol = d / 2.0
                + 15.0 * (d - f16_of(d)).abs()
                + (min - f16_of(min)).abs()
                + slack * max.abs().max(min.abs());
            for (a, b) in xb.iter().zip(ob) {
                assert!((a - b).abs() <= tol, "Q4_1 {a} → {b}, tol {tol}");
            }
        }
    }
}

#[test]
fn length_and_type_errors() {
    assert!(matches!(
        quantize(TensorType::Q8_0, &[0.0; 33]),
        Err(GgufError::BadLength { .. })
    ));
    assert!(matches!(
        quantize(TensorType::IQ2_XXS, &[0.0; 256]),
        Err(GgufError::UnsupportedType(TensorType::IQ2_XXS))
    ));
    let mut out = [0.0; 32];
    let err = dequantize(TensorType::Q4_0, &[0u8; 17], &mut out).unwrap_err();
    assert!(err.to_string().contains("need 18 bytes, got 17"), "{err}");
    let mut out = [0.0; 31];
    assert!(dequantize(TensorType::Q4_0, &[0u8; 18], &mut out).is_err());
    let err = quantize(TensorType::Q4_K, &[0.0; 288]).unwrap_err();
    assert!(err.to_string().contains("block size 256"), "{err}");
    let err = dequantize(TensorType::Other(77), &[], &mut []).unwrap_err();
    assert!(err.to_string().contains("77"), "{err}");
}

/// Half an f16 ulp at `v`: the error of storing a scale `v` as f16 (absolute 2^-25 in the
/// subnormal range, where small weights put GGML's super-block scales).
fn f16_error(v: f32) -> f32 {
    (v.abs() * 2f32.powi(-11)).max(2f32.powi(-25))
}

/// The K-quant quantizers, against the scales they stored: every element decodes to the code
/// nearest to it on its sub-block's grid `scale · q − min` (within half a step), unless it lies
/// beyond the grid's end, where it takes the end code. And the whole error stays within what
/// quantizing the sub-block scales costs: half a step, plus for Q4_K/Q5_K the grid falling
/// short of the range by at most `nmax · d / 2` (the 6-bit scale rounded down) and the
/// minimum by `dmin / 2`; for Q6_K the 8-bit scale rounded by `d / 2` over 32 steps, and a
/// whole step at the clamped +31 end; plus the f16 rounding of `d` and `dmin` times the
/// largest sub-block scale (63, 128) and code.
#[test]
fn k_quants_pick_the_nearest_code_of_their_stored_scales() {
    for (dtype, nmax) in [
        (TensorType::Q4_K, 15),
        (TensorType::Q5_K, 31),
        (TensorType::Q6_K, 31),
    ] {
        for seed in 0..12u64 {
            let scale = [1e-3, 0.1, 1.0, 30.0][seed as usize % 4];
            let mut x = values(QK_K * 4, seed, scale);
            // A sub-block with a much smaller range, an all-positive and a zero one.
            x[64..96].iter_mut().for_each(|v| *v *= 1e-3);
            x[96..128].iter_mut().for_each(|v| *v = v.abs() + scale);
            x[128..160].fill(0.0);
            let bytes = quantize(dtype, &x).unwrap();
            let block_bytes = dtype.type_size().unwrap() as usize;
            let out = decode(dtype, &bytes, x.len());
            for ((xb, ob), raw) in x
                .chunks(QK_K)
                .zip(out.chunks(QK_K))
                .zip(bytes.chunks(block_bytes))
            {
                let sb = SuperBlock::unpack(dtype, raw).unwrap();
                let (d, dmin) = if dtype == TensorType::Q6_K {
                    (f16::from_le_bytes([raw[208], raw[209]]).to_f32(), 0.0)
                } else {
                    (
                        f16::from_le_bytes([raw[0], raw[1]]).to_f32(),
                        f16::from_le_bytes([raw[2], raw[3]]).to_f32(),
                    )
                };
                for (i, (&a, &b)) in xb.iter().zip(ob).enumerate() {
                    let s = i / sb.sub_block;
                    let (step, min) = (sb.scales[s].abs(), sb.mins[s]);
                    assert_eq!(b, sb.value(i));
                    let (lo, hi) = if dtype == TensorType::Q6_K {
                        let ends = [-32.0 * sb.scales[s], 31.0 * sb.scales[s]];
                        (ends[0].min(ends[1]), ends[0].max(ends[1]))
                    } else {
                        (-min, step * nmax as f32 - min)
                    };
                    let nearest = if a < lo {
                        b == lo
                    } else if a > hi {
                        b == hi
                    } else {
                        (a - b).abs() <= step / 2.0 * 1.0001 + 1e-30
                    };
                    assert!(nearest, "{dtype} seed {seed} #{i}: {a} → {b}, step {step}");
                    let bound = if dtype == TensorType::Q6_K {
                        step + 16.0 * d.abs() + 32.0 * 128.0 * f16_error(d)
                    } else {
                        step / 2.0
                            + (nmax as f32 * d + dmin) / 2.0
                            + 63.0 * (nmax as f32 * f16_error(d) + f16_error(dmin))
                    };
                    assert!(
                        (a - b).abs() <= bound * 1.001 + 1e-6 * scale,
                        "{dtype} seed {seed} #{i}: {a} → {b}, bound {bound}"
                    );
                }
            }
        }
    }
}

#[test]
fn q5_layouts_put_bit_4_in_qh() {
    // Q5_0: d = 0.5, qh has bits 0 and 31 set; nibbles j | (15 - j) << 4.
    let mut block = f16::from_f32(0.5).to_le_bytes().to_vec();
    block.extend((1u32 | 1 << 31).to_le_bytes());
    block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let out = decode(TensorType::Q5_0, &block, 32);
    assert_eq!(out[0], (16.0 - 16.0) * 0.5);
    assert_eq!(out[1], (1.0 - 16.0) * 0.5);
    assert_eq!(out[16], (15.0 - 16.0) * 0.5);
    assert_eq!(out[31], (16.0 + 0.0 - 16.0) * 0.5);
    // Q5_1 adds the minimum.
    let mut block = f16::from_f32(0.25).to_le_bytes().to_vec();
    block.extend(f16::from_f32(-2.0).to_le_bytes());
    block.extend((1u32 << 5).to_le_bytes());
    block.extend([0x21u8; 16]);
    let out = decode(TensorType::Q5_1, &block, 32);
    assert_eq!(out[0], 1.0 * 0.25 - 2.0);
    assert_eq!(out[5], 17.0 * 0.25 - 2.0);
    assert_eq!(out[16], 2.0 * 0.25 - 2.0);
}
