//! The tensors a [`ModelSpec`] names, looked up in the file with shape and type checks.
//!
//! Names follow llama.cpp: the spec gives the embedding, output-norm and output names and, per
//! block `N`, the part of `blk.N.{name}.weight`. Without the output tensor the output projection
//! is tied to the embedding. A weight matrix with `rows` outputs and `cols` inputs has GGUF dims
//! `[cols, rows]`.

use pio_gguf::{GgufFile, TensorType, TensorView};
use pio_gpu::WeightDtype;

use crate::error::{Error, Result};
use crate::models::ModelSpec;

/// The tensors of one transformer block, by role (see [`crate::models::LayerSpec`]).
#[derive(Debug, Clone)]
pub struct LayerTensors<'a> {
    /// RMSNorm weight before attention, `[n_embd]`.
    pub attn_norm: TensorView<'a>,
    /// Query projection, `n_embd` → `n_head * head_dim` (the layer's heads).
    pub attn_q: TensorView<'a>,
    /// Key projection, `n_embd` → `n_head_kv * head_dim`.
    pub attn_k: TensorView<'a>,
    /// Value projection, `n_embd` → `n_head_kv * head_dim`.
    pub attn_v: TensorView<'a>,
    /// Per-head norm weights of queries and keys, `[head_dim]` each, when the spec has them.
    pub qk_norm: Option<(TensorView<'a>, TensorView<'a>)>,
    /// Attention output projection, `n_head * head_dim` → `n_embd`.
    pub attn_output: TensorView<'a>,
    /// RMSNorm weight after attention, `[n_embd]`, when the spec has one.
    pub attn_post_norm: Option<TensorView<'a>>,
    /// RMSNorm weight before the feed-forward, `[n_embd]`.
    pub ffn_norm: TensorView<'a>,
    /// Gate projection, `n_embd` → `n_ff`.
    pub ffn_gate: TensorView<'a>,
    /// Up projection, `n_embd` → `n_ff`.
    pub ffn_up: TensorView<'a>,
    /// Down projection, `n_ff` → `n_embd`.
    pub ffn_down: TensorView<'a>,
    /// RMSNorm weight after the feed-forward, `[n_embd]`, when the spec has one.
    pub ffn_post_norm: Option<TensorView<'a>>,
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

    /// The block's norm weights (vectors), whichever the spec has.
    pub fn norms(&self) -> impl Iterator<Item = &TensorView<'a>> {
        let qk = self.qk_norm.as_ref().map(|(q, k)| [q, k]);
        [&self.attn_norm, &self.ffn_norm]
            .into_iter()
            .chain(self.attn_post_norm.as_ref())
            .chain(self.ffn_post_norm.as_ref())
            .chain(qk.into_iter().flatten())
    }
}

/// Every tensor the model uses, borrowed from the mapped file.
#[derive(Debug, Clone)]
pub struct ModelTensors<'a> {
    /// Token embedding table, `vocab` rows of `n_embd`.
    pub token_embd: TensorView<'a>,
    /// Final RMSNorm weight, `[n_embd]`.
    pub output_norm: TensorView<'a>,
    /// Output projection (`n_embd` → `vocab`): its own tensor, or `token_embd` when tied.
    pub output: TensorView<'a>,
    /// Whether `output` is the embedding table (no output tensor in the file).
    pub tied_output: bool,
    /// The transformer blocks in order.
    pub layers: Vec<LayerTensors<'a>>,
}

