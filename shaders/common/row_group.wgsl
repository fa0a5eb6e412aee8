// The core of the fused linear kernels: one invocation computes a whole row group (the 8 rows
// that pio-gpu's packed layout interleaves word by word, see quant.rs) for up to MAX_TOKENS
// tokens, without barriers.
//
// Why whole row groups: the 8 rows store word w of block b side by side, so the invocation reads
// each word of all 8 rows with two 16-byte loads. On llvmpipe every load with a non-constant
// offset costs about the same whatever its width, so this reads the weights with a quarter of
// the loads of one-row-per-invocation kernels; on GPUs each lane reads whole 32-byte sectors.
// Each dequantized weight is reused for TOKENS_PER_INVOCATION tokens and each x value for 8 rows.
// Accumulators are vectors over rows (rows 0-3 and 4-7), so dequantization is vector work too.
//
// With NORM, x is RMS-normalised on the fly (fusing RMSNorm into its consumer): the tile is
// computed against x * norm_weight while the sum of squares of x is accumulated from the same
// loads, and the result is scaled by 1 / sqrt(mean(x^2) + NORM_EPS) at the end. (W (g*x) / rms
// equals W (g * x / rms) exactly in real arithmetic; only the rounding order differs.)
//
// Element j < 4 of chunk c is component j of x group chunk_groups(c).x, element j >= 4
// component j - 4 of chunk_groups(c).y. How x and the norm weight are read is the including
// module's choice: x_own.wgsl (each invocation loads its own) or x_shared.wgsl (8 lanes share
// their loads through subgroup shuffles).
//
// Bindings 0-2 are declared here; kernels declare theirs from 3 on, with `params: Params`.

// Runtime parameters: tokens first .. first + count of x.
struct Params {
    count: u32,
    first: u32,
}

const MAX_TOKENS: u32 = 8u;

// Rows of the matrix (DTYPE, BLOCK_WORDS and COLS: packed.wgsl).
override ROWS: u32;
// Tokens per invocation, 1..=MAX_TOKENS.
override TOKENS_PER_INVOCATION: u32;
// Fuse an RMSNorm of x (weights `norm_weight`, epsilon NORM_EPS) into the product.
override NORM: bool;
override NORM_EPS: f32 = 1e-5;

// Packed weights, as 16-byte vectors: the 8 rows' word w of a row group are two vectors.
@group(0) @binding(0) var<storage, read> weights: array<Bytes16>;
// Activations [tokens][COLS].
@group(0) @binding(1) var<storage, read> x: array<Bytes16>;
// The RMSNorm weight [COLS] (bound but unused without NORM).
@group(0) @binding(2) var<storage, read> norm_weight: array<vec4<f32>>;

// Vector i of the packed weights (rows 0-3 or 4-7 of one word of a row group).
fn weight_vec(i: u32) -> vec4<u32> {
    return unpack_bytes16(weights[i]);
}

// Vector i of x (4 consecutive elements).
fn x_vec(i: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(unpack_bytes16(x[i]));
}

// Products of one row group with up to MAX_TOKENS tokens: lo[t][r] is row r (0-3), hi[t][r]
// row 4 + r, for token t of the tile.
struct Tile {
    lo: array<vec4<f32>, MAX_TOKENS>,
    hi: array<vec4<f32>, MAX_TOKENS>,
}

