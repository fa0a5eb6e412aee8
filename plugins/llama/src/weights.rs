//! The mapping from GGUF tensor names to the model's weights, with shape and type checks.
//!
//! Names follow llama.cpp: `token_embd.weight`, `output_norm.weight`, `output.weight` (optional:
//! without it the output projection is tied to the embedding), and per block `N`
//! `blk.N.{attn_norm,attn_q,attn_k,attn_v,attn_output,ffn_norm,ffn_gate,ffn_up,ffn_down}.weight`.
//! A weight matrix with `rows` outputs and `cols` inputs has GGUF dims `[cols, rows]`.
//!
//! llama.cpp's converter permutes the rows of `attn_q` and `attn_k` so that RoPE rotates
//! *adjacent* pairs of each head (GGML's "normal" mode), which is what this crate implements.

use pio_gguf::{GgufFile, TensorType, TensorView};

use crate::error::{Error, Result};
use crate::hparams::HParams;

/// Element types the matrix kernels read.
pub const SUPPORTED_TYPES: [TensorType; 5] = [
    TensorType::F32,
    TensorType::F16,
    TensorType::Q4_0,
    TensorType::Q4_1,
    TensorType::Q8_0,
];

/// The tensors of one transformer block.
#[derive(Debug, Clone)]
pub struct LayerTensors<'a> {
    /// RMSNorm weight before attention, `[n_embd]`.
    pub attn_norm: TensorView<'a>,
    /// Query projection, `n_embd` → `n_head * head_dim`.
    pub attn_q: TensorView<'a>,
    /// Key projection, `n_embd` → `n_head_kv * head_dim`.
    pub attn_k: TensorView<'a>,
    /// Value projection, `n_embd` → `n_head_kv * head_dim`.
    pub attn_v: TensorView<'a>,
    /// Attention output projection, `n_embd` → `n_embd`.
    pub attn_output: TensorView<'a>,
    /// RMSNorm weight before the feed-forward, `[n_embd]`.
    pub ffn_norm: TensorView<'a>,
    /// Gate projection, `n_embd` → `n_ff`.
    pub ffn_gate: TensorView<'a>,
    /// Up projection, `n_embd` → `n_ff`.
    pub ffn_up: TensorView<'a>,
    /// Down projection, `n_ff` → `n_embd`.
    pub ffn_down: TensorView<'a>,
}

impl<'a> LayerTensors<'a> {
    /// The block's seven matrices, in evaluation order.
    pub fn matrices(&self) -> [&TensorView<'a>; 7] {
        [
            &self.attn_q,
            &self.attn_k,
            &self.attn_v,
            &self.attn_output,
            &self.ffn_gate,
            &self.ffn_up,
            &self.ffn_down,
        ]
    }
}

/// Every tensor the model uses, borrowed from the mapped file.
#[derive(Debug, Clone)]
pub struct ModelTensors<'a> {
    /// Token embedding table, `vocab` rows of `n_embd`.
    pub token_embd: TensorView<'a>,
    /// Final RMSNorm weight, `[n_embd]`.
    pub output_norm: TensorView<'a>,
    /// Output projection (`n_embd` → `vocab`): `output.weight`, or `token_embd` when tied.
    pub output: TensorView<'a>,
    /// Whether `output` is the embedding table (no `output.weight` in the file).
    pub tied_output: bool,
    /// The transformer blocks in order.
    pub layers: Vec<LayerTensors<'a>>,
}