impl<'a> ModelTensors<'a> {
    /// Looks up every tensor `spec` names and checks its shape and element type.
    pub fn from_gguf(file: &'a GgufFile, spec: &ModelSpec) -> Result<Self> {
        let hp = &spec.hparams;
        let (e, ff, vocab) = (hp.n_embd, hp.n_ff, hp.vocab_size);
        let token_embd = matrix(file, &format!("{}.weight", spec.embedding.tensor), vocab, e)?;
        let output_name = format!("{}.weight", spec.output.tensor);
        let (output, tied_output) = if file.tensor_info(&output_name).is_some() {
            (matrix(file, &output_name, vocab, e)?, false)
        } else {
            (token_embd, true)
        };
        let layers = spec
            .layers
            .iter()
            .enumerate()
            .map(|(i, layer)| {
                let name = |name: &str| format!("blk.{i}.{name}.weight");
                let m = |n: &str, rows, cols| matrix(file, &name(n), rows, cols);
                let v = |n: &str, len| vector(file, &name(n), len);
                let (attn, ffn) = (&layer.attention, &layer.feed_forward);
                let (q, kv) = (hp.q_dim(i), hp.kv_dim(i));
                Ok(LayerTensors {
                    attn_norm: v(attn.input_norm, e)?,
                    attn_q: m(attn.q, q, e)?,
                    attn_k: m(attn.k, kv, e)?,
                    attn_v: m(attn.v, kv, e)?,
                    qk_norm: match &attn.qk_norm {
                        Some(n) => Some((v(n.q, hp.head_dim)?, v(n.k, hp.head_dim)?)),
                        None => None,
                    },
                    attn_output: m(attn.output, e, q)?,
                    attn_post_norm: attn.output_norm.map(|n| v(n, e)).transpose()?,
                    ffn_norm: v(ffn.input_norm, e)?,
                    ffn_gate: m(ffn.gate, ff, e)?,
                    ffn_up: m(ffn.up, ff, e)?,
                    ffn_down: m(ffn.down, e, ff)?,
                    ffn_post_norm: ffn.output_norm.map(|n| v(n, e)).transpose()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ModelTensors {
            token_embd,
            output_norm: vector(file, &format!("{}.weight", spec.output.norm), e)?,
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
            n += l.norms().map(count).sum::<u64>();
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

/// A `rows` × `cols` matrix of a type the matrix kernels read (a [`WeightDtype`]): checked
/// here, while the file is only mapped, so an unsupported type is refused before anything is
/// allocated on the device.
fn matrix<'a>(file: &'a GgufFile, name: &str, rows: usize, cols: usize) -> Result<TensorView<'a>> {
    let t = file.tensor(name)?;
    if WeightDtype::from_gguf_type(t.info.dtype).is_none() {
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
    use crate::models;
    use crate::test_model::{smollm2, tiny_llama, TinyConfig};

    #[test]
    fn maps_untied_and_tied_outputs() {
        let file = tiny_llama(&TinyConfig::default());
        let spec = models::describe(&file).unwrap();
        let hp = &spec.hparams;
        let t = ModelTensors::from_gguf(&file, &spec).unwrap();
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
        let t = ModelTensors::from_gguf(&file, &spec).unwrap();
        assert!(t.tied_output);
        assert_eq!(t.output.info.name, "token_embd.weight");
        assert_eq!(t.parameter_count(), expect - v * e);
    }

    /// An i-quant (no kernel reads it) among K-quants: refused while only the file is mapped
    /// (`GpuModel::new` looks the tensors up before it uploads anything), naming the first such
    /// tensor and its type.
    #[test]
    fn unsupported_tensor_type_is_named() {
        let cfg = TinyConfig {
            n_embd: 256,
            n_ff: 256,
            types: vec![TensorType::Q4_K, TensorType::Q6_K, TensorType::IQ2_XXS],
            ..TinyConfig::default()
        };
        let file = tiny_llama(&cfg);
        let spec = models::describe(&file).unwrap();
        let err = ModelTensors::from_gguf(&file, &spec).unwrap_err();
        let msg = err.to_string();
        let Error::UnsupportedTensorType { name, dtype } = err else {
            panic!("{msg}")
        };
        assert_eq!(
            (name.as_str(), dtype.as_str()),
            ("blk.0.attn_k.weight", "IQ2_XXS")
        );
        assert!(msg.contains(&name) && msg.contains("IQ2_XXS"), "{msg}");
    }

    #[test]
    #[ignore = "needs the SmolLM2 model: pio models fetch"]
    fn smollm2_is_tied_q4_1_with_135m_parameters() {
        let path = smollm2();
        let file = GgufFile::open(path).unwrap();
        let spec = models::describe(&file).unwrap();
        let t = ModelTensors::from_gguf(&file, &spec).unwrap();
        assert!(t.tied_output);
        assert_eq!(t.token_embd.info.dtype, TensorType::Q8_0);
        assert_eq!(t.dominant_type(), TensorType::Q4_1);
        let n = t.parameter_count();
        assert!((134_000_000..136_000_000).contains(&n), "{n}");
    }
}
