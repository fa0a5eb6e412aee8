// The split-K decode variant (attention_common.wgsl has the computation): SPLIT_LANES
// invocations share one (query head, token), lane l taking positions first + l,
// first + l + SPLIT_LANES, ... with an online softmax of its own (maximum, sum, accumulator);
// merge_lanes (attention_merge_subgroup.wgsl or attention_merge_workgroup.wgsl) rescales the
// lanes' states to their common maximum and sums them. A decode step has only N_HEADS
// (head, token) pairs per token: one invocation each leaves a GPU idle and walks a long context
// serially, so the positions are split instead, in one dispatch (no second combine pass).
// Strided rather than contiguous positions keep the lanes' loads of a block's rows together.
//
// A workgroup holds WORKGROUP_SIZE / SPLIT_LANES heads of one token (grid y). Every invocation
// reaches merge_lanes (no early return: barriers and subgroup operations need uniform control
// flow); the lanes of a head past the last compute the last head again and store nothing.

// Invocations per (head, token): a power of two dividing WORKGROUP_SIZE (for the subgroup
// merge, at most the adapter's smallest subgroup size, so a head's lanes are in one subgroup).
override SPLIT_LANES: u32;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(local_invocation_index) local: u32,
    @builtin(workgroup_id) group: vec3<u32>,
) {
    let wanted = group.x * (WORKGROUP_SIZE / SPLIT_LANES) + local / SPLIT_LANES;
    let h = min(wanted, N_HEADS - 1u);
    let t = group.y;
    let lane = local % SPLIT_LANES;
    let state = attend_positions(t, h, lane, SPLIT_LANES);

    // (The grid has exactly params.count rows of workgroups; checking t keeps the kernel's
    // bindings those of the other variants.)
    let stores = wanted < N_HEADS && t < params.count;
    let out_base = (t * N_HEADS + h) * (HEAD_DIM / 4u);
    var acc = state.acc;
    merge_lanes(state.running_max, state.total, &acc, local, out_base, stores);
}
