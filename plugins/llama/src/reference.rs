//! A plain f32 CPU forward pass of any [`ModelSpec`], the oracle the GPU model is tested against.
//!
//! Every tensor is dequantized to f32 once; each token is processed on its own, one position at
//! a time, with straightforward loops (dot products accumulated in f64) and an f32 KV cache.
//! Nothing here is optimised or shared with the GPU path. It follows the spec in full (scaled
//! embeddings, q/k and sandwich norms, sliding windows, GELU gates), so a new family has its
//! reference before it has kernels.
//!
//! Being exact and open, it is also what model surgery measures with
//! ([`ReferenceModel::trace`]: every layer's input and output and each head's contribution);
//! the GPU runtime exposes none of its intermediate values.

use pio_gguf::{GgufFile, TensorView};

use crate::error::Result;
use crate::forward::Forward;
use crate::models::{self, Activation, AttentionWindow, ModelSpec, NormWeight, Rope, RopePairs};
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

    /// `W[:, cols] x[cols]`: the part of `W x` that columns `cols` contribute.
    fn mul_columns(&self, x: &[f32], cols: std::ops::Range<usize>) -> Vec<f32> {
        self.data
            .chunks_exact(self.cols)
            .map(|row| dot(&row[cols.clone()], &x[cols.clone()]) as f32)
            .collect()
    }

    fn row(&self, r: usize) -> &[f32] {
        assert!(r < self.rows, "row {r} out of {}", self.rows);
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// An RMSNorm weight, `1 + w` already applied where the family stores the offset.
struct Norm(Vec<f32>);

impl Norm {
    fn load(t: &TensorView, weight: NormWeight) -> Result<Self> {
        let mut w = t.to_f32()?;
        if weight == NormWeight::OnePlus {
            w.iter_mut().for_each(|v| *v += 1.0);
        }
        Ok(Norm(w))
    }
}

struct Layer {
    attn_norm: Norm,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    /// Per-head norms of queries and keys.
    qk_norm: Option<(Norm, Norm)>,
    wo: Matrix,
    attn_post_norm: Option<Norm>,
    ffn_norm: Norm,
    w_gate: Matrix,
    w_up: Matrix,
    w_down: Matrix,
    ffn_post_norm: Option<Norm>,
    /// Keys of positions `0..len`, `[pos][kv_dim]`, RoPE applied.
    k_cache: Vec<f32>,
    /// Values of positions `0..len`, `[pos][kv_dim]`.
    v_cache: Vec<f32>,
}

/// What one layer did at one position, handed to [`ReferenceModel::trace`]'s observer.
#[derive(Debug)]
pub struct LayerTrace<'a> {
    /// The layer's index in the model.
    pub layer: usize,
    /// The token's position.
    pub pos: usize,
    /// The residual stream (hidden state) entering the layer.
    pub input: &'a [f32],
    /// The residual stream leaving it.
    pub output: &'a [f32],
    /// For each query head, the L2 norm of what it adds to the attention output:
    /// `W_o[:, head] · o_head`, its own columns of the output projection applied to its
    /// attention result (before Gemma's post-attention norm).
    pub head_norms: &'a [f64],
    /// The L2 norm of what the attention half adds to the residual stream: `W_o · o` (the
    /// sum of the heads' parts), through Gemma's post-attention norm where there is one.
    pub attention_norm: f64,
}

/// The CPU reference model; implements [`Forward`].
pub struct ReferenceModel {
    spec: ModelSpec,
    context: usize,
    token_embd: Matrix,
    output_norm: Norm,
    /// `None` when tied to `token_embd`.
    output: Option<Matrix>,
    layers: Vec<Layer>,
}

impl ReferenceModel {
    /// Reads the spec of `file` ([`models::describe`]) and loads it: see
    /// [`ReferenceModel::from_spec`].
    pub fn load(file: &GgufFile, context: usize) -> Result<Self> {
        Self::from_spec(file, models::describe(file)?, context)
    }

