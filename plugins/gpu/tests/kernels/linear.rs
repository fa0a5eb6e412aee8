use pio_gpu::reference;
use pio_gpu::{
    ActivationReads, DeviceKind, Epilogue, Gpu, KvType, Linear, LinearShape, QkvRope,
    QkvRopeConfig, QuantMatrix, Reduction, RopeTable, RowLayout, RowTile, Staging, TokenRange,
    WeightDtype, KV_BLOCK_ROWS,
};

use crate::common::{self, EPS};

/// (rows, cols, tokens): row counts that are not multiples of the 8-row group or of the
/// workgroup, token counts that are not multiples of the token tile. Widths are rounded up to
/// the dtype's block (256 for the K-quants).
const SHAPES: [(usize, usize, usize); 4] = [(1, 32, 1), (37, 96, 1), (67, 160, 5), (130, 576, 9)];

/// The tiles of both adapter classes — the software (lavapipe) and the GPU variants — and the
/// split matrix-vector variants beside the GPU decode tile (a subgroup reduction of 8 lanes in
/// 64-wide workgroups): through workgroup memory with 8 and 16 lanes, and through subgroups in
/// workgroups of one row group (lavapipe's subgroup size, 8). [`check_variant_runs`] makes sure
/// none of them silently falls back on the test device — but the subgroup reduction over 16
/// lanes, which must fall back to workgroup memory wherever subgroups may be narrower
/// (lavapipe's are 8 wide): the fallback is tested too. The GPU prefill tile is staged in f16
/// (8 tokens per invocation, 64 rows x 64 tokens per workgroup: the shapes' 1 to 17 row groups
/// and 1 to 9 tokens leave row groups and token tiles of a workgroup empty or partial); the same
/// tile staged in f32 follows the tile of 3 tokens (partial tiles) in workgroups of 16
/// invocations (two of lavapipe's subgroups), and last that tile staged in f16 (two token tiles
/// of a workgroup, the second partial).
pub(crate) fn tiles() -> [RowTile; 11] {
    let split = |workgroup_size, reduction| RowTile {
        tokens: 1,
        workgroup_size,
        reduction,
        staging: Staging::None,
    };
    let three = RowTile {
        tokens: 3,
        workgroup_size: 16,
        reduction: Reduction::None,
        staging: Staging::None,
    };
    [
        RowTile::decode(DeviceKind::Cpu),
        RowTile::prefill(DeviceKind::Cpu),
        RowTile::decode(DeviceKind::Discrete),
        RowTile::prefill(DeviceKind::Discrete),
        split(64, Reduction::Workgroup { lanes: 8 }),
        split(32, Reduction::Workgroup { lanes: 16 }),
        split(8, Reduction::Subgroup { lanes: 8 }),
        split(32, Reduction::Subgroup { lanes: 16 }),
        three,
        RowTile {
            staging: Staging::F32,
            ..RowTile::prefill(DeviceKind::Discrete)
        },
        RowTile {
            staging: Staging::F16,
            ..three
        },
    ]
}

/// Asserts that a kernel built for `tile` over `dtype` weights runs its variant unchanged, where
/// `gpu` can: a subgroup reduction needs subgroup operations with subgroups of at least its
/// lanes, f16 staging f16 arithmetic (lavapipe has both: there every variant is tested) and
/// weights other than F32 ([`Staging::for_weights`]); and that it reads
/// the activations as the device does wherever the tile allows (one invocation per row group,
/// workgroups of whole subgroups).
pub(crate) fn check_variant_runs(
    gpu: &Gpu,
    tile: RowTile,
    dtype: WeightDtype,
    running: Reduction,
    staging: Staging,
    reads: ActivationReads,
) {
    let subgroups = gpu.features().contains(pio_gpu::wgpu::Features::SUBGROUP);
    let expected = match tile.reduction {
        Reduction::Subgroup { lanes } if !subgroups || gpu.subgroup_min_size() < lanes => {
            Reduction::Workgroup { lanes }
        }
        requested => requested,
    };
    assert_eq!(running, expected, "the variant run for {tile:?}");
    let f16 = gpu.features().contains(pio_gpu::wgpu::Features::SHADER_F16);
    let expected_staging = match tile.staging.for_weights(dtype) {
        Staging::F16 if !f16 => Staging::F32,
        requested => requested,
    };
    assert_eq!(staging, expected_staging, "the staging of {tile:?}");
    // (A device without subgroups reports a largest subgroup size of 0: test Shared first.)
    let shared = gpu.activation_reads() == ActivationReads::Shared
        && tile.reduction == Reduction::None
        && !tile.staging.is_staged()
        && tile.workgroup_size % gpu.subgroup_max_size() == 0;
    let expected_reads = if shared {
        ActivationReads::Shared
    } else {
        ActivationReads::Own
    };
    assert_eq!(reads, expected_reads, "the activation reads of {tile:?}");
}

