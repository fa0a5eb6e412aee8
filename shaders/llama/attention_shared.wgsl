// The shared-rows variant (attention_common.wgsl has the computation), for software adapters
// with subgroups of at least 8 lanes: a workgroup's 8 invocations are 8 consecutive tokens
// (global id y), each computing HEADS_PER_INVOCATION query heads of one kv head (global id x
// numbers the groups of heads). When the 8 tokens belong to one sequence (one block table, as
// in a prefill) they walk the union of their positions together, POSITIONS at a step: for each
// position every lane loads an eighth of the key row and takes the rest from the other lanes
// through subgroup shuffles, and the same for the value row. A key or value row is then loaded once per 8
// tokens and used for HEADS_PER_INVOCATION heads, where the serial kernel loads it once per
// token and head; a position outside a lane's own range (before its window, after its token)
// gets no weight. llvmpipe makes each storage load a bounds-checked scalar load per lane and a
// shuffle a vector permute, so a long prefill's attention loads 8 * HEADS_PER_INVOCATION times
// fewer values. Tokens of different sequences in one workgroup (a batched step) are computed
// lane by lane as the serial kernel does (attention_serial.wgsl).

// Query heads per invocation: a divisor of the heads sharing a kv head, at most
// MAX_HEADS_PER_INVOCATION, with HEADS_PER_INVOCATION * HEAD_DIM / 4 <= MAX_HEAD_VEC4.
override HEADS_PER_INVOCATION: u32;
const MAX_HEADS_PER_INVOCATION: u32 = 8u;
// Invocations of a workgroup: tokens sharing their rows.
const LANES: u32 = 8u;

// Positions a step of the walk takes: their rows are loaded together and the accumulators
// rescaled once per step (a divisor of BLOCK).
const POSITIONS: u32 = 4u;
const MAX_STEP_SCORES: u32 = MAX_HEADS_PER_INVOCATION * POSITIONS;

// Whether a token at position `last` attending from `first` attends to position j.
fn attends(j: u32, first: u32, last: u32) -> bool {
    return j >= first && j <= last;
}

// Vectors a row of one kv head is, over the lanes: this lane holds vectors lane, lane + LANES,
// ... (as many as MAX_HEAD_VEC4 needs; those past the head are never read).
const MAX_ROUNDS: u32 = MAX_HEAD_VEC4 / LANES;

// This lane's share of the kv head's key row (`keys`) or value row at `base`: vector
// r * LANES + lane at [r].
fn row_share(keys: bool, base: u32, lane: u32) -> array<vec4<f32>, MAX_ROUNDS> {
    let d4 = HEAD_DIM / 4u;
    var share: array<vec4<f32>, MAX_ROUNDS>;
    for (var r = 0u; r < (d4 + LANES - 1u) / LANES; r++) {
        let at = base + min(r * LANES + lane, d4 - 1u);
        if keys {
            share[r] = kv_load(k_cache[at]);
        } else {
            share[r] = kv_load(v_cache[at]);
        }
    }
    return share;
}

