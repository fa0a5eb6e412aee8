// Embedding lookup: out[t][c] = W[ids[t] - FIRST_ROW][c] * SCALE, dequantized, for
// t < params.count tokens whose id is one of the table's rows FIRST_ROW .. FIRST_ROW + ROWS
// (SCALE is 1 for Llama, sqrt(hidden) for Gemma). Other tokens are left alone: a vocabulary
// too large for one buffer is split into row shards, one launch each.
// One invocation per (chunk of 8 elements, token).
// Requires: weights from quant.wgsl (binding 0), COLS a multiple of 32.

override ROWS: u32;
override FIRST_ROW: u32;
override SCALE: f32;
override WORKGROUP_SIZE: u32;

struct Params {
    count: u32,
}

@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let t = id.y;
    let chunk = id.x;
    if chunk >= COLS / 8u || t >= params.count {
        return;
    }
    let b = chunk / 4u;
    let c = chunk % 4u;
    let token = ids[t];
    if token < FIRST_ROW || token - FIRST_ROW >= ROWS {
        return;
    }
    let row = token - FIRST_ROW;
    let base = block_base(row, b);
    let values = dequant_chunk(base, c, block_scale(base));
    let g = chunk_groups(c) + vec2<u32>(t * (COLS / 4u) + b * 8u);
    out[g.x] = values.a * SCALE;
    out[g.y] = values.b * SCALE;
}