pub(crate) const NORM_EPS: f32 = 1e-5;

/// The bound of [`check_within_bound`] — constant `c` (in f32 epsilons, `EPS`) and the length
/// of the longest rounded sum, `k` — for a kernel running `staging` over `k` columns with the
/// f32 constant `c`. [`Staging::F16`] sums each block's products in f16, whose epsilon is 2^13
/// f32 epsilons (2^-10), and never more than 32 of them: each product is rounded a few times
/// (the weight and x to f16 — x's per-block scale is an f32 division —, the product, its place
/// in the block's sum), randomly, so a block errs by about c·sqrt(32)·ε16·Σ|w·x| over the block
/// and the result by that over the row; the f32 sum of the blocks adds c·sqrt(K)·ε32, below
/// 1/1000 of it for any K under 2^20. (The f32 analysis with sqrt(K) in place of sqrt(32)
/// would be ~4x looser at K = 576 and hide a block lost from a long row.)
pub(crate) fn bound(staging: Staging, c: f64, k: usize) -> (f64, usize) {
    match staging {
        Staging::F16 => (c * 8192.0, k.min(32)),
        Staging::None | Staging::F32 => (c, k),
    }
}

/// Error bound per output: an f32 sum of K products, each rounded once, errs by about
/// c·sqrt(K)·ε·Σ|w·x| for random rounding (the worst case is K·ε·Σ|w·x|). c = 2 for a plain
/// product; with a fused norm the 1/rms factor (itself a K-term f32 sum) adds a comparable
/// relative error, so c = 4.
pub(crate) fn check_within_bound(
    label: &str,
    got: &[f32],
    want: &[f32],
    magnitude: &[f32],
    c: f64,
    k: usize,
) {
    check_stored_within_bound(label, got, want, magnitude, c, k, KvType::F32);
}

/// [`check_within_bound`] for values a kernel stored in a cache of `kv_type`: each was also
/// rounded once to the type, which adds [`common::storage_error`] relative to the value
/// (at most |want| plus the bound).
pub(crate) fn check_stored_within_bound(
    label: &str,
    got: &[f32],
    want: &[f32],
    magnitude: &[f32],
    c: f64,
    k: usize,
    kv_type: KvType,
) {
    let bound = c * (k as f64).sqrt() * EPS;
    let storage = common::storage_error(kv_type);
    let worst = got
        .iter()
        .zip(want)
        .zip(magnitude)
        .map(|((&g, &r), &m)| {
            let computed = bound * f64::from(m);
            let allowed = computed + storage * (f64::from(r).abs() + computed);
            (f64::from(g) - f64::from(r)).abs() / allowed
        })
        .fold(0.0, f64::max);
    println!(
        "{label}: max rel error {:.2e}, {worst:.2} of the bound",
        common::max_rel_error(got, want)
    );
    assert!(worst <= 1.0, "{label}: error {worst:.2} x the bound");
}

pub(crate) fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|a| a.abs()).collect()
}

/// The kernel's input after the optional norm, on the CPU.
pub(crate) fn normed(x: &[f32], gamma: Option<&[f32]>) -> Vec<f32> {
    match gamma {
        Some(g) => reference::rmsnorm(x, g, NORM_EPS),
        None => x.to_vec(),
    }
}

#[derive(Clone, Copy)]
struct LinearCase {
    dtype: WeightDtype,
    rows: usize,
    cols: usize,
    tokens: usize,
    tile: RowTile,
    norm: bool,
    accumulate: bool,
    /// Input rows before the first one processed.
    skip: usize,
    /// Magnitude of the weights (`random_gguf_scaled`).
    weight_scale: f32,
}

