// Pooling of each sequence's token vectors (sequence b: tokens starts[b]..starts[b + 1]), then (NORMALIZE) L2 normalisation
// (x / max(|x|, 1e-12), as torch.nn.functional.normalize). One workgroup per sequence; lane
// `lid` owns the vec4 feature groups lid, lid + WORKGROUP_SIZE, ...

override HIDDEN: u32;        // multiple of 4, at most 4 * MAX_PER_LANE * WORKGROUP_SIZE
override MODE: u32;          // 0 mean, 1 cls (first token), 2 max, 3 sum / sqrt(len)
override NORMALIZE: bool;
override WORKGROUP_SIZE: u32 = 32u;

const MAX_PER_LANE: u32 = 32u;

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> starts: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> params: Params;

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(local_invocation_id) lid3: vec3<u32>,
        @builtin(workgroup_id) wid: vec3<u32>) {
    let lid = lid3.x;
    let b = wid.x;
    if (b >= params.batch) {
        return;
    }
    let base = starts[b];
    let len = starts[b + 1u] - base;
    let h4 = HIDDEN / 4u;
    let per_lane = (h4 + WORKGROUP_SIZE - 1u) / WORKGROUP_SIZE;
    var pooled: array<vec4<f32>, MAX_PER_LANE>;
    var sq = 0.0;
    for (var j = 0u; j < per_lane; j++) {
        let f = j * WORKGROUP_SIZE + lid;
        let fc = min(f, h4 - 1u);
        var a = vec4<f32>(0.0);
        if (MODE == 1u) {
            a = x[base * h4 + fc];
        } else if (MODE == 2u) {
            a = vec4<f32>(-3.0e38);
            for (var i = 0u; i < len; i++) {
                a = max(a, x[(base + i) * h4 + fc]);
            }
        } else {
            for (var i = 0u; i < len; i++) {
                a += x[(base + i) * h4 + fc];
            }
            if (MODE == 0u) {
                a /= f32(len);
            } else {
                a /= sqrt(f32(len));
            }
        }
        pooled[j] = a;
        sq += select(0.0, dot(a, a), f < h4);
    }
    var scale = 1.0;
    if (NORMALIZE) {
        partial[lid] = sq;
        workgroupBarrier();
        var total = 0.0;
        for (var l = 0u; l < WORKGROUP_SIZE; l++) {
            total += partial[l];
        }
        scale = 1.0 / max(sqrt(total), 1e-12);
    }
    for (var j = 0u; j < per_lane; j++) {
        let f = j * WORKGROUP_SIZE + lid;
        if (f < h4) {
            out[b * h4 + f] = pooled[j] * scale;
        }
    }
}
