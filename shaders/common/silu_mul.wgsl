// SwiGLU activation: out[t][i] = silu(gate[t][i]) * up[t][i], silu(g) = g / (1 + exp(-g)),
// for i < WIDTH and t < params.count. Gate and up rows are read through a stride and offset, so
// both may live in one buffer (the output of a fused gate|up matmul).

override WIDTH: u32;
override GATE_STRIDE: u32;
override GATE_OFFSET: u32;
override UP_STRIDE: u32;
override UP_OFFSET: u32;
override WORKGROUP_SIZE: u32;

struct Params {
    count: u32,
}

@group(0) @binding(0) var<storage, read> gate: array<f32>;
@group(0) @binding(1) var<storage, read> up: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    let t = id.y;
    if i >= WIDTH || t >= params.count {
        return;
    }
    let g = gate[t * GATE_STRIDE + GATE_OFFSET + i];
    let u = up[t * UP_STRIDE + UP_OFFSET + i];
    out[t * WIDTH + i] = g / (1.0 + exp(-g)) * u;
}
