// How a row-group kernel reads x and the fused norm's weight (row_group.wgsl) when SHARE_X: the
// 8 lanes of each subgroup-aligned group of 8 invocations, which work on the same tokens and
// the same block at the same time, load one 16-byte group of the block each (lane l group l)
// and read the others' through subgroupShuffle. A software adapter (llvmpipe) makes every
// storage load one bounds-checked scalar load per lane and component, and a shuffle one vector
// permute, so this takes 8x fewer loads for x; every invocation must reach every call (no
// early return), in subgroups of at least 8 lanes. Without SHARE_X (the split kernels, whose
// lanes take different blocks) every invocation loads its own groups, as in x_own.wgsl.

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

// Group i (0..8) of a block of x.
fn x_group(block: BlockX, i: u32) -> vec4<f32> {
    if SHARE_X {
        return subgroupShuffle(block.mine, i);
    }
    return x_vec(block.base + i);
}

// Group i (0..8) of a block of the norm weight.
fn norm_group(block: BlockX, i: u32) -> vec4<f32> {
    if SHARE_X {
        return subgroupShuffle(block.mine, i);
    }
    return norm_weight[block.base + i];
}
