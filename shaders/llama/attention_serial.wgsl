// The serial computation (attention_common.wgsl has the function): one invocation walks all the
// positions of one (query head, token) in order with one online softmax and stores the head's
// output, barrier-free and without subgroup operations. The block id is loaded once per block,
// not per position.

fn attend_serially(t: u32, h: u32) {
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
    let first = first_attended(last);
    let table = table_starts[t];
    var block_row = 0u;
    for (var j = first; j <= last; j++) {
        if j == first || j % BLOCK == 0u {
            block_row = blocks[table + j / BLOCK] * BLOCK;
        }
        let base = kv_base(block_row, j % BLOCK, kv_head);
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

    let out_base = (t * N_HEADS + h) * d4;
    for (var i = 0u; i < d4; i++) {
        out[out_base + i] = acc[i] / total;
    }
}
