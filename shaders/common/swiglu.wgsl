// The gated FFN's first half: out[t][i] = act(gate[i] . h) * (up[i] . h) for t < params.count,
// act = silu (SwiGLU), or with GELU the tanh-approximated GELU (GeGLU),
// h = x[t] (RMS-normalised on the fly with NORM), from one matrix interleaving gate and up rows
// by row group: group g holds gate rows 4g..4g+4 as its rows 0-3 and up rows 4g..4g+4 as rows
// 4-7 (pio-gpu's QuantMatrix::upload_gate_up builds it). ROWS = 2 * FF. See row_group.wgsl
// (main), staged.wgsl (main_staged) and split.wgsl (main_split).

override GELU: bool;
override WORKGROUP_SIZE: u32;

// x * sigmoid(x), or GELU's tanh form 0.5 x (1 + tanh(u)) = x * sigmoid(2u) with
// u = sqrt(2/pi) (x + 0.044715 x^3): written with exp so that large |x| give x or -0, not
// the NaN a tanh of an overflowing exp could.
fn activate(x: vec4<f32>) -> vec4<f32> {
    var z = x;
    if GELU {
        z = 1.5957691216057308 * (x + 0.044715 * x * x * x);
    }
    return x / (vec4<f32>(1.0) + exp(-z));
}

@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;

// Stores act(gate) * up of row group g (gate/up rows 4g..4g+4) for tokens tok0 ...
fn store_tile(g: u32, tok0: u32, tile: Tile) {
    let ff = ROWS / 2u;
    for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
        let tok = tok0 + t;
        let gate = tile.lo[t];
        let act = activate(gate) * tile.hi[t];
        for (var r = 0u; r < 4u; r++) {
            let i = g * 4u + r;
            if tok < params.count && i < ff {
                out[tok * ff + i] = act[r];
            }
        }
    }
}
