// merge_lanes for attention_split.wgsl through workgroup memory, for adapters without subgroup
// operations (or whose subgroups may be narrower than SPLIT_LANES): every lane stores its
// maximum and sum; after a barrier each lane reads its head's SPLIT_LANES entries to get the
// common maximum, the total and its own rescaling factor. The accumulators follow in slices of
// MERGE_VEC4 vec4s per lane (so the workgroup memory stays small for any HEAD_DIM): each lane
// stores its rescaled slice, and after a barrier lane l of a head sums entries l, l + SPLIT_LANES, ...
// of the slice over the head's lanes (a serial sum: one barrier per slice instead of a
// log2(SPLIT_LANES)-deep tree of them) and stores it.

// vec4s of a lane's accumulator merged per barrier.
const MERGE_VEC4: u32 = 4u;
// WORKGROUP_SIZE * MERGE_VEC4 (an array's length must be a single override).
override MERGE_SLOTS: u32;

var<workgroup> lane_maxima: array<f32, WORKGROUP_SIZE>;
var<workgroup> lane_totals: array<f32, WORKGROUP_SIZE>;
var<workgroup> lane_slices: array<vec4<f32>, MERGE_SLOTS>;

fn merge_lanes(
    lane_max: f32,
    lane_total: f32,
    acc: ptr<function, array<vec4<f32>, MAX_HEAD_VEC4>>,
    local: u32,
    out_base: u32,
    stores: bool,
) {
    lane_maxima[local] = lane_max;
    lane_totals[local] = lane_total;
    workgroupBarrier();
    let lane = local % SPLIT_LANES;
    let first_lane = local - lane;
    var common_max = NO_SCORE;
    for (var l = 0u; l < SPLIT_LANES; l++) {
        common_max = max(common_max, lane_maxima[first_lane + l]);
    }
    var total = 0.0;
    for (var l = 0u; l < SPLIT_LANES; l++) {
        total += lane_totals[first_lane + l] * exp(lane_maxima[first_lane + l] - common_max);
    }
    // A lane that saw no position has lane_max = NO_SCORE: its factor is 0.
    let factor = exp(lane_max - common_max);
    let d4 = HEAD_DIM / 4u;
    for (var slice = 0u; slice < d4; slice += MERGE_VEC4) {
        for (var i = 0u; i < MERGE_VEC4; i++) {
            lane_slices[local * MERGE_VEC4 + i] = (*acc)[min(slice + i, d4 - 1u)] * factor;
        }
        workgroupBarrier();
        for (var e = lane; stores && e < MERGE_VEC4 && slice + e < d4; e += SPLIT_LANES) {
            var sum = vec4<f32>(0.0);
            for (var l = 0u; l < SPLIT_LANES; l++) {
                sum += lane_slices[(first_lane + l) * MERGE_VEC4 + e];
            }
            out[out_base + slice + e] = sum / total;
        }
        workgroupBarrier();
    }
}
