use pio_gpu::{reference, wgpu, DeviceKind, Gpu};
use pio_gpu::{
    Attention, AttentionConfig, AttentionPlan, AttentionVariant, KvType, Reduction, RowLayout,
    KV_BLOCK_ROWS, PREFILL_MIN_TOKENS,
};

use crate::common::{self, EPS};

/// Positions each checked sequence holds at least: 4 blocks (more when a position needs them).
const SEQUENCE_ROWS: usize = 64;

/// The plans every check runs: each variant alone (so it runs whatever the token count, and
/// lavapipe runs them all) — split-K through subgroups of 8 lanes (lavapipe's subgroups) and
/// of 32 (which falls back to workgroup memory there), through workgroup memory with 4 lanes
/// (16 heads per workgroup) and 64 (one head), shared rows — and the GPUs' and software
/// adapters' defaults, which pick their variants by the token count.
fn plans() -> Vec<AttentionPlan> {
    let alone = |variant| AttentionPlan {
        decode: variant,
        prefill: variant,
    };
    let split = |reduction| alone(AttentionVariant::SplitK(reduction));
    vec![
        alone(AttentionVariant::Serial),
        split(Reduction::Subgroup { lanes: 8 }),
        split(Reduction::Subgroup { lanes: 32 }),
        split(Reduction::Workgroup { lanes: 4 }),
        split(Reduction::Workgroup { lanes: 64 }),
        alone(AttentionVariant::Flash),
        alone(AttentionVariant::SharedRows),
        AttentionPlan::for_adapter(DeviceKind::Discrete, None),
        AttentionPlan::for_adapter(DeviceKind::Cpu, None),
    ]
}

/// The variant `gpu` runs when asked for `variant`: a subgroup split needs subgroups of at
/// least its lanes (lavapipe's are 8 wide), or merges through workgroup memory; shared rows
/// need subgroups of at least 8 lanes, or run serially; flash fits every tested shape in
/// lavapipe's 32 KiB of workgroup memory.
fn expected(gpu: &Gpu, variant: AttentionVariant) -> AttentionVariant {
    let subgroups = gpu.features().contains(wgpu::Features::SUBGROUP);
    match variant {
        AttentionVariant::SharedRows if !subgroups || gpu.subgroup_min_size() < 8 => {
            AttentionVariant::Serial
        }
        AttentionVariant::SplitK(Reduction::Subgroup { lanes })
            if !subgroups || gpu.subgroup_min_size() < lanes =>
        {
            AttentionVariant::SplitK(Reduction::Workgroup { lanes })
        }
        other => other,
    }
}

/// One sequence of a check: its tokens' positions, and how many of its first blocks are those
/// of the first sequence (a shared prompt prefix; 0 for the first sequence itself).
struct Sequence<'a> {
    positions: &'a [u32],
    shared_blocks: usize,
}

/// A sequence sharing nothing.
fn alone(positions: &[u32]) -> Sequence<'_> {
    Sequence {
        positions,
        shared_blocks: 0,
    }
}

