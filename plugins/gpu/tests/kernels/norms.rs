//! The per-head query/key norm with RoPE, and the normalised residual add (Gemma 3's norms).

use pio_gpu::reference;
use pio_gpu::{KvType, QkNormRope, QkNormRopeConfig, ResidualRmsNorm, RopeTable, KV_BLOCK_ROWS};

use crate::common;
use crate::linear::{abs, check_stored_within_bound, check_within_bound};

const EPS_NORM: f32 = 1e-6;

/// `rmsnorm(head) * w`, then RoPE, for every head of rows `[T][heads * head_dim]`.
fn norm_rope(x: &[f32], weight: &[f32], positions: &[u32], base: f64) -> Vec<f32> {
    let mut y = reference::rmsnorm(x, weight, EPS_NORM);
    reference::rope(&mut y, weight.len(), positions, base);
    y
}

/// The magnitude a rotated pair's error scales with: twice the larger |value| of the pair
/// after the norm (a rotation mixes the two).
fn pair_magnitude(x: &[f32], weight: &[f32]) -> Vec<f32> {
    let normed = abs(&reference::rmsnorm(x, &abs(weight), EPS_NORM));
    normed
        .chunks_exact(2)
        .flat_map(|p| [2.0 * p[0].max(p[1]); 2])
        .collect()
}

/// The norm's 1/rms comes from a head_dim-term f32 sum (relative error ≲ sqrt(d)·ε), then
/// each value takes two products and the rotation one product and one add: c = 4 over
/// K = head_dim, relative to the pair magnitude. Keys in an f16 cache are read and written
/// rounded ([`check_stored_within_bound`]).
fn check_qk_norm_rope(n_heads: usize, n_kv_heads: usize, head_dim: usize, kv_type: KvType) {
    let gpu = common::gpu();
    let max_positions = 16u32;
    let base = 10_000.0;
    // Token 3 is past the table and the cache: it is left alone. Rows differ from positions.
    let positions = [4u32, 5, 6, 16, 7];
    let cache_rows = [9u32, 10, 11, 16, 0];
    let tokens = positions.len();
    let (q_width, kv_width) = (n_heads * head_dim, n_kv_heads * head_dim);
    let mut rng = common::rng((n_heads * 1000 + head_dim) as u64);
    let q = common::random_f32(&mut rng, tokens * q_width, 3.0);
    let keys = common::as_stored(
        kv_type,
        &common::random_f32(&mut rng, max_positions as usize * kv_width, 3.0),
    );
    let q_weight = common::random_f32(&mut rng, head_dim, 2.0);
    let k_weight = common::random_f32(&mut rng, head_dim, 2.0);

    let q_buf = gpu.storage_from("q", &q).unwrap();
    let blocks = max_positions / KV_BLOCK_ROWS;
    let cache = common::kv_cache(&gpu, n_kv_heads, head_dim, kv_type, blocks);
    let layer = cache.layer(0).unwrap();
    common::write_kv(&gpu, layer.keys, kv_type, &keys);
    let table = RopeTable::new(&gpu, head_dim as u32, base, max_positions).unwrap();
    let kernel = QkNormRope::new(
        &gpu,
        QkNormRopeConfig {
            n_heads: n_heads as u32,
            n_kv_heads: n_kv_heads as u32,
            head_dim: head_dim as u32,
            eps: EPS_NORM,
            kv_type,
        },
    )
    .unwrap();
    // Buffers are freed when dropped: keep every bound one alive until the run.
    let pos_buf = gpu.storage_from("positions", &positions).unwrap();
    let rows_buf = gpu.storage_from("cache rows", &cache_rows).unwrap();
    let q_norm = gpu.storage_from("q norm", &q_weight).unwrap();
    let k_norm = gpu.storage_from("k norm", &k_weight).unwrap();
    let dispatch = kernel
        .bind(
            &gpu,
            &q_buf,
            &pos_buf,
            &rows_buf,
            &table,
            &q_norm,
            &k_norm,
            layer,
            tokens as u32,
        )
        .unwrap();
    gpu.run(&[&dispatch]).unwrap();
    let got_q = common::read(&gpu, &q_buf, q.len());
    let got_k = common::read_kv(&gpu, layer.keys, kv_type, keys.len());

    let label = format!("qk_norm_rope {n_heads}/{n_kv_heads} heads x {head_dim}, {kv_type:?}");
    for t in 0..tokens {
        let (pos, row) = (positions[t], cache_rows[t] as usize);
        let q_row = &q[t * q_width..(t + 1) * q_width];
        let k_row = &keys[row.min(max_positions as usize - 1) * kv_width..][..kv_width];
        if pos >= max_positions || row >= max_positions as usize {
            assert_eq!(
                &got_q[t * q_width..(t + 1) * q_width],
                q_row,
                "{label}: token {t}"
            );
            continue;
        }
        check_within_bound(
            &format!("{label} q of token {t}"),
            &got_q[t * q_width..(t + 1) * q_width],
            &norm_rope(q_row, &q_weight, &[pos], base),
            &pair_magnitude(q_row, &q_weight),
            4.0,
            head_dim,
        );
        check_stored_within_bound(
            &format!("{label} k at row {row}"),
            &got_k[row * kv_width..(row + 1) * kv_width],
            &norm_rope(k_row, &k_weight, &[pos], base),
            &pair_magnitude(k_row, &k_weight),
            4.0,
            head_dim,
            kv_type,
        );
    }
    // Rows no token writes keep their keys.
    for row in 1..9 {
        let at = row * kv_width..(row + 1) * kv_width;
        assert_eq!(&got_k[at.clone()], &keys[at], "{label}: row {row}");
    }
}

