//! What the GPU runtime runs of a [`ModelSpec`], checked before anything is uploaded.
//!
//! The kernels are Llama's fused five per layer; a spec that needs more (a sliding window, q/k
//! norms, sandwich norms, a GELU gate, a scaled embedding) is refused with
//! [`Error::UnsupportedFeature`] naming what and where, not run wrongly. Per-layer RoPE bases
//! (one table each) and `1 + w` norm weights (folded in at upload) need no kernel of their own.
//! Adding a kernel for a feature means removing its refusal here.

use pio_gpu::Epilogue;

use crate::error::{Error, Result};
use crate::models::{Activation, AttentionWindow, ModelSpec};

/// Refuses `spec` when it is inconsistent ([`ModelSpec::validate`]), needs something no kernel
/// does, or has shapes the kernels cannot tile.
pub(super) fn check(spec: &ModelSpec) -> Result<()> {
    spec.validate()?;
    let hp = &spec.hparams;
    let unsupported = |feature: String| {
        Err(Error::UnsupportedFeature {
            architecture: spec.architecture,
            feature,
        })
    };
    if spec.embedding.scale != 1.0 {
        return unsupported(format!("embeddings scaled by {}", spec.embedding.scale));
    }
    for (i, layer) in spec.layers.iter().enumerate() {
        let (attention, ffn) = (&layer.attention, &layer.feed_forward);
        if attention.rope.dim != hp.head_dim {
            return unsupported(format!(
                "partial RoPE (layer {i} rotates {} of {} head dimensions)",
                attention.rope.dim, hp.head_dim
            ));
        }
        if attention.qk_norm.is_some() {
            return unsupported(format!("per-head query and key norms (layer {i})"));
        }
        if let AttentionWindow::Sliding(n) = attention.window {
            return unsupported(format!(
                "a sliding attention window of {n} positions (layer {i})"
            ));
        }
        if attention.output_norm.is_some() || ffn.output_norm.is_some() {
            return unsupported(format!("norms after attention or feed-forward (layer {i})"));
        }
        gate_epilogue(spec, i)?;
    }
    if hp.head_dim % 8 != 0 || hp.n_ff % 4 != 0 {
        return Err(Error::InvalidModel(format!(
            "the GPU kernels need head_dim a multiple of 8 (got {}) and the feed-forward \
             width a multiple of 4 (got {})",
            hp.head_dim, hp.n_ff
        )));
    }
    Ok(())
}

/// The epilogue of layer `i`'s fused gate-and-up projection: its activation times the up
/// projection.
pub(super) fn gate_epilogue(spec: &ModelSpec, i: usize) -> Result<Epilogue> {
    match spec.layers[i].feed_forward.activation {
        Activation::Silu => Ok(Epilogue::SwiGlu),
        Activation::GeluTanh => Err(Error::UnsupportedFeature {
            architecture: spec.architecture,
            feature: format!("a GELU-gated feed-forward (layer {i})"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{self, QkNorm};
    use crate::test_model::{tiny_llama, TinyConfig};

    #[test]
    fn features_without_kernels_are_refused_by_name_and_layer() {
        let spec = models::describe(&tiny_llama(&TinyConfig::default())).unwrap();
        check(&spec).unwrap();
        /// A change to Llama's spec, and the words its refusal must contain.
        type Case = (fn(&mut ModelSpec), &'static str);
        let cases: [Case; 6] = [
            (|s| s.embedding.scale = 8.0, "embeddings scaled by 8"),
            (
                |s| s.layers[1].attention.window = AttentionWindow::Sliding(4),
                "a sliding attention window of 4 positions (layer 1)",
            ),
            (
                |s| {
                    s.layers[1].attention.qk_norm = Some(QkNorm {
                        q: "attn_q_norm",
                        k: "attn_k_norm",
                    })
                },
                "per-head query and key norms (layer 1)",
            ),
            (
                |s| s.layers[0].feed_forward.output_norm = Some("post_ffw_norm"),
                "norms after attention or feed-forward (layer 0)",
            ),
            (
                |s| s.layers[1].feed_forward.activation = Activation::GeluTanh,
                "a GELU-gated feed-forward (layer 1)",
            ),
            (
                |s| s.layers[0].attention.rope.dim = 8,
                "partial RoPE (layer 0 rotates 8 of 16 head dimensions)",
            ),
        ];
        for (change, feature) in cases {
            let mut changed = spec.clone();
            change(&mut changed);
            let err = check(&changed).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, Error::UnsupportedFeature { .. }),
                "{feature}: {msg}"
            );
            assert!(msg.contains(feature) && msg.contains("`llama`"), "{msg}");
        }
    }
}
