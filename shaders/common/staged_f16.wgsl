// The arithmetic of staged.wgsl in f16 (needs SHADER_F16; RowTile::staging = Staging::F16):
// weights and x staged as f16 — half the workgroup memory and half the workgroup-memory traffic
// of the f32 variant — and each 32-column block's products summed in f16 (vec4<f16> dots, which
// GPUs run at twice the f32 rate), then scaled and added to the tile's f32 accumulators. So no
// sum in f16 runs over more than 32 products.
//
// Range: x is staged divided by the largest |x| of its token's block (times the norm weight with
// NORM; the scale is kept in f32, token_value), so every staged x is in [-1, 1] whatever the
// activations' magnitude (Gemma's residual stream exceeds f16's 65504), and a block's f16 sum is
// at most 32 max|w|. Weights are dequantized in f32 and rounded to f16: their magnitudes (block
// scale times code) stay far inside f16's range for every GGUF format. Precision: every product
// carries about four f16 roundings (weight, x, product, sum: unit 2^-11 each), so a result errs
// by about the f32 kernels' bound with f16's epsilon (2^-10) in place of f32's — the bound the
// kernel tests hold this variant to.
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
