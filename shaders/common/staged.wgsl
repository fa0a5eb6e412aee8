// The staged matrix-matrix variant (prefill on GPUs): a workgroup computes STAGED_ROW_GROUPS (8)
// row groups — 64 rows — for WORKGROUP_SIZE / 8 token tiles of TOKENS_PER_INVOCATION tokens
// (at most STAGED_MAX_TOKENS, 64). For each block of 32 columns the workgroup first stages in
// workgroup memory the block's weights of its 64 rows, dequantized to f32, and its tokens' x
// (times the norm weight with NORM), each loaded from storage and dequantized once for the
// whole workgroup; after a barrier every invocation multiplies its row group by its token tile
// from there: a register tile of 8 rows x TOKENS_PER_INVOCATION tokens (row_group.wgsl's Tile,
// so every kernel's epilogue takes it as it is), fed 4 elements per workgroup-memory load. An
// invocation of the row-group kernels dequantizes every weight it uses and reads x for its
// tokens itself; here a weight is dequantized once per 64 tokens and an x element loaded once
// per 64 rows.
//
// Invocation `local` computes row group local % 8 of its workgroup's and token tile local / 8,
// so the 8 invocations of a token tile read consecutive vec4s of the staged weights (no
// workgroup-memory bank conflicts) and one address of the staged x (a broadcast). Every
// invocation reaches every barrier: invocations past the matrix or past the tokens compute the
// last row group or token again and store nothing.
//
// The staged type `Staged` and its arithmetic come from the file included beside this one:
// staged_f32.wgsl (f32 throughout) or staged_f16.wgsl (f16 staging and block products, x staged
// divided by a per-block scale, blocks summed in f32). Each block's products are summed on their
// own (in `Staged`) and then added to the tile's f32 accumulators.
//
// Workgroup memory: two arrays of 512 vec4 — f32: 8 KiB each, 16 KiB in all, WebGPU's
// guaranteed minimum of max_compute_workgroup_storage_size; f16: 4 KiB each, with 256 bytes of
// per-token scales and 256 of per-row weight scales.

const STAGED_ROW_GROUPS: u32 = 8u;
const STAGED_MAX_TOKENS: u32 = 64u;

// The weights of one block: vec4 (elements 4q..4q+4) of row r of row group rg at
// (q * ROW_GROUP + r) * STAGED_ROW_GROUPS + rg.
var<workgroup> staged_w: array<vec4<Staged>, 512>;
// x of one block: vec4 q of token t of token tile tt at (q * TOKENS_PER_INVOCATION + t) *
// token tiles + tt (divided by token_value(token) where STAGED_SCALED).
var<workgroup> staged_x: array<vec4<Staged>, 512>;

// Where an invocation works: its row group (clamped to the last), whether it stores the result,
// and its token tile's first token, relative to params.first.
struct StagedPlace {
    g: u32,
    stores: bool,
    tok0: u32,
}

// Token tiles per workgroup.
fn staged_token_tiles() -> u32 {
    return WORKGROUP_SIZE / STAGED_ROW_GROUPS;
}

// The place of invocation `local` (local_invocation_index) of workgroup `group`.
fn staged_place(local: u32, group: vec3<u32>) -> StagedPlace {
    let g = group.x * STAGED_ROW_GROUPS + local % STAGED_ROW_GROUPS;
    let tokens = staged_token_tiles() * TOKENS_PER_INVOCATION;
    let tok0 = group.y * tokens + local / STAGED_ROW_GROUPS * TOKENS_PER_INVOCATION;
    return StagedPlace(row_group_of(g), row_group_of(g) == g, tok0);
}

// The scale d and minimum m (Q6_K: its two scales) of block b of row group g, for rows
// 4h..4h+4: (1, 0) for the float dtypes.
struct RowScales {
    d: vec4<f32>,
    m: vec4<f32>,
}

fn row_scales(g: u32, b: u32, h: u32) -> RowScales {
    var scales = RowScales(vec4<f32>(1.0), vec4<f32>(0.0));
    if DTYPE != DTYPE_F32 && DTYPE != DTYPE_F16 {
        scales.d = bitcast<vec4<f32>>(weight_vec(word_vec(g, b, 0u) + h));
    }
    if has_second_scale() {
        scales.m = bitcast<vec4<f32>>(weight_vec(word_vec(g, b, 1u) + h));
    }
    return scales;
}

