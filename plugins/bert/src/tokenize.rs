//! The model's WordPiece tokenizer, loaded from `tokenizer.json` with the `tokenizers` crate and
//! set up the way sentence-transformers calls it: special tokens added by the file's
//! post-processor (`[CLS] … [SEP]`), truncation (longest-first, from the right) to
//! `max_seq_length` tokens *including* the special tokens, no padding. The truncation stored in
//! `tokenizer.json` (128 for all-MiniLM-L6-v2) is replaced: sentence-transformers uses
//! `max_seq_length` from `sentence_bert_config.json`.

use std::path::Path;

use pio_plugin_api::{PluginError, PluginResult};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// A tokenizer producing the exact input ids of one sentence.
#[derive(Debug, Clone)]
pub struct BertTokenizer {
    inner: Tokenizer,
    max_seq_length: usize,
}

impl BertTokenizer {
    /// Loads `tokenizer.json` at `path` for a model with `vocab_size` embedding rows, truncating
    /// to `max_seq_length` tokens.
    pub fn load(path: &Path, max_seq_length: usize, vocab_size: usize) -> PluginResult<Self> {
        let mut inner = Tokenizer::from_file(path).map_err(|e| {
            PluginError::model_load(format!("cannot load tokenizer {}: {e}", path.display()))
        })?;
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| {
                PluginError::model_load(format!("{}: cannot set truncation: {e}", path.display()))
            })?;
        inner.with_padding(None);
        let tokenizer_vocab = inner.get_vocab_size(true);
        if tokenizer_vocab > vocab_size {
            return Err(PluginError::model_load(format!(
                "{}: the tokenizer has {tokenizer_vocab} tokens but config.json's vocab_size is \
                 {vocab_size}; tokenizer and model do not match",
                path.display()
            )));
        }
        let tokenizer = Self {
            inner,
            max_seq_length,
        };
        if tokenizer.encode("")?.is_empty() {
            return Err(PluginError::model_load(format!(
                "{}: the tokenizer adds no special tokens (no [CLS]/[SEP] post-processor), so \
                 an empty input would have no tokens",
                path.display()
            )));
        }
        Ok(tokenizer)
    }

    /// Longest sequence produced, special tokens included.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// The ids the model embeds for `text`: `[CLS] tokens [SEP]`, at most `max_seq_length`.
    /// An empty text gives `[CLS] [SEP]`, as in sentence-transformers.
    pub fn encode(&self, text: &str) -> PluginResult<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// The ids of `text` with or without the special tokens, truncated like [`Self::encode`].
    pub fn encode_with(&self, text: &str, add_special: bool) -> PluginResult<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special)
            .map_err(|e| PluginError::invalid_input(format!("cannot tokenize input: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens skipped, WordPiece pieces joined.
    pub fn decode(&self, ids: &[u32]) -> PluginResult<String> {
        let size = self.inner.get_vocab_size(true);
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= size) {
            return Err(PluginError::invalid_input(format!(
                "token id {bad} is out of range (vocabulary of {size})"
            )));
        }
        self.inner
            .decode(ids, true)
            .map_err(|e| PluginError::invalid_input(format!("cannot detokenize: {e}")))
    }
}