// The codes of chunk c of a nibble layout, for four rows, one per byte: of elements 4c..4c+4
// from the low nibbles of `nibbles` (second: of 16+4c..16+4c+4 from the high nibbles), with
// their bits 4 and up from the block's high words (qh in `high_a`; Q6_K: first and second high
// word) moved in beside them. Spreading four bits at once and reading whole bytes afterwards
// costs a few operations per chunk instead of a shift and mask per element.
fn chunk_codes(nibbles: vec4<u32>, high_a: vec4<u32>, high_b: vec4<u32>, c: u32, second: bool) -> vec4<u32> {
    var codes = (nibbles >> vec4<u32>(select(0u, 4u, second))) & vec4<u32>(0x0f0f0f0fu);
    if DTYPE == DTYPE_Q5_0 || DTYPE == DTYPE_Q5_1 {
        // Bit i of the 4 bits moves to bit 8i: b * (1 + 2^7 + 2^14 + 2^21) places copy i of
        // bit i at 8i, and no two copies overlap.
        let bits = (high_a >> vec4<u32>(4u * c + select(0u, 16u, second))) & vec4<u32>(15u);
        codes |= ((bits * vec4<u32>(0x204081u)) & vec4<u32>(0x01010101u)) << vec4<u32>(4u);
    }
    if DTYPE == DTYPE_Q6_K {
        // The 2-bit field i (bits 2i, 2i+1) moves to bits 8i+4, 8i+5.
        let h = (select(high_a, high_b, second) >> vec4<u32>(8u * c)) & vec4<u32>(0xffu);
        let spread = (h & vec4<u32>(0x3u)) | ((h & vec4<u32>(0xcu)) << vec4<u32>(6u))
            | ((h & vec4<u32>(0x30u)) << vec4<u32>(12u)) | ((h & vec4<u32>(0xc0u)) << vec4<u32>(18u));
        codes |= spread << vec4<u32>(4u);
    }
    return codes;
}

// The codes of a chunk of a nibble layout for four rows: elements 0-3 (a) and 4-7 (b), held in
// variables (llvmpipe keeps arrays indexed at run time in memory). The 4-bit layouts read both
// from the nibble word, the others from their codes (chunk_codes).
struct NibbleCodes {
    a: vec4<u32>,
    b: vec4<u32>,
}

// The codes of chunk c from its nibble word and the block's high words (as chunk_codes).
fn nibble_codes(nibbles: vec4<u32>, high_a: vec4<u32>, high_b: vec4<u32>, c: u32) -> NibbleCodes {
    if has_high_bits() {
        return NibbleCodes(
            chunk_codes(nibbles, high_a, high_b, c, false),
            chunk_codes(nibbles, high_a, high_b, c, true),
        );
    }
    return NibbleCodes(nibbles, nibbles);
}

// Code of element j (0..8) of a chunk for four rows, before dequantization.
fn code_element(codes: NibbleCodes, j: u32) -> vec4<f32> {
    // A 4-bit layout's elements 4-7 are the high nibbles.
    let high_nibble = j >= 4u && !has_high_bits();
    let shift = vec4<u32>(8u * (j % 4u) + select(0u, 4u, high_nibble));
    let mask = vec4<u32>(select(15u, 0xffu, has_high_bits()));
    return vec4<f32>((select(codes.b, codes.a, j < 4u) >> shift) & mask);
}

// Words of a block that hold one chunk of 8 elements (F16, Q8_0; F32 and the nibble layouts
// read theirs in their own paths).
fn chunk_words() -> u32 {
    return select(2u, 4u, DTYPE == DTYPE_F16);
}

// First word of chunk c (0..4) of a block.
fn chunk_first_word(c: u32) -> u32 {
    switch DTYPE {
        case DTYPE_F32: { return 8u * c; }
        case DTYPE_F16: { return 4u * c; }
        case DTYPE_Q8_0: { return 1u + 2u * c; }
        default: { return header_words() + c; }
    }
}

// Index (within the chunk's words) of the word holding element j of a chunk (F16, Q8_0).
fn element_word(j: u32) -> u32 {
    if DTYPE == DTYPE_F16 {
        return j / 2u;
    }
    return j / 4u;
}

// Element j of a chunk for four rows, from the word holding it for those rows, before scaling
// (F16, Q8_0).
fn element_raw(word: vec4<u32>, j: u32) -> vec4<f32> {
    if DTYPE == DTYPE_F16 {
        let h = (word >> vec4<u32>(16u * (j % 2u))) & vec4<u32>(0xffffu);
        return vec4<f32>(
            unpack2x16float(h.x).x, unpack2x16float(h.y).x,
            unpack2x16float(h.z).x, unpack2x16float(h.w).x,
        );
    }
    let shifted = bitcast<vec4<i32>>(word << vec4<u32>(24u - 8u * (j % 4u)));
    return vec4<f32>(shifted >> vec4<u32>(24u));
}