@compute @workgroup_size(1, LANES)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    // Every lane is active here: its index in the subgroup (modulo 8).
    let lane = subgroupExclusiveAdd(1u) % LANES;
    // Lanes past the last token compute it again and store nothing.
    let t = min(id.y, params.count - 1u);
    let first_head = id.x * HEADS_PER_INVOCATION;
    let table = table_starts[t];
    if !subgroupAll(table == subgroupBroadcastFirst(table)) {
        if id.y < params.count {
            for (var g = 0u; g < HEADS_PER_INVOCATION; g++) {
                attend_serially(t, first_head + g);
            }
        }
        return;
    }

    let d4 = HEAD_DIM / 4u;
    let kv_head = first_head / (N_HEADS / N_KV_HEADS);
    // Query and accumulator of head first_head + g at [g * d4 ..].
    var qs: array<vec4<f32>, MAX_HEAD_VEC4>;
    var acc: array<vec4<f32>, MAX_HEAD_VEC4>;
    var running_max: array<f32, MAX_HEADS_PER_INVOCATION>;
    var total: array<f32, MAX_HEADS_PER_INVOCATION>;
    for (var g = 0u; g < HEADS_PER_INVOCATION; g++) {
        let q_base = query_base(t, first_head + g);
        for (var i = 0u; i < d4; i++) {
            qs[g * d4 + i] = q[q_base + i] * SCALE;
        }
        running_max[g] = NO_SCORE;
    }

    let last = positions[t];
    let first = first_attended(last);
    // Steps of POSITIONS positions from a multiple of POSITIONS, so that a step's positions
    // lie in one block; positions outside a lane's range get no weight.
    let start = subgroupMin(first) / POSITIONS * POSITIONS;
    let end = subgroupMax(last);
    var block_row = 0u;
    for (var j0 = start; j0 <= end; j0 += POSITIONS) {
        if j0 == start || j0 % BLOCK == 0u {
            block_row = blocks[table + j0 / BLOCK] * BLOCK;
        }
        // Score of position j0 + p for head first_head + g at [g * POSITIONS + p].
        var scores: array<f32, MAX_STEP_SCORES>;
        for (var p = 0u; p < POSITIONS; p++) {
            let keys = row_share(true, kv_base(block_row, (j0 + p) % BLOCK, kv_head), lane);
            for (var i = 0u; i < d4; i++) {
                let k = subgroupShuffle(keys[i / LANES], i % LANES);
                for (var g = 0u; g < HEADS_PER_INVOCATION; g++) {
                    scores[g * POSITIONS + p] += dot(qs[g * d4 + i], k);
                }
            }
        }
        // One online-softmax update per step: the step's maximum, one rescale.
        var rescale: array<f32, MAX_HEADS_PER_INVOCATION>;
        for (var g = 0u; g < HEADS_PER_INVOCATION; g++) {
            var new_max = running_max[g];
            for (var p = 0u; p < POSITIONS; p++) {
                if attends(j0 + p, first, last) {
                    new_max = max(new_max, scores[g * POSITIONS + p]);
                }
            }
            rescale[g] = exp(running_max[g] - new_max);
            var step_total = 0.0;
            for (var p = 0u; p < POSITIONS; p++) {
                let s = g * POSITIONS + p;
                scores[s] = select(0.0, exp(scores[s] - new_max), attends(j0 + p, first, last));
                step_total += scores[s];
            }
            total[g] = total[g] * rescale[g] + step_total;
            running_max[g] = new_max;
        }
        var values: array<array<vec4<f32>, MAX_ROUNDS>, POSITIONS>;
        for (var p = 0u; p < POSITIONS; p++) {
            values[p] = row_share(false, kv_base(block_row, (j0 + p) % BLOCK, kv_head), lane);
        }
        for (var i = 0u; i < d4; i++) {
            var v: array<vec4<f32>, POSITIONS>;
            for (var p = 0u; p < POSITIONS; p++) {
                // A row this lane does not attend to may be stale (another sequence's, or
                // never written): its weight is 0, but 0 * inf would still poison the sum.
                let value = subgroupShuffle(values[p][i / LANES], i % LANES);
                v[p] = select(vec4<f32>(0.0), value, attends(j0 + p, first, last));
            }
            for (var g = 0u; g < HEADS_PER_INVOCATION; g++) {
                var sum = acc[g * d4 + i] * rescale[g];
                for (var p = 0u; p < POSITIONS; p++) {
                    sum += scores[g * POSITIONS + p] * v[p];
                }
                acc[g * d4 + i] = sum;
            }
        }
    }

    if id.y < params.count {
        for (var g = 0u; g < HEADS_PER_INVOCATION; g++) {
            let out_base = (t * N_HEADS + first_head + g) * d4;
            for (var i = 0u; i < d4; i++) {
                out[out_base + i] = acc[g * d4 + i] / total[g];
            }
        }
    }
}