impl LinearCase {
    /// A plain product of `shape` (rows, columns — rounded up to the dtype's block —, tokens):
    /// stored, from the first input row, weights of magnitude ≲ 1.
    fn product(
        dtype: WeightDtype,
        (rows, cols, tokens): (usize, usize, usize),
        tile: RowTile,
        norm: bool,
    ) -> Self {
        LinearCase {
            dtype,
            rows,
            cols: cols.next_multiple_of(dtype.block_elements()),
            tokens,
            tile,
            norm,
            accumulate: false,
            skip: 0,
            weight_scale: 1.0,
        }
    }
}

/// Checks `case` on a device for each load width the adapter runs.
fn check_linear(case: LinearCase) {
    for gpu in common::gpus() {
        check_linear_on(&gpu, &case);
    }
}

fn check_linear_on(gpu: &Gpu, case: &LinearCase) {
    let LinearCase {
        dtype,
        rows,
        cols,
        tokens,
        tile,
        norm,
        accumulate,
        skip,
        weight_scale,
    } = *case;
    let mut rng = common::rng((rows * 1000 + cols * 10 + tokens + skip) as u64);
    let raw = common::random_gguf_scaled(&mut rng, dtype, rows, cols, weight_scale);
    let x = common::random_f32(&mut rng, (skip + tokens) * cols, 1.0);
    let gamma = common::random_f32(&mut rng, cols, 2.0);
    let initial = common::random_f32(&mut rng, tokens * rows, 1.0);

    let w = reference::dequantize(dtype, rows, cols, &raw);
    let h = normed(&x[skip * cols..], norm.then_some(gamma.as_slice()));
    let mut want = reference::matmul(&w, rows, cols, &h);
    let mut magnitude = reference::matmul(&abs(&w), rows, cols, &abs(&h));
    if accumulate {
        reference::add(&mut want, &initial);
        reference::add(&mut magnitude, &abs(&initial));
    }

    let weights = QuantMatrix::upload(gpu, dtype, rows, cols, &raw).unwrap();
    let x_buf = gpu.storage_from("x", &x).unwrap();
    let gamma_buf = gpu.storage_from("gamma", &gamma).unwrap();
    let out = gpu.storage_from("out", &initial).unwrap();
    let shape = LinearShape {
        dtype,
        rows: rows as u32,
        cols: cols as u32,
        norm_eps: norm.then_some(NORM_EPS),
        tile,
    };
    let epilogue = if accumulate {
        Epilogue::Accumulate
    } else {
        Epilogue::Store
    };
    let kernel = Linear::new(gpu, shape, epilogue).unwrap();
    check_variant_runs(
        gpu,
        tile,
        dtype,
        kernel.reduction(),
        kernel.staging(),
        kernel.activation_reads(),
    );
    let range = TokenRange {
        first: skip as u32,
        count: tokens as u32,
    };
    let norm_buf = norm.then_some(&gamma_buf);
    let dispatch = kernel
        .bind(gpu, &weights, &x_buf, norm_buf, &out, range)
        .unwrap();
    gpu.run(&[&dispatch]).unwrap();
    let got = common::read(gpu, &out, tokens * rows);
    let label = format!(
        "linear {dtype:?} {rows}x{cols} T={tokens} from {skip} tile {tile} norm={norm} \
         acc={accumulate}"
    );
    let (c, k) = bound(kernel.staging(), if norm { 4.0 } else { 2.0 }, cols);
    check_within_bound(&label, &got, &want, &magnitude, c, k);
}

#[test]
fn linear_matches_reference_for_every_dtype_shape_and_tile() {
    for dtype in WeightDtype::ALL {
        for (i, (rows, cols, tokens)) in SHAPES.into_iter().enumerate() {
            for (j, tile) in tiles().into_iter().enumerate() {
                let shape = (rows, cols, tokens);
                check_linear(LinearCase::product(dtype, shape, tile, (i + j) % 2 == 1));
            }
        }
    }
}

