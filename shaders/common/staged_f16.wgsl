// The arithmetic of staged.wgsl in f16 (needs SHADER_F16; RowTile::staging = Staging::F16):
// weights and x staged as f16 — half the workgroup memory and half the workgroup-memory traffic
// of the f32 variant — and each 32-column block's products summed in f16 (vec4<f16> dots, which
// GPUs run at twice the f32 rate), then scaled and added to the tile's f32 accumulators. So no
// sum in f16 runs over more than 32 products.
//
// Range: x is staged divided by the largest |x| of its token's block (times the norm weight with
// NORM; the scale is kept in f32, token_value), so every staged x is in [-1, 1] whatever the
// activations' magnitude (Gemma's residual stream exceeds f16's 65504). Quantized weights are
// dequantized in f32 and staged divided by their row's block bound (block_bound: the largest
// magnitude the block's scale and minimum allow, kept in f32, weight_scale), so every staged
// weight is in [-1, 1] and a block's f16 sum at most 32 whatever the scales. F16 weights are
// staged as they are (up to 65504) with x in [-1/32, 1/32] instead (x_headroom), so a block's
// sum stays within f16's range too; F32 weights are never staged in f16 (Staging::for_weights).
// Precision: every product carries about four f16 roundings (weight, x, product, sum: unit
// 2^-11 each), so a result errs by about the f32 kernels' bound with f16's epsilon (2^-10) in
// place of f32's — the bound the kernel tests hold this variant to.
enable f16;

alias Staged = f16;

// x is staged divided by a per-token, per-block scale (token_value).
const STAGED_SCALED: bool = true;

// A number per token of the workgroup: during the products, the scale its current block of x
// was divided by; after the last block, the fused norm's sum of squares.
var<workgroup> staged_token: array<f32, STAGED_MAX_TOKENS>;

fn set_token_value(i: u32, value: f32) {
    staged_token[i] = value;
}

fn token_value(i: u32) -> f32 {
    return staged_token[i];
}

// Per row of the workgroup's 64 (vec4 i: rows 4(i % 2).. of row group i / 2), the bound its
// current block's weights were divided by.
var<workgroup> staged_w_scale: array<vec4<f32>, 16>;

fn set_weight_scale(i: u32, scale: vec4<f32>) {
    staged_w_scale[i] = scale;
}

fn weight_scale(i: u32) -> vec4<f32> {
    return staged_w_scale[i];
}
