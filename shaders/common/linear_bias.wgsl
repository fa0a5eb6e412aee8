// out[t][r] = act((W x[first + t])[r] + bias[r]) for t < params.count, act = GELU (erf form)
// with GELU, else the identity; x optionally RMS-normalised on the fly (NORM). Used for BERT's
// fused Q|K|V projection and its feed-forward up-projection. One invocation per row group
// (8 rows) and TOKENS_PER_INVOCATION tokens; see row_group.wgsl (main) and staged.wgsl
// (main_staged).

override GELU: bool;
override WORKGROUP_SIZE: u32;

@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// Per-row bias [ROWS].
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<uniform> params: Params;

// erf(x) by Abramowitz & Stegun 7.1.26: absolute error <= 1.5e-7, below f32 rounding of the
// GELU result for |x| >~ 1 and far below the f32 sums feeding it.
fn erf_approx(x: f32) -> f32 {
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t
        + 0.254829592) * t;
    let y = 1.0 - poly * exp(-a * a);
    return select(y, -y, x < 0.0);
}

// GELU, erf form (BERT's "gelu"): x/2 * (1 + erf(x / sqrt(2))).
fn gelu(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752));
}

// Stores the tile of row group g (plus the bias, through GELU with GELU) for tokens tok0 ...
fn store_tile(g: u32, tok0: u32, tile: Tile) {
    for (var r = 0u; r < ROW_GROUP; r++) {
        let row = g * ROW_GROUP + r;
        if row < ROWS {
            let b = bias[row];
            for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
                let tok = tok0 + t;
                if tok < params.count {
                    var value = tile_value(tile, t, r) + b;
                    if GELU {
                        value = gelu(value);
                    }
                    out[tok * ROWS + row] = value;
                }
            }
        }
    }
}
