// How a row-group kernel reads x and the fused norm's weight (row_group.wgsl) when SHARE_X: the
// 8 lanes of each subgroup-aligned group of 8 invocations, which work on the same tokens and
// the same block at the same time, load one 16-byte group of the block each (lane l group l)
// and read the others' elements through subgroupShuffle. A software adapter (llvmpipe) makes
// every storage load one bounds-checked scalar load per lane and component, and a shuffle one
// vector permute, so this takes 8x fewer loads for x; every invocation must reach every call
// (no early return), in subgroups of at least 8 lanes. Without SHARE_X (the split kernels,
// whose lanes take different blocks) every invocation loads its own elements, as in
// x_own.wgsl.

override SHARE_X: bool;

// One block (8 groups of 4 elements) of x for one token, or of the norm weight.
struct BlockX {
    // Index of the block's first group.
    base: u32,
    // With SHARE_X, group `x_lane()` of the block.
    mine: vec4<f32>,
}

// The lane of this invocation in its group of 8: its index in the subgroup (all lanes are
// active), modulo 8.
fn x_lane() -> u32 {
    if SHARE_X {
        return subgroupExclusiveAdd(1u) % 8u;
    }
    return 0u;
}

fn x_block(base: u32, lane: u32) -> BlockX {
    var block = BlockX(base, vec4<f32>(0.0));
    if SHARE_X {
        block.mine = x_vec(base + lane);
    }
    return block;
}

fn norm_block(base: u32, lane: u32) -> BlockX {
    var block = BlockX(base, vec4<f32>(0.0));
    if SHARE_X {
        block.mine = norm_weight[base + lane];
    }
    return block;
}

// Chunk `groups` (the two groups chunk_groups gives) of a block of x or of the norm weight,
// as an invocation holds it while it multiplies it: with SHARE_X its block's group `x_lane()`,
// from which chunk_element shuffles one element at a time, so that the invocation holds only
// the element it multiplies (holding a chunk of x for every token of the tile has llvmpipe
// spill the tile's accumulators); without, the chunk's two groups.
struct ChunkX {
    a: vec4<f32>,
    b: vec4<f32>,
    groups: vec2<u32>,
}

fn x_chunk(block: BlockX, groups: vec2<u32>) -> ChunkX {
    if SHARE_X {
        return ChunkX(block.mine, vec4<f32>(0.0), groups);
    }
    return ChunkX(x_vec(block.base + groups.x), x_vec(block.base + groups.y), groups);
}

fn norm_chunk(block: BlockX, groups: vec2<u32>) -> ChunkX {
    if SHARE_X {
        return ChunkX(block.mine, vec4<f32>(0.0), groups);
    }
    return ChunkX(norm_weight[block.base + groups.x], norm_weight[block.base + groups.y], groups);
}

// Element j (0..8) of a chunk.
fn chunk_element(chunk: ChunkX, j: u32) -> f32 {
    if SHARE_X {
        return subgroupShuffle(chunk.a[j % 4u], select(chunk.groups.y, chunk.groups.x, j < 4u));
    }
    if j < 4u {
        return chunk.a[j];
    }
    return chunk.b[j - 4u];
}

// The sum of squares of a chunk's elements: with SHARE_X the squares of the two lanes that hold
// its groups.
fn chunk_squares(chunk: ChunkX) -> f32 {
    if SHARE_X {
        let squares = dot(chunk.a, chunk.a);
        return subgroupShuffle(squares, chunk.groups.x) + subgroupShuffle(squares, chunk.groups.y);
    }
    return dot(chunk.a, chunk.a) + dot(chunk.b, chunk.b);
}
