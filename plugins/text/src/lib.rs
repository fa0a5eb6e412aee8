//! Text handling for GGUF language models.
//!
//! - [`TextTokenizer`] builds a tokenizer from a GGUF file's `tokenizer.ggml.*` metadata:
//!   byte-level BPE (with llama.cpp's pre-tokenizer rules) or SentencePiece (as llama.cpp
//!   encodes it, with byte fallback).
//! - [`StreamDecoder`] turns generated ids into text incrementally without
//!   ever splitting a UTF-8 character.
//! - [`ChatTemplate`] renders the model's Jinja chat template like
//!   `transformers`' `apply_chat_template`.

pub mod bytelevel;
mod chat;
mod error;
pub mod pretokenizer;
mod sentencepiece;
mod stream;
mod tokenizer;

pub use chat::{
    ChatMessage, ChatTemplate, CHATML, MAX_RENDERED_BYTES, RECURSION_LIMIT, RENDER_FUEL,
};
pub use error::{Result, TextError};
pub use stream::StreamDecoder;
pub use tokenizer::TextTokenizer;