// Dequantized elements 0..8 of chunk c of block b of row group g, for rows 4h..4h+4, whose
// scales are `scales`.
fn chunk_rows(g: u32, b: u32, c: u32, h: u32, scales: RowScales) -> array<vec4<f32>, 8> {
    let d = scales.d;
    let m = scales.m;
    let first = word_vec(g, b, chunk_first_word(c)) + h;
    var elements: array<vec4<f32>, 8>;
    if DTYPE == DTYPE_F32 {
        for (var j = 0u; j < 8u; j++) {
            elements[j] = bitcast<vec4<f32>>(weight_vec(first + 2u * j));
        }
    } else if is_nibbles() {
        var high_a = vec4<u32>(0u);
        var high_b = vec4<u32>(0u);
        if has_high_bits() {
            let at = word_vec(g, b, header_words() + 4u) + h;
            high_a = weight_vec(at);
            if DTYPE == DTYPE_Q6_K {
                high_b = weight_vec(at + 2u);
            }
        }
        let codes = nibble_codes(weight_vec(first), high_a, high_b, c);
        for (var j = 0u; j < 8u; j++) {
            elements[j] = dequantize(code_element(codes, j), d, m, j);
        }
    } else {
        var words: array<vec4<u32>, 4>;
        for (var i = 0u; i < chunk_words(); i++) {
            words[i] = weight_vec(first + 2u * i);
        }
        for (var j = 0u; j < 8u; j++) {
            elements[j] = dequantize(element_raw(words[element_word(j)], j), d, m, j);
        }
    }
    return elements;
}

// The largest magnitude a dequantized weight of a block with `scales` can have, per row; 1 for
// the float dtypes and for an all-zero block.
fn block_bound(scales: RowScales) -> vec4<f32> {
    let d = abs(scales.d);
    let m = abs(scales.m);
    var bound: vec4<f32>;
    switch DTYPE {
        case DTYPE_Q4_0: { bound = 8.0 * d; }
        case DTYPE_Q5_0: { bound = 16.0 * d; }
        case DTYPE_Q4_1: { bound = 15.0 * d + m; }
        case DTYPE_Q5_1: { bound = 31.0 * d + m; }
        case DTYPE_Q8_0: { bound = 128.0 * d; }
        case DTYPE_Q6_K: { bound = 32.0 * max(d, m); }
        default: { bound = vec4<f32>(1.0); }
    }
    return select(vec4<f32>(1.0), bound, bound > vec4<f32>(0.0));
}

// Stages block b of the weights of row groups g0 .. g0 + 8: 64 jobs (a row group's chunk c for
// rows 4h..4h+4), shared among the workgroup's invocations. Where STAGED_SCALED the weights are
// divided by their row's block bound, which the job of chunk 0 keeps (weight_scale).
fn stage_weights(g0: u32, b: u32, local: u32) {
    for (var job = local; job < STAGED_ROW_GROUPS * 8u; job += WORKGROUP_SIZE) {
        let rg = job / 8u;
        let c = job % 8u / 2u;
        let h = job % 2u;
        let g = row_group_of(g0 + rg);
        let scales = row_scales(g, b, h);
        var e = chunk_rows(g, b, c, h, scales);
        if STAGED_SCALED {
            let bound = block_bound(scales);
            for (var j = 0u; j < 8u; j++) {
                e[j] /= bound;
            }
            if c == 0u {
                set_weight_scale(rg * 2u + h, bound);
            }
        }
        let groups = chunk_groups(c);
        for (var i = 0u; i < 4u; i++) {
            let r = 4u * h + i;
            staged_w[(groups.x * ROW_GROUP + r) * STAGED_ROW_GROUPS + rg] =
                vec4<Staged>(vec4<f32>(e[0][i], e[1][i], e[2][i], e[3][i]));
            staged_w[(groups.y * ROW_GROUP + r) * STAGED_ROW_GROUPS + rg] =
                vec4<Staged>(vec4<f32>(e[4][i], e[5][i], e[6][i], e[7][i]));
        }
    }
}

// How far below 1 the staged x stays: F16 weights are staged unscaled (block_bound), up to f16's
// 65504, so their x is staged in [-1/32, 1/32] and a block's sum of 32 products stays in range.
fn x_headroom() -> f32 {
    return select(1.0, 32.0, DTYPE == DTYPE_F16);
}

