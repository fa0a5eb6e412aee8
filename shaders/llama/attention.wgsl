// Causal grouped-query attention over a paged KV cache. The cache is a pool of blocks of BLOCK
// rows; token t's sequence lists its blocks at blocks[table_starts[t] ..], so its position j is
// in row row(j) = blocks[table_starts[t] + j / BLOCK] * BLOCK + j % BLOCK (sequences share the
// pool, and blocks of a common prefix). For token t < params.count at position
// p = positions[t] and query head h (kv head h / (N_HEADS / N_KV_HEADS)):
//   out[t][h] = sum_{j <= p} softmax_j(q[t][h] . K[row(j)][kv] * SCALE) V[row(j)][kv]
// over every earlier position, or with WINDOW > 0 only the last WINDOW (p - WINDOW < j <= p:
// sliding-window attention). The block id is loaded once per block, not per position.
// One invocation per (head, token), barrier-free, with an online softmax (running maximum
// subtracted before exp, earlier terms rescaled when it grows), so every K and V row is read once.
// q rows are read through stride/offset (multiples of 4); caches are [rows][KV_DIM] of the
// cache's type (KvWord: four values, kv_load; see kv_f32.wgsl and kv_f16.wgsl);
// out is [T][N_HEADS * HEAD_DIM]. HEAD_DIM is a multiple of 4, at most 4 * MAX_HEAD_VEC4.

const MAX_HEAD_VEC4: u32 = 64u;

override HEAD_DIM: u32;
override N_HEADS: u32;
override N_KV_HEADS: u32;
override Q_STRIDE: u32;
override Q_OFFSET: u32;
override SCALE: f32;
// Positions a token attends to, its own included; 0: all.
override WINDOW: u32;
// Rows per block of the pool.
override BLOCK: u32;
override WORKGROUP_SIZE: u32;

struct Params {
    count: u32,
}

@group(0) @binding(0) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> positions: array<u32>;
@group(0) @binding(2) var<storage, read> table_starts: array<u32>;
@group(0) @binding(3) var<storage, read> blocks: array<u32>;
@group(0) @binding(4) var<storage, read> k_cache: array<KvWord>;
@group(0) @binding(5) var<storage, read> v_cache: array<KvWord>;
@group(0) @binding(6) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(7) var<uniform> params: Params;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let h = id.x;
    let t = id.y;
    if h >= N_HEADS || t >= params.count {
        return;
    }
    let d4 = HEAD_DIM / 4u;
    let kv_head = h / (N_HEADS / N_KV_HEADS);
    let kv_row = N_KV_HEADS * d4;

    var qs: array<vec4<f32>, MAX_HEAD_VEC4>;
    let q_base = (t * Q_STRIDE + Q_OFFSET) / 4u + h * d4;
    for (var i = 0u; i < d4; i++) {
        qs[i] = q[q_base + i] * SCALE;
    }

    var acc: array<vec4<f32>, MAX_HEAD_VEC4>;
    var running_max = -3.0e38;
    var total = 0.0;
    let last = positions[t];
    var span = last;
    if WINDOW > 0u {
        span = min(span, WINDOW - 1u);
    }
    let first = last - span;
    let table = table_starts[t];
    // Rows past the pool are clamped to it (the model never asks for them).
    let last_row = arrayLength(&k_cache) / kv_row - 1u;
    var block_row = 0u;
    for (var j = first; j <= last; j++) {
        if j == first || j % BLOCK == 0u {
            block_row = blocks[table + j / BLOCK] * BLOCK;
        }
        let base = min(block_row + j % BLOCK, last_row) * kv_row + kv_head * d4;
        var score = 0.0;
        for (var i = 0u; i < d4; i++) {
            score += dot(qs[i], kv_load(k_cache[base + i]));
        }
        let new_max = max(running_max, score);
        let rescale = exp(running_max - new_max);
        let weight = exp(score - new_max);
        total = total * rescale + weight;
        for (var i = 0u; i < d4; i++) {
            acc[i] = acc[i] * rescale + weight * kv_load(v_cache[base + i]);
        }
        running_max = new_max;
    }

    let out_base = (t * N_HEADS + h) * d4;
    for (var i = 0u; i < d4; i++) {
        out[out_base + i] = acc[i] / total;
    }
}
