//! pio-gguf against the `gguf` Python package (GGML's layouts as llama.cpp's own Python reads
//! them) on the blocks of `fixtures/real_blocks.txt`: real Q4_K, Q6_K, Q5_0 and Q8_0 blocks of
//! Gemma 3 270M Q4_K_M, seeded random blocks of the formats that file lacks, and the package's
//! quantization of seeded inputs. `fixtures/make_real_blocks.py` wrote the file and says how.
//!
//! Both sides do GGML's arithmetic in the same order on exact intermediate values (an f16
//! scale times a 6- or 8-bit sub-block scale fits f32's significand, so does its product with
//! a code), so dequantization is compared bit for bit (`==` on f32, which also equates the
//! zero signs), and quantization byte for byte.

use pio_gguf::{dequantize, writer::quantize, TensorType};

const FIXTURE: &str = include_str!("fixtures/real_blocks.txt");

struct Record<'a> {
    kind: &'a str,
    dtype: TensorType,
    source: &'a str,
    first: &'a str,
    second: &'a str,
}

fn records() -> Vec<Record<'static>> {
    let lines: Vec<&str> = FIXTURE.lines().collect();
    lines
        .chunks_exact(3)
        .map(|r| {
            let header: Vec<&str> = r[0].split(' ').collect();
            let dtype = (0..64)
                .map(TensorType::from_id)
                .find(|t| t.name() == header[1])
                .unwrap_or_else(|| panic!("unknown type in {}", r[0]));
            Record {
                kind: header[0],
                dtype,
                source: header[2],
                first: r[1],
                second: r[2],
            }
        })
        .collect()
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex byte"))
        .collect()
}

fn hex_floats(hex: &str) -> Vec<f32> {
    hex.split(' ')
        .map(|w| f32::from_bits(u32::from_str_radix(w, 16).expect("hex word")))
        .collect()
}

#[test]
fn dequantization_is_bit_exact_with_gguf_on_real_and_random_blocks() {
    let mut seen = Vec::new();
    for r in records().iter().filter(|r| r.kind == "dequantize") {
        let (block, want) = (hex_bytes(r.first), hex_floats(r.second));
        let mut got = vec![f32::NAN; want.len()];
        dequantize(r.dtype, &block, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g == w,
                "{} {}: element {i}: {g:e} vs gguf's {w:e}",
                r.dtype,
                r.source
            );
        }
        seen.push(r.dtype);
    }
    for dtype in [
        TensorType::Q4_0,
        TensorType::Q4_1,
        TensorType::Q5_0,
        TensorType::Q5_1,
        TensorType::Q8_0,
        TensorType::Q4_K,
        TensorType::Q5_K,
        TensorType::Q6_K,
    ] {
        assert!(seen.contains(&dtype), "no {dtype} block in the fixture");
    }
}

#[test]
fn block32_quantizers_match_gguf_byte_for_byte() {
    let mut n = 0;
    for r in records().iter().filter(|r| r.kind == "quantize") {
        let (values, want) = (hex_floats(r.first), hex_bytes(r.second));
        assert_eq!(quantize(r.dtype, &values).unwrap(), want, "{}", r.dtype);
        n += 1;
    }
    assert_eq!(n, 5, "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0");
}
