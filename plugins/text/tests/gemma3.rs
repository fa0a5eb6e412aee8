//! Parity with llama.cpp's SentencePiece tokenizer on Gemma 3 270M (262k tokens, byte
//! fallback, BOS added).
//!
//! Expected ids come from `tests/data/gemma3_ids.json`, produced outside the test path by
//! `tests/data/make_gemma3_ids.py` (llama-tokenize). They need the model (`pio models fetch`):
//! ignored by a plain `cargo test`, failing without it when run.

use pio_gguf::GgufFile;
use pio_text::TextTokenizer;
use serde_json::Value;

fn tokenizer() -> TextTokenizer {
    let file = GgufFile::open(pio_testkit::model(pio_testkit::GEMMA3)).unwrap();
    TextTokenizer::from_gguf(&file).unwrap()
}

#[test]
#[ignore = "needs the Gemma 3 model: pio models fetch"]
fn ids_match_llama_tokenize() {
    let tokenizer = tokenizer();
    let reference: Value = serde_json::from_str(include_str!("data/gemma3_ids.json")).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tokenizer.encode(text, true).unwrap();
        assert_eq!(got, expected, "encoding {text:?}");
        // Without special tokens nothing is added; decoding gives the text back, bytes that
        // fell back to `<0xXX>` tokens included.
        assert_eq!(tokenizer.encode(text, false).unwrap(), expected[1..]);
        assert_eq!(tokenizer.decode(&got[1..], false).unwrap(), text);
    }
}

#[test]
#[ignore = "needs the Gemma 3 model: pio models fetch"]
fn special_ids_from_metadata() {
    let tokenizer = tokenizer();
    assert_eq!(tokenizer.vocab_size(), 262_144);
    assert_eq!((tokenizer.bos_id(), tokenizer.eos_id()), (Some(2), Some(1)));
    // `<eos>` and `<end_of_turn>` end generation.
    assert_eq!(tokenizer.eos_ids(), [1, 106]);
    assert!(tokenizer.is_special(105) && !tokenizer.is_special(107));
    assert_eq!(tokenizer.token_to_piece(106).unwrap(), b"<end_of_turn>");
    assert_eq!(
        tokenizer.decode(&[9259, 1902], false).unwrap(),
        "Hello world"
    );
}
