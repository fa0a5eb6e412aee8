//! The SentencePiece tokenizer (`tokenizer.ggml.model = "llama"`) on a tiny hand-built
//! vocabulary: merges by score, the space prefix, byte fallback, BOS.

use pio_gguf::{GgufFile, GgufWriter, MetadataValue, ValueType};
use pio_text::TextTokenizer;

/// `<unk>`, `<s>`, `</s>`, the 256 `<0xXX>` byte tokens, then these normal tokens and scores.
const PIECES: [(&str, f32); 7] = [
    ("\u{2581}", 0.0),
    ("a", 0.0),
    ("b", 0.0),
    ("c", 0.0),
    ("ab", -1.0),
    ("bc", -0.5),
    ("\u{2581}a", -2.0),
];

fn tokenizer(add_space_prefix: Option<bool>) -> TextTokenizer {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    let mut types = vec![2i32, 3, 3];
    let mut scores = vec![0f32; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for (text, score) in PIECES {
        tokens.push(text.to_owned());
        types.push(1);
        scores.push(score);
    }
    let mut writer = GgufWriter::new();
    writer
        .add_metadata("tokenizer.ggml.model", "llama")
        .add_metadata("tokenizer.ggml.tokens", tokens)
        .add_metadata("tokenizer.ggml.token_type", types)
        .add_metadata(
            "tokenizer.ggml.scores",
            MetadataValue::array(
                ValueType::F32,
                scores.into_iter().map(MetadataValue::F32).collect(),
            ),
        )
        .add_metadata("tokenizer.ggml.unknown_token_id", 0u32)
        .add_metadata("tokenizer.ggml.bos_token_id", 1u32)
        .add_metadata("tokenizer.ggml.eos_token_id", 2u32);
    if let Some(add) = add_space_prefix {
        writer.add_metadata("tokenizer.ggml.add_space_prefix", MetadataValue::Bool(add));
    }
    let file = GgufFile::from_bytes(writer.to_bytes().unwrap()).unwrap();
    TextTokenizer::from_gguf(&file).unwrap()
}

/// Vocabulary entries of the encoding of `text`, without BOS.
fn pieces(tokenizer: &TextTokenizer, text: &str) -> Vec<String> {
    tokenizer
        .encode(text, false)
        .unwrap()
        .into_iter()
        .map(|id| tokenizer.token_text(id).unwrap().to_owned())
        .collect()
}

#[test]
fn the_highest_scored_pair_merges_first() {
    let tokenizer = tokenizer(Some(false));
    // `bc` (-0.5) beats `ab` (-1), so `a` stays alone.
    assert_eq!(pieces(&tokenizer, "abc"), ["a", "bc"]);
    assert_eq!(pieces(&tokenizer, "ab"), ["ab"]);
    // Spaces are `▁`; `▁a` merges once `bc` has.
    assert_eq!(pieces(&tokenizer, "c abc"), ["c", "\u{2581}a", "bc"]);
}

#[test]
fn the_space_prefix_is_added_unless_the_file_turns_it_off() {
    assert_eq!(pieces(&tokenizer(None), "abc"), ["\u{2581}a", "bc"]);
    assert_eq!(pieces(&tokenizer(Some(true)), "abc"), ["\u{2581}a", "bc"]);
    assert_eq!(pieces(&tokenizer(Some(false)), "abc"), ["a", "bc"]);
}

#[test]
fn unknown_characters_fall_back_to_bytes_and_decode_back() {
    let tokenizer = tokenizer(Some(false));
    assert_eq!(pieces(&tokenizer, "aé"), ["a", "<0xC3>", "<0xA9>"]);
    let ids = tokenizer.encode("c é ab", false).unwrap();
    assert_eq!(tokenizer.decode(&ids, false).unwrap(), "c é ab");
}

#[test]
fn bos_is_added_by_default() {
    let tokenizer = tokenizer(Some(false));
    assert_eq!(tokenizer.encode("ab", true).unwrap(), [1, 3 + 256 + 4]);
    assert_eq!(tokenizer.bos_id(), Some(1));
}