#[test]
fn linear_accumulates_and_reads_a_range_of_rows() {
    for (dtype, tokens, skip, tile) in [
        (WeightDtype::Q4_1, 3, 0, RowTile::prefill(DeviceKind::Cpu)),
        (WeightDtype::Q8_0, 1, 6, RowTile::decode(DeviceKind::Cpu)),
        (
            WeightDtype::F16,
            2,
            4,
            RowTile::prefill(DeviceKind::Discrete),
        ),
    ] {
        for norm in [false, true] {
            check_linear(LinearCase {
                dtype,
                rows: 45,
                cols: 128,
                tokens,
                tile,
                norm,
                accumulate: true,
                skip,
                weight_scale: 1.0,
            });
        }
    }
}

/// Staged in f16, weights far beyond f16's range (up to ~10^5 where its largest value is 65504)
/// still give the reference's products within the f16 bound: quantized blocks are staged divided
/// by their bound, and F16 weights (up to 60000) beside x staged with the block sum's headroom.
/// Staged as they are, these weights (or their block sums) would overflow to infinity.
#[test]
fn f16_staging_keeps_weights_beyond_f16_range_in_range() {
    let tile = RowTile {
        staging: Staging::F16,
        ..RowTile::prefill(DeviceKind::Discrete)
    };
    for (dtype, weight_scale) in [
        (WeightDtype::Q8_0, 1e5),
        (WeightDtype::Q4_1, 3e4),
        (WeightDtype::Q5_0, 1e5),
        (WeightDtype::Q6_K, 1e5),
        (WeightDtype::F16, 6e4),
    ] {
        // Shapes and norms whose kernels linear_matches_reference_for_every_dtype_shape_and_tile
        // builds too (staged kernels are slow to compile on lavapipe).
        for (shape, norm) in [(SHAPES[3], false), (SHAPES[2], true)] {
            check_linear(LinearCase {
                weight_scale,
                ..LinearCase::product(dtype, shape, tile, norm)
            });
        }
    }
}

/// The reference of a gated epilogue: `act(gate) * up`.
type GateReference = fn(&[f32], &[f32]) -> Vec<f32>;

#[test]
fn gated_epilogues_match_reference() {
    common::gpus()
        .iter()
        .for_each(gated_epilogues_match_reference_on);
}

/// `gated_epilogues_match_reference` on one device (each load width it runs).
fn gated_epilogues_match_reference_on(gpu: &Gpu) {
    let (ff, tokens) = (36, 5);
    let gates: [(Epilogue, GateReference); 2] = [
        (Epilogue::SwiGlu, reference::silu_mul),
        (Epilogue::GeGlu, reference::gelu_tanh_mul),
    ];
    // SwiGLU over four storage types; GeGLU over Gemma 3's (Q5_0 gate and up).
    for (epilogue, act_mul, dtype) in [
        (gates[0], WeightDtype::Q4_1),
        (gates[0], WeightDtype::F16),
        (gates[0], WeightDtype::Q4_K),
        (gates[0], WeightDtype::Q5_0),
        (gates[1], WeightDtype::Q5_0),
        (gates[1], WeightDtype::F16),
    ]
    .map(|((e, f), d)| (e, f, d))
    {
        let cols = 96usize.next_multiple_of(dtype.block_elements());
        for tile in tiles() {
            let mut rng = common::rng(ff as u64 + tile.tokens as u64);
            let gate_raw = common::random_gguf(&mut rng, dtype, ff, cols);
            let up_raw = common::random_gguf(&mut rng, dtype, ff, cols);
            let x = common::random_f32(&mut rng, tokens * cols, 1.0);
            let gamma = common::random_f32(&mut rng, cols, 2.0);

            let h = reference::rmsnorm(&x, &gamma, NORM_EPS);
            let gate_w = reference::dequantize(dtype, ff, cols, &gate_raw);
            let up_w = reference::dequantize(dtype, ff, cols, &up_raw);
            let gate = reference::matmul(&gate_w, ff, cols, &h);
            let up = reference::matmul(&up_w, ff, cols, &h);
            let want = act_mul(&gate, &up);
            // Errors δg, δu of the two products propagate as |act'(g)|·|δg|·|u| + |act(g)|·|δu|
            // with |act'| ≤ 1.13 (SiLU: 1.1, tanh-GELU: 1.129) and |act(g)| ≤ max(|g|, 0.28).
            let gate_mag = reference::matmul(&abs(&gate_w), ff, cols, &abs(&h));
            let up_mag = reference::matmul(&abs(&up_w), ff, cols, &abs(&h));
            let magnitude: Vec<f32> = (0..want.len())
                .map(|i| 1.13 * gate_mag[i] * up[i].abs() + gate[i].abs().max(0.28) * up_mag[i])
                .collect();

            let weights =
                QuantMatrix::upload_gate_up(gpu, dtype, ff, cols, &gate_raw, &up_raw).unwrap();
            let shape = LinearShape {
                dtype,
                rows: 2 * ff as u32,
                cols: cols as u32,
                norm_eps: Some(NORM_EPS),
                tile,
            };
            let kernel = Linear::new(gpu, shape, epilogue).unwrap();
            check_variant_runs(
                gpu,
                tile,
                dtype,
                kernel.reduction(),
                kernel.staging(),
                kernel.activation_reads(),
            );
            let x_buf = gpu.storage_from("x", &x).unwrap();
            let gamma_buf = gpu.storage_from("gamma", &gamma).unwrap();
            let out = gpu.storage_zeroed("out", (tokens * ff * 4) as u64).unwrap();
            let dispatch = kernel
                .bind(
                    gpu,
                    &weights,
                    &x_buf,
                    Some(&gamma_buf),
                    &out,
                    TokenRange::all(tokens as u32),
                )
                .unwrap();
            gpu.run(&[&dispatch]).unwrap();
            let got = common::read(gpu, &out, tokens * ff);
            let label = format!("{epilogue:?} {dtype:?} ff={ff} cols={cols} tile {tile:?}");
            let (c, k) = bound(kernel.staging(), 4.0, cols);
            check_within_bound(&label, &got, &want, &magnitude, c, k);
        }
    }
}

