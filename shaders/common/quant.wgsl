// Packed weight matrices (layout: packed.wgsl) as binding 0, read one word per row at a time,
// and their dequantization: the embedding kernel's helpers. ROW_GROUP invocations working on
// consecutive rows read consecutive words.

@group(0) @binding(0) var<storage, read> weights: array<u32>;

// Eight dequantized elements: `a` for x group chunk_groups(c).x, `b` for chunk_groups(c).y.
struct Chunk {
    a: vec4<f32>,
    b: vec4<f32>,
}

// Index of word 0 of block b of row `row`; word w is at block_base(row, b) + w * ROW_GROUP.
fn block_base(row: u32, b: u32) -> u32 {
    return ((row / ROW_GROUP * (COLS / 32u) + b) * BLOCK_WORDS) * ROW_GROUP + row % ROW_GROUP;
}

// Word w of the block starting at `base`.
fn block_word(base: u32, w: u32) -> u32 {
    return weights[base + w * ROW_GROUP];
}

// Scale d and minimum m of the block starting at `base` ((1, 0) for float dtypes; Q6_K: the
// scales of elements 0-15 and 16-31).
fn block_scale(base: u32) -> vec2<f32> {
    if DTYPE == DTYPE_F32 || DTYPE == DTYPE_F16 {
        return vec2<f32>(1.0, 0.0);
    }
    if has_second_scale() {
        return vec2<f32>(bitcast<f32>(block_word(base, 0u)), bitcast<f32>(block_word(base, 1u)));
    }
    return vec2<f32>(bitcast<f32>(block_word(base, 0u)), 0.0);
}

// Chunk c of the block starting at `base`, whose scale and minimum are `dm`.
fn dequant_chunk(base: u32, c: u32, dm: vec2<f32>) -> Chunk {
    if is_nibbles() {
        let header = header_words();
        let word = vec4<u32>(block_word(base, header + c));
        var lo = (word >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u);
        var hi = (word >> vec4<u32>(4u, 12u, 20u, 28u)) & vec4<u32>(15u);
        if DTYPE == DTYPE_Q5_0 || DTYPE == DTYPE_Q5_1 {
            let qh = vec4<u32>(block_word(base, header + 4u));
            let bits = vec4<u32>(4u * c) + vec4<u32>(0u, 1u, 2u, 3u);
            lo |= ((qh >> bits) & vec4<u32>(1u)) << vec4<u32>(4u);
            hi |= ((qh >> (bits + vec4<u32>(16u))) & vec4<u32>(1u)) << vec4<u32>(4u);
        }
        if DTYPE == DTYPE_Q6_K {
            let bits = vec4<u32>(8u * c) + vec4<u32>(0u, 2u, 4u, 6u);
            lo |= ((vec4<u32>(block_word(base, header + 4u)) >> bits) & vec4<u32>(3u)) << vec4<u32>(4u);
            hi |= ((vec4<u32>(block_word(base, header + 5u)) >> bits) & vec4<u32>(3u)) << vec4<u32>(4u);
        }
        let q_lo = vec4<f32>(lo);
        let q_hi = vec4<f32>(hi);
        switch DTYPE {
            case DTYPE_Q4_0: { return Chunk((q_lo - 8.0) * dm.x, (q_hi - 8.0) * dm.x); }
            case DTYPE_Q5_0: { return Chunk((q_lo - 16.0) * dm.x, (q_hi - 16.0) * dm.x); }
            case DTYPE_Q6_K: { return Chunk((q_lo - 32.0) * dm.x, (q_hi - 32.0) * dm.y); }
            default: { return Chunk(q_lo * dm.x + dm.y, q_hi * dm.x + dm.y); }
        }
    }
    if DTYPE == DTYPE_Q8_0 {
        let w = 1u + 2u * c;
        return Chunk(
            vec4<f32>(unpack4xI8(block_word(base, w))) * dm.x,
            vec4<f32>(unpack4xI8(block_word(base, w + 1u))) * dm.x,
        );
    }
    if DTYPE == DTYPE_F16 {
        let w = 4u * c;
        return Chunk(
            vec4<f32>(unpack2x16float(block_word(base, w)), unpack2x16float(block_word(base, w + 1u))),
            vec4<f32>(unpack2x16float(block_word(base, w + 2u)), unpack2x16float(block_word(base, w + 3u))),
        );
    }
    let w = 8u * c;
    return Chunk(
        bitcast<vec4<f32>>(vec4<u32>(
            block_word(base, w), block_word(base, w + 1u), block_word(base, w + 2u), block_word(base, w + 3u),
        )),
        bitcast<vec4<f32>>(vec4<u32>(
            block_word(base, w + 4u), block_word(base, w + 5u), block_word(base, w + 6u), block_word(base, w + 7u),
        )),
    );
}
