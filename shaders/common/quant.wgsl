// Packed weight matrices: binding 0 and their dequantization, shared by the matmul and
// embedding kernels. Layout (see pio-gpu's quant.rs): rows in groups of ROW_GROUP; each row is a
// sequence of COLS / 32 blocks, each block BLOCK_WORDS 32-bit words:
//   F32: 32 values; F16: 16 words of two halves (element 2i in the low half of word i);
//   Q4_0: d (f32 bits), 4 nibble words; Q4_1: d, m (f32 bits), 4 nibble words;
//   Q8_0: d (f32 bits), 8 words of four i8.
// Within a row group the rows are interleaved word by word: word w of block b of row r is at
//   ((r / ROW_GROUP * BLOCKS + b) * BLOCK_WORDS + w) * ROW_GROUP + r % ROW_GROUP,
// so ROW_GROUP invocations working on consecutive rows read consecutive words.
// A block is processed in 4 chunks of 8 elements; chunk c covers the x vec4 groups
// chunk_groups(c) of the block (groups are 4 consecutive elements).

const DTYPE_F32: u32 = 0u;
const DTYPE_F16: u32 = 1u;
const DTYPE_Q4_0: u32 = 2u;
const DTYPE_Q4_1: u32 = 3u;
const DTYPE_Q8_0: u32 = 4u;

const ROW_GROUP: u32 = 8u;

// Which of the DTYPE_* layouts the weights use.
override DTYPE: u32;
// Words per block of 32 elements for DTYPE.
override BLOCK_WORDS: u32;
// Elements per row (a multiple of 32).
override COLS: u32;

@group(0) @binding(0) var<storage, read> weights: array<u32>;

// Eight dequantized elements: `a` for x group chunk_groups(c).x, `b` for chunk_groups(c).y.
struct Chunk {
    a: vec4<f32>,
    b: vec4<f32>,
}

fn is_q4() -> bool {
    return DTYPE == DTYPE_Q4_0 || DTYPE == DTYPE_Q4_1;
}

// The two vec4 groups (0..8) of a block that chunk c (0..4) covers.
fn chunk_groups(c: u32) -> vec2<u32> {
    if is_q4() {
        // Low nibbles of word c are elements 4c..4c+4, high nibbles 16+4c..16+4c+4.
        return vec2<u32>(c, c + 4u);
    }
    return vec2<u32>(2u * c, 2u * c + 1u);
}

// Index of word 0 of block b of row `row`; word w is at block_base(row, b) + w * ROW_GROUP.
fn block_base(row: u32, b: u32) -> u32 {
    return ((row / ROW_GROUP * (COLS / 32u) + b) * BLOCK_WORDS) * ROW_GROUP + row % ROW_GROUP;
}

// Word w of the block starting at `base`.
fn block_word(base: u32, w: u32) -> u32 {
    return weights[base + w * ROW_GROUP];
}

// Scale d and minimum m of the block starting at `base` ((1, 0) for float dtypes).
fn block_scale(base: u32) -> vec2<f32> {
    if DTYPE == DTYPE_Q4_1 {
        return vec2<f32>(bitcast<f32>(block_word(base, 0u)), bitcast<f32>(block_word(base, 1u)));
    }
    if DTYPE == DTYPE_Q4_0 || DTYPE == DTYPE_Q8_0 {
        return vec2<f32>(bitcast<f32>(block_word(base, 0u)), 0.0);
    }
    return vec2<f32>(1.0, 0.0);
}

// Chunk c of the block starting at `base`, whose scale and minimum are `dm`.
fn dequant_chunk(base: u32, c: u32, dm: vec2<f32>) -> Chunk {
    if is_q4() {
        let word = vec4<u32>(block_word(base, select(1u, 2u, DTYPE == DTYPE_Q4_1) + c));
        let lo = vec4<f32>((word >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u));
        let hi = vec4<f32>((word >> vec4<u32>(4u, 12u, 20u, 28u)) & vec4<u32>(15u));
        if DTYPE == DTYPE_Q4_0 {
            return Chunk((lo - 8.0) * dm.x, (hi - 8.0) * dm.x);
        }
        return Chunk(lo * dm.x + dm.y, hi * dm.x + dm.y);
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