#[test]
fn qkv_rope_matches_reference_and_writes_the_cache() {
    common::gpus()
        .iter()
        .for_each(qkv_rope_matches_reference_and_writes_the_cache_on);
}

/// `qkv_rope_matches_reference_and_writes_the_cache` on one device (each load width it runs).
fn qkv_rope_matches_reference_and_writes_the_cache_on(gpu: &Gpu) {
    let (n_heads, n_kv_heads, head_dim, max_positions) = (3, 1, 16, 16u32);
    let (q_rows, kv_rows) = (n_heads * head_dim, n_kv_heads * head_dim);
    let rows = q_rows + 2 * kv_rows;
    let base = 10000.0;
    // Token 3 is past the cache: it writes nothing.
    let positions = [4u32, 5, 6, 16, 7];
    // Cache rows differ from positions, as when a cache holds several sequences.
    let cache_rows = [9u32, 10, 11, 16, 0];
    let tokens = positions.len();
    // Without RoPE (a per-head norm comes first), q and k are written as projected; an f16
    // cache stores k and v rounded.
    for (dtype, rope, kv_type) in [
        (WeightDtype::Q4_1, true, KvType::F32),
        (WeightDtype::Q8_0, true, KvType::F32),
        (WeightDtype::F32, true, KvType::F32),
        (WeightDtype::Q5_0, true, KvType::F32),
        (WeightDtype::Q6_K, true, KvType::F32),
        (WeightDtype::Q5_0, false, KvType::F32),
        (WeightDtype::Q4_1, true, KvType::F16),
        (WeightDtype::Q5_0, false, KvType::F16),
    ] {
        let cols = 64usize.next_multiple_of(dtype.block_elements());
        for tile in tiles() {
            let mut rng = common::rng(rows as u64 + tile.tokens as u64);
            let raw = common::random_gguf(&mut rng, dtype, rows, cols);
            let x = common::random_f32(&mut rng, tokens * cols, 1.0);
            let gamma = common::random_f32(&mut rng, cols, 2.0);

            let h = reference::rmsnorm(&x, &gamma, NORM_EPS);
            let w = reference::dequantize(dtype, rows, cols, &raw);
            let qkv = reference::matmul(&w, rows, cols, &h);
            let magnitude = reference::matmul(&abs(&w), rows, cols, &abs(&h));
            let split = |m: &[f32], from: usize, width: usize| -> Vec<f32> {
                m.chunks_exact(rows)
                    .flat_map(|r| r[from..from + width].to_vec())
                    .collect()
            };
            let mut q = split(&qkv, 0, q_rows);
            let mut k = split(&qkv, q_rows, kv_rows);
            let v = split(&qkv, q_rows + kv_rows, kv_rows);
            if rope {
                reference::rope(&mut q, head_dim, &positions, base);
                reference::rope(&mut k, head_dim, &positions, base);
            }
            // A rotation mixes two values of equal magnitude bound: use the pair's larger one.
            let pair_max = |m: Vec<f32>| -> Vec<f32> {
                m.chunks_exact(2)
                    .flat_map(|p| [p[0].max(p[1]) * 2.0; 2])
                    .collect()
            };
            let q_mag = pair_max(split(&magnitude, 0, q_rows));
            let k_mag = pair_max(split(&magnitude, q_rows, kv_rows));
            let v_mag = split(&magnitude, q_rows + kv_rows, kv_rows);

            let cache_len = max_positions as usize * kv_rows;
            let initial = common::as_stored(kv_type, &common::random_f32(&mut rng, cache_len, 1.0));
            let mut want_k = initial.clone();
            let mut want_v = initial.clone();
            let kept: Vec<usize> = (0..tokens)
                .filter(|&t| cache_rows[t] < max_positions)
                .collect();
            let rows_of = |m: &[f32], width: usize| -> Vec<f32> {
                kept.iter()
                    .flat_map(|&t| m[t * width..(t + 1) * width].to_vec())
                    .collect()
            };
            let kept_rows: Vec<u32> = kept.iter().map(|&t| cache_rows[t]).collect();
            reference::kv_write(
                &rows_of(&k, kv_rows),
                &rows_of(&v, kv_rows),
                &kept_rows,
                &mut want_k,
                &mut want_v,
            );

            let weights = QuantMatrix::upload(gpu, dtype, rows, cols, &raw).unwrap();
            let config = QkvRopeConfig {
                shape: LinearShape {
                    dtype,
                    rows: rows as u32,
                    cols: cols as u32,
                    norm_eps: Some(NORM_EPS),
                    tile,
                },
                q_rows: q_rows as u32,
                kv_rows: kv_rows as u32,
                head_dim: head_dim as u32,
                rope,
                kv_type,
            };
            let kernel = QkvRope::new(gpu, config).unwrap();
            check_variant_runs(
                gpu,
                tile,
                dtype,
                kernel.reduction(),
                kernel.staging(),
                kernel.activation_reads(),
            );
            let table = RopeTable::new(gpu, head_dim as u32, base, max_positions).unwrap();
            let blocks = max_positions / KV_BLOCK_ROWS;
            let cache = common::kv_cache(gpu, n_kv_heads, head_dim, kv_type, blocks);
            let layer = cache.layer(0).unwrap();
            common::write_kv(gpu, layer.keys, kv_type, &initial);
            common::write_kv(gpu, layer.values, kv_type, &initial);
            let x_buf = gpu.storage_from("x", &x).unwrap();
            let gamma_buf = gpu.storage_from("gamma", &gamma).unwrap();
            let pos_buf = gpu.storage_from("positions", &positions).unwrap();
            let rows_buf = gpu.storage_from("cache rows", &cache_rows).unwrap();
            let q_out = gpu
                .storage_zeroed("q", (tokens * q_rows * 4) as u64)
                .unwrap();
            let dispatch = kernel
                .bind(
                    gpu,
                    &weights,
                    &x_buf,
                    Some(&gamma_buf),
                    &pos_buf,
                    &rows_buf,
                    &table,
                    &q_out,
                    layer,
                    TokenRange::all(tokens as u32),
                )
                .unwrap();
            gpu.run(&[&dispatch]).unwrap();

            let label = format!("qkv_rope {dtype:?} rope {rope} {kv_type:?} cache tile {tile:?}");
            let (c, k) = bound(kernel.staging(), 4.0, cols);
            let got_q = common::read(gpu, &q_out, tokens * q_rows);
            let got_k = common::read_kv(gpu, layer.keys, kv_type, cache_len);
            let got_v = common::read_kv(gpu, layer.values, kv_type, cache_len);
            for (t, &pos) in cache_rows.iter().enumerate() {
                if pos >= max_positions {
                    continue;
                }
                let at = t * q_rows;
                check_within_bound(
                    &format!("{label} q of token {t}"),
                    &got_q[at..at + q_rows],
                    &q[at..at + q_rows],
                    &q_mag[at..at + q_rows],
                    c,
                    k,
                );
                let (src, dst) = (t * kv_rows, pos as usize * kv_rows);
                let row = |m: &[f32], at: usize| m[at..at + kv_rows].to_vec();
                check_stored_within_bound(
                    &format!("{label} k at {pos}"),
                    &row(&got_k, dst),
                    &row(&want_k, dst),
                    &row(&k_mag, src),
                    c,
                    k,
                    kv_type,
                );
                check_stored_within_bound(
                    &format!("{label} v at {pos}"),
                    &row(&got_v, dst),
                    &row(&want_v, dst),
                    &row(&v_mag, src),
                    c,
                    k,
                    kv_type,
                );
            }
            let skipped = 3 * q_rows..4 * q_rows;
            assert!(
                got_q[skipped].iter().all(|&v| v == 0.0),
                "token past the cache wrote q"
            );
            // Positions no token writes keep their values.
            for pos in 1..9 {
                let at = pos * kv_rows;
                assert_eq!(
                    got_k[at..at + kv_rows],
                    initial[at..at + kv_rows],
                    "K {pos}"
                );
                assert_eq!(
                    got_v[at..at + kv_rows],
                    initial[at..at + kv_rows],
                    "V {pos}"
                );
            }
        }
    }
}

