// RMSNorm over rows: out[t][i] = x[t][i] / sqrt(mean_i(x[t][i]^2) + EPS) * weight[i],
// for t < params.count rows of COLS values (COLS a multiple of 4). One invocation per row, no
// barriers: the row is short and a tree reduction's barriers cost more than they save here.

override COLS: u32;
override EPS: f32;
override WORKGROUP_SIZE: u32;

struct Params {
    count: u32,
}

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> weight: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let t = id.x;
    if t >= params.count {
        return;
    }
    let n = COLS / 4u;
    let base = t * n;
    var squares = vec4<f32>(0.0);
    for (var i = 0u; i < n; i++) {
        let v = x[base + i];
        squares += v * v;
    }
    let scale = 1.0 / sqrt(dot(squares, vec4<f32>(1.0)) / f32(COLS) + EPS);
    for (var i = 0u; i < n; i++) {
        out[base + i] = x[base + i] * scale * weight[i];
    }
}
