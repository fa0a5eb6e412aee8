// The packed weight layout (pio-gpu's quant.rs), shared by the quant.wgsl and row_group.wgsl
// helpers: rows in groups of ROW_GROUP; each row is a sequence of COLS / 32 blocks, each block
// BLOCK_WORDS 32-bit words, scales and minimums as f32 bits:
//   F32: 32 values; F16: 16 words of two halves (element 2i in the low half of word i);
//   Q4_0: d, 4 nibble words; Q4_1 (and Q4_K's sub-blocks): d, m, 4 nibble words;
//   Q5_0: d, 4 nibble words, qh; Q5_1 (and Q5_K's sub-blocks): d, m, 4 nibble words, qh;
//   Q6_K: d of elements 0-15, d of 16-31, 4 nibble words, 2 words of high bits;
//   Q8_0: d, 8 words of four i8.
// Nibble word w holds elements 4w..4w+4 in its bytes' low nibbles, 16+4w..16+4w+4 in the high
// ones; qh has bit 4 of element e at bit e; Q6_K's high words have bits 4-5 of element e (first
// word) and 16 + e (second word) at bit 2e.
// Within a row group the rows are interleaved word by word: word w of block b of row r is at
//   ((r / ROW_GROUP * BLOCKS + b) * BLOCK_WORDS + w) * ROW_GROUP + r % ROW_GROUP.
// A block is processed in 4 chunks of 8 elements; chunk c covers the x vec4 groups
// chunk_groups(c) of the block (groups are 4 consecutive elements).

const DTYPE_F32: u32 = 0u;
const DTYPE_F16: u32 = 1u;
const DTYPE_Q4_0: u32 = 2u;
const DTYPE_Q4_1: u32 = 3u;
const DTYPE_Q8_0: u32 = 4u;
const DTYPE_Q5_0: u32 = 5u;
const DTYPE_Q5_1: u32 = 6u;
const DTYPE_Q6_K: u32 = 7u;

const ROW_GROUP: u32 = 8u;

// Which of the DTYPE_* layouts the weights use.
override DTYPE: u32;
// Words per block of 32 elements for DTYPE.
override BLOCK_WORDS: u32;
// Elements per row (a multiple of 32).
override COLS: u32;

// Whether the codes' low 4 bits are in nibble words (every quantized layout but Q8_0).
fn is_nibbles() -> bool {
    return DTYPE == DTYPE_Q4_0 || DTYPE == DTYPE_Q4_1 || DTYPE == DTYPE_Q5_0 || DTYPE == DTYPE_Q5_1
        || DTYPE == DTYPE_Q6_K;
}

// Words before a nibble block's nibble words: the scale, and the minimum or second scale.
fn header_words() -> u32 {
    if DTYPE == DTYPE_Q4_1 || DTYPE == DTYPE_Q5_1 || DTYPE == DTYPE_Q6_K {
        return 2u;
    }
    return 1u;
}

// Whether codes have bits above the nibble, in high words after the nibble words (Q5_0, Q5_1:
// qh; Q6_K: two words of 2-bit fields).
fn has_high_bits() -> bool {
    return DTYPE == DTYPE_Q5_0 || DTYPE == DTYPE_Q5_1 || DTYPE == DTYPE_Q6_K;
}

// Whether word 1 of a block is a second f32 (Q4_1, Q5_1: the minimum; Q6_K: the second scale).
fn has_second_scale() -> bool {
    return header_words() == 2u;
}

// The two vec4 groups (0..8) of a block that chunk c (0..4) covers.
fn chunk_groups(c: u32) -> vec2<u32> {
    if is_nibbles() {
        // Low nibbles of word c are elements 4c..4c+4, high nibbles 16+4c..16+4c+4.
        return vec2<u32>(c, c + 4u);
    }
    return vec2<u32>(2u * c, 2u * c + 1u);
}
