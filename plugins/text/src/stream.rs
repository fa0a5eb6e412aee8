//! Incremental detokenization that never splits a UTF-8 character.

use std::borrow::Borrow;

use crate::error::Result;
use crate::tokenizer::TextTokenizer;

/// Turns a stream of generated ids into text as soon as it is complete.
///
/// Byte-level tokens can end in the middle of a multi-byte character; such
/// trailing bytes are held back until the character is complete. Bytes
/// that can never form valid UTF-8 become U+FFFD, so concatenating every
/// [`Self::push`] result and [`Self::finish`] equals
/// [`TextTokenizer::decode`] of the same ids.
///
/// `T` is how the decoder holds the tokenizer: `&TextTokenizer` for a decoder living within a
/// call, `Arc<TextTokenizer>` for one stored beside other state (a sequence of a batch).
#[derive(Debug)]
pub struct StreamDecoder<T: Borrow<TextTokenizer>> {
    tokenizer: T,
    skip_special: bool,
    pending: Vec<u8>,
}

impl<T: Borrow<TextTokenizer>> StreamDecoder<T> {
    /// A decoder with nothing pending; `skip_special` drops control tokens.
    pub fn new(tokenizer: T, skip_special: bool) -> Self {
        Self {
            tokenizer,
            skip_special,
            pending: Vec::new(),
        }
    }

    /// Adds one token; returns the text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        let tokenizer: &TextTokenizer = self.tokenizer.borrow();
        let piece = tokenizer.token_to_piece(id)?;
        if self.skip_special && tokenizer.is_special(id) {
            return Ok(None);
        }
        self.pending.extend_from_slice(piece);
        let mut text = String::new();
        let mut consumed = 0;
        loop {
            match std::str::from_utf8(&self.pending[consumed..]) {
                Ok(rest) => {
                    text.push_str(rest);
                    consumed = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = &self.pending[consumed..consumed + e.valid_up_to()];
                    text.push_str(std::str::from_utf8(valid).expect("checked valid prefix"));
                    consumed += e.valid_up_to();
                    match e.error_len() {
                        // Bytes that no continuation can repair.
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            consumed += bad;
                        }
                        // An incomplete character at the end: wait for more.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..consumed);
        Ok((!text.is_empty()).then_some(text))
    }

    /// Flushes held-back bytes (an unfinished character becomes U+FFFD) and
    /// resets the decoder.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.pending);
        (!rest.is_empty()).then(|| String::from_utf8_lossy(&rest).into_owned())
    }
}
