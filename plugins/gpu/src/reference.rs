//! Plain CPU implementations of every kernel, written for obviousness rather than speed, with
//! f64 accumulation. Activations are contiguous row-major `[T][width]` f32 slices.

use crate::quant::{check_gguf_shape, WeightDtype};

/// Dequantizes a `rows` × `cols` matrix from raw GGUF bytes into row-major f32, with
/// `pio-gguf`'s dequantizer (GGML's arithmetic, checked bit for bit against the `gguf` Python
/// package on real blocks).
///
/// # Panics
/// If `raw` does not have the size of such a matrix.
pub fn dequantize(dtype: WeightDtype, rows: usize, cols: usize, raw: &[u8]) -> Vec<f32> {
    check_gguf_shape("reference dequantize", dtype, rows, cols, raw.len()).expect("matrix shape");
    let mut out = vec![0.0; rows * cols];
    pio_gguf::dequantize(dtype.gguf_type(), raw, &mut out).expect("a GGUF type pio-gguf decodes");
    out
}

/// `out[t] = table[ids[t]]` for a table of rows of `cols` values.
pub fn embed(table: &[f32], cols: usize, ids: &[u32]) -> Vec<f32> {
    ids.iter()
        .flat_map(|&id| &table[id as usize * cols..(id as usize + 1) * cols])
        .copied()
        .collect()
}

/// `out[t][i] = x[t][i] / sqrt(mean(x[t]^2) + eps) * weight[i]`, rows as wide as `weight`.
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    x.chunks_exact(weight.len())
        .flat_map(|row| {
            let mean = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / row.len() as f64;
            let scale = 1.0 / (mean + f64::from(eps)).sqrt();
            row.iter()
                .zip(weight)
                .map(move |(&v, &w)| (f64::from(v) * scale * f64::from(w)) as f32)
        })
        .collect()
}

/// `out[t][r] = sum_c w[r][c] * x[t][c]` for a row-major `rows` × `cols` matrix `w`;
/// out is `[T][rows]`.
pub fn matmul(w: &[f32], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
    assert_eq!(w.len(), rows * cols, "matrix size");
    x.chunks_exact(cols)
        .flat_map(|xt| {
            w.chunks_exact(cols).map(move |wr| {
                wr.iter()
                    .zip(xt)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum::<f64>() as f32
            })
        })
        .collect()
}

/// RoPE in place, GGML "normal" style: in every head of `head_dim` values of each row
/// `[T][n_heads * head_dim]`, the pair `(x[2i], x[2i+1])` of token `t` is rotated by
/// `positions[t] * base^(-2i/head_dim)`.
pub fn rope(x: &mut [f32], head_dim: usize, positions: &[u32], base: f64) {
    let width = x.len() / positions.len();
    for (row, &pos) in x.chunks_exact_mut(width).zip(positions) {
        for head in row.chunks_exact_mut(head_dim) {
            for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                let theta = f64::from(pos) * base.powf(-2.0 * i as f64 / head_dim as f64);
                let (sin, cos) = theta.sin_cos();
                let (x0, x1) = (f64::from(pair[0]), f64::from(pair[1]));
                pair[0] = (x0 * cos - x1 * sin) as f32;
                pair[1] = (x0 * sin + x1 * cos) as f32;
            }
        }
    }
}

/// Writes row `t` of `k` and `v` (`[T][kv_dim]`) to row `positions[t]` of the caches
/// (`[max_positions][kv_dim]`).
pub fn kv_write(k: &[f32], v: &[f32], positions: &[u32], k_cache: &mut [f32], v_cache: &mut [f32]) {
    let kv_dim = k.len() / positions.len();
    for (t, &pos) in positions.iter().enumerate() {
        let (src, dst) = (t * kv_dim..(t + 1) * kv_dim, pos as usize * kv_dim);
        k_cache[dst..dst + kv_dim].copy_from_slice(&k[src.clone()]);
        v_cache[dst..dst + kv_dim].copy_from_slice(&v[src]);
    }
}

