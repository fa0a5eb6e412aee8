// merge_lanes for attention_split.wgsl through subgroup shuffles (wgpu's SUBGROUP feature): a
// butterfly over the SPLIT_LANES lanes of a head, which lie in one subgroup (consecutive
// invocation indices; SPLIT_LANES is a power of two at most the subgroup size). No barrier, no
// workgroup memory: first the common maximum, then each lane's sum and accumulator rescaled to
// it and summed; lane 0 stores.

fn lanes_max(value: f32) -> f32 {
    var m = value;
    for (var mask = SPLIT_LANES / 2u; mask > 0u; mask /= 2u) {
        m = max(m, subgroupShuffleXor(m, mask));
    }
    return m;
}

fn merge_lanes(
    lane_max: f32,
    lane_total: f32,
    acc: ptr<function, array<vec4<f32>, MAX_HEAD_VEC4>>,
    local: u32,
    out_base: u32,
    stores: bool,
) {
    // A lane that saw no position has lane_max = NO_SCORE: its factor is 0.
    let factor = exp(lane_max - lanes_max(lane_max));
    var total = lane_total * factor;
    for (var mask = SPLIT_LANES / 2u; mask > 0u; mask /= 2u) {
        total += subgroupShuffleXor(total, mask);
    }
    let writes = stores && local % SPLIT_LANES == 0u;
    for (var i = 0u; i < HEAD_DIM / 4u; i++) {
        var sum = (*acc)[i] * factor;
        for (var mask = SPLIT_LANES / 2u; mask > 0u; mask /= 2u) {
            sum += subgroupShuffleXor(sum, mask);
        }
        if writes {
            out[out_base + i] = sum / total;
        }
    }
}