#[test]
fn qk_norm_rope_matches_reference() {
    check_qk_norm_rope(3, 1, 16, KvType::F32);
    check_qk_norm_rope(4, 2, 32, KvType::F32);
    // Gemma 3 270M: 4 query heads, 1 key head of 256.
    check_qk_norm_rope(4, 1, 256, KvType::F32);
    check_qk_norm_rope(4, 1, 256, KvType::F16);
    check_qk_norm_rope(4, 2, 32, KvType::F16);
}

/// x + rmsnorm(y)·w: the 1/rms is a width-term f32 sum (≲ sqrt(width)·ε relative), then two
/// products and the add: c = 4 over K = width, relative to |x| + |rmsnorm(y)·w|.
#[test]
fn residual_rms_norm_matches_reference() {
    let gpu = common::gpu();
    for (width, tokens) in [(96, 1), (640, 5), (36, 9)] {
        let mut rng = common::rng(width as u64 + tokens as u64);
        let x = common::random_f32(&mut rng, tokens * width, 2.0);
        let y = common::random_f32(&mut rng, tokens * width, 50.0);
        let weight = common::random_f32(&mut rng, width, 3.0);
        let normed = reference::rmsnorm(&y, &weight, EPS_NORM);
        let mut want = x.clone();
        reference::add(&mut want, &normed);
        let magnitude: Vec<f32> = x
            .iter()
            .zip(&normed)
            .map(|(a, b)| a.abs() + b.abs())
            .collect();

        let kernel = ResidualRmsNorm::new(&gpu, width as u32, EPS_NORM).unwrap();
        let x_buf = gpu.storage_from("x", &x).unwrap();
        let y_buf = gpu.storage_from("y", &y).unwrap();
        let weight_buf = gpu.storage_from("weight", &weight).unwrap();
        let dispatch = kernel
            .bind(&gpu, &y_buf, &weight_buf, &x_buf, tokens as u32)
            .unwrap();
        gpu.run(&[&dispatch]).unwrap();
        let got = common::read(&gpu, &x_buf, x.len());
        let label = format!("residual_rms_norm width {width} T={tokens}");
        check_within_bound(&label, &got, &want, &magnitude, 4.0, width);
    }
}

#[test]
fn norm_kernels_refuse_bad_shapes() {
    let gpu = common::gpu();
    assert!(ResidualRmsNorm::new(&gpu, 30, EPS_NORM).is_err());
    assert!(ResidualRmsNorm::new(&gpu, 32, 0.0).is_err());
    let config = QkNormRopeConfig {
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 6,
        eps: EPS_NORM,
        kv_type: KvType::F32,
    };
    assert!(QkNormRope::new(&gpu, config).is_err());
}
