// Quantized matrix times activations: out[t][r] = sum_c W[r][c] * x[t][c] (+ out[t][r] when
// ACCUMULATE, which fuses a residual add), for t < params.count tokens.
//
// Each invocation computes a register tile of ROWS_PER_INVOCATION rows x TOKENS_PER_INVOCATION
// tokens without barriers: every weight word is loaded and dequantized once and reused for all
// tokens of the tile, every x value is loaded once and reused for all rows. Invocation i takes
// rows (i / ROW_GROUP * ROWS_PER_INVOCATION + k) * ROW_GROUP + i % ROW_GROUP, so ROW_GROUP
// neighbouring invocations read neighbouring words of the interleaved weight layout.
// Requires: weights from quant.wgsl (binding 0), COLS a multiple of 32.

const MAX_TILE: u32 = 8u;

override ROWS: u32;
override ROWS_PER_INVOCATION: u32;   // 1..=MAX_TILE
override TOKENS_PER_INVOCATION: u32; // 1..=MAX_TILE
override ACCUMULATE: bool;
override WORKGROUP_SIZE: u32;

struct Params {
    count: u32,
}

@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let n_tokens = params.count;
    let lane = id.x % ROW_GROUP;
    let group0 = id.x / ROW_GROUP * ROWS_PER_INVOCATION;
    let tok0 = id.y * TOKENS_PER_INVOCATION;
    if group0 * ROW_GROUP >= ROWS || tok0 >= n_tokens {
        return;
    }
    let blocks = COLS / 32u;
    let block_stride = BLOCK_WORDS * ROW_GROUP;
    let x_row = COLS / 4u;

    // Rows and tokens past the end are clamped to the last one: computed, never stored.
    var w_row: array<u32, MAX_TILE>;
    for (var r = 0u; r < ROWS_PER_INVOCATION; r++) {
        w_row[r] = block_base(min((group0 + r) * ROW_GROUP + lane, ROWS - 1u), 0u);
    }
    var x_tok: array<u32, MAX_TILE>;
    for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
        x_tok[t] = min(tok0 + t, n_tokens - 1u) * x_row;
    }

    var acc: array<array<f32, MAX_TILE>, MAX_TILE>; // [token][row]
    for (var b = 0u; b < blocks; b++) {
        var dm: array<vec2<f32>, MAX_TILE>;
        for (var r = 0u; r < ROWS_PER_INVOCATION; r++) {
            dm[r] = block_scale(w_row[r] + b * block_stride);
        }
        for (var c = 0u; c < 4u; c++) {
            // Few values live at once: the tile's x chunk, then one row's weights at a time.
            let g = chunk_groups(c) + vec2<u32>(b * 8u);
            var xa: array<vec4<f32>, MAX_TILE>;
            var xb: array<vec4<f32>, MAX_TILE>;
            for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
                xa[t] = x[x_tok[t] + g.x];
                xb[t] = x[x_tok[t] + g.y];
            }
            for (var r = 0u; r < ROWS_PER_INVOCATION; r++) {
                let w = dequant_chunk(w_row[r] + b * block_stride, c, dm[r]);
                for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
                    acc[t][r] += dot(w.a, xa[t]) + dot(w.b, xb[t]);
                }
            }
        }
    }

    for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
        let tok = tok0 + t;
        for (var r = 0u; r < ROWS_PER_INVOCATION; r++) {
            let row = (group0 + r) * ROW_GROUP + lane;
            if tok < n_tokens && row < ROWS {
                let i = tok * ROWS + row;
                var value = acc[t][r];
                if ACCUMULATE {
                    value += out[i];
                }
                out[i] = value;
            }
        }
    }
}
