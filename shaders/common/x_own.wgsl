// How a row-group kernel reads x and the fused norm's weight (row_group.wgsl): every invocation
// loads each 16-byte group it multiplies. On GPUs the lanes that read one address are served by
// one load; the alternative, x_shared.wgsl, is for software adapters, which load per lane.

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

// Group i (0..8) of a block of x.
fn x_group(block: BlockX, i: u32) -> vec4<f32> {
    return x_vec(block.base + i);
}

// Group i (0..8) of a block of the norm weight.
fn norm_group(block: BlockX, i: u32) -> vec4<f32> {
    return norm_weight[block.base + i];
}
