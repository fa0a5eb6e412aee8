// reduce_lanes for split.wgsl through subgroup shuffles (wgpu's SUBGROUP feature): a butterfly
// over the SPLIT_LANES lanes of a row group, which lie in one subgroup (consecutive invocation
// indices; SPLIT_LANES is a power of two at most the subgroup size). No barrier, no workgroup
// memory: every lane ends with the whole sum.

fn reduce_lanes(mine: LaneSums, local: u32) -> LaneSums {
    var s = mine;
    for (var mask = SPLIT_LANES / 2u; mask > 0u; mask /= 2u) {
        s.lo += subgroupShuffleXor(s.lo, mask);
        s.hi += subgroupShuffleXor(s.hi, mask);
        if NORM {
            s.sum_sq += subgroupShuffleXor(s.sum_sq, mask);
        }
    }
    return s;
}
