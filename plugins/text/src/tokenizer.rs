//! [`TextTokenizer`]: a tokenizer built from GGUF metadata (byte-level BPE or SentencePiece).

use pio_gguf::GgufFile;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::{AddedToken, Tokenizer};

use crate::bytelevel;
use crate::error::{Result, TextError};
use crate::pretokenizer::PreTokenizerKind;
use crate::sentencepiece;
use crate::stream::StreamDecoder;

/// `tokenizer.ggml.token_type` value of control tokens (`<|im_start|>`, ...).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// `tokenizer.ggml.token_type` value of user-defined tokens.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Control tokens that end generation when present, as llama.cpp detects them by text.
const EOG_TOKEN_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "<|end_of_text|>",
];

/// A tokenizer for a GGUF model's vocabulary.
///
/// Encoding uses the `tokenizers` library; decoding maps every id to the
/// bytes it stands for, so [`Self::decode`] and [`StreamDecoder`] agree by
/// construction.
pub struct TextTokenizer {
    inner: Tokenizer,
    /// The vocabulary entry of each id, as stored in the file.
    tokens: Vec<String>,
    /// The bytes each id decodes to.
    pieces: Vec<Vec<u8>>,
    /// Control tokens: parsed from text as specials, dropped by `skip_special`.
    special: Vec<bool>,
    bos: Option<u32>,
    eos: Option<u32>,
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eog", &self.eog)
            .finish()
    }
}

