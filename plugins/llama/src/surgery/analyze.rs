//! `surgery.analyze`: how much each layer and each attention head does, measured on calibration
//! tokens with the CPU reference model ([`ReferenceModel::trace`]).
//!
//! - **Block Influence** of a layer (ShortGPT, Men et al. 2024): `1 − mean_t cos(x_t, y_t)`,
//!   `x_t` the hidden state entering the layer at position `t`, `y_t` the one leaving it. A
//!   layer that barely turns the residual stream scores near 0 and is the first to remove; the
//!   score lies in `[0, 2]`.
//! - **Head importance**: `mean_t share_h(t) · ‖a_t‖ / ‖x_t‖`, where `a_t` is what the layer's
//!   attention adds to the residual stream (after Gemma's post-attention norm) and
//!   `share_h = ‖W_o[:, h] o_h‖ / Σ_h' ‖W_o[:, h'] o_h'‖` is head `h`'s part of the attention
//!   output (its own output-projection columns applied to its result). It is the fraction of
//!   the residual stream the head moves, so heads of different layers compare; a norm, not an
//!   ablation, so it is one pass and no perplexity run per head. Heads that cancel each other
//!   both score high, which is why the top candidates' removal is measured ([`super::cost`]).
//!
//! Components the caller keeps ([`Analysis::keep`]) are still scored and ranked, marked kept,
//! and are never candidates: a kept layer's heads are kept, and a layer with a kept head is
//! not removed whole.

use pio_gguf::surgery::Head;

use crate::reference::{LayerTrace, ReferenceModel};

/// One layer's score.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LayerScore {
    /// The layer.
    pub layer: usize,
    /// `1 − mean cosine(input, output)`, in `[0, 2]`.
    pub block_influence: f64,
    /// Kept by the caller: not a removal candidate.
    pub kept: bool,
}

/// One query head's score.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct HeadScore {
    /// The layer.
    pub layer: usize,
    /// The query head.
    pub head: usize,
    /// Mean fraction of the residual stream's norm the head adds (see the module docs).
    pub importance: f64,
    /// Kept by the caller (or its layer is): not a removal candidate.
    pub kept: bool,
}

/// Scores of every layer and head, each list sorted least important first.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Analysis {
    /// Calibration positions traced.
    pub tokens: usize,
    /// Layers by ascending Block Influence.
    pub layers: Vec<LayerScore>,
    /// Heads by ascending importance.
    pub heads: Vec<HeadScore>,
}

/// Running sums per layer and head.
struct Sums {
    cosine: Vec<f64>,
    head: Vec<Vec<f64>>,
    positions: usize,
}

impl Sums {
    fn add(&mut self, t: &LayerTrace) {
        self.cosine[t.layer] += cosine(t.input, t.output);
        let total: f64 = t.head_norms.iter().sum();
        let stream = norm(t.input);
        if total > 0.0 && stream > 0.0 {
            let moved = t.attention_norm / stream;
            for (sum, part) in self.head[t.layer].iter_mut().zip(t.head_norms) {
                *sum += part / total * moved;
            }
        }
        if t.layer == 0 {
            self.positions += 1;
        }
    }
}

/// Runs `tokens` through `model` and scores its layers and heads.
pub fn analyze(model: &mut ReferenceModel, tokens: &[u32]) -> Analysis {
    let hp = &model.spec().hparams;
    let mut sums = Sums {
        cosine: vec![0.0; hp.n_layer],
        head: hp.heads.iter().map(|h| vec![0.0; h.n_head]).collect(),
        positions: 0,
    };
    model.trace(tokens, |t| sums.add(t));
    let n = sums.positions.max(1) as f64;
    let mut layers: Vec<LayerScore> = sums
        .cosine
        .iter()
        .enumerate()
        .map(|(layer, c)| LayerScore {
            layer,
            block_influence: 1.0 - c / n,
            kept: false,
        })
        .collect();
    layers.sort_by(|a, b| a.block_influence.total_cmp(&b.block_influence));
    let mut heads: Vec<HeadScore> = sums
        .head
        .iter()
        .enumerate()
        .flat_map(|(layer, heads)| {
            heads.iter().enumerate().map(move |(head, s)| HeadScore {
                layer,
                head,
                importance: s / n,
                kept: false,
            })
        })
        .collect();
    heads.sort_by(|a, b| a.importance.total_cmp(&b.importance));
    Analysis {
        tokens: sums.positions,
        layers,
        heads,
    }
}

impl Analysis {
    /// Marks as kept the layers `layers` (and all their heads), the heads `heads` (and their
    /// layers, which cannot be removed whole without them).
    pub fn keep(&mut self, layers: &[usize], heads: &[Head]) {
        for l in &mut self.layers {
            l.kept = layers.contains(&l.layer) || heads.iter().any(|h| h.layer == l.layer);
        }
        for h in &mut self.heads {
            h.kept = layers.contains(&h.layer)
                || heads.contains(&Head {
                    layer: h.layer,
                    head: h.head,
                });
        }
    }
}

fn norm(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt()
}

/// `cos(a, b)`; 1 when either is zero (nothing turned).
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let denominator = norm(a) * norm(b);
    if denominator == 0.0 {
        1.0
    } else {
        dot / denominator
    }
}
