// Embeddings + LayerNorm: out[t] = LN(word[ids[t]] + pos_type[i]) for token t = starts[b] + i
// (position i of sequence b), one invocation per token: x is the position, y the sequence.
// `pos_type` is the position table with token-type row 0 already added at upload.

override HIDDEN: u32;        // multiple of 4
override EPS: f32;
override WORKGROUP_SIZE: u32 = 16u;

@group(0) @binding(0) var<storage, read> word: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> pos_type: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> norm: array<vec4<f32>>;      // gamma, then beta
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read> starts: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(6) var<uniform> params: Params;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let b = gid.y;
    if (b >= params.batch) {
        return;
    }
    let start = starts[b];
    if (i >= starts[b + 1u] - start) {
        return;
    }
    let t = start + i;
    let h4 = HIDDEN / 4u;
    let w0 = ids[t] * h4;
    let p0 = i * h4;
    let o0 = t * h4;
    var sum = vec4<f32>(0.0);
    for (var i = 0u; i < h4; i++) {
        let v = word[w0 + i] + pos_type[p0 + i];
        out[o0 + i] = v;
        sum += v;
    }
    let mean = dot(sum, vec4<f32>(1.0)) / f32(HIDDEN);
    var sq = vec4<f32>(0.0);
    for (var i = 0u; i < h4; i++) {
        let d = out[o0 + i] - mean;
        sq += d * d;
    }
    let inv = 1.0 / sqrt(dot(sq, vec4<f32>(1.0)) / f32(HIDDEN) + EPS);
    for (var i = 0u; i < h4; i++) {
        out[o0 + i] = (out[o0 + i] - mean) * inv * norm[i] + norm[h4 + i];
    }
}
