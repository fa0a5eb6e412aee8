use pio_gpu::reference;
use pio_gpu::{Attention, AttentionConfig, KvCache, RowLayout};

use crate::common::{self, EPS};

/// Scores are head_dim-term dot products (error ≲ sqrt(d)·ε·Σ|q·k|, here |score| ≲ 3), exp of
/// (score − max) adds (3 + 2|x|) ulp per weight, and the weighted sum of V averages these.
/// With |q|,|k|,|v| ≤ 1 this gives ≲ 50ε relative to max|out|; tolerance 64ε.
/// `row_offset`: the sequence's cache rows start there (rows before it hold another sequence);
/// `window`: attend to that many last positions only.
fn check(
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    positions: &[u32],
    q_layout: Option<RowLayout>,
    row_offset: u32,
    window: Option<u32>,
) {
    let gpu = common::gpu();
    let max_positions = 64usize;
    let rows = max_positions + row_offset as usize;
    let kv_dim = n_kv_heads * head_dim;
    let width = n_heads * head_dim;
    let n_tokens = positions.len();
    let q_layout = q_layout.unwrap_or(RowLayout::contiguous(width as u32));
    let mut rng = common::rng((n_heads * 100 + head_dim + n_tokens) as u64);

    // Cache rows for every position.
    let k = common::random_f32(&mut rng, max_positions * kv_dim, 1.0);
    let v = common::random_f32(&mut rng, max_positions * kv_dim, 1.0);
    let q_all = common::random_f32(
        &mut rng,
        q_layout.required_len(n_tokens as u32, width as u32) as usize,
        1.0,
    );
    let row = |t: usize| t * q_layout.stride as usize + q_layout.offset as usize;
    let q: Vec<f32> = (0..n_tokens)
        .flat_map(|t| q_all[row(t)..row(t) + width].to_vec())
        .collect();
    let want = reference::attention(
        &q,
        positions,
        &k,
        &v,
        n_heads,
        n_kv_heads,
        head_dim,
        window.map(|n| n as usize),
    );

    let cache = KvCache::new(&gpu, 1, rows as u32, n_kv_heads as u32, head_dim as u32).unwrap();
    let layer = cache.layer(0).unwrap();
    // The rows before the sequence hold unrelated values that must not be attended to.
    let other = common::random_f32(&mut rng, row_offset as usize * kv_dim, 9.0);
    gpu.write(layer.keys, 0, &other).unwrap();
    gpu.write(layer.values, 0, &other).unwrap();
    let at = u64::from(row_offset) * kv_dim as u64;
    gpu.write(layer.keys, at, &k).unwrap();
    gpu.write(layer.values, at, &v).unwrap();
    let cache_rows: Vec<u32> = positions.iter().map(|p| p + row_offset).collect();
    let rows_buf = gpu.storage_from("cache rows", &cache_rows).unwrap();

    let q_buf = gpu.storage_from("q", &q_all).unwrap();
    let pos = gpu.storage_from("positions", positions).unwrap();
    let out = gpu
        .storage_zeroed("out", (n_tokens * width * 4) as u64)
        .unwrap();
    let config = AttentionConfig {
        n_heads: n_heads as u32,
        n_kv_heads: n_kv_heads as u32,
        head_dim: head_dim as u32,
        q: q_layout,
        window,
    };
    let attention = Attention::new(&gpu, config).unwrap();
    let dispatch = attention
        .bind(
            &gpu,
            &q_buf,
            &pos,
            &rows_buf,
            cache.layer(0).unwrap(),
            &out,
            n_tokens as u32,
        )
        .unwrap();
    gpu.run(&[&dispatch]).unwrap();
    let got = common::read(&gpu, &out, want.len());

    let error = common::max_rel_error(&got, &want);
    println!(
        "attention {n_heads}/{n_kv_heads} heads x {head_dim} T={n_tokens} positions {positions:?} \
         from row {row_offset}, window {window:?}: max rel error {error:.2e}"
    );
    assert!(error <= 64.0 * EPS, "{error:.2e}");
}

#[test]
fn attention_matches_reference_with_grouped_heads() {
    // Decode: one token at the first, a middle and the last position.
    check(9, 3, 64, &[0], None, 0, None);
    check(9, 3, 64, &[37], None, 0, None);
    check(4, 4, 16, &[63], None, 0, None);
    // Prefill of 7 tokens at positions 0..7 (causal), and scattered positions.
    check(6, 2, 32, &[0, 1, 2, 3, 4, 5, 6], None, 0, None);
    check(8, 1, 8, &[50, 3, 17], None, 0, None);
    // A second sequence's rows: the first 40 rows of the cache belong to another one.
    check(9, 3, 64, &[0, 21, 63], None, 40, None);
}

#[test]
fn attention_reads_queries_through_a_row_layout() {
    // Q of a fused Q|K|V row: 4 heads of 16, then K and V of 2 heads each.
    check(
        4,
        2,
        16,
        &[10, 11],
        Some(RowLayout {
            stride: 128,
            offset: 0,
        }),
        0,
        None,
    );
    check(
        2,
        1,
        8,
        &[3],
        Some(RowLayout {
            stride: 44,
            offset: 4,
        }),
        7,
        None,
    );
}

#[test]
fn sliding_window_attends_to_the_last_positions_only() {
    // Windows shorter than, equal to and longer than the positions seen, for decode and
    // prefill, also within a second sequence's rows and with head_dim 256 (Gemma 3).
    check(9, 3, 64, &[37], None, 0, Some(8));
    check(6, 2, 32, &[0, 1, 2, 3, 4, 5, 6], None, 0, Some(3));
    check(4, 1, 16, &[5, 63], None, 0, Some(6));
    check(4, 4, 16, &[63], None, 0, Some(64));
    check(2, 1, 256, &[0, 9, 40], None, 20, Some(16));
    check(4, 1, 256, &[12], None, 0, None);
}
