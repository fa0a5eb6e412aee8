//! What the GPU runtime runs of a [`ModelSpec`], checked before anything is uploaded.
//!
//! Every feature a spec names has a kernel or an upload-time transformation (per-layer RoPE
//! bases: one table each; `1 + w` norm weights: folded in; RoPE on halves: q and k rows
//! reordered) except partial RoPE, which is refused with [`Error::UnsupportedFeature`] naming
//! the layer, not run wrongly; so are shapes the kernels cannot tile. A new feature's kernel
//! comes with a refusal here until it exists.

use pio_gpu::{Epilogue, MAX_HEAD_DIM};

use crate::error::{Error, Result};
use crate::models::{Activation, ModelSpec};

/// Refuses `spec` when it is inconsistent ([`ModelSpec::validate`]), needs something no kernel
/// does, or has shapes the kernels cannot tile.
pub(super) fn check(spec: &ModelSpec) -> Result<()> {
    spec.validate()?;
    let hp = &spec.hparams;
    for (i, layer) in spec.layers.iter().enumerate() {
        let rope = layer.attention.rope;
        if rope.dim != hp.head_dim {
            return Err(Error::UnsupportedFeature {
                architecture: spec.architecture,
                feature: format!(
                    "partial RoPE (layer {i} rotates {} of {} head dimensions)",
                    rope.dim, hp.head_dim
                ),
            });
        }
    }
    if hp.head_dim % 8 != 0 || hp.head_dim > MAX_HEAD_DIM as usize || hp.n_ff % 4 != 0 {
        return Err(Error::InvalidModel(format!(
            "the GPU kernels need head_dim a multiple of 8 up to {MAX_HEAD_DIM} (got {}) and \
             the feed-forward width a multiple of 4 (got {})",
            hp.head_dim, hp.n_ff
        )));
    }
    Ok(())
}

/// The epilogue of layer `i`'s fused gate-and-up projection: its activation times the up
/// projection.
pub(super) fn gate_epilogue(spec: &ModelSpec, i: usize) -> Epilogue {
    match spec.layers[i].feed_forward.activation {
        Activation::Silu => Epilogue::SwiGlu,
        Activation::GeluTanh => Epilogue::GeGlu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models;
    use crate::test_model::{tiny_gemma3, tiny_llama, TinyConfig};

    #[test]
    fn llama_and_gemma3_run_and_partial_rope_is_refused_by_layer() {
        let llama = models::describe(&tiny_llama(&TinyConfig::default())).unwrap();
        check(&llama).unwrap();
        let gemma = models::describe(&tiny_gemma3(&TinyConfig::gemma3())).unwrap();
        check(&gemma).unwrap();
        assert_eq!(gate_epilogue(&gemma, 0), Epilogue::GeGlu);

        let mut partial = llama.clone();
        partial.layers[0].attention.rope.dim = 8;
        let err = check(&partial).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::UnsupportedFeature { .. }), "{msg}");
        assert!(
            msg.contains("partial RoPE (layer 0 rotates 8 of 16 head dimensions)")
                && msg.contains("`llama`"),
            "{msg}"
        );
    }
}
