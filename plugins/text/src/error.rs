//! The error type of this crate.

/// Everything that can go wrong building or using a tokenizer or chat template.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// Reading the GGUF metadata failed (missing key, wrong type, ...).
    #[error(transparent)]
    Gguf(#[from] pio_gguf::GgufError),

    /// `tokenizer.ggml.model` names a tokenizer this crate does not build.
    #[error("unsupported tokenizer model `{0}` (supported: byte-level BPE `gpt2`, SentencePiece `llama`)")]
    UnsupportedModel(String),

    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate does not know.
    #[error("unsupported pre-tokenizer `{0}` (supported: {supported})", supported = crate::pretokenizer::SUPPORTED.join(", "))]
    UnsupportedPreTokenizer(String),

    /// The vocabulary metadata is inconsistent.
    #[error("invalid tokenizer vocabulary: {0}")]
    InvalidVocab(String),

    /// The `tokenizers` library reported an error.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    UnknownToken {
        /// The offending id.
        id: u32,
        /// Number of tokens in the vocabulary.
        vocab_size: usize,
    },

    /// The chat template failed to compile or render (including
    /// `raise_exception` calls); the message is the template engine's own.
    #[error("chat template: {0}")]
    Template(String),
}

impl From<tokenizers::Error> for TextError {
    fn from(e: tokenizers::Error) -> Self {
        Self::Tokenizer(e.to_string())
    }
}

/// Shorthand for results whose error is [`TextError`].
pub type Result<T, E = TextError> = std::result::Result<T, E>;