/// Causal grouped-query attention: for token `t` (query `q[t]`, `[n_heads * head_dim]`) at
/// position `p = positions[t]` and head `h`, softmax over cache positions `0..=p` (with a
/// `window` of `n`, only the last `n`: `p + 1 - n ..= p`) of `q·k / sqrt(head_dim)` with kv
/// head `h / (n_heads / n_kv_heads)`, applied to V. Caches are
/// `[positions][n_kv_heads * head_dim]`; out is `[T][n_heads * head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    positions: &[u32],
    k_cache: &[f32],
    v_cache: &[f32],
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
) -> Vec<f32> {
    let kv_dim = n_kv_heads * head_dim;
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut out = Vec::with_capacity(q.len());
    for (qt, &pos) in q.chunks_exact(n_heads * head_dim).zip(positions) {
        for (h, qh) in qt.chunks_exact(head_dim).enumerate() {
            let at = |j: usize| j * kv_dim + (h / group) * head_dim;
            let first = window.map_or(0, |n| (pos as usize + 1).saturating_sub(n));
            let seen = first..=pos as usize;
            let scores: Vec<f64> = seen
                .clone()
                .map(|j| {
                    let k = &k_cache[at(j)..at(j) + head_dim];
                    qh.iter()
                        .zip(k)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for i in 0..head_dim {
                let value: f64 = seen
                    .clone()
                    .zip(&weights)
                    .map(|(j, w)| w * f64::from(v_cache[at(j) + i]))
                    .sum();
                out.push((value / total) as f32);
            }
        }
    }
    out
}

/// `out[i] = silu(gate[i]) * up[i]` with `silu(g) = g / (1 + e^-g)`.
pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| {
            let g = f64::from(g);
            (g / (1.0 + (-g).exp()) * f64::from(u)) as f32
        })
        .collect()
}

/// `out[i] = gelu_tanh(gate[i]) * up[i]`, GELU's tanh approximation
/// `g/2 · (1 + tanh(√(2/π) (g + 0.044715 g³)))`.
pub fn gelu_tanh_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| {
            let g = f64::from(g);
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g.powi(3));
            (0.5 * g * (1.0 + inner.tanh()) * f64::from(u)) as f32
        })
        .collect()
}

/// `acc[i] += x[i]`.
pub fn add(acc: &mut [f32], x: &[f32]) {
    for (a, &b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

/// `out[t][r] += bias[r]` for rows of `bias.len()` values.
pub fn add_bias(out: &mut [f32], bias: &[f32]) {
    for row in out.chunks_exact_mut(bias.len()) {
        add(row, bias);
    }
}

/// GELU in its erf form, `x/2 · (1 + erf(x/√2))`, with libm's erf.
pub fn gelu(x: f32) -> f32 {
    let x = f64::from(x);
    (0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))) as f32
}

/// Row-wise LayerNorm of `x` (rows as wide as `gamma`): `(x − mean) / sqrt(var + eps) · gamma
/// + beta`, the variance over the row (biased).
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
    let width = gamma.len();
    x.chunks_exact(width)
        .flat_map(|row| {
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / width as f64;
            let var = row
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / width as f64;
            let inv = 1.0 / (var + f64::from(eps)).sqrt();
            row.iter()
                .zip(gamma.iter().zip(beta))
                .map(move |(&v, (&g, &b))| {
                    ((f64::from(v) - mean) * inv * f64::from(g) + f64::from(b)) as f32
                })
        })
        .collect()
}

/// The tokens `sample.wgsl` can pick from `logits` with `settings`, after the repetition
/// penalty on the distinct `penalty_ids`, in id order with their probabilities: for greedy
/// settings the maximum (lowest id on ties) with probability 1, else the top-k, top-p (on the
/// untempered softmax of the top-k set) and min-p survivors with their temperature-scaled
/// softmax probabilities. Computed in f64 with exact sorting.
pub fn sample_distribution(
    logits: &[f32],
    settings: &crate::SampleSettings,
    penalty_ids: &[u32],
) -> Vec<(u32, f64)> {
    let mut l: Vec<f64> = logits.iter().map(|&v| f64::from(v)).collect();
    let penalty = f64::from(settings.repetition_penalty);
    for &id in penalty_ids {
        let v = &mut l[id as usize];
        *v = if *v > 0.0 { *v / penalty } else { *v * penalty };
    }
    let mut order: Vec<usize> = (0..l.len()).collect();
    order.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
    if settings.greedy {
        return vec![(order[0] as u32, 1.0)];
    }
    let k = match settings.top_k as usize {
        0 => l.len(),
        k => k.min(l.len()),
    };
    order.truncate(k);
    let top = l[order[0]];
    let weights: Vec<f64> = order.iter().map(|&i| (l[i] - top).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut keep = order.len();
    if settings.top_p < 1.0 {
        let mut cum = 0.0;
        for (n, w) in weights.iter().enumerate() {
            cum += w / total;
            if cum >= f64::from(settings.top_p) {
                keep = n + 1;
                break;
            }
        }
    }
    if settings.min_p > 0.0 {
        let floor = f64::from(settings.min_p);
        keep = weights[..keep]
            .iter()
            .take_while(|&&w| w >= floor)
            .count()
            .max(1);
    }
    order.truncate(keep);
    order.sort_unstable();
    let t = f64::from(settings.temperature);
    let tempered: Vec<f64> = order.iter().map(|&i| ((l[i] - top) / t).exp()).collect();
    let sum: f64 = tempered.iter().sum();
    order
        .iter()
        .zip(tempered)
        .map(|(&i, w)| (i as u32, w / sum))
        .collect()
}
