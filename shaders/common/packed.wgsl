// The packed weight layout (pio-gpu's quant.rs), shared by the quant.wgsl and row_group.wgsl
// helpers: rows in groups of ROW_GROUP; each row is a sequence of COLS / 32 blocks, each block
// BLOCK_WORDS 32-bit words:
//   F32: 32 values; F16: 16 words of two halves (element 2i in the low half of word i);
//   Q4_0: d (f32 bits), 4 nibble words; Q4_1: d, m (f32 bits), 4 nibble words;
//   Q8_0: d (f32 bits), 8 words of four i8.
// Within a row group the rows are interleaved word by word: word w of block b of row r is at
//   ((r / ROW_GROUP * BLOCKS + b) * BLOCK_WORDS + w) * ROW_GROUP + r % ROW_GROUP.
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
