// out[t][n] = act(sum_k W[n][k] * x[t][k] + bias[n]), act = GELU or identity.
//
// Register tile: each invocation computes 8 rows x 4 tokens, so every weight chunk it loads is
// used for 4 tokens and every x value for 8 rows. Invocation i handles rows
// (i / 8 * 8 + j) * 8 + i % 8 (j < 8): neighbouring lanes read neighbouring weight chunks
// (chunk c of row n is at c * ROWS + n).

override ROWS: u32;
override COLS: u32;          // a multiple of the format's chunk (4, 8 or 16 columns)
override FORMAT: u32;
override GELU: bool = false;
override WORKGROUP_SIZE: u32 = 8u;

@group(0) @binding(0) var<storage, read> weights: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> scales: array<f32>;          // Q8_0 only
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<uniform> params: Params;

// One weight chunk against the four tokens' x values: one dot product per token.
fn dots(w: vec4<f32>, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(dot(w, x0), dot(w, x1), dot(w, x2), dot(w, x3));
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t0 = gid.y * 4u;
    let first_row = (gid.x / 8u) * 64u + gid.x % 8u;
    if (t0 >= params.tokens || first_row >= ROWS) {
        return;
    }
    let parts = chunk_parts(FORMAT);
    let cols4 = COLS / 4u;
    // Rows and tokens past the end are clamped: computed, never stored. The tile lives in
    // named registers (acc<row> holds the row's four tokens): arrays indexed in loops end up
    // in scratch memory on llvmpipe, costing ~4x.
    let r0 = min(first_row, ROWS - 1u);
    let r1 = min(first_row + 8u, ROWS - 1u);
    let r2 = min(first_row + 16u, ROWS - 1u);
    let r3 = min(first_row + 24u, ROWS - 1u);
    let r4 = min(first_row + 32u, ROWS - 1u);
    let r5 = min(first_row + 40u, ROWS - 1u);
    let r6 = min(first_row + 48u, ROWS - 1u);
    let r7 = min(first_row + 56u, ROWS - 1u);
    let last = params.tokens - 1u;
    let x0 = min(t0, last) * cols4;
    let x1 = min(t0 + 1u, last) * cols4;
    let x2 = min(t0 + 2u, last) * cols4;
    let x3 = min(t0 + 3u, last) * cols4;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    for (var c = 0u; c < cols4 / parts; c++) {
        let base = c * ROWS;
        let w0 = weights[base + r0];
        let w1 = weights[base + r1];
        let w2 = weights[base + r2];
        let w3 = weights[base + r3];
        let w4 = weights[base + r4];
        let w5 = weights[base + r5];
        let w6 = weights[base + r6];
        let w7 = weights[base + r7];
        var s = array<f32, 8>(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0);
        if (FORMAT == FORMAT_Q8_0) {
            let sb = (c / 2u) * ROWS;
            s = array<f32, 8>(scales[sb + r0], scales[sb + r1], scales[sb + r2], scales[sb + r3],
                              scales[sb + r4], scales[sb + r5], scales[sb + r6], scales[sb + r7]);
        }
        for (var p = 0u; p < parts; p++) {
            let col = c * parts + p;
            let y0 = x[x0 + col];
            let y1 = x[x1 + col];
            let y2 = x[x2 + col];
            let y3 = x[x3 + col];
            a0 += dots(dequant(w0, s[0], p, FORMAT), y0, y1, y2, y3);
            a1 += dots(dequant(w1, s[1], p, FORMAT), y0, y1, y2, y3);
            a2 += dots(dequant(w2, s[2], p, FORMAT), y0, y1, y2, y3);
            a3 += dots(dequant(w3, s[3], p, FORMAT), y0, y1, y2, y3);
            a4 += dots(dequant(w4, s[4], p, FORMAT), y0, y1, y2, y3);
            a5 += dots(dequant(w5, s[5], p, FORMAT), y0, y1, y2, y3);
            a6 += dots(dequant(w6, s[6], p, FORMAT), y0, y1, y2, y3);
            a7 += dots(dequant(w7, s[7], p, FORMAT), y0, y1, y2, y3);
        }
    }
    let acc = array<vec4<f32>, 8>(a0, a1, a2, a3, a4, a5, a6, a7);
    for (var j = 0u; j < 8u; j++) {
        let n = first_row + j * 8u;
        if (n >= ROWS) {
            break;
        }
        let b = bias[n];
        for (var k = 0u; k < 4u; k++) {
            let t = t0 + k;
            if (t < params.tokens) {
                var v = acc[j][k] + b;
                if (GELU) {
                    v = gelu(v);
                }
                out[t * ROWS + n] = v;
            }
        }
    }
}
