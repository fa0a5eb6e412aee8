// The flash-attention prefill variant (attention_common.wgsl has the computation), after
// FlashAttention-2: a workgroup takes QUERY_TOKENS consecutive tokens of the dispatch and the
// GROUP = N_HEADS / N_KV_HEADS query heads sharing kv head group.x — QUERY_ROWS query rows that
// all read the same keys and values — and walks the positions they attend to in tiles of TILE
// rows staged in workgroup memory, so each K and V row is loaded once per workgroup instead of
// once per query row. ROW_LANES invocations serve each query row: for a tile they compute its
// scores (keys l, l + ROW_LANES, ...), lane 0 updates the row's online softmax, and each lane
// accumulates its slice of the row's output (vec4s l, l + ROW_LANES, ...) over the tile.
//
// The tokens of a dispatch need not be one sequence (a batched step mixes sequences, each with
// its own block table): the workgroup serves its tokens a *segment* at a time, a segment being
// those of its tokens that share a block table, and walks the union of their positions; a
// row outside the segment, or a position outside a row's causal window, gets weight 0. One
// sequence's prefill chunk is one segment. Tiles start at multiples of TILE.
//
// Barriers sit in uniform control flow: the segment is published by invocation 0 and read
// with workgroupUniformLoad, and every loop around a barrier is bounded by it or by constants.

// Tokens per workgroup: at most 32 (invocation 0 tracks them in one u32).
override QUERY_TOKENS: u32;
// QUERY_TOKENS * N_HEADS / N_KV_HEADS.
override QUERY_ROWS: u32;
// Invocations per query row: divides HEAD_DIM / 4; WORKGROUP_SIZE = QUERY_ROWS * ROW_LANES.
override ROW_LANES: u32;
// Key/value rows per tile.
override TILE: u32;
// Array lengths (each must be a single override): QUERY_ROWS * HEAD_DIM / 4,
// TILE * HEAD_DIM / 4 and QUERY_ROWS * TILE.
override QUERY_SLOTS: u32;
override TILE_SLOTS: u32;
override SCORE_SLOTS: u32;

// The workgroup's query rows (scaled), row r = token r / GROUP, head r % GROUP of the group.
var<workgroup> query_tile: array<vec4<f32>, QUERY_SLOTS>;
// A tile of keys, then the same tile's values.
var<workgroup> kv_tile: array<vec4<f32>, TILE_SLOTS>;
// Each row's scores for the tile, then their softmax weights.
var<workgroup> scores: array<f32, SCORE_SLOTS>;
// How much each row's accumulator shrinks for the tile (its maximum grew), then its total.
var<workgroup> row_factor: array<f32, QUERY_ROWS>;
// The segment served: block table start, first and last position, and 1 (0: none left).
var<workgroup> segment: vec4<u32>;

