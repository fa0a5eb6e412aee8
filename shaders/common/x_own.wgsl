// How a row-group kernel reads x and the fused norm's weight (row_group.wgsl): every invocation
// loads each chunk it multiplies. On GPUs the lanes that read one address are served by one
// load; the alternative, x_shared.wgsl, is for software adapters, which load per lane.

// One block (8 groups of 4 elements) of x for one token, or of the norm weight.
struct BlockX {
    // Index of the block's first group.
    base: u32,
}

// The lane of this invocation in its group of 8 (x_shared.wgsl); here no lane shares anything.
fn x_lane() -> u32 {
    return 0u;
}

fn x_block(base: u32, lane: u32) -> BlockX {
    return BlockX(base);
}

fn norm_block(base: u32, lane: u32) -> BlockX {
    return BlockX(base);
}

// Chunk `groups` (the two groups chunk_groups gives) of a block of x or of the norm weight,
// as an invocation holds it while it multiplies it.
struct ChunkX {
    // Elements 0-3 (group groups.x) and 4-7 (group groups.y).
    a: vec4<f32>,
    b: vec4<f32>,
}

fn x_chunk(block: BlockX, groups: vec2<u32>) -> ChunkX {
    return ChunkX(x_vec(block.base + groups.x), x_vec(block.base + groups.y));
}

fn norm_chunk(block: BlockX, groups: vec2<u32>) -> ChunkX {
    return ChunkX(norm_weight[block.base + groups.x], norm_weight[block.base + groups.y]);
}

// Element j (0..8) of a chunk.
fn chunk_element(chunk: ChunkX, j: u32) -> f32 {
    if j < 4u {
        return chunk.a[j];
    }
    return chunk.b[j - 4u];
}

// The sum of squares of a chunk's elements.
fn chunk_squares(chunk: ChunkX) -> f32 {
    return dot(chunk.a, chunk.a) + dot(chunk.b, chunk.b);
}