impl<'a> ModelTensors<'a> {
    /// Looks up every tensor `hp` calls for and checks its shape and element type.
    pub fn from_gguf(file: &'a GgufFile, hp: &HParams) -> Result<Self> {
        let (e, q, kv, ff, vocab) = (hp.n_embd, hp.n_embd, hp.kv_dim(), hp.n_ff, hp.vocab_size);
        let token_embd = matrix(file, "token_embd.weight", vocab, e)?;
        let (output, tied_output) = if file.tensor_info("output.weight").is_some() {
            (matrix(file, "output.weight", vocab, e)?, false)
        } else {
            (token_embd, true)
        };
        let layers = (0..hp.n_layer)
            .map(|i| {
                let m = |name: &str, rows, cols| {
                    matrix(file, &format!("blk.{i}.{name}.weight"), rows, cols)
                };
                let v = |name: &str| vector(file, &format!("blk.{i}.{name}.weight"), e);
                Ok(LayerTensors {
                    attn_norm: v("attn_norm")?,
                    attn_q: m("attn_q", q, e)?,
                    attn_k: m("attn_k", kv, e)?,
                    attn_v: m("attn_v", kv, e)?,
                    attn_output: m("attn_output", e, q)?,
                    ffn_norm: v("ffn_norm")?,
                    ffn_gate: m("ffn_gate", ff, e)?,
                    ffn_up: m("ffn_up", ff, e)?,
                    ffn_down: m("ffn_down", e, ff)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ModelTensors {
            token_embd,
            output_norm: vector(file, "output_norm.weight", e)?,
            output,
            tied_output,
            layers,
        })
    }

    /// Number of model parameters (a tied output projection counted once).
    pub fn parameter_count(&self) -> u64 {
        let count = |t: &TensorView| t.info.dims.iter().product::<u64>();
        let mut n = count(&self.token_embd) + count(&self.output_norm);
        if !self.tied_output {
            n += count(&self.output);
        }
        for l in &self.layers {
            n += count(&l.attn_norm) + count(&l.ffn_norm);
            n += l.matrices().iter().map(|t| count(t)).sum::<u64>();
        }
        n
    }

    /// The element type holding most block-matrix parameters, e.g. `Q4_1`: the model's
    /// quantization as people name it.
    pub fn dominant_type(&self) -> TensorType {
        let mut totals: Vec<(TensorType, u64)> = Vec::new();
        for t in self.layers.iter().flat_map(|l| l.matrices()) {
            let n = t.info.dims.iter().product::<u64>();
            match totals.iter_mut().find(|(ty, _)| *ty == t.info.dtype) {
                Some(entry) => entry.1 += n,
                None => totals.push((t.info.dtype, n)),
            }
        }
        totals
            .into_iter()
            .max_by_key(|&(_, n)| n)
            .map_or(self.token_embd.info.dtype, |(ty, _)| ty)
    }
}

/// A `rows` × `cols` matrix of a supported type.
fn matrix<'a>(file: &'a GgufFile, name: &str, rows: usize, cols: usize) -> Result<TensorView<'a>> {
    let t = file.tensor(name)?;
    if !SUPPORTED_TYPES.contains(&t.info.dtype) {
        return Err(Error::UnsupportedTensorType {
            name: name.to_owned(),
            dtype: t.info.dtype.to_string(),
        });
    }
    expect_dims(&t, &[cols as u64, rows as u64])?;
    Ok(t)
}

/// A vector of `len` values (any float type the GGUF reader decodes).
fn vector<'a>(file: &'a GgufFile, name: &str, len: usize) -> Result<TensorView<'a>> {
    let t = file.tensor(name)?;
    if !matches!(
        t.info.dtype,
        TensorType::F32 | TensorType::F16 | TensorType::BF16
    ) {
        return Err(Error::UnsupportedTensorType {
            name: name.to_owned(),
            dtype: t.info.dtype.to_string(),
        });
    }
    expect_dims(&t, &[len as u64])?;
    Ok(t)
}

fn expect_dims(t: &TensorView, dims: &[u64]) -> Result<()> {
    if t.info.dims != dims {
        return Err(Error::InvalidModel(format!(
            "tensor `{}` has dims {:?}, expected {:?}",
            t.info.name, t.info.dims, dims
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_model::{smollm2, tiny_llama, TinyConfig};

    #[test]
    fn maps_untied_and_tied_outputs() {
        let file = tiny_llama(&TinyConfig::default());
        let hp = HParams::from_gguf(&file).unwrap();
        let t = ModelTensors::from_gguf(&file, &hp).unwrap();
        assert!(!t.tied_output);
        assert_eq!(t.output.info.name, "output.weight");
        assert_eq!(t.layers.len(), 2);
        assert_eq!(t.layers[1].ffn_down.info.dims, vec![128, 64]);
        let (v, e, kv, ff) = (hp.vocab_size as u64, 64, 32, 128);
        let expect = 2 * v * e + e + 2 * (2 * e + e * e * 2 + 2 * kv * e + 3 * e * ff);
        assert_eq!(t.parameter_count(), expect);

        let file = tiny_llama(&TinyConfig {
            tied: true,
            ..TinyConfig::default()
        });
        let t = ModelTensors::from_gguf(&file, &hp).unwrap();
        assert!(t.tied_output);
        assert_eq!(t.output.info.name, "token_embd.weight");
        assert_eq!(t.parameter_count(), expect - v * e);
    }

    #[test]
    fn unsupported_tensor_type_is_named() {
        let cfg = TinyConfig {
            types: vec![TensorType::Q8_0, TensorType::Q5_0],
            ..TinyConfig::default()
        };
        let file = tiny_llama(&cfg);
        let hp = HParams::from_gguf(&file).unwrap();
        let err = ModelTensors::from_gguf(&file, &hp).unwrap_err();
        let msg = err.to_string();
        let Error::UnsupportedTensorType { name, dtype } = err else {
            panic!("{msg}")
        };
        assert_eq!(dtype, "Q5_0");
        assert!(file.tensor_info(&name).unwrap().dtype == TensorType::Q5_0);
        assert!(msg.contains(&name) && msg.contains("Q5_0"), "{msg}");
    }

    #[test]
    fn smollm2_is_tied_q4_1_with_135m_parameters() {
        let Some(path) = smollm2() else { return };
        let file = GgufFile::open(path).unwrap();
        let hp = HParams::from_gguf(&file).unwrap();
        let t = ModelTensors::from_gguf(&file, &hp).unwrap();
        assert!(t.tied_output);
        assert_eq!(t.token_embd.info.dtype, TensorType::Q8_0);
        assert_eq!(t.dominant_type(), TensorType::Q4_1);
        let n = t.parameter_count();
        assert!((134_000_000..136_000_000).contains(&n), "{n}");
    }
}
