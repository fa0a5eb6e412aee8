//! A plain f32 CPU forward pass of the whole model, the oracle the GPU model is tested against.
//!
//! Every tensor is dequantized to f32 once; each token is processed on its own, one position at
//! a time, with straightforward loops (dot products accumulated in f64) and an f32 KV cache.
//! Nothing here is optimised or shared with the GPU path.

use pio_gguf::{GgufFile, TensorView};

use crate::error::Result;
use crate::generate::Forward;
use crate::hparams::HParams;
use crate::weights::ModelTensors;

/// A row-major f32 matrix: `rows` outputs of `cols` inputs.
struct Matrix {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl Matrix {
    fn load(t: &TensorView) -> Result<Self> {
        Ok(Matrix {
            data: t.to_f32()?,
            rows: t.info.dims[1] as usize,
            cols: t.info.dims[0] as usize,
        })
    }

    /// `W x`.
    fn mul(&self, x: &[f32]) -> Vec<f32> {
        assert_eq!(x.len(), self.cols);
        self.data
            .chunks_exact(self.cols)
            .map(|row| {
                row.iter()
                    .zip(x)
                    .map(|(&w, &v)| w as f64 * v as f64)
                    .sum::<f64>() as f32
            })
            .collect()
    }

    fn row(&self, r: usize) -> &[f32] {
        assert!(r < self.rows, "row {r} out of {}", self.rows);
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    wo: Matrix,
    ffn_norm: Vec<f32>,
    w_gate: Matrix,
    w_up: Matrix,
    w_down: Matrix,
    /// Keys of positions `0..len`, `[pos][kv_dim]`, RoPE applied.
    k_cache: Vec<f32>,
    /// Values of positions `0..len`, `[pos][kv_dim]`.
    v_cache: Vec<f32>,
}

/// The CPU reference model; implements [`Forward`].
pub struct ReferenceModel {
    hp: HParams,
    context: usize,
    token_embd: Matrix,
    output_norm: Vec<f32>,
    /// `None` when tied to `token_embd`.
    output: Option<Matrix>,
    layers: Vec<Layer>,
}

impl ReferenceModel {
    /// Dequantizes every weight of `file` and sizes the KV cache for `context` positions.
    pub fn load(file: &GgufFile, context: usize) -> Result<Self> {
        let hp = HParams::from_gguf(file)?;
        let t = ModelTensors::from_gguf(file, &hp)?;
        let layers = t
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    attn_norm: l.attn_norm.to_f32()?,
                    wq: Matrix::load(&l.attn_q)?,
                    wk: Matrix::load(&l.attn_k)?,
                    wv: Matrix::load(&l.attn_v)?,
                    wo: Matrix::load(&l.attn_output)?,
                    ffn_norm: l.ffn_norm.to_f32()?,
                    w_gate: Matrix::load(&l.ffn_gate)?,
                    w_up: Matrix::load(&l.ffn_up)?,
                    w_down: Matrix::load(&l.ffn_down)?,
                    k_cache: Vec::new(),
                    v_cache: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ReferenceModel {
            context,
            token_embd: Matrix::load(&t.token_embd)?,
            output_norm: t.output_norm.to_f32()?,
            output: if t.tied_output {
                None
            } else {
                Some(Matrix::load(&t.output)?)
            },
            layers,
            hp,
        })
    }