#[test]
fn fused_kernels_reject_mismatched_weights_norms_and_short_buffers() {
    let gpu = common::gpu();
    let mut rng = common::rng(7);
    let raw = common::random_gguf(&mut rng, WeightDtype::Q4_0, 8, 64);
    let weights = QuantMatrix::upload(&gpu, WeightDtype::Q4_0, 8, 64, &raw).unwrap();
    let shape = LinearShape {
        dtype: WeightDtype::Q4_0,
        rows: 8,
        cols: 64,
        norm_eps: None,
        tile: RowTile::decode(DeviceKind::Cpu),
    };
    let x = gpu.storage_zeroed("x", 2 * 64 * 4).unwrap();
    let out = gpu.storage_zeroed("out", 2 * 8 * 4).unwrap();
    let plain = Linear::new(&gpu, shape, Epilogue::Store).unwrap();
    assert!(plain
        .bind(&gpu, &weights, &x, None, &out, TokenRange::all(2))
        .is_ok());
    assert!(plain
        .bind(&gpu, &weights, &x, None, &out, TokenRange::all(3))
        .is_err());
    assert!(plain
        .bind(&gpu, &weights, &x, None, &out, TokenRange::one(2))
        .is_err());
    assert!(plain
        .bind(&gpu, &weights, &x, Some(&x), &out, TokenRange::all(1))
        .is_err());
    let normed = Linear::new(
        &gpu,
        LinearShape {
            norm_eps: Some(1e-5),
            ..shape
        },
        Epilogue::Store,
    )
    .unwrap();
    assert!(normed
        .bind(&gpu, &weights, &x, None, &out, TokenRange::all(1))
        .is_err());
    let other = Linear::new(&gpu, LinearShape { rows: 16, ..shape }, Epilogue::Store).unwrap();
    assert!(other
        .bind(&gpu, &weights, &x, None, &out, TokenRange::all(1))
        .is_err());
    assert!(Linear::new(&gpu, LinearShape { rows: 12, ..shape }, Epilogue::SwiGlu).is_err());
    let bad_tiles = [
        RowTile {
            tokens: 9,
            workgroup_size: 8,
            reduction: Reduction::None,
            staging: Staging::None,
        },
        RowTile {
            tokens: 2,
            workgroup_size: 8,
            reduction: Reduction::Subgroup { lanes: 8 },
            staging: Staging::None,
        },
        RowTile {
            tokens: 1,
            workgroup_size: 12,
            reduction: Reduction::Workgroup { lanes: 8 },
            staging: Staging::None,
        },
        RowTile {
            tokens: 1,
            workgroup_size: 512,
            reduction: Reduction::Workgroup { lanes: 8 },
            staging: Staging::None,
        },
        // Staged: a split reduction, a workgroup of part of a token tile, over 64 tokens.
        RowTile {
            tokens: 1,
            workgroup_size: 64,
            reduction: Reduction::Workgroup { lanes: 8 },
            staging: Staging::F32,
        },
        RowTile {
            tokens: 8,
            workgroup_size: 12,
            reduction: Reduction::None,
            staging: Staging::F32,
        },
        RowTile {
            tokens: 8,
            workgroup_size: 128,
            reduction: Reduction::None,
            staging: Staging::F32,
        },
    ];
    for bad_tile in bad_tiles {
        assert!(
            Linear::new(
                &gpu,
                LinearShape {
                    tile: bad_tile,
                    ..shape
                },
                Epilogue::Store
            )
            .is_err(),
            "{bad_tile:?}"
        );
    }
}

