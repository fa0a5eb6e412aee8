// The attention block's input half: for token t < params.count at position p = positions[t]
// with cache row r = cache_rows[t] (r = p for a cache holding one sequence),
//   [q; k; v] = Wqkv rmsnorm(x[t])          (one matrix: Q_ROWS + 2 * KV_ROWS rows)
//   q, k rotated by RoPE (GGML "normal" mode: adjacent pairs (2i, 2i+1) within each head by
//        theta_i = p * base^(-2i/HEAD_DIM), cos/sin from the host-computed table), unless ROPE
//        is off (a per-head norm comes first: qk_norm_rope.wgsl rotates after it)
//   q_out[t] = q;  k_cache[r] = k;  v_cache[r] = v   (in the cache's type: KvWord, kv_store)
// A token whose position is past the RoPE table or whose row is past the cache writes nothing.
// One invocation per row group (8 rows) and TOKENS_PER_INVOCATION tokens, see row_group.wgsl
// (main), the same from weights and x its workgroup staged (main_staged, see staged.wgsl), or
// SPLIT_LANES invocations per row group and token, see split.wgsl (main_split).
// Q_ROWS, KV_ROWS and HEAD_DIM are multiples of 8, so a row group lies within one of q, k, v and
// within one head, and holds four whole RoPE pairs.

override Q_ROWS: u32;
override KV_ROWS: u32;
override HEAD_DIM: u32;
override ROPE: bool;
override WORKGROUP_SIZE: u32;

@group(0) @binding(3) var<storage, read> positions: array<u32>;
@group(0) @binding(4) var<storage, read> cache_rows: array<u32>;
// [positions][HEAD_DIM / 2] of (cos, sin).
@group(0) @binding(5) var<storage, read> rope_table: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> q_out: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> k_cache: array<KvWord>;
@group(0) @binding(8) var<storage, read_write> v_cache: array<KvWord>;
@group(0) @binding(9) var<uniform> params: Params;

// Rotates the pairs (v.x, v.y) and (v.z, v.w) by the angles of pairs i and i + 1.
fn rotate(v: vec4<f32>, pos: u32, i: u32) -> vec4<f32> {
    if !ROPE {
        return v;
    }
    let half_dim = HEAD_DIM / 2u;
    let a = rope_table[pos * half_dim + i];
    let b = rope_table[pos * half_dim + i + 1u];
    return vec4<f32>(
        v.x * a.x - v.y * a.y, v.x * a.y + v.y * a.x,
        v.z * b.x - v.w * b.y, v.z * b.y + v.w * b.x,
    );
}

// Writes the tile of row group g for tokens tok0 .. tok0 + TOKENS_PER_INVOCATION: q rotated to
// q_out, k rotated and v to the cache.
fn store_tile(g: u32, tok0: u32, tile: Tile) {
    let row0 = g * ROW_GROUP;
    for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
        let tok = tok0 + t;
        if tok >= params.count {
            break;
        }
        let pos = positions[params.first + tok];
        let row = cache_rows[params.first + tok];
        if pos >= arrayLength(&rope_table) / (HEAD_DIM / 2u) || row >= arrayLength(&k_cache) / (KV_ROWS / 4u) {
            continue;
        }
        if row0 < Q_ROWS {
            let pair = (row0 % HEAD_DIM) / 2u;
            let at = (tok * Q_ROWS + row0) / 4u;
            q_out[at] = rotate(tile.lo[t], pos, pair);
            q_out[at + 1u] = rotate(tile.hi[t], pos, pair + 2u);
        } else if row0 < Q_ROWS + KV_ROWS {
            let r = row0 - Q_ROWS;
            let pair = (r % HEAD_DIM) / 2u;
            let at = (row * KV_ROWS + r) / 4u;
            k_cache[at] = kv_store(rotate(tile.lo[t], pos, pair));
            k_cache[at + 1u] = kv_store(rotate(tile.hi[t], pos, pair + 2u));
        } else {
            let at = (row * KV_ROWS + row0 - Q_ROWS - KV_ROWS) / 4u;
            v_cache[at] = kv_store(tile.lo[t]);
            v_cache[at + 1u] = kv_store(tile.hi[t]);
        }
    }
}
