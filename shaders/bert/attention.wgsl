// Bidirectional multi-head attention over packed sequences, one pass with a running (stable)
// softmax. qkv[t] = Q | K | V of token t (each HEADS * HEAD_DIM wide). The tokens of sequence b,
// starts[b]..starts[b + 1], attend to each other only. Each invocation computes QUERIES queries
// of one head of one sequence, so every key and value vector it loads serves QUERIES queries.

override HEADS: u32;
override HEAD_DIM: u32;      // multiple of 4, at most 4 * MAX_HEAD_VEC4 (head_*.wgsl)
override QUERIES: u32 = 4u;  // at most MAX_Q
override SCALE: f32;         // 1 / sqrt(HEAD_DIM)
override WORKGROUP_SIZE: u32 = 8u;

const MAX_Q: u32 = 4u;

@group(0) @binding(0) var<storage, read> qkv: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> starts: array<u32>;
@group(0) @binding(2) var<storage, read_write> ctx: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i0 = gid.x * QUERIES;
    let head = gid.y;
    let b = gid.z;
    if (b >= params.batch) {
        return;
    }
    let base = starts[b];
    let len = starts[b + 1u] - base;
    if (i0 >= len) {
        return;
    }
    let d4 = HEAD_DIM / 4u;
    let h4 = HEADS * d4;
    let row4 = 3u * h4;
    var q: array<array<vec4<f32>, MAX_HEAD_VEC4>, MAX_Q>;
    var acc: array<array<vec4<f32>, MAX_HEAD_VEC4>, MAX_Q>;
    var m: array<f32, MAX_Q>;
    var l: array<f32, MAX_Q>;
    for (var qi = 0u; qi < QUERIES; qi++) {
        let t = base + min(i0 + qi, len - 1u);
        for (var d = 0u; d < d4; d++) {
            q[qi][d] = qkv[t * row4 + head * d4 + d] * SCALE;
            acc[qi][d] = vec4<f32>(0.0);
        }
        m[qi] = -3.0e38;
        l[qi] = 0.0;
    }
    for (var j = 0u; j < len; j++) {
        let k0 = (base + j) * row4 + h4 + head * d4;
        var key: array<vec4<f32>, MAX_HEAD_VEC4>;
        for (var d = 0u; d < d4; d++) {
            key[d] = qkv[k0 + d];
        }
        var c: array<f32, MAX_Q>;
        var p: array<f32, MAX_Q>;
        for (var qi = 0u; qi < QUERIES; qi++) {
            var s = 0.0;
            for (var d = 0u; d < d4; d++) {
                s += dot(q[qi][d], key[d]);
            }
            let m_new = max(m[qi], s);
            c[qi] = exp(m[qi] - m_new);
            p[qi] = exp(s - m_new);
            l[qi] = l[qi] * c[qi] + p[qi];
            m[qi] = m_new;
        }
        for (var d = 0u; d < d4; d++) {
            let v = qkv[k0 + h4 + d];
            for (var qi = 0u; qi < QUERIES; qi++) {
                acc[qi][d] = acc[qi][d] * c[qi] + p[qi] * v;
            }
        }
    }
    for (var qi = 0u; qi < QUERIES; qi++) {
        let i = i0 + qi;
        if (i < len) {
            let inv = 1.0 / l[qi];
            for (var d = 0u; d < d4; d++) {
                ctx[(base + i) * h4 + head * d4 + d] = acc[qi][d] * inv;
            }
        }
    }
}
