//! Model hyperparameters, read from GGUF metadata and validated.

use pio_gguf::GgufFile;

use crate::error::{Error, Result};

/// The only `general.architecture` this plugin runs.
pub const ARCHITECTURE: &str = "llama";

/// Default RoPE base when `llama.rope.freq_base` is absent (llama.cpp's default).
pub const DEFAULT_ROPE_BASE: f32 = 10_000.0;

/// Hyperparameters of a Llama-architecture model.
#[derive(Debug, Clone, PartialEq)]
pub struct HParams {
    /// Transformer blocks (`llama.block_count`).
    pub n_layer: usize,
    /// Hidden size (`llama.embedding_length`).
    pub n_embd: usize,
    /// Feed-forward inner size (`llama.feed_forward_length`).
    pub n_ff: usize,
    /// Query heads (`llama.attention.head_count`).
    pub n_head: usize,
    /// Key/value heads (`llama.attention.head_count_kv`, defaults to `n_head`).
    pub n_head_kv: usize,
    /// Size of one head: `n_embd / n_head`.
    pub head_dim: usize,
    /// Leading dimensions of each head that RoPE rotates (`llama.rope.dimension_count`, defaults
    /// to `head_dim`).
    pub rope_dim: usize,
    /// RoPE frequency base (`llama.rope.freq_base`, default [`DEFAULT_ROPE_BASE`]).
    pub rope_base: f32,
    /// RMSNorm epsilon (`llama.attention.layer_norm_rms_epsilon`).
    pub rms_eps: f32,
    /// Context length the model was trained with (`llama.context_length`).
    pub context_length: usize,
    /// Vocabulary size: the length of `tokenizer.ggml.tokens` (or `llama.vocab_size`).
    pub vocab_size: usize,
}

impl HParams {
    /// Reads and validates the hyperparameters of `file`.
    ///
    /// Fails with [`Error::UnsupportedArchitecture`] for anything but `llama`, and with
    /// [`Error::InvalidModel`] for missing keys, inconsistent shapes or unsupported RoPE scaling.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch = file.architecture()?;
        if arch != ARCHITECTURE {
            return Err(Error::UnsupportedArchitecture(arch.to_owned()));
        }
        let key = |name: &str| format!("{ARCHITECTURE}.{name}");
        let u = |name: &str| -> Result<usize> { Ok(file.get_u32(&key(name))? as usize) };
        let opt_u = |name: &str| -> Result<Option<usize>> {
            Ok(file.opt_u32(&key(name))?.map(|v| v as usize))
        };

        let n_embd = u("embedding_length")?;
        let n_head = u("attention.head_count")?;
        if n_head == 0 || n_embd % n_head != 0 {
            return Err(Error::InvalidModel(format!(
                "embedding_length {n_embd} is not a multiple of head_count {n_head}"
            )));
        }
        let head_dim = n_embd / n_head;
        if let Some(kl) = opt_u("attention.key_length")? {
            if kl != head_dim {
                return Err(Error::InvalidModel(format!(
                    "attention.key_length {kl} differs from embedding_length / head_count = {head_dim}"
                )));
            }
        }
        if let Some(scaling) = file.opt_str(&key("rope.scaling.type"))? {
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
        let vocab_size = match file.opt_string_array("tokenizer.ggml.tokens")? {
            Some(tokens) => tokens.len(),
            None => u("vocab_size")?,
        };

        let hp = HParams {
            n_layer: u("block_count")?,
            n_embd,
            n_ff: u("feed_forward_length")?,
            n_head,
            n_head_kv: opt_u("attention.head_count_kv")?.unwrap_or(n_head),
            head_dim,
            rope_dim: opt_u("rope.dimension_count")?.unwrap_or(head_dim),
            rope_base: file
                .opt_f32(&key("rope.freq_base"))?
                .unwrap_or(DEFAULT_ROPE_BASE),
            rms_eps: file.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            context_length: u("context_length")?,
            vocab_size,
        };
        hp.validate()?;
        Ok(hp)
    }

