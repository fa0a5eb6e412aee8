use pio_gpu::reference;
use pio_gpu::{KvCache, KvWrite, KvWriteConfig, RowLayout};

use crate::common;

/// The write is a copy: results must be bit-identical.
#[test]
fn kv_write_copies_rows_to_their_positions() {
    let gpu = common::gpu();
    let (n_kv_heads, head_dim, max_positions, n_layers) = (3, 8, 20, 2);
    let kv_dim = n_kv_heads * head_dim;
    // Fused Q|K|V rows: Q of 2 * kv_dim values, then K, then V.
    let stride = 4 * kv_dim;
    let positions = [4u32, 5, 6, 19, 0];
    let n_tokens = positions.len();
    let mut rng = common::rng(11);
    let qkv = common::random_f32(&mut rng, n_tokens * stride, 1.0);

    let cut = |offset: usize| -> Vec<f32> {
        (0..n_tokens)
            .flat_map(|t| qkv[t * stride + offset..t * stride + offset + kv_dim].to_vec())
            .collect()
    };
    let cache_len = max_positions * kv_dim;
    let (mut want_k, mut want_v) = (vec![0.0; cache_len], vec![0.0; cache_len]);
    reference::kv_write(
        &cut(2 * kv_dim),
        &cut(3 * kv_dim),
        &positions,
        &mut want_k,
        &mut want_v,
    );

    let cache = KvCache::new(
        &gpu,
        n_layers,
        max_positions as u32,
        n_kv_heads as u32,
        head_dim as u32,
    )
    .unwrap();
    assert_eq!(gpu.allocated_bytes(), 2 * 2 * (cache_len as u64) * 4);
    let qkv_buf = gpu.storage_from("qkv", &qkv).unwrap();
    let pos = gpu.storage_from("positions", &positions).unwrap();
    let config = KvWriteConfig {
        kv_dim: kv_dim as u32,
        k: RowLayout {
            stride: stride as u32,
            offset: 2 * kv_dim as u32,
        },
        v: RowLayout {
            stride: stride as u32,
            offset: 3 * kv_dim as u32,
        },
        max_positions: max_positions as u32,
    };
    let write = KvWrite::new(&gpu, config).unwrap();
    gpu.run(&[&write
        .bind(
            &gpu,
            &qkv_buf,
            &qkv_buf,
            &pos,
            cache.layer(1).unwrap(),
            n_tokens as u32,
        )
        .unwrap()])
        .unwrap();

    let (layer0, layer1) = (cache.layer(0).unwrap(), cache.layer(1).unwrap());
    assert_eq!(common::read(&gpu, layer1.keys, cache_len), want_k);
    assert_eq!(common::read(&gpu, layer1.values, cache_len), want_v);
    let untouched = common::read(&gpu, layer0.keys, cache_len);
    assert!(untouched.iter().all(|&v| v == 0.0), "layer 0 untouched");
    assert!(cache.layer(2).is_err());
}
