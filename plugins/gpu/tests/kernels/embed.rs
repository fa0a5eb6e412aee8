use pio_gpu::reference;
use pio_gpu::{Embed, QuantMatrix, WeightDtype};

use crate::common::{self, EPS};

/// Dequantizing is one multiply (with a minimum: a multiply-add, possibly fused) per value on
/// both sides, so values agree to one rounding: |err| ≤ ε·(|q·d| + |m|) ≤ 2ε·max|w|; the scale
/// is one more rounding on each side. (The products q·d are exact: an f16 scale, or a
/// K-quant's f16 × 6- or 8-bit sub-block scale, times a code of at most 6 bits fits f32's
/// 24-bit significand.) Tolerance 4ε.
#[test]
fn embedding_gathers_dequantized_rows_for_every_dtype() {
    let gpu = common::gpu();
    for dtype in WeightDtype::ALL {
        for (rows, cols, ids, scale) in [
            (5, 32usize, vec![3u32], 1.0),
            (50, 160, vec![0, 49, 7, 7, 23], 25.3f32),
        ] {
            let cols = cols.next_multiple_of(dtype.block_elements());
            let mut rng = common::rng(rows as u64 + cols as u64);
            let raw = common::random_gguf(&mut rng, dtype, rows, cols);
            let table = reference::dequantize(dtype, rows, cols, &raw);
            let want: Vec<f32> = reference::embed(&table, cols, &ids)
                .iter()
                .map(|v| v * scale)
                .collect();

            let table = QuantMatrix::upload(&gpu, dtype, rows, cols, &raw).unwrap();
            let ids_buf = gpu.storage_from("ids", &ids).unwrap();
            let out = gpu
                .storage_zeroed("out", (ids.len() * cols * 4) as u64)
                .unwrap();
            let embed = Embed::new(&gpu, dtype, rows as u32, cols as u32, scale).unwrap();
            let dispatch = embed
                .bind(&gpu, &table, &ids_buf, &out, ids.len() as u32)
                .unwrap();
            gpu.run(&[&dispatch]).unwrap();
            let got = common::read(&gpu, &out, ids.len() * cols);

            let error = common::max_rel_error(&got, &want);
            println!(
                "embed {dtype:?} {rows}x{cols} T={} scale {scale}: max rel error {error:.2e}",
                ids.len()
            );
            assert!(error <= 4.0 * EPS, "{dtype:?}: {error:.2e}");
        }
    }
}
