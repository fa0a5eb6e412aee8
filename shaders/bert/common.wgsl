// Shared by every BERT kernel (prepended to each file by the Rust launchers).

// Shape of the batch being run, written once per forward pass. Sequences are padded to
// `seq_len` tokens; token `t` is position `t % seq_len` of sequence `t / seq_len`.
struct Params {
    tokens: u32,
    seq_len: u32,
    batch: u32,
    unused: u32,
}

// Largest register tile side (rows or tokens per invocation) the kernels' arrays hold.
const MAX_TILE: u32 = 8u;

// Weight storage formats (`FORMAT` constant), see plugins/bert/src/pack.rs. Every format keeps
// a chunk of consecutive input columns of one output row in one vec4<u32>.
const FORMAT_F32: u32 = 0u;
const FORMAT_F16: u32 = 1u;
const FORMAT_Q8_0: u32 = 2u;

// Number of vec4<f32> (groups of 4 input columns) in one weight chunk of `format`.
fn chunk_parts(format: u32) -> u32 {
    return select(select(4u, 2u, format == FORMAT_F16), 1u, format == FORMAT_F32);
}

// Columns part*4 .. part*4+3 of a weight chunk, as f32 (`scale` is the Q8_0 block scale).
fn dequant(w: vec4<u32>, scale: f32, part: u32, format: u32) -> vec4<f32> {
    if (format == FORMAT_F32) {
        return bitcast<vec4<f32>>(w);
    }
    if (format == FORMAT_F16) {
        let lo = select(w.x, w.z, part == 1u);
        let hi = select(w.y, w.w, part == 1u);
        return vec4<f32>(unpack2x16float(lo), unpack2x16float(hi));
    }
    // Q8_0: four signed bytes, byte 0 (lowest) first; sign-extend with shifts.
    let q = (vec4<i32>(bitcast<i32>(w[part])) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
    return vec4<f32>(q) * scale;
}

// erf(x) by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7).
fn erf_approx(x: f32) -> f32 {
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t
        + 0.254829592) * t;
    let y = 1.0 - poly * exp(-a * a);
    return select(y, -y, x < 0.0);
}

// GELU, erf form: x/2 * (1 + erf(x / sqrt(2))).
fn gelu(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752));
}
