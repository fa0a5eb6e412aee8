//! Llama (`general.architecture = "llama"`): SmolLM2, Llama 2/3, TinyLlama, Mistral-style GGUFs.
//!
//! Every block is the same pre-norm block: RMSNorm → q, k, v → RoPE on q and k → causal
//! grouped-query attention over every earlier position → output projection → residual add;
//! RMSNorm → SwiGLU feed-forward → residual add. The embedding is unscaled, the output
//! projection is tied to it when the file has no `output.weight`.
//!
//! Tensor names follow llama.cpp. Its converter permutes the rows of `attn_q` and `attn_k` so
//! that RoPE rotates *adjacent* pairs of each head (GGML's "normal" mode), which is what
//! [`Rope`] means.

use pio_gguf::GgufFile;

use super::{
    Activation, AttentionSpec, AttentionWindow, Embedding, FeedForwardSpec, LayerSpec, ModelSpec,
    NormWeight, Output, RmsNorm, Rope, RopePairs,
};
use crate::error::{Error, Result};
use crate::hparams::{HParams, Metadata};

/// The `general.architecture` of this family, and the prefix of its metadata keys.
pub const ARCHITECTURE: &str = "llama";

/// Default RoPE base when `llama.rope.freq_base` is absent (llama.cpp's default).
pub const DEFAULT_ROPE_BASE: f32 = 10_000.0;

/// Reads the description of a Llama GGUF.
///
/// Fails with [`Error::InvalidModel`] for missing keys, heads that do not split the hidden
/// size (or a layer with more of them than fit), and RoPE scaling or per-dimension frequency factors (not implemented).
pub fn describe(file: &GgufFile) -> Result<ModelSpec> {
    let meta = Metadata::new(file, ARCHITECTURE);
    let hparams = HParams::from_gguf(meta)?;
    // A Llama's heads split its embedding: `n_embd / head_dim` of them, or fewer in a layer
    // whose heads model surgery removed.
    if hparams.n_embd % hparams.head_dim != 0 || hparams.max_q_dim() > hparams.n_embd {
        return Err(Error::InvalidModel(format!(
            "attention.key_length {}: embedding_length {} must be a whole number of heads of \
             that size, at least as many as any layer has",
            hparams.head_dim, hparams.n_embd
        )));
    }
    if let Some(scaling) = meta.opt_str("rope.scaling.type")? {
        if scaling != "none" {
            return Err(Error::InvalidModel(format!(
                "RoPE scaling `{scaling}` is not supported"
            )));
        }
    }
    if file.tensor_info("rope_freqs.weight").is_some() {
        return Err(Error::InvalidModel(
            "per-dimension RoPE frequency factors (rope_freqs.weight) are not supported".into(),
        ));
    }
    let rope = Rope {
        base: meta.opt_f32("rope.freq_base")?.unwrap_or(DEFAULT_ROPE_BASE),
        dim: meta
            .opt_usize("rope.dimension_count")?
            .unwrap_or(hparams.head_dim),
        pairs: RopePairs::Adjacent,
    };
    let layer = LayerSpec {
        attention: AttentionSpec {
            input_norm: "attn_norm",
            output_norm: None,
            q: "attn_q",
            k: "attn_k",
            v: "attn_v",
            output: "attn_output",
            qk_norm: None,
            rope,
            window: AttentionWindow::Global,
        },
        feed_forward: FeedForwardSpec {
            input_norm: "ffn_norm",
            output_norm: None,
            gate: "ffn_gate",
            up: "ffn_up",
            down: "ffn_down",
            activation: Activation::Silu,
        },
    };
    Ok(ModelSpec {
        architecture: ARCHITECTURE,
        norm: RmsNorm {
            eps: meta.f32("attention.layer_norm_rms_epsilon")?,
            weight: NormWeight::Plain,
        },
        embedding: Embedding {
            tensor: "token_embd",
            scale: 1.0,
        },
        output: Output {
            norm: "output_norm",
            tensor: "output",
        },
        layers: vec![layer; hparams.n_layer],
        hparams,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models;
    use crate::test_model::{smollm2, tiny_llama, TinyConfig};

    #[test]
    fn describes_the_tiny_model() {
        let spec = models::describe(&tiny_llama(&TinyConfig::default())).unwrap();
        assert_eq!(spec.architecture, "llama");
        assert_eq!(spec.layers.len(), 2);
        assert_eq!(spec.norm.eps, 1e-5);
        let attention = &spec.layers[1].attention;
        assert_eq!(
            attention.rope,
            Rope {
                base: 10_000.0,
                dim: 16,
                pairs: RopePairs::Adjacent,
            }
        );
        assert_eq!(attention.window, AttentionWindow::Global);
        assert_eq!(spec.ropes().len(), 1);
    }

    #[test]
    fn other_architectures_are_refused_by_name() {
        let cfg = TinyConfig {
            architecture: "gpt2",
            ..TinyConfig::default()
        };
        let err = models::describe(&tiny_llama(&cfg)).unwrap_err();
        assert!(matches!(err, Error::UnsupportedArchitecture(ref a) if a == "gpt2"));
        let msg = err.to_string();
        assert!(msg.contains("gpt2") && msg.contains("`llama`"), "{msg}");
    }

    #[test]
    fn rope_outside_the_heads_is_refused() {
        let mut spec = models::describe(&tiny_llama(&TinyConfig::default())).unwrap();
        spec.layers[1].attention.rope.dim = 17;
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("layer 1") && err.contains("17"), "{err}");
    }

    #[test]
    #[ignore = "needs the SmolLM2 model: pio models fetch"]
    fn describes_smollm2() {
        let path = smollm2();
        let spec = models::describe(&GgufFile::open(path).unwrap()).unwrap();
        let hp = &spec.hparams;
        assert_eq!((hp.n_layer, hp.n_embd, hp.n_ff), (30, 576, 1536));
        assert!(hp.heads.iter().all(|h| (h.n_head, h.n_head_kv) == (9, 3)));
        assert_eq!((hp.head_dim, hp.vocab_size), (64, 49152));
        assert_eq!(
            spec.ropes(),
            [Rope {
                base: 100_000.0,
                dim: 64,
                pairs: RopePairs::Adjacent,
            }]
        );
        assert!(hp.context_length >= 2048);
    }
}
