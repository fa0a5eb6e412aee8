// out[t] = LayerNorm(W x[t] + bias + residual[t]) * gamma + beta.
//
// One workgroup computes all ROWS outputs of TILE_TOKENS tokens: invocation `lid` holds rows
// j * WORKGROUP_SIZE + lid (j < TILE_ROWS) x TILE_TOKENS tokens in registers; the LayerNorm's
// mean and variance are reduced through workgroup memory (two passes, no E[x^2] - mean^2).

override ROWS: u32;
override COLS: u32;
override FORMAT: u32;
override TILE_ROWS: u32;     // ceil(ROWS / WORKGROUP_SIZE), at most MAX_TILE
override TILE_TOKENS: u32 = 4u;
override EPS: f32;
override WORKGROUP_SIZE: u32;   // at most MAX_WORKGROUP

const MAX_WORKGROUP: u32 = 256u;

@group(0) @binding(0) var<storage, read> weights: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> scales: array<f32>;          // Q8_0 only
@group(0) @binding(2) var<storage, read> aux: array<f32>;             // bias, gamma, beta
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<uniform> params: Params;

var<workgroup> partial: array<f32, 2048>;    // MAX_TILE * MAX_WORKGROUP

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(local_invocation_id) lid3: vec3<u32>,
        @builtin(workgroup_id) wid: vec3<u32>) {
    let lid = lid3.x;
    let t0 = wid.y * TILE_TOKENS;
    let parts = chunk_parts(FORMAT);
    let cols4 = COLS / 4u;
    var rows: array<u32, MAX_TILE>;
    for (var j = 0u; j < TILE_ROWS; j++) {
        rows[j] = min(j * WORKGROUP_SIZE + lid, ROWS - 1u);
    }
    var xrow: array<u32, MAX_TILE>;
    for (var k = 0u; k < TILE_TOKENS; k++) {
        xrow[k] = min(t0 + k, params.tokens - 1u) * cols4;
    }
    var acc: array<array<f32, MAX_TILE>, MAX_TILE>;
    for (var c = 0u; c < cols4 / parts; c++) {
        var xs: array<array<vec4<f32>, 4>, MAX_TILE>;
        for (var k = 0u; k < TILE_TOKENS; k++) {
            for (var p = 0u; p < parts; p++) {
                xs[k][p] = x[xrow[k] + c * parts + p];
            }
        }
        for (var j = 0u; j < TILE_ROWS; j++) {
            let w = weights[c * ROWS + rows[j]];
            var scale = 1.0;
            if (FORMAT == FORMAT_Q8_0) {
                scale = scales[(c / 2u) * ROWS + rows[j]];
            }
            for (var p = 0u; p < parts; p++) {
                let wf = dequant(w, scale, p, FORMAT);
                for (var k = 0u; k < TILE_TOKENS; k++) {
                    acc[j][k] += dot(wf, xs[k][p]);
                }
            }
        }
    }
    // Bias and residual; rows past ROWS count as 0 in the sums below.
    for (var j = 0u; j < TILE_ROWS; j++) {
        let n = j * WORKGROUP_SIZE + lid;
        let valid = n < ROWS;
        let b = aux[rows[j]];
        for (var k = 0u; k < TILE_TOKENS; k++) {
            let t = min(t0 + k, params.tokens - 1u);
            acc[j][k] = select(0.0, acc[j][k] + b + residual[t * ROWS + rows[j]], valid);
        }
    }
    var mean: array<f32, MAX_TILE>;
    for (var k = 0u; k < TILE_TOKENS; k++) {
        var s = 0.0;
        for (var j = 0u; j < TILE_ROWS; j++) {
            s += acc[j][k];
        }
        partial[k * WORKGROUP_SIZE + lid] = s;
    }
    workgroupBarrier();
    for (var k = 0u; k < TILE_TOKENS; k++) {
        var s = 0.0;
        for (var l = 0u; l < WORKGROUP_SIZE; l++) {
            s += partial[k * WORKGROUP_SIZE + l];
        }
        mean[k] = s / f32(ROWS);
    }
    workgroupBarrier();
    for (var k = 0u; k < TILE_TOKENS; k++) {
        var s = 0.0;
        for (var j = 0u; j < TILE_ROWS; j++) {
            let d = select(0.0, acc[j][k] - mean[k], j * WORKGROUP_SIZE + lid < ROWS);
            s += d * d;
        }
        partial[k * WORKGROUP_SIZE + lid] = s;
    }
    workgroupBarrier();
    var inv: array<f32, MAX_TILE>;
    for (var k = 0u; k < TILE_TOKENS; k++) {
        var s = 0.0;
        for (var l = 0u; l < WORKGROUP_SIZE; l++) {
            s += partial[k * WORKGROUP_SIZE + l];
        }
        inv[k] = 1.0 / sqrt(s / f32(ROWS) + EPS);
    }
    for (var j = 0u; j < TILE_ROWS; j++) {
        let n = j * WORKGROUP_SIZE + lid;
        if (n < ROWS) {
            let gamma = aux[ROWS + n];
            let beta = aux[2u * ROWS + n];
            for (var k = 0u; k < TILE_TOKENS; k++) {
                let t = t0 + k;
                if (t < params.tokens) {
                    out[t * ROWS + n] = (acc[j][k] - mean[k]) * inv[k] * gamma + beta;
                }
            }
        }
    }
}
