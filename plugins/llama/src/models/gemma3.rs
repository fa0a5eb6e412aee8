//! Gemma 3 (`general.architecture = "gemma3"`): Gemma 3 270M, 1B and the text half of the
//! larger ones.
//!
//! Every block is a sandwich: RMSNorm → q, k, v → per-head RMSNorm of q and k → RoPE →
//! grouped-query attention → output projection → RMSNorm → residual add; RMSNorm → GeGLU
//! feed-forward (tanh GELU) → RMSNorm → residual add. The embedding is scaled by `√n_embd` and
//! tied to the output projection when the file has no `output.weight`.
//!
//! Five of every six layers attend to a sliding window of `attention.sliding_window` positions
//! with RoPE base 10 000; every sixth (layers 5, 11, ...) attends to every earlier position
//! with the file's `rope.freq_base`. The file carries neither the pattern nor the local base
//! (unless it has `attention.sliding_window_pattern` or `rope.freq_base_swa`): they are Gemma 3
//! conventions, and llama.cpp applies the same ones. The pattern may also be one bool per
//! layer (`true`: sliding), which model surgery writes: with layers removed there is no period.
//!
//! llama.cpp's converter adds Gemma's `+ 1` to every norm weight and does not permute q and k,
//! so norms are [`NormWeight::Plain`] and RoPE pairs are [`RopePairs::Halves`]. Attention
//! scores are scaled by `1/√head_dim` (query_pre_attn_scalar = head_dim for these sizes);
//! there is no final logit soft-capping in Gemma 3.

use pio_gguf::{GgufFile, MetadataValue, ValueType};

use super::{
    Activation, AttentionSpec, AttentionWindow, Embedding, FeedForwardSpec, LayerSpec,
    MetadataEntries, ModelSpec, NormWeight, Output, QkNorm, RmsNorm, Rope, RopePairs,
};
use crate::error::{Error, Result};
use crate::hparams::{HParams, Metadata};

/// The `general.architecture` of this family, and the prefix of its metadata keys.
pub const ARCHITECTURE: &str = "gemma3";

/// Every this-many-th layer attends globally (the last of each group): Gemma 3's pattern.
pub const DEFAULT_PATTERN: usize = 6;

/// The key (under `gemma3.`) of the pattern of sliding-window layers.
const PATTERN_KEY: &str = "attention.sliding_window_pattern";

/// RoPE base of the sliding-window layers when the file does not say.
pub const DEFAULT_LOCAL_ROPE_BASE: f32 = 10_000.0;

/// RoPE base of the global layers when the file does not say (Gemma 3's).
pub const DEFAULT_GLOBAL_ROPE_BASE: f32 = 1_000_000.0;

/// Reads the description of a Gemma 3 GGUF.
///
/// Fails with [`Error::InvalidModel`] for missing keys, a final logit soft-cap or RoPE
/// scaling (not implemented), a window or pattern of 0, and a per-layer pattern of the wrong
/// length.
pub fn describe(file: &GgufFile) -> Result<ModelSpec> {
    let meta = Metadata::new(file, ARCHITECTURE);
    let hparams = HParams::from_gguf(meta)?;
    if let Some(cap) = meta.opt_f32("final_logit_softcapping")? {
        if cap != 0.0 {
            return Err(Error::InvalidModel(format!(
                "final logit soft-capping ({cap}) is not supported"
            )));
        }
    }
    if let Some(scaling) = meta.opt_str("rope.scaling.type")? {
        if scaling != "none" {
            return Err(Error::InvalidModel(format!(
                "RoPE scaling `{scaling}` is not supported"
            )));
        }
    }
    let dim = meta
        .opt_usize("rope.dimension_count")?
        .unwrap_or(hparams.head_dim);
    let global_rope = Rope {
        base: meta
            .opt_f32("rope.freq_base")?
            .unwrap_or(DEFAULT_GLOBAL_ROPE_BASE),
        dim,
        pairs: RopePairs::Halves,
    };
    let local_rope = Rope {
        base: meta
            .opt_f32("rope.freq_base_swa")?
            .unwrap_or(DEFAULT_LOCAL_ROPE_BASE),
        ..global_rope
    };
    // Without a window every layer is global (llama.cpp's reading of such a file).
    let window = meta.opt_usize("attention.sliding_window")?;
    if window == Some(0) {
        return Err(Error::InvalidModel(
            "attention.sliding_window must be positive, got 0".into(),
        ));
    }
    let sliding = sliding_layers(file, hparams.n_layer)?;
    let layer = |i: usize| {
        let (window, rope) = match window {
            Some(n) if sliding[i] => (AttentionWindow::Sliding(n), local_rope),
            _ => (AttentionWindow::Global, global_rope),
        };
        LayerSpec {
            attention: AttentionSpec {
                input_norm: "attn_norm",
                output_norm: Some("post_attention_norm"),
                q: "attn_q",
                k: "attn_k",
                v: "attn_v",
                output: "attn_output",
                qk_norm: Some(QkNorm {
                    q: "attn_q_norm",
                    k: "attn_k_norm",
                }),
                rope,
                window,
            },
            feed_forward: FeedForwardSpec {
                input_norm: "ffn_norm",
                output_norm: Some("post_ffw_norm"),
                gate: "ffn_gate",
                up: "ffn_up",
                down: "ffn_down",
                activation: Activation::GeluTanh,
            },
        }
    };
    Ok(ModelSpec {
        architecture: ARCHITECTURE,
        norm: RmsNorm {
            eps: meta.f32("attention.layer_norm_rms_epsilon")?,
            weight: NormWeight::Plain,
        },
        embedding: Embedding {
            tensor: "token_embd",
            scale: (hparams.n_embd as f32).sqrt(),
        },
        output: Output {
            norm: "output_norm",
            tensor: "output",
        },
        layers: (0..hparams.n_layer).map(layer).collect(),
        hparams,
    })
}

