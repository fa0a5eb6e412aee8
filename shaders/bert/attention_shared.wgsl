// The shared-rows variant of attention.wgsl, for software adapters with subgroups of at least
// 8 lanes (the idea of llama/attention_shared.wgsl, without its block tables and causal ranges).
// A workgroup's 8 invocations are 8 consecutive queries of one sequence (x: the group of 8,
// y: the head, z: the sequence). Every query of a sequence sees the same keys, so the 8 lanes
// walk them together, POSITIONS at a step: for each position every lane loads an eighth of the
// head's key row and takes the rest from the other lanes through subgroup shuffles, and the
// same for the value row. A row is then loaded once per 8 queries where attention.wgsl's
// invocations each load it (llvmpipe makes each storage load a bounds-checked scalar load per
// lane, and a shuffle a vector permute). Lanes past the sequence's end compute its last query
// again and store nothing; positions past it get no weight.
//
// One head per invocation: measured on llvmpipe, 2 or 4 heads sharing each shuffled row were
// 1.7-2.5x slower (their arrays no longer fit the registers).

override HEADS: u32;
override HEAD_DIM: u32;      // multiple of 4, at most 4 * MAX_HEAD_VEC4 (head_*.wgsl)
override SCALE: f32;         // 1 / sqrt(HEAD_DIM)

const LANES: u32 = 8u;
// Vectors of a row a lane loads: lane, lane + LANES, ...
const ROUNDS: u32 = (MAX_HEAD_VEC4 + LANES - 1u) / LANES;
// Positions a step takes: their rows are loaded together, the accumulators rescaled once.
const POSITIONS: u32 = 4u;

@group(0) @binding(0) var<storage, read> qkv: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> starts: array<u32>;
@group(0) @binding(2) var<storage, read_write> ctx: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> params: Params;

// This lane's share of the head's HEAD_DIM / 4 vectors from `at`: vector r * LANES + lane at [r].
fn row_share(at: u32, lane: u32) -> array<vec4<f32>, ROUNDS> {
    let d4 = HEAD_DIM / 4u;
    var share: array<vec4<f32>, ROUNDS>;
    for (var r = 0u; r < (d4 + LANES - 1u) / LANES; r++) {
        share[r] = qkv[at + min(r * LANES + lane, d4 - 1u)];
    }
    return share;
}

@compute @workgroup_size(LANES)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_index) query_lane: u32) {
    let b = wid.z;
    if (b >= params.batch) {
        return;
    }
    let base = starts[b];
    let len = starts[b + 1u] - base;
    let i0 = wid.x * LANES;
    if (i0 >= len) {
        return;
    }
    // Every lane is active here: its index in the subgroup (modulo 8).
    let lane = subgroupExclusiveAdd(1u) % LANES;
    let i = min(i0 + query_lane, len - 1u);
    let d4 = HEAD_DIM / 4u;
    let h4 = HEADS * d4;
    let row4 = 3u * h4;
    let head = wid.y * d4;

    var qs: array<vec4<f32>, MAX_HEAD_VEC4>;
    var acc: array<vec4<f32>, MAX_HEAD_VEC4>;
    for (var d = 0u; d < d4; d++) {
        qs[d] = qkv[(base + i) * row4 + head + d] * SCALE;
    }
    var running_max = -3.0e38;
    var total = 0.0;

    for (var j0 = 0u; j0 < len; j0 += POSITIONS) {
        // Scores of positions j0 .. j0 + POSITIONS - 1; those past the end read the last row
        // again (finite) and get no weight.
        var scores: array<f32, POSITIONS>;
        for (var p = 0u; p < POSITIONS; p++) {
            let keys = row_share((base + min(j0 + p, len - 1u)) * row4 + h4 + head, lane);
            var s = 0.0;
            for (var d = 0u; d < d4; d++) {
                s += dot(qs[d], subgroupShuffle(keys[d / LANES], d % LANES));
            }
            scores[p] = s;
        }
        // One online-softmax update per step: the step's maximum, one rescale.
        var new_max = running_max;
        for (var p = 0u; p < POSITIONS; p++) {
            if (j0 + p < len) {
                new_max = max(new_max, scores[p]);
            }
        }
        let rescale = exp(running_max - new_max);
        var step_total = 0.0;
        for (var p = 0u; p < POSITIONS; p++) {
            scores[p] = select(0.0, exp(scores[p] - new_max), j0 + p < len);
            step_total += scores[p];
        }
        total = total * rescale + step_total;
        running_max = new_max;
        var values: array<array<vec4<f32>, ROUNDS>, POSITIONS>;
        for (var p = 0u; p < POSITIONS; p++) {
            values[p] = row_share((base + min(j0 + p, len - 1u)) * row4 + 2u * h4 + head, lane);
        }
        for (var d = 0u; d < d4; d++) {
            var sum = acc[d] * rescale;
            for (var p = 0u; p < POSITIONS; p++) {
                sum += scores[p] * subgroupShuffle(values[p][d / LANES], d % LANES);
            }
            acc[d] = sum;
        }
    }

    if (i0 + query_lane < len) {
        let inv = 1.0 / total;
        for (var d = 0u; d < d4; d++) {
            ctx[(base + i) * h4 + head + d] = acc[d] * inv;
        }
    }
}
