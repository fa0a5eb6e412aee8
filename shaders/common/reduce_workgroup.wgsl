// reduce_lanes for split.wgsl through workgroup memory, for adapters without subgroup
// operations: every lane stores its sums, one barrier, then lane 0 of each row group adds its
// row group's SPLIT_LANES entries (a serial sum: one barrier instead of the log2(SPLIT_LANES) a
// tree would need). Only lane 0's result is complete.

// Largest WORKGROUP_SIZE of a split kernel (48-byte entries: 12 KiB of workgroup memory).
const SPLIT_MAX_INVOCATIONS: u32 = 256u;

var<workgroup> lane_sums: array<LaneSums, SPLIT_MAX_INVOCATIONS>;

fn reduce_lanes(mine: LaneSums, local: u32) -> LaneSums {
    lane_sums[local] = mine;
    workgroupBarrier();
    var s = mine;
    if local % SPLIT_LANES == 0u {
        for (var l = 1u; l < SPLIT_LANES; l++) {
            let other = lane_sums[local + l];
            s.lo += other.lo;
            s.hi += other.hi;
            s.sum_sq += other.sum_sq;
        }
    }
    return s;
}
