//! Decode matrix-vector speed of every weight dtype: SmolLM2's FFN down projection shape
//! (576 rows × 1536 columns, a multiple of every block size), one token, the decode tile of the
//! adapter at hand, no fused norm. Prints the median time per dispatch and the weights read per
//! second, with the device bytes per weight each dtype's layout costs.
//!
//! `cargo bench -p pio-gpu --bench linear [-- DTYPE...]` (dtypes by name, e.g. `q4_1 q4_k`;
//! default: all).

use std::time::Instant;

use pio_gpu::testing::{gpu, random_f32, random_gguf, rng};
use pio_gpu::{Epilogue, Linear, LinearShape, QuantMatrix, RowTile, TokenRange, WeightDtype};

const ROWS: usize = 576;
const COLS: usize = 1536;
/// Dispatches per submission: the decode step records ~150 into one pass, so per-dispatch
/// cost is measured the same way rather than as submit + wait.
const PER_SUBMIT: usize = 20;
const SUBMITS: usize = 15;

fn main() {
    let names: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let dtypes: Vec<WeightDtype> = if names.is_empty() {
        WeightDtype::ALL.to_vec()
    } else {
        names
            .iter()
            .map(|n| WeightDtype::from_name(n).unwrap_or_else(|| panic!("unknown dtype {n}")))
            .collect()
    };
    let gpu = gpu();
    let tile = RowTile::decode(gpu.adapter_info().device_type);
    println!("adapter: {}", gpu.adapter_info());
    println!(
        "{ROWS}x{COLS} matvec, tile {tile:?}, median of {SUBMITS} submissions of {PER_SUBMIT}"
    );
    println!(
        "{:<6} {:>12} {:>14} {:>16}",
        "dtype", "µs/dispatch", "G weights/s", "device bits/w"
    );
    let mut rng = rng(1);
    let x = gpu
        .storage_from("x", &random_f32(&mut rng, COLS, 1.0))
        .unwrap();
    let out = gpu.storage_zeroed("out", (ROWS * 4) as u64).unwrap();
    for dtype in dtypes {
        let raw = random_gguf(&mut rng, dtype, ROWS, COLS);
        let weights = QuantMatrix::upload(&gpu, dtype, ROWS, COLS, &raw).unwrap();
        let shape = LinearShape {
            dtype,
            rows: ROWS as u32,
            cols: COLS as u32,
            norm_eps: None,
            tile,
        };
        let kernel = Linear::new(&gpu, shape, Epilogue::Store).unwrap();
        let dispatch = kernel
            .bind(&gpu, &weights, &x, None, &out, TokenRange::all(1))
            .unwrap();
        let batch = vec![&dispatch; PER_SUBMIT];
        gpu.run(&batch).unwrap(); // compiles the pipeline (llvmpipe: at the first dispatch)
        let mut times: Vec<f64> = (0..SUBMITS)
            .map(|_| {
                let start = Instant::now();
                gpu.run(&batch).unwrap();
                start.elapsed().as_secs_f64() / PER_SUBMIT as f64
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let median = times[SUBMITS / 2];
        let bits = weights.buffer().size() as f64 * 8.0 / (ROWS * COLS) as f64;
        println!(
            "{:<6} {:>12.1} {:>14.2} {:>16.2}",
            dtype.name(),
            median * 1e6,
            (ROWS * COLS) as f64 / median / 1e9,
            bits
        );
    }
}