// Dequantizes raw values of element j of a chunk with the block's scale d and minimum m (per
// row; Q6_K: the scales of the block's elements 0-15 and 16-31).
fn dequantize(raw: vec4<f32>, d: vec4<f32>, m: vec4<f32>, j: u32) -> vec4<f32> {
    switch DTYPE {
        case DTYPE_Q4_0: { return (raw - 8.0) * d; }
        case DTYPE_Q5_0: { return (raw - 16.0) * d; }
        case DTYPE_Q4_1, DTYPE_Q5_1: { return raw * d + m; }
        case DTYPE_Q8_0: { return raw * d; }
        case DTYPE_Q6_K: { return (raw - 32.0) * select(m, d, j < 4u); }
        default: { return raw; }
    }
}

// Index of the vector holding rows 0-3 of word w of block b of row group g (rows 4-7: +1).
fn word_vec(g: u32, b: u32, w: u32) -> u32 {
    return ((g * (COLS / 32u) + b) * BLOCK_WORDS + w) * 2u;
}

// A row group's products over some of its blocks, before the fused norm's scaling: with
// NORM, sum_sq[t] is the sum of squares of token t's x over the same blocks.
struct Partial {
    tile: Tile,
    sum_sq: array<f32, MAX_TOKENS>,
}

// The row group invocation `x` (its global id along the rows) computes: x itself, or the last
// row group for invocations past it, which compute it again and store nothing (every invocation
// stays to the end, as x_shared.wgsl's lanes need; the token tile is uniform in a workgroup, so
// kernels may return early on it).
fn row_group_of(x: u32) -> u32 {
    return min(x, (ROWS + ROW_GROUP - 1u) / ROW_GROUP - 1u);
}

// Row group g times tokens first_token .. first_token + TOKENS_PER_INVOCATION of x; tokens
// past last_token are clamped to it (computed, for the caller not to store).
fn row_group_tile(g: u32, first_token: u32, last_token: u32) -> Tile {
    return finish_tile(row_group_partial(g, first_token, last_token, 0u, 1u));
}

// The tile of a row group from its partial products over all its blocks: with NORM, scaled by
// 1 / rms of each token's x.
fn finish_tile(partial: Partial) -> Tile {
    var tile = partial.tile;
    if NORM {
        for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
            let inv_rms = inverseSqrt(partial.sum_sq[t] / f32(COLS) + NORM_EPS);
            tile.lo[t] *= inv_rms;
            tile.hi[t] *= inv_rms;
        }
    }
    return tile;
}