// Stages the tile of rows start .. start + TILE of the segment's kv head from `keys` (or the
// values) into kv_tile: entry e is vec4 e % d4 of row e / d4. Positions outside first ..= last
// are zero (they may lie in blocks the sequence does not own).
fn stage_tile(keys: bool, table: u32, first: u32, last: u32, start: u32, kv_head: u32, local: u32) {
    let d4 = HEAD_DIM / 4u;
    for (var e = local; e < TILE_SLOTS; e += WORKGROUP_SIZE) {
        let j = start + e / d4;
        var value = vec4<f32>(0.0);
        if j >= first && j <= last {
            let word = position_base(table, j, kv_head) + e % d4;
            if keys {
                value = kv_load(k_cache[word]);
            } else {
                value = kv_load(v_cache[word]);
            }
        }
        kv_tile[e] = value;
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(local_invocation_index) local: u32,
    @builtin(workgroup_id) group: vec3<u32>,
) {
    let d4 = HEAD_DIM / 4u;
    let heads = N_HEADS / N_KV_HEADS;
    let kv_head = group.x;
    let first_token = group.y * QUERY_TOKENS;
    let row = local / ROW_LANES;
    let lane = local % ROW_LANES;
    let t = first_token + row / heads;
    let h = kv_head * heads + row % heads;
    let live = t < params.count;

    for (var e = local; e < QUERY_SLOTS; e += WORKGROUP_SIZE) {
        let r = e / d4;
        let token = first_token + r / heads;
        var value = vec4<f32>(0.0);
        if token < params.count {
            value = q[query_base(token, kv_head * heads + r % heads) + e % d4] * SCALE;
        }
        query_tile[e] = value;
    }

    var last = 0u;
    var first = 0u;
    var table = 0u;
    if live {
        last = positions[t];
        first = first_attended(last);
        table = table_starts[t];
    }
    // This lane's vec4s lane, lane + ROW_LANES, ... of the row's output.
    var acc: array<vec4<f32>, MAX_HEAD_VEC4>;
    // The row's online softmax (kept by lane 0).
    var running_max = NO_SCORE;
    var total = 0.0;
    // Invocation 0's record of the tokens served (bit i: token first_token + i).
    var served = 0u;
    loop {
        if local == 0u {
            var next = vec4<u32>(0u);
            for (var i = 0u; i < QUERY_TOKENS; i++) {
                let token = first_token + i;
                if token >= params.count || (served & (1u << i)) != 0u {
                    continue;
                }
                let p = positions[token];
                let token_table = table_starts[token];
                if next.w == 0u {
                    next = vec4<u32>(token_table, first_attended(p), p, 1u);
                }
                if token_table == next.x {
                    next.y = min(next.y, first_attended(p));
                    next.z = max(next.z, p);
                    served |= 1u << i;
                }
            }
            segment = next;
        }
        let served_now = workgroupUniformLoad(&segment);
        if served_now.w == 0u {
            break;
        }
        let member = live && table == served_now.x;
        for (var start = served_now.y - served_now.y % TILE; start <= served_now.z; start += TILE) {
            workgroupBarrier();
            stage_tile(true, served_now.x, served_now.y, served_now.z, start, kv_head, local);
            workgroupBarrier();
            for (var j = lane; j < TILE; j += ROW_LANES) {
                var score = 0.0;
                if member && start + j >= first && start + j <= last {
                    for (var i = 0u; i < d4; i++) {
                        score += dot(query_tile[row * d4 + i], kv_tile[j * d4 + i]);
                    }
                }
                scores[row * TILE + j] = score;
            }
            workgroupBarrier();
            stage_tile(false, served_now.x, served_now.y, served_now.z, start, kv_head, local);
            if lane == 0u {
                var new_max = running_max;
                for (var j = 0u; j < TILE; j++) {
                    if member && start + j >= first && start + j <= last {
                        new_max = max(new_max, scores[row * TILE + j]);
                    }
                }
                let rescale = exp(running_max - new_max);
                total *= rescale;
                for (var j = 0u; j < TILE; j++) {
                    var weight = 0.0;
                    if member && start + j >= first && start + j <= last {
                        weight = exp(scores[row * TILE + j] - new_max);
                    }
                    scores[row * TILE + j] = weight;
                    total += weight;
                }
                running_max = new_max;
                row_factor[row] = rescale;
            }
            workgroupBarrier();
            let rescale = row_factor[row];
            for (var k = 0u; k * ROW_LANES < d4; k++) {
                let i = lane + k * ROW_LANES;
                var sum = acc[k] * rescale;
                for (var j = 0u; j < TILE; j++) {
                    sum += scores[row * TILE + j] * kv_tile[j * d4 + i];
                }
                acc[k] = sum;
            }
        }
    }

    workgroupBarrier();
    if lane == 0u {
        row_factor[row] = total;
    }
    workgroupBarrier();
    if live {
        let row_total = row_factor[row];
        let out_base = (t * N_HEADS + h) * d4;
        for (var k = 0u; k * ROW_LANES < d4; k++) {
            out[out_base + lane + k * ROW_LANES] = acc[k] / row_total;
        }
    }
}