/// Scores are head_dim-term dot products (error ≲ sqrt(d)·ε·Σ|q·k|, here |score| ≲ 3), exp of
/// (score − max) adds (3 + 2|x|) ulp per weight, and the weighted sum of V averages these.
/// With |q|,|k|,|v| ≤ 1 this gives ≲ 50ε relative to max|out|; tolerance 64ε. Every variant
/// meets the same bound: split-K and flash only regroup the sums (per lane or per tile, then
/// merged) and rescale each partial state once more by an exp of a difference of maxima,
/// which adds a few ulp per term, not a factor of the bound.
///
/// Every sequence's blocks lie in the pool out of order and apart (blocks of other content,
/// of magnitude 9, between them, which must not be attended to), its rows past its last
/// position infinite; a sequence with
/// `shared_blocks` reads the first sequence's blocks for its prefix, its own after it. All
/// sequences' tokens go through one dispatch. `window`: attend to that many last positions.
/// Runs every plan of [`plans`], asserting the variant each dispatch ran.
fn check(
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    sequences: &[Sequence<'_>],
    q_layout: Option<RowLayout>,
    window: Option<u32>,
) {
    check_cache(
        n_heads,
        n_kv_heads,
        head_dim,
        sequences,
        q_layout,
        window,
        KvType::F32,
    );
}

/// [`check`] with the cache in `kv_type`: the reference reads the values as the cache stores
/// them (rounded to f16 for an f16 cache), so the bound is the same.
fn check_cache(
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    sequences: &[Sequence<'_>],
    q_layout: Option<RowLayout>,
    window: Option<u32>,
    kv_type: KvType,
) {
    let gpu = common::gpu();
    let block = KV_BLOCK_ROWS as usize;
    let longest = sequences
        .iter()
        .flat_map(|s| s.positions)
        .map(|&p| p as usize + 1)
        .max()
        .unwrap_or(0);
    let blocks_per_sequence = longest.max(SEQUENCE_ROWS).div_ceil(block);
    let sequence_rows = blocks_per_sequence * block;
    let kv_dim = n_kv_heads * head_dim;
    let block_len = block * kv_dim;
    let width = n_heads * head_dim;
    let n_tokens: usize = sequences.iter().map(|s| s.positions.len()).sum();
    let q_layout = q_layout.unwrap_or(RowLayout::contiguous(width as u32));
    let mut rng = common::rng((n_heads * 100 + head_dim + n_tokens) as u64);

    // Each sequence's keys and values for all its positions; a shared prefix is the first's.
    let mut kv: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
    for sequence in sequences {
        let mut k = common::as_stored(
            kv_type,
            &common::random_f32(&mut rng, sequence_rows * kv_dim, 1.0),
        );
        let mut v = common::as_stored(
            kv_type,
            &common::random_f32(&mut rng, sequence_rows * kv_dim, 1.0),
        );
        let shared = sequence.shared_blocks * block_len;
        if shared > 0 {
            k[..shared].copy_from_slice(&kv[0].0[..shared]);
            v[..shared].copy_from_slice(&kv[0].1[..shared]);
        }
        kv.push((k, v));
    }
    // Rows past a sequence's last position hold infinities, as a pool's stale rows may (an f16
    // cache overflows to them): no variant may let them into a result, not even times a zero
    // weight. The rows of the first sequence's blocks that others share stay as they are.
    let shared_blocks = sequences.iter().map(|s| s.shared_blocks).max().unwrap_or(0);
    for (i, (sequence, (k, v))) in sequences.iter().zip(&mut kv).enumerate() {
        let end = sequence
            .positions
            .iter()
            .max()
            .map_or(0, |&p| p as usize + 1);
        let kept = if i == 0 { shared_blocks * block } else { 0 };
        let from = end.max(kept).min(sequence_rows) * kv_dim;
        k[from..].fill(f32::INFINITY);
        v[from..].fill(f32::INFINITY);
    }
    // Block tables: distinct blocks are numbered in order of first use, then placed in the pool
    // backwards with a free block between neighbours.
    let mut tables: Vec<Vec<u32>> = Vec::new();
    let mut distinct = 0u32;
    for sequence in sequences {
        let table = (0..blocks_per_sequence)
            .map(|i| match i < sequence.shared_blocks {
                true => tables[0][i],
                false => {
                    distinct += 1;
                    distinct - 1
                }
            })
            .collect();
        tables.push(table);
    }
    let n_blocks = 2 * distinct + 1;
    let place = |b: u32| n_blocks - 2 - 2 * b;
    let pool_len = n_blocks as usize * block_len;
    let mut keys = common::random_f32(&mut rng, pool_len, 9.0);
    let mut values = common::random_f32(&mut rng, pool_len, 9.0);
    for ((k, v), table) in kv.iter().zip(&tables) {
        for (i, &b) in table.iter().enumerate() {
            let at = place(b) as usize * block_len;
            keys[at..at + block_len].copy_from_slice(&k[i * block_len..(i + 1) * block_len]);
            values[at..at + block_len].copy_from_slice(&v[i * block_len..(i + 1) * block_len]);
        }
    }
    let blocks: Vec<u32> = tables.iter().flatten().map(|&b| place(b)).collect();
    let table_starts: Vec<u32> = sequences
        .iter()
        .enumerate()
        .flat_map(|(s, sequence)| {
            std::iter::repeat_n((s * blocks_per_sequence) as u32, sequence.positions.len())
        })
        .collect();
    let positions: Vec<u32> = sequences
        .iter()
        .flat_map(|s| s.positions.to_vec())
        .collect();

    let q_all = common::random_f32(
        &mut rng,
        q_layout.required_len(n_tokens as u32, width as u32) as usize,
        1.0,
    );
    let row = |t: usize| t * q_layout.stride as usize + q_layout.offset as usize;
    let q: Vec<f32> = (0..n_tokens)
        .flat_map(|t| q_all[row(t)..row(t) + width].to_vec())
        .collect();
    let mut want = Vec::new();
    let mut first_token = 0;
    for (sequence, (k, v)) in sequences.iter().zip(&kv) {
        let tokens = sequence.positions.len();
        want.extend(reference::attention(
            &q[first_token * width..(first_token + tokens) * width],
            sequence.positions,
            k,
            v,
            n_heads,
            n_kv_heads,
            head_dim,
            window.map(|n| n as usize),
        ));
        first_token += tokens;
    }

    let cache = common::kv_cache(&gpu, n_kv_heads, head_dim, kv_type, n_blocks);
    let layer = cache.layer(0).unwrap();
    common::write_kv(&gpu, layer.keys, kv_type, &keys);
    common::write_kv(&gpu, layer.values, kv_type, &values);
    let starts_buf = gpu.storage_from("table starts", &table_starts).unwrap();
    let blocks_buf = gpu.storage_from("block tables", &blocks).unwrap();
    let q_buf = gpu.storage_from("q", &q_all).unwrap();
    let pos = gpu.storage_from("positions", &positions).unwrap();
    let out = gpu
        .storage_zeroed("out", (n_tokens * width * 4) as u64)
        .unwrap();
    let config = AttentionConfig {
        n_heads: n_heads as u32,
        n_kv_heads: n_kv_heads as u32,
        head_dim: head_dim as u32,
        q: q_layout,
        window,
        kv_type,
    };
    for plan in plans() {
        let attention = Attention::with_plan(&gpu, config, plan).unwrap();
        let ran = attention.variant(n_tokens as u32);
        let asked = match n_tokens < PREFILL_MIN_TOKENS as usize {
            true => plan.decode,
            false => plan.prefill,
        };
        assert_eq!(ran, expected(&gpu, asked), "the variant run for {plan:?}");
        let dispatch = attention
            .bind(
                &gpu,
                &q_buf,
                &pos,
                &starts_buf,
                &blocks_buf,
                cache.layer(0).unwrap(),
                &out,
                n_tokens as u32,
            )
            .unwrap();
        gpu.run(&[&dispatch]).unwrap();
        let got = common::read(&gpu, &out, want.len());

        let error = common::max_rel_error(&got, &want);
        println!(
            "attention {n_heads}/{n_kv_heads} heads x {head_dim}, {kv_type:?} cache, {} \
             sequences, positions {positions:?}, block table {blocks:?}, window {window:?}, \
             {ran:?}: max rel error {error:.2e}",
            sequences.len()
        );
        assert!(error <= 64.0 * EPS, "{ran:?}: {error:.2e}");
    }
}

#[test]
fn attention_matches_reference_with_grouped_heads() {
    // Decode: one token at the first, a middle and the last position.
    check(9, 3, 64, &[alone(&[0])], None, None);
    check(9, 3, 64, &[alone(&[37])], None, None);
    check(4, 4, 16, &[alone(&[63])], None, None);
    // Prefill of 7 tokens at positions 0..7 (causal), and scattered positions.
    check(6, 2, 32, &[alone(&[0, 1, 2, 3, 4, 5, 6])], None, None);
    check(8, 1, 8, &[alone(&[50, 3, 17])], None, None);
}

#[test]
fn sequences_of_one_step_read_their_own_and_shared_blocks() {
    // Three sequences decoded together: two share the first's first two blocks (a common
    // prompt prefix), one nothing; positions inside, at the end of and past the shared ones.
    let shared = |positions, shared_blocks| Sequence {
        positions,
        shared_blocks,
    };
    check(
        9,
        3,
        64,
        &[
            alone(&[40]),
            shared(&[31], 2),
            shared(&[63], 2),
            alone(&[16]),
        ],
        None,
        None,
    );
    // A prefill beside a decode, sharing one block.
    check(
        4,
        2,
        16,
        &[alone(&[5, 6, 7, 8]), shared(&[15, 16, 17, 18, 19], 1)],
        None,
        Some(6),
    );
}

#[test]
fn attention_reads_queries_through_a_row_layout() {
    // Q of a fused Q|K|V row: 4 heads of 16, then K and V of 2 heads each.
    check(
        4,
        2,
        16,
        &[alone(&[10, 11])],
        Some(RowLayout {
            stride: 128,
            offset: 0,
        }),
        None,
    );
    check(
        2,
        1,
        8,
        &[alone(&[3])],
        Some(RowLayout {
            stride: 44,
            offset: 4,
        }),
        None,
    );
}

#[test]
fn sliding_window_attends_to_the_last_positions_only() {
    // Windows shorter than, equal to and longer than the positions seen, for decode and
    // prefill, and with head_dim 256 (Gemma 3).
    check(9, 3, 64, &[alone(&[37])], None, Some(8));
    check(6, 2, 32, &[alone(&[0, 1, 2, 3, 4, 5, 6])], None, Some(3));
    check(4, 1, 16, &[alone(&[5, 63])], None, Some(6));
    check(4, 4, 16, &[alone(&[63])], None, Some(64));
    check(2, 1, 256, &[alone(&[0, 9, 40])], None, Some(16));
    check(4, 1, 256, &[alone(&[12])], None, None);
}

#[test]
fn attention_reads_an_f16_cache() {
    let f16 = KvType::F16;
    check_cache(9, 3, 64, &[alone(&[37])], None, None, f16);
    check_cache(
        6,
        2,
        32,
        &[alone(&[0, 1, 2, 3, 4, 5, 6])],
        None,
        Some(3),
        f16,
    );
    let shared = Sequence {
        positions: &[31],
        shared_blocks: 2,
    };
    check_cache(9, 3, 64, &[alone(&[40]), shared], None, None, f16);
    check_cache(4, 1, 256, &[alone(&[0, 9, 40])], None, Some(16), f16);
}

#[test]
fn long_contexts_cross_many_blocks() {
    // Decode at hundreds of positions (split-K lanes walk ~10 positions each, crossing blocks
    // at every lane), and a prefill chunk of 37 tokens (not a multiple of any query block)
    // ending there, for one sequence and beside a second sharing its first 5 blocks.
    let chunk: Vec<u32> = (300..337).collect();
    check(9, 3, 64, &[alone(&[330])], None, None);
    check(9, 3, 64, &[alone(&chunk)], None, None);
    check(4, 1, 256, &[alone(&chunk[..20])], None, Some(100));
    let shared = Sequence {
        positions: &[90, 91, 92, 93, 94],
        shared_blocks: 5,
    };
    check_cache(9, 3, 64, &[alone(&chunk), shared], None, None, KvType::F16);
}

#[test]
fn adapters_get_their_variants_and_dispatches_pick_by_token_count() {
    let software = AttentionPlan::for_adapter(DeviceKind::Cpu, None);
    assert_eq!(software.decode, AttentionVariant::Serial);
    assert_eq!(software.prefill, AttentionVariant::SharedRows);
    let split = AttentionVariant::SplitK(Reduction::Subgroup { lanes: 32 });
    for kind in [DeviceKind::Discrete, DeviceKind::Integrated] {
        let plan = AttentionPlan::for_adapter(kind, None);
        assert_eq!(
            (plan.decode, plan.prefill),
            (split, AttentionVariant::Flash)
        );
        // A window of at most 32 positions leaves nothing to split.
        let short = AttentionPlan::for_adapter(kind, Some(32));
        assert_eq!(short.decode, AttentionVariant::Serial);
        assert_eq!(AttentionPlan::for_adapter(kind, Some(33)).decode, split);
    }

    let gpu = common::gpu();
    let config = AttentionConfig {
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
        q: RowLayout::contiguous(576),
        window: None,
        kv_type: KvType::F32,
    };
    let attention = Attention::new(&gpu, config).unwrap();
    let kind = gpu.adapter_info().device_type;
    let own = AttentionPlan::for_adapter(kind, None);
    let own = AttentionPlan {
        decode: expected(&gpu, own.decode),
        prefill: expected(&gpu, own.prefill),
    };
    assert_eq!(attention.plan(), own);

    let plan = AttentionPlan {
        decode: AttentionVariant::SplitK(Reduction::Workgroup { lanes: 8 }),
        prefill: AttentionVariant::Flash,
    };
    let attention = Attention::with_plan(&gpu, config, plan).unwrap();
    assert_eq!(attention.plan(), plan);
    assert_eq!(attention.variant(1), plan.decode);
    assert_eq!(attention.variant(PREFILL_MIN_TOKENS - 1), plan.decode);
    assert_eq!(attention.variant(PREFILL_MIN_TOKENS), plan.prefill);

    for lanes in [0, 1, 3, 128] {
        let plan = AttentionPlan {
            decode: AttentionVariant::SplitK(Reduction::Workgroup { lanes }),
            prefill: AttentionVariant::Flash,
        };
        let error = Attention::with_plan(&gpu, config, plan).unwrap_err();
        assert!(error.to_string().contains("power of two"), "{error}");
    }
}
