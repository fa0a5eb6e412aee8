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
    let d4 = HEAD_DIM / 4u;
    let kv_head = h / (N_HEADS / N_KV_HEADS);

    var qs: array<vec4<f32>, MAX_HEAD_VEC4>;
    let q_base = query_base(t, h);
    for (var i = 0u; i < d4; i++) {
        qs[i] = q[q_base + i] * SCALE;
    }

    var acc: array<vec4<f32>, MAX_HEAD_VEC4>;
    var running_max = NO_SCORE;
    var total = 0.0;
    let last = positions[t];
    let table = table_starts[t];
    for (var j = first_attended(last) + lane; j <= last; j += SPLIT_LANES) {
        let base = position_base(table, j, kv_head);
        var score = 0.0;
        for (var i = 0u; i < d4; i++) {
            score += dot(qs[i], kv_load(k_cache[base + i]));
        }
        let new_max = max(running_max, score);
        let rescale = exp(running_max - new_max);
        let weight = exp(score - new_max);
        total = total * rescale + weight;
        for (var i = 0u; i < d4; i++) {
            acc[i] = acc[i] * rescale + weight * kv_load(v_cache[base + i]);
        }
        running_max = new_max;
    }

    // (The grid has exactly params.count rows of workgroups; checking t keeps the kernel's
    // bindings those of the other variants.)
    let stores = wanted < N_HEADS && t < params.count;
    merge_lanes(running_max, total, &acc, local, (t * N_HEADS + h) * d4, stores);
}