// row_group_tile's products over the blocks first_block, first_block + block_step, ... of the
// row only (the split kernels' lanes share a row group's blocks this way, split.wgsl).
fn row_group_partial(g: u32, first_token: u32, last_token: u32, first_block: u32, block_step: u32) -> Partial {
    let blocks = COLS / 32u;
    let x_row = COLS / 4u;
    var x_base: array<u32, MAX_TOKENS>;
    for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
        x_base[t] = min(first_token + t, last_token) * x_row;
    }
    let lane = x_lane();
    var tile: Tile;
    var sum_sq: array<f32, MAX_TOKENS>;
    for (var b = first_block; b < blocks; b += block_step) {
        var d_lo = vec4<f32>(1.0);
        var d_hi = vec4<f32>(1.0);
        var m_lo = vec4<f32>(0.0);
        var m_hi = vec4<f32>(0.0);
        if DTYPE != DTYPE_F32 && DTYPE != DTYPE_F16 {
            d_lo = bitcast<vec4<f32>>(weight_vec(word_vec(g, b, 0u)));
            d_hi = bitcast<vec4<f32>>(weight_vec(word_vec(g, b, 0u) + 1u));
        }
        if has_second_scale() {
            m_lo = bitcast<vec4<f32>>(weight_vec(word_vec(g, b, 1u)));
            m_hi = bitcast<vec4<f32>>(weight_vec(word_vec(g, b, 1u) + 1u));
        }
        // The block's high-bit words (qh; Q6_K's two), loaded once for its four chunks.
        var high_a_lo = vec4<u32>(0u);
        var high_a_hi = vec4<u32>(0u);
        var high_b_lo = vec4<u32>(0u);
        var high_b_hi = vec4<u32>(0u);
        if has_high_bits() {
            let at = word_vec(g, b, header_words() + 4u);
            high_a_lo = weight_vec(at);
            high_a_hi = weight_vec(at + 1u);
            if DTYPE == DTYPE_Q6_K {
                high_b_lo = weight_vec(at + 2u);
                high_b_hi = weight_vec(at + 3u);
            }
        }
        // The block's x for each token and its norm weight (x_own.wgsl, x_shared.wgsl).
        var x_blocks: array<BlockX, MAX_TOKENS>;
        for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
            x_blocks[t] = x_block(x_base[t] + b * 8u, lane);
        }
        var norm = BlockX();
        if NORM {
            norm = norm_block(b * 8u, lane);
        }
        for (var c = 0u; c < 4u; c++) {
            let groups = chunk_groups(c);
            // Element j of the chunk, for token t, is chunk_element(x_chunks[t], j) times
            // chunk_element(norm_c, j) (x_own.wgsl, x_shared.wgsl).
            var x_chunks: array<ChunkX, MAX_TOKENS>;
            for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
                x_chunks[t] = x_chunk(x_blocks[t], groups);
                if NORM {
                    sum_sq[t] += chunk_squares(x_chunks[t]);
                }
            }
            var norm_c = ChunkX();
            if NORM {
                norm_c = norm_chunk(norm, groups);
            }
            let first = word_vec(g, b, chunk_first_word(c));
            if DTYPE == DTYPE_F32 {
                // One word per element: load each where it is used rather than staging the
                // chunk's 16 vectors in an array first (llvmpipe keeps such arrays in memory).
                for (var j = 0u; j < 8u; j++) {
                    let v_lo = bitcast<vec4<f32>>(weight_vec(first + 2u * j));
                    let v_hi = bitcast<vec4<f32>>(weight_vec(first + 2u * j + 1u));
                    let gj = select(1.0, chunk_element(norm_c, j), NORM);
                    for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
                        let xv = chunk_element(x_chunks[t], j) * gj;
                        tile.lo[t] += v_lo * xv;
                        tile.hi[t] += v_hi * xv;
                    }
                }
                continue;
            }
            if is_nibbles() {
                let codes_lo = nibble_codes(weight_vec(first), high_a_lo, high_b_lo, c);
                let codes_hi = nibble_codes(weight_vec(first + 1u), high_a_hi, high_b_hi, c);
                for (var j = 0u; j < 8u; j++) {
                    let v_lo = dequantize(code_element(codes_lo, j), d_lo, m_lo, j);
                    let v_hi = dequantize(code_element(codes_hi, j), d_hi, m_hi, j);
                    let gj = select(1.0, chunk_element(norm_c, j), NORM);
                    for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
                        let xv = chunk_element(x_chunks[t], j) * gj;
                        tile.lo[t] += v_lo * xv;
                        tile.hi[t] += v_hi * xv;
                    }
                }
                continue;
            }
            var w_lo: array<vec4<u32>, 8>;
            var w_hi: array<vec4<u32>, 8>;
            for (var i = 0u; i < chunk_words(); i++) {
                w_lo[i] = weight_vec(first + 2u * i);
                w_hi[i] = weight_vec(first + 2u * i + 1u);
            }
            for (var j = 0u; j < 8u; j++) {
                let k = element_word(j);
                let v_lo = dequantize(element_raw(w_lo[k], j), d_lo, m_lo, j);
                let v_hi = dequantize(element_raw(w_hi[k], j), d_hi, m_hi, j);
                let gj = select(1.0, chunk_element(norm_c, j), NORM);
                for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
                    let xv = chunk_element(x_chunks[t], j) * gj;
                    tile.lo[t] += v_lo * xv;
                    tile.hi[t] += v_hi * xv;
                }
            }
        }
    }
    return Partial(tile, sum_sq);
}

// Row r (0..8) of token t of a tile.
fn tile_value(tile: Tile, t: u32, r: u32) -> f32 {
    if r < 4u {
        return tile.lo[t][r];
    }
    return tile.hi[t][r - 4u];
}