    /// Checks the values are positive and consistent with each other.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidModel(msg));
        for (name, v) in [
            ("block_count", self.n_layer),
            ("embedding_length", self.n_embd),
            ("feed_forward_length", self.n_ff),
            ("head_count", self.n_head),
            ("head_count_kv", self.n_head_kv),
            ("context_length", self.context_length),
            ("vocabulary size", self.vocab_size),
        ] {
            if v == 0 {
                return bad(format!("{name} is 0"));
            }
        }
        if self.n_head % self.n_head_kv != 0 {
            return bad(format!(
                "head_count {} is not a multiple of head_count_kv {}",
                self.n_head, self.n_head_kv
            ));
        }
        if self.head_dim * self.n_head != self.n_embd {
            return bad(format!(
                "head_dim {} x head_count {} != embedding_length {}",
                self.head_dim, self.n_head, self.n_embd
            ));
        }
        if self.rope_dim == 0 || self.rope_dim % 2 != 0 || self.rope_dim > self.head_dim {
            return bad(format!(
                "rope.dimension_count {} must be even and in 2..={}",
                self.rope_dim, self.head_dim
            ));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 0.0) {
            return bad(format!("rope.freq_base {} is not positive", self.rope_base));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return bad(format!(
                "layer_norm_rms_epsilon {} is not positive",
                self.rms_eps
            ));
        }
        Ok(())
    }

    /// Width of the key (and value) projections: `n_head_kv * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Query heads sharing one key/value head.
    pub fn gqa_group(&self) -> usize {
        self.n_head / self.n_head_kv
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_model::{smollm2, tiny_llama, TinyConfig};

    #[test]
    fn reads_tiny_model_metadata() {
        let hp = HParams::from_gguf(&tiny_llama(&TinyConfig::default())).unwrap();
        assert_eq!(
            (hp.n_layer, hp.n_embd, hp.n_ff, hp.n_head, hp.n_head_kv),
            (2, 64, 128, 4, 2)
        );
        assert_eq!(
            (hp.head_dim, hp.rope_dim, hp.kv_dim(), hp.gqa_group()),
            (16, 16, 32, 2)
        );
        assert_eq!(hp.context_length, 256);
        assert_eq!(hp.vocab_size, 3 + 256 + 40);
    }

    #[test]
    fn rejects_other_architectures_by_name() {
        let cfg = TinyConfig {
            architecture: "gpt2",
            ..TinyConfig::default()
        };
        let err = HParams::from_gguf(&tiny_llama(&cfg)).unwrap_err();
        assert!(matches!(err, Error::UnsupportedArchitecture(ref a) if a == "gpt2"));
        assert!(err.to_string().contains("gpt2"));
    }

    #[test]
    fn rejects_inconsistent_heads() {
        let mut hp = HParams::from_gguf(&tiny_llama(&TinyConfig::default())).unwrap();
        hp.n_head_kv = 3;
        let err = hp.validate().unwrap_err().to_string();
        assert!(err.contains("head_count_kv"), "{err}");
        hp.n_head_kv = 2;
        hp.rope_dim = 17;
        assert!(hp.validate().is_err());
    }

    #[test]
    fn reads_smollm2_metadata() {
        let Some(path) = smollm2() else { return };
        let hp = HParams::from_gguf(&GgufFile::open(path).unwrap()).unwrap();
        assert_eq!(
            (hp.n_layer, hp.n_embd, hp.n_ff, hp.n_head, hp.n_head_kv),
            (30, 576, 1536, 9, 3)
        );
        assert_eq!((hp.head_dim, hp.rope_dim, hp.vocab_size), (64, 64, 49152));
        assert_eq!(hp.rope_base, 100_000.0);
        assert!(hp.context_length >= 2048);
    }
}
