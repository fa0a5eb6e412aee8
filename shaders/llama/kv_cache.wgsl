// KV-cache write: for t < params.count, copies the KV_DIM values of token t's K and V rows
// (read through stride/offset, so both may come from a fused Q|K|V output) into row positions[t]
// of the layer's caches, each laid out [MAX_POSITIONS][KV_DIM] (KV_DIM = n_kv_heads * head_dim,
// head-major within a row). Positions past the cache are dropped.

override KV_DIM: u32;
override K_STRIDE: u32;
override K_OFFSET: u32;
override V_STRIDE: u32;
override V_OFFSET: u32;
override MAX_POSITIONS: u32;
override WORKGROUP_SIZE: u32;

struct Params {
    count: u32,
}

@group(0) @binding(0) var<storage, read> k: array<f32>;
@group(0) @binding(1) var<storage, read> v: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(5) var<uniform> params: Params;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    let t = id.y;
    if i >= KV_DIM || t >= params.count {
        return;
    }
    let pos = positions[t];
    if pos >= MAX_POSITIONS {
        return;
    }
    k_cache[pos * KV_DIM + i] = k[t * K_STRIDE + K_OFFSET + i];
    v_cache[pos * KV_DIM + i] = v[t * V_STRIDE + V_OFFSET + i];
}
