//! SentencePiece vocabularies (`tokenizer.ggml.model = "llama"`: Gemma, Llama 2, Mistral) as a
//! `tokenizers` BPE model, encoding the way llama.cpp's SPM tokenizer does.
//!
//! llama.cpp's SPM tokenizer starts from the characters of the text (spaces written `▁`) and
//! repeatedly merges the adjacent pair whose concatenation is a token with the highest score,
//! the leftmost on ties; a character that is no token becomes its UTF-8 bytes' `<0xXX>` tokens.
//! That is BPE whose merge ranks are the scores of the merged tokens: every split of a token
//! into two tokens is a merge, ranked by the token's score (highest first). `tokenizers`' BPE
//! applies the lowest rank first, the leftmost on ties, so the two agree whenever scores are
//! distinct (Gemma 3's are). Only normal tokens are merge results: control, user-defined and
//! byte tokens are matched elsewhere (as added tokens, or by byte fallback).

use std::collections::HashMap;

use pio_gguf::GgufFile;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence};
use tokenizers::{NormalizerWrapper, Tokenizer};

use crate::error::{Result, TextError};

/// `tokenizer.ggml.token_type` of ordinary vocabulary pieces.
const TOKEN_TYPE_NORMAL: i32 = 1;
/// `tokenizer.ggml.token_type` of the `<0xXX>` byte-fallback tokens.
const TOKEN_TYPE_BYTE: i32 = 6;

/// How SentencePiece writes a space.
const SPACE: &str = "\u{2581}";

/// The encoder of a SentencePiece vocabulary and the bytes each token decodes to.
pub(crate) fn build(
    file: &GgufFile,
    tokens: &[String],
    types: &[i32],
) -> Result<(Tokenizer, Vec<Vec<u8>>)> {
    let scores = file.get_f32_array("tokenizer.ggml.scores")?;
    if scores.len() != tokens.len() {
        return Err(TextError::InvalidVocab(format!(
            "{} token scores for {} tokens",
            scores.len(),
            tokens.len()
        )));
    }
    let vocab: Vocab = tokens.iter().cloned().zip(0u32..).collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges(tokens, types, &scores))
        .byte_fallback(true);
    if let Some(unk) = file.opt_u32("tokenizer.ggml.unknown_token_id")? {
        let unk = tokens.get(unk as usize).ok_or_else(|| {
            TextError::InvalidVocab(format!(
                "`tokenizer.ggml.unknown_token_id` = {unk} is outside the vocabulary of {} tokens",
                tokens.len()
            ))
        })?;
        builder = builder.unk_token(unk.clone());
    }
    let bpe = builder
        .build()
        .map_err(|e| TextError::InvalidVocab(e.to_string()))?;
    let mut inner = Tokenizer::new(bpe);
    // llama.cpp's default for SentencePiece vocabularies is to add the prefix; Gemma's file
    // turns it off.
    let add_space_prefix = file
        .opt_bool("tokenizer.ggml.add_space_prefix")?
        .unwrap_or(true);
    let escape = NormalizerWrapper::from(Replace::new(" ", SPACE)?);
    let normalizer = match add_space_prefix {
        true => Sequence::new(vec![
            NormalizerWrapper::from(Prepend::new(SPACE.to_owned())),
            escape,
        ])
        .into(),
        false => escape,
    };
    inner.with_normalizer(Some(normalizer))?;
    let pieces = tokens
        .iter()
        .zip(types)
        .map(|(text, &t)| piece(text, t))
        .collect();
    Ok((inner, pieces))
}

/// Every split of a normal token into two tokens, the splits of higher-scored tokens first.
fn merges(tokens: &[String], types: &[i32], scores: &[f32]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut ranked: Vec<(f32, &str, &str)> = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        if types[i] != TOKEN_TYPE_NORMAL {
            continue;
        }
        for (at, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(at);
            if ids.contains_key(left) && ids.contains_key(right) {
                ranked.push((scores[i], left, right));
            }
        }
    }
    // Stable: the splits of one token keep their order (shortest left piece first).
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    ranked
        .into_iter()
        .map(|(_, left, right)| (left.to_owned(), right.to_owned()))
        .collect()
}

/// The bytes a token of type `token_type` decodes to: `▁` is a space in normal tokens, a byte
/// token `<0xXX>` is its byte, every other token its text.
fn piece(text: &str, token_type: i32) -> Vec<u8> {
    match token_type {
        TOKEN_TYPE_NORMAL => text.replace(SPACE, " ").into_bytes(),
        TOKEN_TYPE_BYTE => byte_token(text).map_or_else(|| text.as_bytes().to_vec(), |b| vec![b]),
        _ => text.as_bytes().to_vec(),
    }
}

/// The byte of a `<0xXX>` token.
fn byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_decode_spaces_and_bytes() {
        assert_eq!(piece("\u{2581}the", TOKEN_TYPE_NORMAL), b" the");
        assert_eq!(piece("<0x0A>", TOKEN_TYPE_BYTE), b"\n");
        assert_eq!(piece("<0xE2>", TOKEN_TYPE_BYTE), [0xE2]);
        assert_eq!(piece("<start_of_turn>", 3), b"<start_of_turn>");
    }

    #[test]
    fn merges_follow_the_merged_tokens_scores() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .map(String::from)
            .to_vec();
        let merges = merges(&tokens, &[1; 6], &[0.0, 0.0, 0.0, -2.0, -1.0, -3.0]);
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            merges,
            [
                pair("b", "c"),
                pair("a", "b"),
                pair("a", "bc"),
                pair("ab", "c")
            ]
        );
    }
}