/// Which layers attend through the sliding window, from `attention.sliding_window_pattern`:
/// a period `p` (every `p`-th layer is global, the others slide; default
/// [`DEFAULT_PATTERN`]), or one bool per layer, `true` for a sliding one (llama.cpp's
/// per-layer form; [`surgery_metadata`] writes it).
fn sliding_layers(file: &GgufFile, n_layer: usize) -> Result<Vec<bool>> {
    let key = format!("{ARCHITECTURE}.{PATTERN_KEY}");
    let bad = |what: String| Err(Error::InvalidModel(format!("{key}: {what}")));
    match file.get(&key) {
        Some(MetadataValue::Array { items, .. }) => {
            let Some(flags) = items
                .iter()
                .map(MetadataValue::as_bool)
                .collect::<Option<Vec<_>>>()
            else {
                return bad("an array must hold bools".into());
            };
            if flags.len() != n_layer {
                return bad(format!("{} entries for {n_layer} layers", flags.len()));
            }
            Ok(flags)
        }
        Some(value) => match value.as_u32() {
            Some(0) | None => bad(format!(
                "expected a positive period, found {}",
                value.describe()
            )),
            Some(p) => Ok(every(p as usize, n_layer)),
        },
        None => Ok(every(DEFAULT_PATTERN, n_layer)),
    }
}

/// Every `period`-th layer global (the last of each group), the others sliding.
fn every(period: usize, n_layer: usize) -> Vec<bool> {
    (0..n_layer).map(|i| i % period < period - 1).collect()
}