impl TextTokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    ///
    /// `tokenizer.ggml.model` selects the encoder: `gpt2` is byte-level BPE from `tokens` and
    /// `merges`, with the pre-tokenizer `pre` names (see [`crate::pretokenizer::SUPPORTED`];
    /// absent means `default`); `llama` is SentencePiece from `tokens` and `scores`, with byte
    /// fallback (see [`crate::sentencepiece`]). `token_type` marks control (3) and
    /// user-defined (4) tokens, which are matched in input text before either encoder.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let model = file.get_str("tokenizer.ggml.model")?;
        let tokens: Vec<String> = file
            .get_string_array("tokenizer.ggml.tokens")?
            .into_iter()
            .map(str::to_owned)
            .collect();
        let n = tokens.len();
        let types = file
            .opt_i32_array("tokenizer.ggml.token_type")?
            .unwrap_or_else(|| vec![1; n]);
        if types.len() != n {
            return Err(TextError::InvalidVocab(format!(
                "{} token types for {n} tokens",
                types.len()
            )));
        }
        let (mut inner, pieces) = match model {
            "gpt2" => byte_level_bpe(file, &tokens, &types)?,
            "llama" => sentencepiece::build(file, &tokens, &types)?,
            other => return Err(TextError::UnsupportedModel(other.to_owned())),
        };

        let id = |key: &str| -> Result<Option<u32>> {
            match file.opt_u32(key)? {
                Some(id) if id as usize >= n => Err(TextError::InvalidVocab(format!(
                    "`{key}` = {id} is outside the vocabulary of {n} tokens"
                ))),
                other => Ok(other),
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let mut eog: Vec<u32> = [
            eos,
            id("tokenizer.ggml.eot_token_id")?,
            id("tokenizer.ggml.eom_token_id")?,
        ]
        .into_iter()
        .flatten()
        .collect();
        eog.extend((0..n as u32).filter(|&i| {
            types[i as usize] == TOKEN_TYPE_CONTROL
                && EOG_TOKEN_TEXTS.contains(&tokens[i as usize].as_str())
        }));
        eog.sort_unstable();
        eog.dedup();

        let added = |wanted: i32, special: bool| {
            tokens
                .iter()
                .zip(&types)
                .filter(move |(_, &t)| t == wanted)
                .map(move |(text, _)| AddedToken::from(text.clone(), special).normalized(false))
        };
        inner.add_special_tokens(added(TOKEN_TYPE_CONTROL, true))?;
        inner.add_tokens(added(TOKEN_TYPE_USER_DEFINED, false))?;

        Ok(Self {
            inner,
            pieces,
            special: types.iter().map(|&t| t == TOKEN_TYPE_CONTROL).collect(),
            tokens,
            bos,
            eos,
            eog,
            // llama.cpp's default: SentencePiece vocabularies add BOS, byte-level ones do not.
            add_bos: file
                .opt_bool("tokenizer.ggml.add_bos_token")?
                .unwrap_or(model == "llama"),
            add_eos: file
                .opt_bool("tokenizer.ggml.add_eos_token")?
                .unwrap_or(false),
        })
    }

    /// Encodes `text`. Special tokens written in the text (e.g.
    /// `<|im_start|>`) always become their single ids. With
    /// `add_special_tokens`, BOS/EOS are added if the model's metadata asks
    /// for them (`tokenizer.ggml.add_bos_token` / `add_eos_token`).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self.inner.encode_fast(text, false)?;
        let mut ids = Vec::with_capacity(encoding.len() + 2);
        if let (true, true, Some(bos)) = (add_special_tokens, self.add_bos, self.bos) {
            ids.push(bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        if let (true, true, Some(eos)) = (add_special_tokens, self.add_eos, self.eos) {
            ids.push(eos);
        }
        Ok(ids)
    }

    /// Decodes `ids` to text; invalid UTF-8 becomes U+FFFD. With
    /// `skip_special`, control tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            if !(skip_special && self.is_special(id)) {
                bytes.extend_from_slice(self.token_to_piece(id)?);
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The bytes token `id` stands for. A byte-level token may hold only
    /// part of a UTF-8 character; use [`StreamDecoder`] to assemble text.
    pub fn token_to_piece(&self, id: u32) -> Result<&[u8]> {
        self.pieces
            .get(id as usize)
            .map(Vec::as_slice)
            .ok_or(TextError::UnknownToken {
                id,
                vocab_size: self.vocab_size(),
            })
    }

    /// The vocabulary entry of token `id` as stored in the file (byte-level
    /// alphabet, e.g. `Ġhello`), or `None` if out of range.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Beginning-of-sequence id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence id, if the model has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Every id that ends generation, sorted: EOS, EOT and EOM ids from the
    /// metadata, plus control tokens llama.cpp recognises by text as
    /// end-of-generation (`<|im_end|>`, `<|eot_id|>`, `<|endoftext|>`, ...).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Whether generating `id` ends generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// Whether `id` is a control token (false for out-of-range ids).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// Starts incremental detokenization of a generated stream.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder<&TextTokenizer> {
        StreamDecoder::new(self, skip_special)
    }
}

/// The encoder of a byte-level BPE vocabulary (`gpt2`) and the bytes each token decodes to.
fn byte_level_bpe(
    file: &GgufFile,
    tokens: &[String],
    types: &[i32],
) -> Result<(Tokenizer, Vec<Vec<u8>>)> {
    let pre =
        PreTokenizerKind::from_name(file.opt_str("tokenizer.ggml.pre")?.unwrap_or("default"))?;
    let merges = file
        .get_string_array("tokenizer.ggml.merges")?
        .into_iter()
        .map(|merge| {
            merge
                .split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| TextError::InvalidVocab(format!("merge `{merge}` has no space")))
        })
        .collect::<Result<Vec<_>>>()?;
    let vocab: Vocab = tokens.iter().cloned().zip(0u32..).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pre.ignore_merges())
        .build()
        .map_err(|e| TextError::InvalidVocab(e.to_string()))?;
    let mut inner = Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre.build()?));
    let pieces = tokens
        .iter()
        .zip(types)
        .map(|(text, &t)| match t {
            TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED => text.as_bytes().to_vec(),
            _ => bytelevel::token_bytes(text),
        })
        .collect();
    Ok((inner, pieces))
}
