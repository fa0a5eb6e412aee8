//! The model file's tokenizer (`pio-text`, built from GGUF metadata) as the authoring kit's
//! [`Tokenizer`]: prompts, `tokenize` / `detokenize` and the text streamed for generated
//! tokens (control tokens such as `<|im_end|>` stream no text).

use std::sync::Arc;

use pio_plugin_kit::{Decoder, PluginResult, Tokenizer};
use pio_text::{StreamDecoder, TextTokenizer};

use crate::error::Error;

/// A GGUF model's tokenizer, shared with the decoders of its sequences.
pub struct GgufTokenizer(Arc<TextTokenizer>);

impl GgufTokenizer {
    /// Wraps `tokenizer`.
    pub fn new(tokenizer: TextTokenizer) -> Self {
        Self(Arc::new(tokenizer))
    }

    /// The `pio-text` tokenizer: special ids, chat prompts, perplexity windows.
    pub fn text(&self) -> &TextTokenizer {
        &self.0
    }
}

impl Tokenizer for GgufTokenizer {
    type Decoder = GgufDecoder;

    fn vocab_size(&self) -> u32 {
        u32::try_from(self.0.vocab_size()).unwrap_or(u32::MAX)
    }

    fn encode(&self, text: &str, add_special: bool) -> PluginResult<Vec<u32>> {
        Ok(self.0.encode(text, add_special).map_err(Error::from)?)
    }

    /// Special tokens are written out, so that `detokenize` shows what a prompt holds.
    fn decode(&self, tokens: &[u32]) -> PluginResult<String> {
        Ok(self.0.decode(tokens, false).map_err(Error::from)?)
    }

    fn decoder(&self) -> GgufDecoder {
        GgufDecoder(StreamDecoder::new(Arc::clone(&self.0), true))
    }
}

/// One sequence's streaming decoder: UTF-8 safe, control tokens skipped.
pub struct GgufDecoder(StreamDecoder<Arc<TextTokenizer>>);

impl Decoder for GgufDecoder {
    fn push(&mut self, token: u32) -> PluginResult<String> {
        Ok(self.0.push(token).map_err(Error::from)?.unwrap_or_default())
    }

    fn finish(&mut self) -> String {
        self.0.finish().unwrap_or_default()
    }
}
