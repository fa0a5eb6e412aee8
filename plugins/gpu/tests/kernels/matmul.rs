use pio_gpu::reference;
use pio_gpu::{Matmul, MatmulConfig, MatmulTile, QuantMatrix, WeightDtype};

use crate::common::{self, EPS};

/// (rows, cols, tokens): odd row counts (not multiples of 4 or 8 rows per invocation, nor of the
/// workgroup), token counts not multiples of the 4-token tile.
const SHAPES: [(usize, usize, usize); 4] = [(1, 32, 1), (37, 96, 1), (67, 160, 5), (130, 576, 9)];

/// Error bound of an f32 sum of K products, each term rounded once (plus one rounding for
/// dequantization): |err| ≲ c·sqrt(K)·ε·Σ|w·x| for random rounding errors (the worst case is
/// K·ε·Σ|w·x|). We check each output against that with c = 2 and report how close it came.
fn check(
    dtype: WeightDtype,
    rows: usize,
    cols: usize,
    n_tokens: usize,
    tile: MatmulTile,
    accumulate: bool,
) {
    let gpu = common::gpu();
    let mut rng = common::rng((rows * 1000 + cols * 10 + n_tokens) as u64);
    let raw = common::random_gguf(&mut rng, dtype, rows, cols);
    let x = common::random_f32(&mut rng, n_tokens * cols, 1.0);
    let initial = common::random_f32(&mut rng, n_tokens * rows, 1.0);

    let w = reference::dequantize(dtype, rows, cols, &raw);
    let mut want = reference::matmul(&w, rows, cols, &x);
    if accumulate {
        reference::add(&mut want, &initial);
    }
    let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<_>>();
    let mut magnitude = reference::matmul(&abs(&w), rows, cols, &abs(&x));
    if accumulate {
        reference::add(&mut magnitude, &abs(&initial));
    }

    let weights = QuantMatrix::upload(&gpu, dtype, rows, cols, &raw).unwrap();
    let x_buf = gpu.storage_from("x", &x).unwrap();
    let out = gpu.storage_from("out", &initial).unwrap();
    let config = MatmulConfig {
        dtype,
        rows: rows as u32,
        cols: cols as u32,
        tile,
        accumulate,
    };
    let matmul = Matmul::new(&gpu, config).unwrap();
    let dispatch = matmul
        .bind(&gpu, &weights, &x_buf, &out, n_tokens as u32)
        .unwrap();
    gpu.run(&[&dispatch]).unwrap();
    let got = common::read(&gpu, &out, n_tokens * rows);

    let bound = 2.0 * (cols as f64).sqrt() * EPS;
    let worst = got
        .iter()
        .zip(&want)
        .zip(&magnitude)
        .map(|((&g, &r), &m)| (f64::from(g) - f64::from(r)).abs() / (bound * f64::from(m)))
        .fold(0.0, f64::max);
    println!(
        "matmul {dtype:?} {rows}x{cols} T={n_tokens} tile {}x{} acc={accumulate}: max rel error {:.2e}, \
         {:.2} of the bound",
        tile.rows,
        tile.tokens,
        common::max_rel_error(&got, &want),
        worst
    );
    assert!(
        worst <= 1.0,
        "{dtype:?} {rows}x{cols} T={n_tokens}: error {worst:.2} x the bound"
    );
}

#[test]
fn matmul_matches_reference_for_every_dtype_shape_and_tile() {
    for dtype in WeightDtype::ALL {
        for (rows, cols, n_tokens) in SHAPES {
            for tile in [MatmulTile::DECODE, MatmulTile::PREFILL] {
                check(dtype, rows, cols, n_tokens, tile, false);
            }
        }
    }
}

#[test]
fn matmul_accumulates_into_the_output() {
    check(WeightDtype::Q4_1, 45, 128, 3, MatmulTile::PREFILL, true);
    check(WeightDtype::Q8_0, 45, 128, 1, MatmulTile::DECODE, true);
}

#[test]
fn matmul_rejects_mismatched_weights_and_short_buffers() {
    let gpu = common::gpu();
    let mut rng = common::rng(7);
    let raw = common::random_gguf(&mut rng, WeightDtype::Q4_0, 8, 64);
    let weights = QuantMatrix::upload(&gpu, WeightDtype::Q4_0, 8, 64, &raw).unwrap();
    let config = MatmulConfig {
        dtype: WeightDtype::Q4_0,
        rows: 8,
        cols: 64,
        tile: MatmulTile::DECODE,
        accumulate: false,
    };
    let x = gpu.storage_zeroed("x", 2 * 64 * 4).unwrap();
    let out = gpu.storage_zeroed("out", 2 * 8 * 4).unwrap();
    let matmul = Matmul::new(&gpu, config).unwrap();
    assert!(matmul.bind(&gpu, &weights, &x, &out, 2).is_ok());
    assert!(matmul.bind(&gpu, &weights, &x, &out, 3).is_err());
    let other = Matmul::new(&gpu, MatmulConfig { rows: 16, ..config }).unwrap();
    assert!(other.bind(&gpu, &weights, &x, &out, 1).is_err());
}
