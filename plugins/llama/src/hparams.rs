//! The shapes every family shares, read from GGUF metadata under the family's key prefix.
//!
//! llama.cpp writes the same keys for every transformer family, prefixed by its
//! `general.architecture` (`llama.block_count`, `gemma3.block_count`, ...), so a family file
//! reads these with [`HParams::from_gguf`] and only what is its own (RoPE, norms, windows) by
//! hand.

use pio_gguf::GgufFile;

use crate::error::{Error, Result};

/// Shapes of a decoder-only transformer.
#[derive(Debug, Clone, PartialEq)]
pub struct HParams {
    /// Transformer blocks (`{arch}.block_count`).
    pub n_layer: usize,
    /// Hidden size (`{arch}.embedding_length`).
    pub n_embd: usize,
    /// Feed-forward inner size (`{arch}.feed_forward_length`).
    pub n_ff: usize,
    /// Query heads (`{arch}.attention.head_count`).
    pub n_head: usize,
    /// Key/value heads (`{arch}.attention.head_count_kv`, defaults to `n_head`).
    pub n_head_kv: usize,
    /// Size of one head (`{arch}.attention.key_length`, defaults to `n_embd / n_head`).
    pub head_dim: usize,
    /// Context length the model was trained with (`{arch}.context_length`).
    pub context_length: usize,
    /// Vocabulary size: the length of `tokenizer.ggml.tokens` (or `{arch}.vocab_size`).
    pub vocab_size: usize,
}

/// Typed reads of `{architecture}.{name}` metadata keys.
#[derive(Clone, Copy)]
pub struct Metadata<'a> {
    file: &'a GgufFile,
    architecture: &'a str,
}

impl<'a> Metadata<'a> {
    /// Reads the keys of `architecture` in `file`.
    pub fn new(file: &'a GgufFile, architecture: &'a str) -> Self {
        Metadata { file, architecture }
    }

    /// The file itself, for keys outside the prefix and for tensors.
    pub fn file(&self) -> &'a GgufFile {
        self.file
    }

    fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.architecture)
    }

    /// A required unsigned integer.
    pub fn usize(&self, name: &str) -> Result<usize> {
        Ok(self.file.get_u32(&self.key(name))? as usize)
    }

    /// An optional unsigned integer.
    pub fn opt_usize(&self, name: &str) -> Result<Option<usize>> {
        Ok(self.file.opt_u32(&self.key(name))?.map(|v| v as usize))
    }

    /// A required float.
    pub fn f32(&self, name: &str) -> Result<f32> {
        Ok(self.file.get_f32(&self.key(name))?)
    }

    /// An optional float.
    pub fn opt_f32(&self, name: &str) -> Result<Option<f32>> {
        Ok(self.file.opt_f32(&self.key(name))?)
    }

    /// An optional string.
    pub fn opt_str(&self, name: &str) -> Result<Option<&'a str>> {
        Ok(self.file.opt_str(&self.key(name))?)
    }
}

impl HParams {
    /// Reads the shared shapes from `meta` and validates them.
    pub fn from_gguf(meta: Metadata) -> Result<Self> {
        let n_embd = meta.usize("embedding_length")?;
        let n_head = meta.usize("attention.head_count")?;
        let head_dim = match meta.opt_usize("attention.key_length")? {
            Some(len) => len,
            None if n_head != 0 && n_embd % n_head == 0 => n_embd / n_head,
            None => {
                return Err(Error::InvalidModel(format!(
                    "embedding_length {n_embd} is not a multiple of head_count {n_head}"
                )))
            }
        };
        if let Some(len) = meta.opt_usize("attention.value_length")? {
            if len != head_dim {
                return Err(Error::InvalidModel(format!(
                    "attention.value_length {len} differs from the key length {head_dim}"
                )));
            }
        }
        let vocab_size = match meta.file().opt_string_array("tokenizer.ggml.tokens")? {
            Some(tokens) => tokens.len(),
            None => meta.usize("vocab_size")?,
        };
        let hp = HParams {
            n_layer: meta.usize("block_count")?,
            n_embd,
            n_ff: meta.usize("feed_forward_length")?,
            n_head,
            n_head_kv: meta.opt_usize("attention.head_count_kv")?.unwrap_or(n_head),
            head_dim,
            context_length: meta.usize("context_length")?,
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
            ("key_length", self.head_dim),
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
        Ok(())
    }

    /// Width of the query projection (and of the attention output): `n_head * head_dim`.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
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
    use crate::test_model::{tiny_llama, TinyConfig};

    #[test]
    fn reads_tiny_model_shapes() {
        let file = tiny_llama(&TinyConfig::default());
        let hp = HParams::from_gguf(Metadata::new(&file, "llama")).unwrap();
        assert_eq!(
            (hp.n_layer, hp.n_embd, hp.n_ff, hp.n_head, hp.n_head_kv),
            (2, 64, 128, 4, 2)
        );
        assert_eq!(
            (hp.head_dim, hp.q_dim(), hp.kv_dim(), hp.gqa_group()),
            (16, 64, 32, 2)
        );
        assert_eq!(hp.context_length, 256);
        assert_eq!(hp.vocab_size, 3 + 256 + 40);
    }

    #[test]
    fn rejects_inconsistent_heads() {
        let file = tiny_llama(&TinyConfig::default());
        let mut hp = HParams::from_gguf(Metadata::new(&file, "llama")).unwrap();
        hp.n_head_kv = 3;
        let err = hp.validate().unwrap_err().to_string();
        assert!(err.contains("head_count_kv"), "{err}");
    }

    #[test]
    fn missing_key_is_named_with_the_prefix() {
        let file = tiny_llama(&TinyConfig::default());
        let err = HParams::from_gguf(Metadata::new(&file, "gemma3")).unwrap_err();
        assert!(err.to_string().contains("gemma3.embedding_length"), "{err}");
    }
}