    /// One token at position `pos` (the caches hold exactly positions `0..pos`); returns its
    /// logits.
    fn step(&mut self, token: u32, pos: usize) -> Vec<f32> {
        let hp = &self.hp;
        let (hd, kv_dim) = (hp.head_dim, hp.kv_dim());
        let mut x = self.token_embd.row(token as usize).to_vec();
        for layer in &mut self.layers {
            // Attention.
            let h = rms_norm(&x, &layer.attn_norm, hp.rms_eps);
            let mut q = layer.wq.mul(&h);
            let mut k = layer.wk.mul(&h);
            let v = layer.wv.mul(&h);
            for head in q.chunks_exact_mut(hd).chain(k.chunks_exact_mut(hd)) {
                rope(head, pos, hp.rope_dim, hp.rope_base);
            }
            layer.k_cache.truncate(pos * kv_dim);
            layer.v_cache.truncate(pos * kv_dim);
            layer.k_cache.extend_from_slice(&k);
            layer.v_cache.extend_from_slice(&v);

            let mut attn = vec![0f32; hp.n_embd];
            let scale = 1.0 / (hd as f64).sqrt();
            for head in 0..hp.n_head {
                let kvh = head / hp.gqa_group();
                let qh = &q[head * hd..(head + 1) * hd];
                let scores: Vec<f64> = (0..=pos)
                    .map(|p| {
                        let kp = &layer.k_cache[p * kv_dim + kvh * hd..][..hd];
                        dot(qh, kp) * scale
                    })
                    .collect();
                let probs = softmax(&scores);
                let out = &mut attn[head * hd..(head + 1) * hd];
                for (i, o) in out.iter_mut().enumerate() {
                    let s: f64 = (0..=pos)
                        .map(|p| probs[p] * layer.v_cache[p * kv_dim + kvh * hd + i] as f64)
                        .sum();
                    *o = s as f32;
                }
            }
            add(&mut x, &layer.wo.mul(&attn));

            // SwiGLU feed-forward.
            let h = rms_norm(&x, &layer.ffn_norm, hp.rms_eps);
            let gate = layer.w_gate.mul(&h);
            let up = layer.w_up.mul(&h);
            let act: Vec<f32> = gate.iter().zip(&up).map(|(&g, &u)| silu(g) * u).collect();
            add(&mut x, &layer.w_down.mul(&act));
        }
        let h = rms_norm(&x, &self.output_norm, hp.rms_eps);
        self.output.as_ref().unwrap_or(&self.token_embd).mul(&h)
    }
}

impl Forward for ReferenceModel {
    fn vocab_size(&self) -> usize {
        self.hp.vocab_size
    }

    fn context_length(&self) -> usize {
        self.context
    }

    fn forward(&mut self, tokens: &[u32], start_pos: usize, all_logits: bool) -> Result<Vec<f32>> {
        assert!(start_pos + tokens.len() <= self.context, "past the context");
        let mut out = Vec::new();
        for (i, &t) in tokens.iter().enumerate() {
            let logits = self.step(t, start_pos + i);
            if all_logits || i + 1 == tokens.len() {
                out.extend_from_slice(&logits);
            }
        }
        Ok(out)
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mean_sq = dot(x, x) / x.len() as f64;
    let inv = 1.0 / (mean_sq + eps as f64).sqrt();
    x.iter()
        .zip(w)
        .map(|(&v, &g)| (v as f64 * inv) as f32 * g)
        .collect()
}

/// GGML "normal" RoPE: rotates adjacent pairs `(x[2i], x[2i+1])` of the first `rope_dim`
/// values by `pos * base^(-2i / rope_dim)`.
fn rope(head: &mut [f32], pos: usize, rope_dim: usize, base: f32) {
    for i in 0..rope_dim / 2 {
        let theta = pos as f64 * (base as f64).powf(-2.0 * i as f64 / rope_dim as f64);
        let (sin, cos) = theta.sin_cos();
        let (a, b) = (head[2 * i] as f64, head[2 * i + 1] as f64);
        head[2 * i] = (a * cos - b * sin) as f32;
        head[2 * i + 1] = (a * sin + b * cos) as f32;
    }
}

fn softmax(x: &[f64]) -> Vec<f64> {
    let max = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn add(acc: &mut [f32], x: &[f32]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotates_adjacent_pairs_by_position_dependent_angles() {
        // Pair 0 turns by pos radians, pair 1 by pos * base^(-1/2) = pos / 100 at base 10^4.
        let mut h = [1.0, 0.0, 0.0, 1.0];
        rope(&mut h, 2, 4, 10_000.0);
        let expect = [2f32.cos(), 2f32.sin(), -(0.02f32.sin()), 0.02f32.cos()];
        for (a, b) in h.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{h:?} vs {expect:?}");
        }
        // Dimensions past rope_dim are untouched.
        let mut h = [1.0, 0.0, 3.0, 4.0];
        rope(&mut h, 1, 2, 10_000.0);
        assert_eq!(&h[2..], &[3.0, 4.0]);
    }

    #[test]
    fn rms_norm_scales_to_unit_rms() {
        let y = rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0);
        let r = (12.5f32).sqrt();
        assert!((y[0] - 3.0 / r).abs() < 1e-6 && (y[1] - 8.0 / r).abs() < 1e-6);
    }
}
