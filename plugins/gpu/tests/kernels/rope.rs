use pio_gpu::reference;
use pio_gpu::{Rope, RopeConfig, RopeTable, RowLayout};

use crate::common::{self, EPS};

/// cos and sin are f32 roundings of f64 values (ε each), then two products and a sum:
/// |err| ≤ ~4ε·(|x0| + |x1|) ≤ 8ε·max|x|. Tolerance 8ε, normwise.
fn check(head_dim: usize, n_heads: usize, positions: &[u32], layout: Option<RowLayout>) {
    let gpu = common::gpu();
    let width = n_heads * head_dim;
    let n_tokens = positions.len();
    let layout = layout.unwrap_or(RowLayout::contiguous(width as u32));
    let base = 10000.0;
    let max_positions = 300;
    let mut rng = common::rng(head_dim as u64 + n_heads as u64 * 7 + n_tokens as u64);
    let buffer = common::random_f32(
        &mut rng,
        layout.required_len(n_tokens as u32, width as u32) as usize,
        2.0,
    );

    // The reference works on the contiguous rows cut out of the strided buffer.
    let row = |t: usize| t * layout.stride as usize + layout.offset as usize;
    let mut want: Vec<f32> = (0..n_tokens)
        .flat_map(|t| buffer[row(t)..row(t) + width].to_vec())
        .collect();
    reference::rope(&mut want, head_dim, positions, base);

    let x = gpu.storage_from("x", &buffer).unwrap();
    let table = RopeTable::new(&gpu, head_dim as u32, base, max_positions).unwrap();
    let pos = gpu.storage_from("positions", positions).unwrap();
    let config = RopeConfig {
        head_dim: head_dim as u32,
        n_heads: n_heads as u32,
        layout,
        max_positions,
    };
    let rope = Rope::new(&gpu, config).unwrap();
    gpu.run(&[&rope.bind(&gpu, &x, &table, &pos, n_tokens as u32).unwrap()])
        .unwrap();
    let all = common::read(&gpu, &x, buffer.len());
    let got: Vec<f32> = (0..n_tokens)
        .flat_map(|t| all[row(t)..row(t) + width].to_vec())
        .collect();

    // Values outside the rotated rows are untouched.
    for (i, (&after, &before)) in all.iter().zip(&buffer).enumerate() {
        let inside = (0..n_tokens).any(|t| (row(t)..row(t) + width).contains(&i));
        assert!(
            inside || after == before,
            "value {i} outside the heads changed"
        );
    }
    let error = common::max_rel_error(&got, &want);
    println!(
        "rope head_dim {head_dim} x{n_heads} T={n_tokens} {layout:?}: max rel error {error:.2e}"
    );
    assert!(error <= 8.0 * EPS, "{error:.2e}");
}

#[test]
fn rope_rotates_adjacent_pairs_like_ggml_normal_mode() {
    check(64, 9, &[0], None);
    check(64, 3, &[299], None);
    check(6, 5, &[0, 1, 2, 3, 4, 5, 6], None);
    check(64, 12, &[17, 3, 250, 42, 42], None);
}

#[test]
fn rope_reads_heads_through_a_row_layout() {
    // Q (3 heads) and K (1 head) of a fused Q|K|V row of width 3*8 + 8 + 8, rotated in one pass.
    check(
        8,
        4,
        &[5, 6, 7],
        Some(RowLayout {
            stride: 40,
            offset: 0,
        }),
    );
    // K heads alone, at their offset.
    check(
        8,
        1,
        &[9, 1],
        Some(RowLayout {
            stride: 40,
            offset: 24,
        }),
    );
}
