// The arithmetic of staged.wgsl in f32: weights and x staged as f32 and multiplied in f32, every
// block's products added to the tile as they come (x unscaled). The staged variant of every
// adapter (RowTile::staging = Staging::F32).

alias Staged = f32;

// Whether x and the weights are staged divided by per-block scales (token_value,
// weight_scale) to keep them in the staged type's range: not needed in f32.
const STAGED_SCALED: bool = false;

// A number for token i of the workgroup: only the fused norm's sums of squares after the last
// block, passed through staged_x (free once the products are done), as the f16 variant passes
// them through its own array.
fn set_token_value(i: u32, value: f32) {
    staged_x[i] = vec4<f32>(value);
}

fn token_value(i: u32) -> f32 {
    return staged_x[i].x;
}

// The per-row weight scales of the f16 variant: the weights are staged as they are.
fn set_weight_scale(i: u32, scale: vec4<f32>) {}

fn weight_scale(i: u32) -> vec4<f32> {
    return vec4<f32>(1.0);
}
