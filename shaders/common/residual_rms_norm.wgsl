// A normalised residual add (Gemma's sandwich norms): for t < params.count,
//   x[t] += y[t] / sqrt(mean(y[t]^2) + EPS) * weight
// with rows of WIDTH values (a multiple of 4). One invocation per token: it reads its row of y
// twice (the sum of squares, then the scaled add) and needs no barrier; a step has few tokens
// and the row is short, so the launch, not the loop, is the cost.

override WIDTH: u32;
override EPS: f32;
override WORKGROUP_SIZE: u32;

struct Params {
    count: u32,
}

@group(0) @binding(0) var<storage, read> y: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> weight: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let t = id.x;
    if t >= params.count {
        return;
    }
    let w4 = WIDTH / 4u;
    let base = t * w4;
    var squares = 0.0;
    for (var i = 0u; i < w4; i++) {
        let v = y[base + i];
        squares += dot(v, v);
    }
    let inv = 1.0 / sqrt(squares / f32(WIDTH) + EPS);
    for (var i = 0u; i < w4; i++) {
        x[base + i] += y[base + i] * inv * weight[i];
    }
}
