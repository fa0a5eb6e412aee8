// Per-head RMSNorm of queries and keys, then RoPE (Gemma 3: q_norm and k_norm before the
// rotation). For token t < params.count at position p = positions[t] with cache row
// r = cache_rows[t], every head of q[t] (N_HEADS of them) and of the key row k_cache[r]
// (N_KV_HEADS) becomes
//   head = rope(head / sqrt(mean(head^2) + EPS) * weight, p)
// in place (keys in the cache's type: KvWord, kv_load / kv_store), with q_weight or k_weight ([HEAD_DIM]) and GGML "normal" RoPE (adjacent pairs
// (2i, 2i+1) by theta_i = p * base^(-2i/HEAD_DIM), cos/sin from the host-computed table).
// The projections are written unrotated before this kernel (QkvRope with ROPE off). A token
// whose position is past the RoPE table or whose row is past the cache is left alone, as
// QkvRope leaves it. One invocation per (head, token): it reads its head twice, once for the
// sum of squares and once to write it, and needs no barrier. HEAD_DIM is a multiple of 4.

override HEAD_DIM: u32;
override N_HEADS: u32;
override N_KV_HEADS: u32;
override EPS: f32;
override WORKGROUP_SIZE: u32;

struct Params {
    count: u32,
}

@group(0) @binding(0) var<storage, read_write> q: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> k_cache: array<KvWord>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> cache_rows: array<u32>;
// [positions][HEAD_DIM / 2] of (cos, sin).
@group(0) @binding(4) var<storage, read> rope_table: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read> q_weight: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> k_weight: array<vec4<f32>>;
@group(0) @binding(7) var<uniform> params: Params;

// The head's values i*4 .. i*4+4 normalised by `inv`, scaled by `w` and rotated as the pairs
// 2i and 2i + 1 at position `pos`.
fn norm_rotate(v: vec4<f32>, w: vec4<f32>, inv: f32, pos: u32, i: u32) -> vec4<f32> {
    let x = v * inv * w;
    let a = rope_table[pos * (HEAD_DIM / 2u) + 2u * i];
    let b = rope_table[pos * (HEAD_DIM / 2u) + 2u * i + 1u];
    return vec4<f32>(
        x.x * a.x - x.y * a.y, x.x * a.y + x.y * a.x,
        x.z * b.x - x.w * b.y, x.z * b.y + x.w * b.x,
    );
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let h = id.x;
    let t = id.y;
    if h >= N_HEADS + N_KV_HEADS || t >= params.count {
        return;
    }
    let d4 = HEAD_DIM / 4u;
    let pos = positions[t];
    let row = cache_rows[t];
    let kv_row = N_KV_HEADS * d4;
    if pos >= arrayLength(&rope_table) / (HEAD_DIM / 2u) || row >= arrayLength(&k_cache) / kv_row {
        return;
    }
    let is_q = h < N_HEADS;
    var base: u32;
    if is_q {
        base = (t * N_HEADS + h) * d4;
    } else {
        base = row * kv_row + (h - N_HEADS) * d4;
    }

    var squares = 0.0;
    for (var i = 0u; i < d4; i++) {
        var v: vec4<f32>;
        if is_q {
            v = q[base + i];
        } else {
            v = kv_load(k_cache[base + i]);
        }
        squares += dot(v, v);
    }
    let inv = 1.0 / sqrt(squares / f32(HEAD_DIM) + EPS);

    for (var i = 0u; i < d4; i++) {
        if is_q {
            q[base + i] = norm_rotate(q[base + i], q_weight[i], inv, pos, i);
        } else {
            k_cache[base + i] = kv_store(norm_rotate(kv_load(k_cache[base + i]), k_weight[i], inv, pos, i));
        }
    }
}
