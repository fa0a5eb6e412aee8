// What every attention kernel shares (attention.wgsl, attention_split.wgsl,
// attention_flash.wgsl): causal grouped-query attention over a paged KV cache. The cache is a
// pool of blocks of BLOCK rows; token t's sequence lists its blocks at
// blocks[table_starts[t] ..], so its position j is in row
// row(j) = blocks[table_starts[t] + j / BLOCK] * BLOCK + j % BLOCK (sequences share the pool,
// and blocks of a common prefix). For token t < params.count at position p = positions[t] and
// query head h (kv head h / (N_HEADS / N_KV_HEADS)):
//   out[t][h] = sum_{j <= p} softmax_j(q[t][h] . K[row(j)][kv] * SCALE) V[row(j)][kv]
// over every earlier position, or with WINDOW > 0 only the last WINDOW (p - WINDOW < j <= p:
// sliding-window attention). Every kernel keeps an online softmax (running maximum subtracted
// before exp, earlier terms rescaled when it grows), so every K and V row is read once per pass.
// q rows are read through stride/offset (multiples of 4); caches are [rows][KV_DIM] of the
// cache's type (KvWord: four values, kv_load; see kv_f32.wgsl and kv_f16.wgsl);
// out is [T][N_HEADS * HEAD_DIM]. HEAD_DIM is a multiple of 4, at most 4 * MAX_HEAD_VEC4 (the
// arrays' size, from head_64/128/256.wgsl).

// Below every score: the running maximum before the first position (exp(it - score) is 0).
const NO_SCORE: f32 = -3.0e38;

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

// The first position a token at position `last` attends to.
fn first_attended(last: u32) -> u32 {
    var span = last;
    if WINDOW > 0u {
        span = min(span, WINDOW - 1u);
    }
    return last - span;
}

// Where query head h of token t starts in q, in vec4s.
fn query_base(t: u32, h: u32) -> u32 {
    return (t * Q_STRIDE + Q_OFFSET) / 4u + h * (HEAD_DIM / 4u);
}

// Where kv head kv_head of the cache row of block row `block_row + offset` starts, in words.
// Rows past the pool are clamped to it (the model never asks for them).
fn kv_base(block_row: u32, offset: u32, kv_head: u32) -> u32 {
    let kv_row = N_KV_HEADS * (HEAD_DIM / 4u);
    let last_row = arrayLength(&k_cache) / kv_row - 1u;
    return min(block_row + offset, last_row) * kv_row + kv_head * (HEAD_DIM / 4u);
}

// Where kv head kv_head of position j of the sequence whose block table starts at `table` is.
fn position_base(table: u32, j: u32, kv_head: u32) -> u32 {
    return kv_base(blocks[table + j / BLOCK] * BLOCK, j % BLOCK, kv_head);
}