    /// Dequantizes every weight `spec` names in `file` and sizes the KV cache for `context`
    /// positions.
    pub fn from_spec(file: &GgufFile, spec: ModelSpec, context: usize) -> Result<Self> {
        spec.validate()?;
        let t = ModelTensors::from_gguf(file, &spec)?;
        let weight = spec.norm.weight;
        let norm = |t: &TensorView| Norm::load(t, weight);
        let opt_norm = |t: &Option<TensorView>| t.as_ref().map(norm).transpose();
        let layers = t
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    attn_norm: norm(&l.attn_norm)?,
                    wq: Matrix::load(&l.attn_q)?,
                    wk: Matrix::load(&l.attn_k)?,
                    wv: Matrix::load(&l.attn_v)?,
                    qk_norm: match &l.qk_norm {
                        Some((q, k)) => Some((norm(q)?, norm(k)?)),
                        None => None,
                    },
                    wo: Matrix::load(&l.attn_output)?,
                    attn_post_norm: opt_norm(&l.attn_post_norm)?,
                    ffn_norm: norm(&l.ffn_norm)?,
                    w_gate: Matrix::load(&l.ffn_gate)?,
                    w_up: Matrix::load(&l.ffn_up)?,
                    w_down: Matrix::load(&l.ffn_down)?,
                    ffn_post_norm: opt_norm(&l.ffn_post_norm)?,
                    k_cache: Vec::new(),
                    v_cache: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ReferenceModel {
            context,
            token_embd: Matrix::load(&t.token_embd)?,
            output_norm: norm(&t.output_norm)?,
            output: if t.tied_output {
                None
            } else {
                Some(Matrix::load(&t.output)?)
            },
            layers,
            spec,
        })
    }

    /// The model's spec.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Runs `tokens` from position 0 (overwriting the cache) without computing logits, and
    /// hands `observe` a [`LayerTrace`] of every layer at every position, in order.
    pub fn trace(&mut self, tokens: &[u32], mut observe: impl FnMut(&LayerTrace)) {
        assert!(tokens.len() <= self.context, "past the context");
        for (pos, &token) in tokens.iter().enumerate() {
            self.hidden(token, pos, Some(&mut observe));
        }
    }

    /// One token at position `pos` (the caches hold exactly positions `0..pos`); returns its
    /// logits.
    fn step(&mut self, token: u32, pos: usize) -> Vec<f32> {
        let x = self.hidden(token, pos, None);
        let h = rms_norm(&x, &self.output_norm, self.spec.norm.eps);
        self.output.as_ref().unwrap_or(&self.token_embd).mul(&h)
    }

    /// One token at position `pos` through every layer; returns the last layer's output, and
    /// traces each layer to `observe` when given.
    fn hidden(
        &mut self,
        token: u32,
        pos: usize,
        mut observe: Option<&mut dyn FnMut(&LayerTrace)>,
    ) -> Vec<f32> {
        let (hp, eps) = (&self.spec.hparams, self.spec.norm.eps);
        let hd = hp.head_dim;
        let scale = self.spec.embedding.scale;
        let mut x: Vec<f32> = self
            .token_embd
            .row(token as usize)
            .iter()
            .map(|v| v * scale)
            .collect();
        for (index, (layer, spec)) in self.layers.iter_mut().zip(&self.spec.layers).enumerate() {
            let input = observe.is_some().then(|| x.clone());
            // This layer's heads (a model surgery removed heads from has them per layer).
            let (n_head, kv_dim, group) = (
                hp.heads[index].n_head,
                hp.kv_dim(index),
                hp.gqa_group(index),
            );
            // Attention.
            let (attention, ffn) = (&spec.attention, &spec.feed_forward);
            let h = rms_norm(&x, &layer.attn_norm, eps);
            let mut q = layer.wq.mul(&h);
            let mut k = layer.wk.mul(&h);
            let v = layer.wv.mul(&h);
            if let Some((q_norm, k_norm)) = &layer.qk_norm {
                for head in q.chunks_exact_mut(hd) {
                    head.copy_from_slice(&rms_norm(head, q_norm, eps));
                }
                for head in k.chunks_exact_mut(hd) {
                    head.copy_from_slice(&rms_norm(head, k_norm, eps));
                }
            }
            for head in q.chunks_exact_mut(hd).chain(k.chunks_exact_mut(hd)) {
                rope(head, pos, attention.rope);
            }
            layer.k_cache.truncate(pos * kv_dim);
            layer.v_cache.truncate(pos * kv_dim);
            layer.k_cache.extend_from_slice(&k);
            layer.v_cache.extend_from_slice(&v);

            let first = match attention.window {
                AttentionWindow::Global => 0,
                AttentionWindow::Sliding(n) => (pos + 1).saturating_sub(n),
            };
            let mut attn = vec![0f32; hp.q_dim(index)];
            let scale = 1.0 / (hd as f64).sqrt();
            for head in 0..n_head {
                let kvh = head / group;
                let qh = &q[head * hd..(head + 1) * hd];
                let scores: Vec<f64> = (first..=pos)
                    .map(|p| {
                        let kp = &layer.k_cache[p * kv_dim + kvh * hd..][..hd];
                        dot(qh, kp) * scale
                    })
                    .collect();
                let probs = softmax(&scores);
                let out = &mut attn[head * hd..(head + 1) * hd];
                for (i, o) in out.iter_mut().enumerate() {
                    let s: f64 = (first..=pos)
                        .zip(&probs)
                        .map(|(p, prob)| prob * layer.v_cache[p * kv_dim + kvh * hd + i] as f64)
                        .sum();
                    *o = s as f32;
                }
            }
            let out = layer.wo.mul(&attn);
            let head_norms: Vec<f64> = match observe {
                Some(_) => (0..n_head)
                    .map(|head| {
                        let part = layer.wo.mul_columns(&attn, head * hd..(head + 1) * hd);
                        dot(&part, &part).sqrt()
                    })
                    .collect(),
                None => Vec::new(),
            };
            let added = post_norm(out, layer.attn_post_norm.as_ref(), eps);
            let attention_norm = dot(&added, &added).sqrt();
            add(&mut x, &added);

            // Gated feed-forward.
            let h = rms_norm(&x, &layer.ffn_norm, eps);
            let gate = layer.w_gate.mul(&h);
            let up = layer.w_up.mul(&h);
            let act: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(&g, &u)| activate(ffn.activation, g) * u)
                .collect();
            let out = layer.w_down.mul(&act);
            add(&mut x, &post_norm(out, layer.ffn_post_norm.as_ref(), eps));
            if let (Some(observe), Some(input)) = (observe.as_mut(), input) {
                observe(&LayerTrace {
                    layer: index,
                    pos,
                    input: &input,
                    output: &x,
                    head_norms: &head_norms,
                    attention_norm,
                });
            }
        }
        x
    }

    /// The same model without the layers `removed` (each remaining layer as it was).
    #[cfg(test)]
    pub(crate) fn without_layers(mut self, removed: &[usize]) -> Self {
        fn keep<T>(items: Vec<T>, removed: &[usize]) -> Vec<T> {
            let kept = items.into_iter().enumerate();
            kept.filter(|(i, _)| !removed.contains(i))
                .map(|(_, item)| item)
                .collect()
        }
        self.layers = keep(std::mem::take(&mut self.layers), removed);
        self.spec.layers = keep(std::mem::take(&mut self.spec.layers), removed);
        let hp = &mut self.spec.hparams;
        hp.heads = keep(std::mem::take(&mut hp.heads), removed);
        hp.n_layer = self.layers.len();
        self
    }
}