/// A matrix split into two row shards, each a Linear writing its columns of the whole output
/// (stride = all rows, offset = its first row): together they store the whole product, for
/// one token and for a tile of several, and through the split variants. Tolerance as for `linear_matches_reference_...`.
#[test]
fn row_shards_write_their_columns_of_a_wider_output() {
    common::gpus()
        .iter()
        .for_each(row_shards_write_their_columns_of_a_wider_output_on);
}

/// `row_shards_write_their_columns_of_a_wider_output` on one device (each load width it runs).
fn row_shards_write_their_columns_of_a_wider_output_on(gpu: &Gpu) {
    let (dtype, rows, cols, split) = (WeightDtype::Q8_0, 40usize, 64usize, 24usize);
    for (tokens, tile) in [
        (1usize, tiles()[0]),
        (5, tiles()[1]),
        (1, tiles()[2]),
        (3, tiles()[4]),
    ] {
        let mut rng = common::rng(tokens as u64 + 500);
        let raw = common::random_gguf(&mut rng, dtype, rows, cols);
        let x = common::random_f32(&mut rng, tokens * cols, 1.0);
        let w = reference::dequantize(dtype, rows, cols, &raw);
        let want = reference::matmul(&w, rows, cols, &x);
        let magnitude = reference::matmul(&abs(&w), rows, cols, &abs(&x));
        let row_bytes = dtype.gguf_row_bytes(cols);
        let x_buf = gpu.storage_from("x", &x).unwrap();
        let out = gpu
            .storage_zeroed("out", (tokens * rows * 4) as u64)
            .unwrap();
        let shards = [(0, split), (split, rows - split)];
        let matrices: Vec<QuantMatrix> = shards
            .iter()
            .map(|&(first, n)| {
                let bytes = &raw[first * row_bytes..(first + n) * row_bytes];
                QuantMatrix::upload(gpu, dtype, n, cols, bytes).unwrap()
            })
            .collect();
        let dispatches: Vec<_> = shards
            .iter()
            .zip(&matrices)
            .map(|(&(first, n), m)| {
                let shape = LinearShape {
                    dtype,
                    rows: n as u32,
                    cols: cols as u32,
                    norm_eps: None,
                    tile,
                };
                let layout = RowLayout {
                    stride: rows as u32,
                    offset: first as u32,
                };
                Linear::with_output(gpu, shape, Epilogue::Store, layout)
                    .unwrap()
                    .bind(gpu, m, &x_buf, None, &out, TokenRange::all(tokens as u32))
                    .unwrap()
            })
            .collect();
        gpu.run(&dispatches.iter().collect::<Vec<_>>()).unwrap();
        let got = common::read(gpu, &out, tokens * rows);
        let label = format!("row shards T={tokens}");
        check_within_bound(&label, &got, &want, &magnitude, 2.0, cols);
    }
    // A layout is only for the plain epilogues, and must hold the rows.
    let shape = LinearShape {
        dtype,
        rows: 16,
        cols: 64,
        norm_eps: None,
        tile: tiles()[0],
    };
    let narrow = RowLayout {
        stride: 20,
        offset: 8,
    };
    assert!(Linear::with_output(gpu, shape, Epilogue::Store, narrow).is_err());
    let wide = RowLayout {
        stride: 40,
        offset: 8,
    };
    assert!(Linear::with_output(gpu, shape, Epilogue::SwiGlu, wide).is_err());
}
