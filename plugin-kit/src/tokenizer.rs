//! What the kit needs from a model's tokenizer, and [`CharTokenizer`], the one-token-per-character
//! vocabulary of examples and tests.

use pio_plugin_api::{PluginError, PluginResult};

/// Text to token ids and back.
pub trait Tokenizer {
    /// Turns one sequence's tokens into text as they are generated.
    type Decoder: Decoder;

    /// Every token id is below this. Reported in the stats details as `vocab_size`, which the
    /// host checks `/detokenize` requests against.
    fn vocab_size(&self) -> u32;

    /// Text to token ids; `add_special` adds the model's BOS and similar tokens.
    fn encode(&self, text: &str, add_special: bool) -> PluginResult<Vec<u32>>;

    /// Token ids to text; an id without text is an `invalid_input` error naming it.
    fn decode(&self, tokens: &[u32]) -> PluginResult<String>;

    /// A fresh streaming decoder for one generated sequence.
    fn decoder(&self) -> Self::Decoder;

    /// The bytes `token` stands for in generated text, as log-probabilities report them and
    /// constrained decoding matches them (a byte-level token may hold part of a UTF-8
    /// character). The default is the bytes of [`decode`](Tokenizer::decode); a tokenizer with
    /// byte tokens overrides it.
    fn token_bytes(&self, token: u32) -> PluginResult<Vec<u8>> {
        self.decode(&[token]).map(String::into_bytes)
    }

    /// Whether `token` is a control token (BOS, end of turn, ...): text never contains it, so a
    /// grammar never produces it. The default: none is.
    fn is_control(&self, token: u32) -> bool {
        let _ = token;
        false
    }

    /// The token a model ends a generation with, which constrained decoding allows once the
    /// grammar is complete (and the model maps to [`Next::EndOfGeneration`](crate::Next)).
    /// `None` (the default): the model does not offer constrained decoding.
    fn end_of_generation(&self) -> Option<u32> {
        None
    }

    /// Checks token ids given as a prompt before any work starts. The default refuses ids at or
    /// above [`vocab_size`](Tokenizer::vocab_size).
    fn check(&self, tokens: &[u32]) -> PluginResult<()> {
        let vocab = self.vocab_size();
        match tokens.iter().find(|&&t| t >= vocab) {
            Some(bad) => Err(PluginError::invalid_input(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            ))),
            None => Ok(()),
        }
    }
}

/// Turns generated tokens into text incrementally (a token may end in the middle of a UTF-8
/// sequence, or only make sense with the next one).
pub trait Decoder: Send + 'static {
    /// Adds `token`; returns the text it completes, possibly empty.
    fn push(&mut self, token: u32) -> PluginResult<String>;

    /// Whatever is still buffered, once generation has ended.
    fn finish(&mut self) -> String {
        String::new()
    }
}

/// A vocabulary of Unicode scalar values: a token id is a character. No model needs it; it lets
/// examples and tests run the whole kit without a tokenizer file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CharTokenizer;

/// One past the largest Unicode scalar value.
const CHAR_VOCAB_SIZE: u32 = 0x11_0000;

impl Tokenizer for CharTokenizer {
    type Decoder = CharTokenizer;

    fn vocab_size(&self) -> u32 {
        CHAR_VOCAB_SIZE
    }

    fn encode(&self, text: &str, _add_special: bool) -> PluginResult<Vec<u32>> {
        Ok(text.chars().map(u32::from).collect())
    }

    fn decode(&self, tokens: &[u32]) -> PluginResult<String> {
        tokens.iter().map(|&t| char_of(t)).collect()
    }

    fn decoder(&self) -> Self::Decoder {
        CharTokenizer
    }

    /// Surrogate code points are below the vocabulary size but have no text.
    fn check(&self, tokens: &[u32]) -> PluginResult<()> {
        tokens.iter().try_for_each(|&t| char_of(t).map(drop))
    }
}

impl Decoder for CharTokenizer {
    fn push(&mut self, token: u32) -> PluginResult<String> {
        char_of(token).map(String::from)
    }
}

fn char_of(token: u32) -> PluginResult<char> {
    char::from_u32(token)
        .ok_or_else(|| PluginError::invalid_input(format!("token id {token} is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_round_trip_and_surrogates_are_refused() {
        let ids = CharTokenizer.encode("hé", true).unwrap();
        assert_eq!(ids, [104, 233]);
        assert_eq!(CharTokenizer.decode(&ids).unwrap(), "hé");
        let error = CharTokenizer.check(&[104, 0xD800]).unwrap_err();
        assert!(error.message.contains("55296"), "{error}");
        assert!(CharTokenizer.decode(&[0x11_0000]).is_err());
    }
}