/// What a file with only the layers `kept` of `spec` (old indices, in order) must say so that
/// each kept layer keeps its attention window: the pattern as one bool per layer, since
/// removing layers breaks the period.
pub fn surgery_metadata(spec: &ModelSpec, kept: &[usize]) -> MetadataEntries {
    let flags = kept
        .iter()
        .map(|&i| {
            let sliding = matches!(spec.layers[i].attention.window, AttentionWindow::Sliding(_));
            MetadataValue::Bool(sliding)
        })
        .collect();
    vec![(
        format!("{ARCHITECTURE}.{PATTERN_KEY}"),
        MetadataValue::array(ValueType::Bool, flags),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models;
    use crate::test_model::{gemma3, tiny_gemma3, TinyConfig};

    #[test]
    fn describes_the_tiny_model_with_its_layer_pattern() {
        let cfg = TinyConfig {
            n_layer: 7,
            ..TinyConfig::gemma3()
        };
        let spec = models::describe(&tiny_gemma3(&cfg)).unwrap();
        assert_eq!(spec.architecture, "gemma3");
        assert_eq!(spec.embedding.scale, 8.0);
        let windows: Vec<_> = spec.layers.iter().map(|l| l.attention.window).collect();
        let local = AttentionWindow::Sliding(cfg.sliding_window);
        let global = AttentionWindow::Global;
        assert_eq!(windows, [local, local, local, local, local, global, local]);
        let bases: Vec<f32> = spec.layers.iter().map(|l| l.attention.rope.base).collect();
        assert_eq!(bases[4..], [10_000.0, 1_000_000.0, 10_000.0]);
        assert!(spec
            .layers
            .iter()
            .all(|l| l.attention.rope.pairs == RopePairs::Halves));
        assert_eq!(spec.ropes().len(), 2);
    }

    #[test]
    fn file_keys_override_the_conventions() {
        let mut bytes_cfg = TinyConfig::gemma3();
        bytes_cfg.n_layer = 4;
        let mut w = crate::test_model::tiny_gemma3_writer(&bytes_cfg);
        w.add_metadata(
            "gemma3.attention.sliding_window_pattern",
            pio_gguf::MetadataValue::U32(2),
        )
        .add_metadata(
            "gemma3.rope.freq_base_swa",
            pio_gguf::MetadataValue::F32(500.0),
        );
        let file = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
        let spec = models::describe(&file).unwrap();
        let globals: Vec<bool> = spec
            .layers
            .iter()
            .map(|l| l.attention.window == AttentionWindow::Global)
            .collect();
        assert_eq!(globals, [false, true, false, true]);
        assert_eq!(spec.layers[0].attention.rope.base, 500.0);

        let mut w = crate::test_model::tiny_gemma3_writer(&bytes_cfg);
        w.add_metadata(
            "gemma3.final_logit_softcapping",
            pio_gguf::MetadataValue::F32(30.0),
        );
        let file = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
        let err = models::describe(&file).unwrap_err().to_string();
        assert!(err.contains("soft-capping"), "{err}");
    }

    /// The per-layer form surgery writes is read back as it was written; a wrong length is
    /// refused.
    #[test]
    fn a_per_layer_pattern_survives_removed_layers() {
        let cfg = TinyConfig::gemma3();
        let spec = models::describe(&tiny_gemma3(&cfg)).unwrap();
        // Layers 4, 5 (global), 6 kept.
        let written = surgery_metadata(&spec, &[4, 5, 6]);
        let mut w = crate::test_model::tiny_gemma3_writer(&TinyConfig {
            n_layer: 3,
            ..cfg.clone()
        });
        for (key, value) in &written {
            w.add_metadata(key.clone(), value.clone());
        }
        let file = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
        let cut = models::describe(&file).unwrap();
        let windows: Vec<_> = cut.layers.iter().map(|l| l.attention.window).collect();
        assert_eq!(windows, [4, 5, 6].map(|i| spec.layers[i].attention.window));
        assert_eq!(windows[1], AttentionWindow::Global);
        assert_eq!(cut.layers[1].attention.rope.base, DEFAULT_GLOBAL_ROPE_BASE);

        let mut w = crate::test_model::tiny_gemma3_writer(&TinyConfig { n_layer: 4, ..cfg });
        for (key, value) in written {
            w.add_metadata(key, value);
        }
        let file = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
        let err = models::describe(&file).unwrap_err().to_string();
        assert!(err.contains("3 entries for 4 layers"), "{err}");
    }

    #[test]
    #[ignore = "needs the Gemma 3 model: pio models fetch"]
    fn describes_gemma3_270m() {
        let spec = models::describe(&GgufFile::open(gemma3()).unwrap()).unwrap();
        let hp = &spec.hparams;
        assert_eq!((hp.n_layer, hp.n_embd, hp.n_ff), (18, 640, 2048));
        assert!(hp.heads.iter().all(|h| (h.n_head, h.n_head_kv) == (4, 1)));
        assert_eq!((hp.head_dim, hp.vocab_size), (256, 262_144));
        let global: Vec<usize> = (0..18)
            .filter(|&i| spec.layers[i].attention.window == AttentionWindow::Global)
            .collect();
        assert_eq!(global, [5, 11, 17]);
        assert_eq!(
            spec.layers[0].attention.window,
            AttentionWindow::Sliding(512)
        );
        let bases: Vec<f32> = spec.ropes().iter().map(|r| r.base).collect();
        assert_eq!(bases, [10_000.0, 1_000_000.0]);
        assert_eq!(spec.embedding.scale, 640f32.sqrt());
        assert_eq!(spec.norm.eps, 1e-6);
    }
}
