//! The shapes every family shares, read from GGUF metadata under the family's key prefix.
//!
//! llama.cpp writes the same keys for every transformer family, prefixed by its
//! `general.architecture` (`llama.block_count`, `gemma3.block_count`, ...), so a family file
//! reads these with [`HParams::from_gguf`] and only what is its own (RoPE, norms, windows) by
//! hand.

use pio_gguf::GgufFile;
use pio_gpu::{KvShape, KvType};

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
    /// The attention heads of each layer, `n_layer` of them: `{arch}.attention.head_count`
    /// and `head_count_kv` (defaults to the query heads), each one number for every layer or
    /// an array with one per layer (llama.cpp's per-layer form, which model surgery writes
    /// when it removes heads).
    pub heads: Vec<LayerHeads>,
    /// Size of one head (`{arch}.attention.key_length`, defaults to `n_embd` / layer 0's query
    /// heads, as llama.cpp derives it).
    pub head_dim: usize,
    /// Context length the model was trained with (`{arch}.context_length`).
    pub context_length: usize,
    /// Vocabulary size: the length of `tokenizer.ggml.tokens` (or `{arch}.vocab_size`).
    pub vocab_size: usize,
}

/// The attention heads of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerHeads {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads; query head `h` reads key/value head `h / (n_head / n_head_kv)`.
    pub n_head_kv: usize,
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

    /// An optional unsigned integer per layer of `n_layer`: one number for every layer or an
    /// array of exactly `n_layer` (see [`GgufFile::opt_u32_per_block`]).
    pub fn opt_usize_per_layer(&self, name: &str, n_layer: usize) -> Result<Option<Vec<usize>>> {
        let values = self.file.opt_u32_per_block(&self.key(name), n_layer)?;
        Ok(values.map(|v| v.into_iter().map(|n| n as usize).collect()))
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
        let n_layer = meta.usize("block_count")?;
        let n_embd = meta.usize("embedding_length")?;
        let n_head = match meta.opt_usize_per_layer("attention.head_count", n_layer)? {
            Some(counts) => counts,
            // Absent: the plain read fails, naming the key with its prefix.
            None => vec![meta.usize("attention.head_count")?; n_layer],
        };
        let n_head_kv = meta
            .opt_usize_per_layer("attention.head_count_kv", n_layer)?
            .unwrap_or_else(|| n_head.clone());
        let first = n_head.first().copied().unwrap_or(0);
        let head_dim = match meta.opt_usize("attention.key_length")? {
            Some(len) => len,
            None if first != 0 && n_embd % first == 0 => n_embd / first,
            None => {
                return Err(Error::InvalidModel(format!(
                    "embedding_length {n_embd} is not a multiple of head_count {first}"
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
            n_layer,
            n_embd,
            n_ff: meta.usize("feed_forward_length")?,
            heads: n_head
                .into_iter()
                .zip(n_head_kv)
                .map(|(n_head, n_head_kv)| LayerHeads { n_head, n_head_kv })
                .collect(),
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
            ("key_length", self.head_dim),
            ("context_length", self.context_length),
            ("vocabulary size", self.vocab_size),
        ] {
            if v == 0 {
                return bad(format!("{name} is 0"));
            }
        }
        if self.heads.len() != self.n_layer {
            return bad(format!(
                "head counts for {} layers, block_count {}",
                self.heads.len(),
                self.n_layer
            ));
        }
        for (i, h) in self.heads.iter().enumerate() {
            if h.n_head == 0 || h.n_head_kv == 0 {
                return bad(format!("layer {i}: head_count or head_count_kv is 0"));
            }
            if h.n_head % h.n_head_kv != 0 {
                return bad(format!(
                    "layer {i}: head_count {} is not a multiple of head_count_kv {}",
                    h.n_head, h.n_head_kv
                ));
            }
        }
        Ok(())
    }

    /// Width of layer `i`'s query projection (and of its attention output):
    /// `n_head * head_dim`.
    pub fn q_dim(&self, i: usize) -> usize {
        self.heads[i].n_head * self.head_dim
    }

    /// Width of layer `i`'s key (and value) projections: `n_head_kv * head_dim`.
    pub fn kv_dim(&self, i: usize) -> usize {
        self.heads[i].n_head_kv * self.head_dim
    }

    /// Query heads sharing one key/value head in layer `i`.
    pub fn gqa_group(&self, i: usize) -> usize {
        self.heads[i].n_head / self.heads[i].n_head_kv
    }

    /// The widest query projection of any layer: what activation buffers are sized for.
    pub fn max_q_dim(&self) -> usize {
        (0..self.n_layer).map(|i| self.q_dim(i)).max().unwrap_or(0)
    }

    /// The shape of a KV cache of this model's layers, values stored as `kv_type`: each
    /// layer's rows as wide as its own key/value heads.
    pub fn kv_shape(&self, kv_type: KvType) -> KvShape {
        KvShape {
            kv_heads: self.heads.iter().map(|h| h.n_head_kv as u32).collect(),
            head_dim: self.head_dim as u32,
            kv_type,
        }
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
        assert_eq!((hp.n_layer, hp.n_embd, hp.n_ff), (2, 64, 128));
        let heads = LayerHeads {
            n_head: 4,
            n_head_kv: 2,
        };
        assert_eq!(hp.heads, [heads; 2]);
        assert_eq!(
            (hp.head_dim, hp.q_dim(1), hp.kv_dim(1), hp.gqa_group(1)),
            (16, 64, 32, 2)
        );
        assert_eq!(hp.context_length, 256);
        assert_eq!(hp.vocab_size, 3 + 256 + 40);
    }

    /// llama.cpp's per-layer form: an array with one count per layer; another length is
    /// refused naming the key.
    #[test]
    fn reads_per_layer_head_counts() {
        let cfg = TinyConfig::default();
        let per_layer = |counts: &[u32]| {
            pio_gguf::MetadataValue::array(
                pio_gguf::ValueType::U32,
                counts
                    .iter()
                    .map(|&c| pio_gguf::MetadataValue::U32(c))
                    .collect(),
            )
        };
        let mut w = crate::test_model::tiny_llama_writer(&cfg);
        w.add_metadata("llama.attention.head_count", per_layer(&[4, 3]))
            .add_metadata("llama.attention.head_count_kv", per_layer(&[2, 3]))
            .add_metadata(
                "llama.attention.key_length",
                pio_gguf::MetadataValue::U32(16),
            );
        let file = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
        let hp = HParams::from_gguf(Metadata::new(&file, "llama")).unwrap();
        assert_eq!(
            hp.heads[1],
            LayerHeads {
                n_head: 3,
                n_head_kv: 3
            }
        );
        assert_eq!((hp.q_dim(0), hp.q_dim(1), hp.max_q_dim()), (64, 48, 64));
        assert_eq!(hp.kv_shape(KvType::F16).kv_heads, [2, 3]);

        let mut w = crate::test_model::tiny_llama_writer(&cfg);
        w.add_metadata("llama.attention.head_count", per_layer(&[4, 4, 4]));
        let file = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
        let err = HParams::from_gguf(Metadata::new(&file, "llama"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("llama.attention.head_count") && err.contains("array of 3"),
            "{err}"
        );
    }

    #[test]
    fn rejects_inconsistent_heads() {
        let file = tiny_llama(&TinyConfig::default());
        let mut hp = HParams::from_gguf(Metadata::new(&file, "llama")).unwrap();
        hp.heads[1].n_head_kv = 3;
        let err = hp.validate().unwrap_err().to_string();
        assert!(
            err.contains("layer 1") && err.contains("head_count_kv"),
            "{err}"
        );
    }

    #[test]
    fn missing_key_is_named_with_the_prefix() {
        let file = tiny_llama(&TinyConfig::default());
        let err = HParams::from_gguf(Metadata::new(&file, "gemma3")).unwrap_err();
        assert!(err.to_string().contains("gemma3.block_count"), "{err}");
    }
}
