// Rotary position embedding, GGML "normal" style (as llama.cpp applies it to GGUF Llama): within
// each head, the adjacent pair (x[2i], x[2i+1]) is rotated by theta_i = pos * base^(-2i/HEAD_DIM).
// In place on N_HEADS heads of HEAD_DIM values starting at t * ROW_STRIDE + ROW_OFFSET, for
// t < params.count. cos/sin come from a host-computed table [MAX_POSITIONS][HEAD_DIM/2] of
// vec2(cos, sin), so no transcendental runs here. Positions past the table use its last row.

override HEAD_DIM: u32;
override N_HEADS: u32;
override ROW_STRIDE: u32;
override ROW_OFFSET: u32;
override MAX_POSITIONS: u32;
override WORKGROUP_SIZE: u32;

struct Params {
    count: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let half_dim = HEAD_DIM / 2u;
    let pair = id.x;
    let t = id.y;
    if pair >= N_HEADS * half_dim || t >= params.count {
        return;
    }
    let head = pair / half_dim;
    let i = pair % half_dim;
    let pos = min(positions[t], MAX_POSITIONS - 1u);
    let cs = table[pos * half_dim + i];
    let at = t * ROW_STRIDE + ROW_OFFSET + head * HEAD_DIM + 2u * i;
    let x0 = x[at];
    let x1 = x[at + 1u];
    x[at] = x0 * cs.x - x1 * cs.y;
    x[at + 1u] = x0 * cs.y + x1 * cs.x;
}