// Stages block b of x for the workgroup's tokens (the first is `first`; past last_token the
// last again), invocation i staging token i (where STAGED_SCALED, divided by the block's largest
// |value|, kept as token_value(i)); returns the sum of squares of its token's block.
fn stage_x(first: u32, last_token: u32, b: u32, local: u32) -> f32 {
    let tiles = staged_token_tiles();
    var sum_sq = 0.0;
    if local < tiles * TOKENS_PER_INVOCATION {
        let tt = local / TOKENS_PER_INVOCATION;
        let t = local % TOKENS_PER_INVOCATION;
        let base = min(first + local, last_token) * (COLS / 4u) + b * 8u;
        var block: array<vec4<f32>, 8>;
        var largest = vec4<f32>(0.0);
        for (var q = 0u; q < 8u; q++) {
            var v = x_vec(base + q);
            sum_sq += dot(v, v);
            if NORM {
                v *= norm_weight[b * 8u + q];
            }
            block[q] = v;
            largest = max(largest, abs(v));
        }
        // An all-zero block keeps the scale 1.
        let top = max(max(largest.x, largest.y), max(largest.z, largest.w));
        let scale = select(1.0, top * x_headroom(), STAGED_SCALED && top > 0.0);
        if STAGED_SCALED {
            set_token_value(local, scale);
        }
        for (var q = 0u; q < 8u; q++) {
            var v = block[q];
            if STAGED_SCALED {
                v /= scale;
            }
            staged_x[(q * TOKENS_PER_INVOCATION + t) * tiles + tt] = vec4<Staged>(v);
        }
    }
    return sum_sq;
}

// The tile of invocation `local` of workgroup `group` (at staged_place) for the tokens from
// `first` on (clamped to last_token): its row group times its token tile.
fn staged_tile(local: u32, group: vec3<u32>, first: u32, last_token: u32) -> Tile {
    let tiles = staged_token_tiles();
    let rg = local % STAGED_ROW_GROUPS;
    let tt = local / STAGED_ROW_GROUPS;
    let g0 = group.x * STAGED_ROW_GROUPS;
    let workgroup_first = first + group.y * tiles * TOKENS_PER_INVOCATION;
    var partial: Partial;
    var sum_sq = 0.0;
    for (var b = 0u; b < COLS / 32u; b++) {
        stage_weights(g0, b, local);
        sum_sq += stage_x(workgroup_first, last_token, b, local);
        workgroupBarrier();
        // This block's products, summed in the staged type.
        var block_lo: array<vec4<Staged>, MAX_TOKENS>;
        var block_hi: array<vec4<Staged>, MAX_TOKENS>;
        for (var q = 0u; q < 8u; q++) {
            var w: array<vec4<Staged>, 8>;
            for (var r = 0u; r < ROW_GROUP; r++) {
                w[r] = staged_w[(q * ROW_GROUP + r) * STAGED_ROW_GROUPS + rg];
            }
            for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
                let v = staged_x[(q * TOKENS_PER_INVOCATION + t) * tiles + tt];
                block_lo[t] += vec4<Staged>(dot(w[0], v), dot(w[1], v), dot(w[2], v), dot(w[3], v));
                block_hi[t] += vec4<Staged>(dot(w[4], v), dot(w[5], v), dot(w[6], v), dot(w[7], v));
            }
        }
        let w_scale_lo = weight_scale(rg * 2u);
        let w_scale_hi = weight_scale(rg * 2u + 1u);
        for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
            var scale = 1.0;
            if STAGED_SCALED {
                scale = token_value(tt * TOKENS_PER_INVOCATION + t);
            }
            partial.tile.lo[t] += vec4<f32>(block_lo[t]) * (scale * w_scale_lo);
            partial.tile.hi[t] += vec4<f32>(block_hi[t]) * (scale * w_scale_hi);
        }
        workgroupBarrier();
    }
    if NORM {
        // Each token's sum of squares, from the invocation that staged it.
        if local < tiles * TOKENS_PER_INVOCATION {
            set_token_value(local, sum_sq);
        }
        workgroupBarrier();
        for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
            partial.sum_sq[t] = token_value(tt * TOKENS_PER_INVOCATION + t);
        }
    }
    return finish_tile(partial);
}

// The staged entry point of every kernel that includes this file, which defines `params` and
// `store_tile(g, tok0, tile)` (its epilogue for row group g and tokens tok0 .. of its tile).
@compute @workgroup_size(WORKGROUP_SIZE)
fn main_staged(@builtin(local_invocation_index) local: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let at = staged_place(local, group);
    let tile = staged_tile(local, group, params.first, params.first + params.count - 1u);
    if at.stores {
        store_tile(at.g, at.tok0, tile);
    }
}
