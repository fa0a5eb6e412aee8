// out[t] = LayerNorm((W x[first + t]) + bias + out[t]) * gamma + beta for t < params.count: a
// linear layer with its bias, the residual add (the residual is out's prior contents) and the
// LayerNorm that follows, fused (BERT's attention output and FFN down projections). x is
// optionally RMS-normalised on the fly (NORM); see row_group.wgsl.
//
// A LayerNorm needs a whole output row, so one workgroup holds every row group: invocation g
// computes row group g (8 rows) for the workgroup's TOKENS_PER_INVOCATION tokens, and the
// per-token mean and variance are summed through workgroup memory (two passes: the variance of
// the centred values, not E[x^2] - mean^2, which cancels badly). Every invocation reads the
// whole residual row it writes, and a token's row belongs to one workgroup, so reading and
// writing `out` in place is safe.

override LN_EPS: f32;
// The number of row groups, ceil(ROWS / 8), at most MAX_ROW_GROUPS.
override WORKGROUP_SIZE: u32;

const MAX_ROW_GROUPS: u32 = 256u;

@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// Per-row bias [ROWS].
@group(0) @binding(4) var<storage, read> bias: array<f32>;
// LayerNorm gamma [ROWS], then beta [ROWS].
@group(0) @binding(5) var<storage, read> gamma_beta: array<f32>;
@group(0) @binding(6) var<uniform> params: Params;

// Each invocation's per-token partial sums: tokens 0-3 of the tile in `lo`, 4-7 in `hi`.
var<workgroup> partial_lo: array<vec4<f32>, MAX_ROW_GROUPS>;
var<workgroup> partial_hi: array<vec4<f32>, MAX_ROW_GROUPS>;

// The per-token sums of `lo` and `hi` over the workgroup (every invocation gets them).
fn workgroup_sum(g: u32, lo: vec4<f32>, hi: vec4<f32>) -> array<vec4<f32>, 2> {
    partial_lo[g] = lo;
    partial_hi[g] = hi;
    workgroupBarrier();
    var sum = array<vec4<f32>, 2>(vec4<f32>(0.0), vec4<f32>(0.0));
    for (var l = 0u; l < WORKGROUP_SIZE; l++) {
        sum[0] += partial_lo[l];
        if TOKENS_PER_INVOCATION > 4u {
            sum[1] += partial_hi[l];
        }
    }
    // The next call overwrites the partial sums only after everyone has read them.
    workgroupBarrier();
    return sum;
}

// Component j (0..8) of the pair (a: components 0-3, b: components 4-7).
fn pick(a: vec4<f32>, b: vec4<f32>, j: u32) -> f32 {
    if j < 4u {
        return a[j];
    }
    return b[j - 4u];
}

// Element `offset + rows` of gamma_beta, rows past ROWS clamped (callers mask them).
fn gamma_beta_at(offset: u32, rows: vec4<u32>) -> vec4<f32> {
    let r = vec4<u32>(offset) + min(rows, vec4<u32>(ROWS - 1u));
    return vec4<f32>(gamma_beta[r.x], gamma_beta[r.y], gamma_beta[r.z], gamma_beta[r.w]);
}

fn bias_at(rows: vec4<u32>) -> vec4<f32> {
    let r = min(rows, vec4<u32>(ROWS - 1u));
    return vec4<f32>(bias[r.x], bias[r.y], bias[r.z], bias[r.w]);
}

// Token `tok`'s residual at `rows`, rows past ROWS clamped (callers mask them).
fn residual_at(tok: u32, rows: vec4<u32>) -> vec4<f32> {
    let r = vec4<u32>(tok * ROWS) + min(rows, vec4<u32>(ROWS - 1u));
    return vec4<f32>(out[r.x], out[r.y], out[r.z], out[r.w]);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(workgroup_id) workgroup: vec3<u32>,
) {
    let g = local.x;
    let tok0 = workgroup.y * TOKENS_PER_INVOCATION;
    let last = params.count - 1u;
    let rows_lo = vec4<u32>(g * ROW_GROUP) + vec4<u32>(0u, 1u, 2u, 3u);
    let rows_hi = rows_lo + vec4<u32>(4u);
    // 1 for rows of the matrix, 0 for the zero rows padding the last row group.
    let valid_lo = vec4<f32>(rows_lo < vec4<u32>(ROWS));
    let valid_hi = vec4<f32>(rows_hi < vec4<u32>(ROWS));
    let bias_lo = bias_at(rows_lo);
    let bias_hi = bias_at(rows_hi);

    // Tokens past the last are clamped to it: computed, never stored.
    var tile = row_group_tile(g, params.first + tok0, params.first + last);
    var sum_lo = vec4<f32>(0.0);
    var sum_hi = vec4<f32>(0.0);
    for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
        let tok = min(tok0 + t, last);
        tile.lo[t] = (tile.lo[t] + bias_lo + residual_at(tok, rows_lo)) * valid_lo;
        tile.hi[t] = (tile.hi[t] + bias_hi + residual_at(tok, rows_hi)) * valid_hi;
        let s = dot(tile.lo[t] + tile.hi[t], vec4<f32>(1.0));
        if t < 4u {
            sum_lo[t] = s;
        } else {
            sum_hi[t - 4u] = s;
        }
    }
    let total = workgroup_sum(g, sum_lo, sum_hi);
    let mean_lo = total[0] / f32(ROWS);
    let mean_hi = total[1] / f32(ROWS);

    var sq_lo = vec4<f32>(0.0);
    var sq_hi = vec4<f32>(0.0);
    for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
        let mean = pick(mean_lo, mean_hi, t);
        let d_lo = (tile.lo[t] - vec4<f32>(mean)) * valid_lo;
        let d_hi = (tile.hi[t] - vec4<f32>(mean)) * valid_hi;
        let s = dot(d_lo, d_lo) + dot(d_hi, d_hi);
        if t < 4u {
            sq_lo[t] = s;
        } else {
            sq_hi[t - 4u] = s;
        }
    }
    let squares = workgroup_sum(g, sq_lo, sq_hi);
    let inv_lo = 1.0 / sqrt(squares[0] / f32(ROWS) + LN_EPS);
    let inv_hi = 1.0 / sqrt(squares[1] / f32(ROWS) + LN_EPS);

    let gamma_lo = gamma_beta_at(0u, rows_lo);
    let gamma_hi = gamma_beta_at(0u, rows_hi);
    let beta_lo = gamma_beta_at(ROWS, rows_lo);
    let beta_hi = gamma_beta_at(ROWS, rows_hi);
    for (var t = 0u; t < TOKENS_PER_INVOCATION; t++) {
        let tok = tok0 + t;
        if tok < params.count {
            let mean = pick(mean_lo, mean_hi, t);
            let inv = pick(inv_lo, inv_hi, t);
            let y_lo = (tile.lo[t] - vec4<f32>(mean)) * inv * gamma_lo + beta_lo;
            let y_hi = (tile.hi[t] - vec4<f32>(mean)) * inv * gamma_hi + beta_hi;
            for (var r = 0u; r < ROW_GROUP; r++) {
                let row = g * ROW_GROUP + r;
                if row < ROWS {
                    out[tok * ROWS + row] = pick(y_lo, y_hi, r);
                }
            }
        }
    }
}
