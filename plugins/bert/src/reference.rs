//! Plain CPU BERT for tests: f32 values, f64 accumulation, each sequence run on its own (no
//! padding), textbook formulas (exact `erf` from libm, softmax with the max subtracted). The
//! per-op references shared with the kernels' tests (matmul, LayerNorm, GELU) are pio-gpu's.

pub use pio_gpu::reference::{gelu, layer_norm};

use crate::config::{ModelConfig, Pooling};
use crate::weights::{BertWeights, Linear, Norm};

/// Attention of one unpadded sequence: `qkv` is `[len][3 * heads * head_dim]`.
pub fn attention(qkv: &[f32], heads: usize, head_dim: usize) -> Vec<f32> {
    let h = heads * head_dim;
    let len = qkv.len() / (3 * h);
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut out = vec![0.0; len * h];
    for head in 0..heads {
        let part =
            |t: usize, which: usize| &qkv[t * 3 * h + which * h + head * head_dim..][..head_dim];
        for i in 0..len {
            let scores: Vec<f64> = (0..len)
                .map(|j| {
                    let dot: f64 = part(i, 0)
                        .iter()
                        .zip(part(j, 1))
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum();
                    dot * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = exps.iter().sum();
            for d in 0..head_dim {
                let v: f64 = (0..len).map(|j| exps[j] * f64::from(part(j, 2)[d])).sum();
                out[i * h + head * head_dim + d] = (v / total) as f32;
            }
        }
    }
    out
}

/// Pooling (and optional L2 normalisation) of one sequence's `[len][hidden]` vectors.
pub fn pool(x: &[f32], hidden: usize, pooling: Pooling, normalize: bool) -> Vec<f32> {
    let len = x.len() / hidden;
    let column = |f: usize| (0..len).map(move |t| f64::from(x[t * hidden + f]));
    let mut v: Vec<f64> = (0..hidden)
        .map(|f| match pooling {
            Pooling::Mean => column(f).sum::<f64>() / len as f64,
            Pooling::Cls => f64::from(x[f]),
            Pooling::Max => column(f).fold(f64::NEG_INFINITY, f64::max),
            Pooling::MeanSqrtLen => column(f).sum::<f64>() / (len as f64).sqrt(),
        })
        .collect();
    if normalize {
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
        v.iter_mut().for_each(|a| *a /= norm);
    }
    v.into_iter().map(|a| a as f32).collect()
}

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

fn dense(x: &[f32], l: &Linear) -> Vec<f32> {
    let mut out = pio_gpu::reference::matmul(&l.weight, l.rows, l.cols, x);
    pio_gpu::reference::add_bias(&mut out, &l.bias);
    out
}

fn norm(x: &[f32], n: &Norm, eps: f32) -> Vec<f32> {
    layer_norm(x, &n.weight, &n.bias, eps)
}

/// Embedding of one token sequence, before the first layer.
pub fn embed(weights: &BertWeights, ids: &[u32], hidden: usize, eps: f32) -> Vec<f32> {
    let mut x = Vec::with_capacity(ids.len() * hidden);
    for (pos, &id) in ids.iter().enumerate() {
        let id = id as usize;
        for f in 0..hidden {
            x.push(
                weights.word_embeddings[id * hidden + f]
                    + weights.position_embeddings[pos * hidden + f]
                    + weights.token_type_embeddings[f],
            );
        }
    }
    norm(&x, &weights.embed_norm, eps)
}

/// The sentence embedding of one token sequence.
pub fn forward(config: &ModelConfig, weights: &BertWeights, ids: &[u32]) -> Vec<f32> {
    let c = &config.bert;
    let eps = c.layer_norm_eps;
    let h = c.hidden_size;
    let mut x = embed(weights, ids, h, eps);
    for layer in &weights.layers {
        let q = dense(&x, &layer.query);
        let k = dense(&x, &layer.key);
        let v = dense(&x, &layer.value);
        let qkv: Vec<f32> = (0..ids.len())
            .flat_map(|t| {
                [&q, &k, &v]
                    .into_iter()
                    .flat_map(move |m| m[t * h..][..h].iter().copied())
            })
            .collect();
        let ctx = attention(&qkv, c.num_heads, c.head_dim());
        let attn = norm(
            &add(&dense(&ctx, &layer.attn_out), &x),
            &layer.attn_norm,
            eps,
        );
        let inter: Vec<f32> = dense(&attn, &layer.up).into_iter().map(gelu).collect();
        x = norm(
            &add(&dense(&inter, &layer.down), &attn),
            &layer.out_norm,
            eps,
        );
    }
    pool(&x, h, config.pooling, config.normalize)
}
