//! Kernel timings at SmolLM-135M shapes (hidden 576, feed-forward 1536, 9/3 heads of 64,
//! vocabulary 49152): each kernel is recorded `REPEAT` times into one pass and timed by wall
//! clock and by process CPU time (all driver threads; steadier than wall time on a busy machine,
//! about 2x the wall time when llvmpipe's two threads are both busy).
//!
//! `cargo run -p pio-gpu --release --example bench [TOKENS WORKGROUP [subgroup|workgroup LANES | staged | staged-f16]]`
//! (a custom tile, optionally a split matrix-vector variant or staged (f32 or f16), timed on the decode shapes and on
//! the 64-token prefill shape beside the adapter's own tiles; default: the adapter's own
//! tiles), then the adapter's own attention for one token and for 8 (a batched decode step);
//! `... --example bench attention`: every attention variant, decode and prefill.

use std::time::Instant;

use pio_gpu::{
    Attention, AttentionConfig, AttentionPlan, AttentionVariant, DeviceOptions, Dispatch, Epilogue,
    Gpu, KvCache, KvShape, KvType, Linear, LinearShape, QuantMatrix, Reduction, RowLayout, RowTile,
    Staging, TokenRange, WeightDtype, KV_BLOCK_ROWS,
};

const REPEAT: usize = 20;
const SAMPLES: usize = 7;

/// CPU seconds used by this process so far (user + system, all threads), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split(' ')
        .collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

/// Seconds per dispatch of `dispatch`: (median wall, CPU) over a few timed submissions.
fn time(gpu: &Gpu, dispatch: &Dispatch) -> (f64, f64) {
    gpu.run(&[dispatch]).expect("warm-up");
    let batch: Vec<&Dispatch> = vec![dispatch; REPEAT];
    let cpu_start = cpu_seconds();
    let mut samples: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let start = Instant::now();
            gpu.run(&batch).expect("run");
            start.elapsed().as_secs_f64() / REPEAT as f64
        })
        .collect();
    let cpu = (cpu_seconds() - cpu_start) / (SAMPLES * REPEAT) as f64;
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], cpu)
}

fn matmul(gpu: &Gpu, dtype: WeightDtype, rows: usize, cols: usize, n_tokens: usize, tile: RowTile) {
    let raw = vec![0x11u8; rows * dtype.gguf_row_bytes(cols)];
    let weights = QuantMatrix::upload(gpu, dtype, rows, cols, &raw).expect("weights");
    let x = gpu
        .storage_from("x", &vec![0.5f32; n_tokens * cols])
        .expect("x");
    let out = gpu
        .storage_zeroed("out", (n_tokens * rows * 4) as u64)
        .expect("out");
    let shape = LinearShape {
        dtype,
        rows: rows as u32,
        cols: cols as u32,
        norm_eps: None,
        tile,
    };
    let kernel = Linear::new(gpu, shape, Epilogue::Store).expect("pipeline");
    let tokens = TokenRange::all(n_tokens as u32);
    let dispatch = kernel
        .bind(gpu, &weights, &x, None, &out, tokens)
        .expect("bind");
    let (wall, cpu) = time(gpu, &dispatch);
    let macs = (rows * cols * n_tokens) as f64 / 1e9;
    println!(
        "linear {dtype:?} {rows}x{cols} T={n_tokens} tile {tile} (runs {:?}, {:?}) {:?} reads: \
         {:.3} ms wall ({:.2} G MAC/s), {:.3} ms CPU ({:.2} G MAC per CPU-s)",
        kernel.reduction(),
        kernel.staging(),
        kernel.activation_reads(),
        wall * 1e3,
        macs / wall,
        cpu * 1e3,
        macs / cpu,
    );
}

