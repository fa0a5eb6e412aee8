use pio_gpu::reference;
use pio_gpu::{Embed, EmbedTable, QuantMatrix, WeightDtype};

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
            let table_shape = EmbedTable {
                dtype,
                rows: rows as u32,
                cols: cols as u32,
                first_row: 0,
                scale,
            };
            let embed = Embed::new(&gpu, table_shape).unwrap();
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

/// A vocabulary split into two row shards: each launch writes the tokens whose ids are its
/// rows and leaves the others alone, so the two together give the whole table's lookup.
#[test]
fn row_shards_each_write_their_own_tokens() {
    let gpu = common::gpu();
    let (dtype, rows, cols, split) = (WeightDtype::Q8_0, 40, 64, 24);
    let ids = [39u32, 0, 23, 24, 7, 30];
    let mut rng = common::rng(77);
    let raw = common::random_gguf(&mut rng, dtype, rows, cols);
    let want = reference::embed(&reference::dequantize(dtype, rows, cols, &raw), cols, &ids);
    let row_bytes = dtype.gguf_row_bytes(cols);
    let ids_buf = gpu.storage_from("ids", &ids).unwrap();
    let out = gpu
        .storage_zeroed("out", (ids.len() * cols * 4) as u64)
        .unwrap();
    let shards = [(0, split), (split, rows - split)];
    let tables: Vec<QuantMatrix> = shards
        .iter()
        .map(|&(first, n)| {
            let bytes = &raw[first * row_bytes..(first + n) * row_bytes];
            QuantMatrix::upload(&gpu, dtype, n, cols, bytes).unwrap()
        })
        .collect();
    let dispatches: Vec<_> = shards
        .iter()
        .zip(&tables)
        .map(|(&(first, n), table)| {
            let shape = EmbedTable {
                dtype,
                rows: n as u32,
                cols: cols as u32,
                first_row: first as u32,
                scale: 1.0,
            };
            Embed::new(&gpu, shape)
                .unwrap()
                .bind(&gpu, table, &ids_buf, &out, ids.len() as u32)
                .unwrap()
        })
        .collect();
    gpu.run(&dispatches.iter().collect::<Vec<_>>()).unwrap();
    let got = common::read(&gpu, &out, want.len());
    let error = common::max_rel_error(&got, &want);
    assert!(error <= 4.0 * EPS, "{error:.2e}");
}