impl Forward for ReferenceModel {
    fn vocab_size(&self) -> usize {
        self.spec.hparams.vocab_size
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

fn rms_norm(x: &[f32], w: &Norm, eps: f32) -> Vec<f32> {
    let mean_sq = dot(x, x) / x.len() as f64;
    let inv = 1.0 / (mean_sq + eps as f64).sqrt();
    x.iter()
        .zip(&w.0)
        .map(|(&v, &g)| (v as f64 * inv) as f32 * g)
        .collect()
}

/// RoPE: rotates pair `i` of the first `rope.dim` values — `(x[2i], x[2i+1])` or
/// `(x[i], x[i + dim/2])`, see [`RopePairs`] — by `pos * base^(-2i / dim)`.
fn rope(head: &mut [f32], pos: usize, rope: Rope) {
    let half = rope.dim / 2;
    for i in 0..half {
        let theta = pos as f64 * (rope.base as f64).powf(-2.0 * i as f64 / rope.dim as f64);
        let (sin, cos) = theta.sin_cos();
        let (j, k) = match rope.pairs {
            RopePairs::Adjacent => (2 * i, 2 * i + 1),
            RopePairs::Halves => (i, i + half),
        };
        let (a, b) = (head[j] as f64, head[k] as f64);
        head[j] = (a * cos - b * sin) as f32;
        head[k] = (a * sin + b * cos) as f32;
    }
}

fn softmax(x: &[f64]) -> Vec<f64> {
    let max = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// `x` through `norm` when the block has one there (Gemma's sandwich norms), else unchanged.
fn post_norm(x: Vec<f32>, norm: Option<&Norm>, eps: f32) -> Vec<f32> {
    match norm {
        Some(norm) => rms_norm(&x, norm, eps),
        None => x,
    }
}

fn activate(activation: Activation, x: f32) -> f32 {
    let x = x as f64;
    let y = match activation {
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::GeluTanh => {
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3));
            0.5 * x * (1.0 + inner.tanh())
        }
    };
    y as f32
}

fn add(acc: &mut [f32], x: &[f32]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pio_gpu::testing::max_abs_diff;

    use crate::test_model::{tiny_llama, TinyConfig};

    #[test]
    fn rope_rotates_adjacent_pairs_by_position_dependent_angles() {
        let rope_of = |dim, pairs| Rope {
            base: 10_000.0,
            dim,
            pairs,
        };
        // Pair 0 turns by pos radians, pair 1 by pos * base^(-1/2) = pos / 100 at base 10^4.
        let mut h = [1.0, 0.0, 0.0, 1.0];
        rope(&mut h, 2, rope_of(4, RopePairs::Adjacent));
        let expect = [2f32.cos(), 2f32.sin(), -(0.02f32.sin()), 0.02f32.cos()];
        for (a, b) in h.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{h:?} vs {expect:?}");
        }
        // The same rotations on pairs (0, 2) and (1, 3).
        let mut h = [1.0, 0.0, 0.0, 1.0];
        rope(&mut h, 2, rope_of(4, RopePairs::Halves));
        let expect = [2f32.cos(), -(0.02f32.sin()), 2f32.sin(), 0.02f32.cos()];
        for (a, b) in h.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{h:?} vs {expect:?}");
        }
        // Dimensions past rope_dim are untouched.
        let mut h = [1.0, 0.0, 3.0, 4.0];
        rope(&mut h, 1, rope_of(2, RopePairs::Adjacent));
        assert_eq!(&h[2..], &[3.0, 4.0]);
    }

    #[test]
    fn activations_match_known_values() {
        // GELU(±1) with the tanh approximation, and SiLU(1) = 1 / (1 + e^-1).
        for (activation, x, y) in [
            (Activation::GeluTanh, 1.0, 0.841_192),
            (Activation::GeluTanh, -1.0, -0.158_808),
            (Activation::Silu, 1.0, 0.731_059),
        ] {
            let got = activate(activation, x);
            assert!(
                (got - y).abs() < 1e-6,
                "{activation:?}({x}) = {got}, not {y}"
            );
        }
    }

    /// A window as wide as the sequence is global attention (the same sums in the same order);
    /// a narrow one changes exactly the positions that see past it.
    #[test]
    fn sliding_window_limits_what_a_position_attends_to() {
        let file = tiny_llama(&TinyConfig::default());
        let llama = models::describe(&file).unwrap();
        let vocab = llama.hparams.vocab_size;
        let prompt: Vec<u32> = (0..12).map(|i| (i * 29 + 11) % 290).collect();
        let run = |window| {
            let mut spec = llama.clone();
            spec.layers
                .iter_mut()
                .for_each(|l| l.attention.window = window);
            let mut model = ReferenceModel::from_spec(&file, spec, 32).unwrap();
            model.forward(&prompt, 0, true).unwrap()
        };
        let global = run(AttentionWindow::Global);
        assert_eq!(global, run(AttentionWindow::Sliding(prompt.len())));
        let narrow = run(AttentionWindow::Sliding(3));
        let (seen, past) = global.split_at(3 * vocab);
        assert_eq!(seen, &narrow[..3 * vocab]);
        assert!(max_abs_diff(past, &narrow[3 * vocab..]) > 1e-3);
    }

    #[test]
    fn rms_norm_scales_to_unit_rms() {
        let y = rms_norm(&[3.0, 4.0], &Norm(vec![1.0, 2.0]), 0.0);
        let r = (12.5f32).sqrt();
        assert!((y[0] - 3.0 / r).abs() < 1e-6 && (y[1] - 8.0 / r).abs() < 1e-6);
    }
}
