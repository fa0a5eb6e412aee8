//! Pre-tokenizers selected by `tokenizer.ggml.pre`, with llama.cpp's semantics.

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use crate::error::{Result, TextError};

/// The `tokenizer.ggml.pre` names this crate understands.
pub const SUPPORTED: &[&str] = &[
    "default",
    "gpt2",
    "gpt-2",
    "smollm",
    "llama3",
    "llama-v3",
    "llama-bpe",
];

/// Llama 3's split: case-insensitive contractions, letters with one leading
/// non-letter, numbers in runs of at most three digits, punctuation runs.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a vocabulary splits text before BPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreTokenizerKind {
    /// GPT-2's regex split, then byte-level mapping.
    Gpt2,
    /// Every digit isolated first (`\p{N}`), then the GPT-2 split.
    SmolLm,
    /// Llama 3's regex split, then byte-level mapping; whole-word vocabulary
    /// hits bypass the merges.
    Llama3,
}

impl PreTokenizerKind {
    /// Resolves a `tokenizer.ggml.pre` name (absent means `default`).
    pub(crate) fn from_name(name: &str) -> Result<Self> {
        match name {
            "default" | "gpt2" | "gpt-2" => Ok(Self::Gpt2),
            "smollm" => Ok(Self::SmolLm),
            "llama3" | "llama-v3" | "llama-bpe" => Ok(Self::Llama3),
            other => Err(TextError::UnsupportedPreTokenizer(other.to_owned())),
        }
    }

    /// Whether BPE should take a pre-token that is itself in the vocabulary
    /// as one token without applying merges (llama.cpp's `ignore_merges`).
    pub(crate) fn ignore_merges(self) -> bool {
        self == Self::Llama3
    }

    /// Builds the `tokenizers` pre-tokenizer.
    pub(crate) fn build(self) -> Result<PreTokenizerWrapper> {
        let byte_level = |use_regex| ByteLevel::new(false, false, use_regex).into();
        let split = |pattern: &str| -> Result<PreTokenizerWrapper> {
            Ok(Split::new(
                SplitPattern::Regex(pattern.to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )?
            .into())
        };
        Ok(match self {
            Self::Gpt2 => byte_level(true),
            Self::SmolLm => Sequence::new(vec![split(r"\p{N}")?, byte_level(true)]).into(),
            Self::Llama3 => Sequence::new(vec![split(LLAMA3_PATTERN)?, byte_level(false)]).into(),
        })
    }
}