/// Times attention at SmolLM2's shape (9/3 heads of 64) over a 1024-position cache: `n_tokens`
/// tokens of one sequence ending at position `last`, with `plan` (the adapter's own if `None`).
fn attention(gpu: &Gpu, last: u32, n_tokens: u32, kv_type: KvType, plan: Option<AttentionPlan>) {
    let (n_heads, n_kv_heads, head_dim, max_positions) = (9u32, 3u32, 64u32, 1024u32);
    let n_blocks = max_positions / KV_BLOCK_ROWS;
    let shape = KvShape::uniform(1, n_kv_heads, head_dim, kv_type);
    let cache = KvCache::new(gpu, shape, n_blocks).expect("cache");
    let width = u64::from(n_tokens * n_heads * head_dim);
    let q = gpu.storage_zeroed("q", width * 4).expect("q");
    let out = gpu.storage_zeroed("out", width * 4).expect("out");
    let tokens: Vec<u32> = (last + 1 - n_tokens..=last).collect();
    let positions = gpu.storage_from("positions", &tokens).expect("positions");
    let config = AttentionConfig {
        n_heads,
        n_kv_heads,
        head_dim,
        q: RowLayout::contiguous(n_heads * head_dim),
        window: None,
        kv_type,
    };
    let kernel = match plan {
        Some(plan) => Attention::with_plan(gpu, config, plan),
        None => Attention::new(gpu, config),
    }
    .expect("pipeline");
    let layer = cache.layer(0).expect("layer");
    // The sequence's blocks in reverse order: a block table as a long-running pool leaves it.
    let table: Vec<u32> = (0..n_blocks).rev().collect();
    let blocks = gpu.storage_from("block table", &table).expect("table");
    let start = gpu
        .storage_zeroed("table start", u64::from(n_tokens) * 4)
        .expect("start");
    let dispatch = kernel
        .bind(gpu, &q, &positions, &start, &blocks, layer, &out, n_tokens)
        .expect("bind");
    let (wall, cpu) = time(gpu, &dispatch);
    println!(
        "attention 9/3x64, {n_tokens} tokens ending at position {last}, {} cache, {:?}: \
         {:.3} ms wall, {:.3} ms CPU",
        kv_type.name(),
        kernel.variant(n_tokens),
        wall * 1e3,
        cpu * 1e3
    );
}

/// Every attention variant on decode and prefill dispatches (`bench attention`).
fn attention_variants(gpu: &Gpu) {
    let variants = [
        AttentionVariant::Serial,
        AttentionVariant::SplitK(Reduction::Subgroup { lanes: 8 }),
        AttentionVariant::SplitK(Reduction::Workgroup { lanes: 8 }),
        AttentionVariant::SplitK(Reduction::Workgroup { lanes: 32 }),
        AttentionVariant::Flash,
        AttentionVariant::SharedRows,
    ];
    for kv_type in KvType::ALL {
        for variant in variants {
            let plan = AttentionPlan {
                decode: variant,
                prefill: variant,
            };
            for (last, n_tokens) in [(255, 1), (1023, 1), (1023, 64)] {
                attention(gpu, last, n_tokens, kv_type, Some(plan));
            }
        }
    }
}

fn main() {
    let gpu = Gpu::new(&DeviceOptions::default()).expect("GPU device");
    println!("adapter: {}", gpu.adapter_info());
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "attention") {
        return attention_variants(&gpu);
    }
    let kind = gpu.adapter_info().device_type;
    let reduction = match &args[2.min(args.len())..] {
        [kind, lanes] => {
            let lanes = lanes.parse().expect("lanes");
            match kind.as_str() {
                "subgroup" => Reduction::Subgroup { lanes },
                "workgroup" => Reduction::Workgroup { lanes },
                other => panic!("reduction {other:?} is not subgroup or workgroup"),
            }
        }
        _ => Reduction::None,
    };
    let tiles: Vec<RowTile> = match args.as_slice() {
        [tokens, workgroup, ..] => vec![RowTile {
            tokens: tokens.parse().expect("tokens"),
            workgroup_size: workgroup.parse().expect("workgroup size"),
            reduction,
            staging: match args.get(2).map(String::as_str) {
                Some("staged") => Staging::F32,
                Some("staged-f16") => Staging::F16,
                _ => Staging::None,
            },
        }],
        _ => vec![RowTile::decode(kind)],
    };
    for &tile in &tiles {
        for dtype in [WeightDtype::Q4_0, WeightDtype::Q4_1, WeightDtype::Q8_0] {
            matmul(&gpu, dtype, 576, 576, 1, tile);
            matmul(&gpu, dtype, 1536, 576, 1, tile);
            matmul(&gpu, dtype, 576, 1536, 1, tile);
        }
        matmul(&gpu, WeightDtype::Q8_0, 49152, 576, 1, tile);
    }
    for tile in [RowTile::prefill(kind), RowTile::decode(kind)]
        .into_iter()
        .chain(tiles.clone())
    {
        matmul(&gpu, WeightDtype::Q4_1, 1536, 576, 64, tile);
    }
    for kv_type in KvType::ALL {
        for position in [0, 255, 1023] {
            attention(&gpu, position, 1, kv_type, None);
        }
        // 8 tokens: the shape of a batched decode step of 8 sequences.
        for position in [255, 1023] {
            attention(&gpu, position, 8, kv_type, None);
        }
    }
}
