//! Parity with the reference tokenizer and chat template on SmolLM2-135M-Instruct.
//!
//! Expected values come from `tests/data/smollm2_ids.json`, produced outside
//! the test path by `tests/data/make_reference.py` (transformers + jinja2).
//! They need the model (`pio models fetch`): ignored by a plain `cargo test`, failing without
//! it when run.

use pio_gguf::GgufFile;
use pio_text::{ChatMessage, ChatTemplate, TextTokenizer};
use serde_json::Value;

fn open_model() -> GgufFile {
    GgufFile::open(pio_testkit::model(pio_testkit::SMOLLM2)).unwrap()
}

fn reference() -> Value {
    let text = include_str!("data/smollm2_ids.json");
    serde_json::from_str(text).unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

#[test]
#[ignore = "needs the SmolLM2 model: pio models fetch"]
fn encode_and_decode_match_reference() {
    let file = open_model();
    let tokenizer = TextTokenizer::from_gguf(&file).unwrap();
    let reference = reference();
    assert_eq!(
        tokenizer.vocab_size() as u64,
        reference["vocab_size"].as_u64().unwrap()
    );
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected = ids(&case["ids"]);
        let got = tokenizer.encode(text, false).unwrap();
        assert_eq!(got, expected, "encoding {text:?}");
        // add_bos_token is false for this model: nothing is added.
        assert_eq!(tokenizer.encode(text, true).unwrap(), expected);
        assert_eq!(
            tokenizer.decode(&got, false).unwrap(),
            case["decoded"].as_str().unwrap()
        );
        assert_eq!(
            tokenizer.decode(&got, true).unwrap(),
            case["decoded_skip_special"].as_str().unwrap()
        );

        let mut stream = tokenizer.stream_decoder(false);
        let mut streamed = String::new();
        for &id in &got {
            streamed.extend(stream.push(id).unwrap());
        }
        streamed.extend(stream.finish());
        assert_eq!(streamed, text);
    }
}

/// llama.cpp's `smollm` rule checked by hand: digits are isolated before the
/// GPT-2 split, so the two spaces stay one pre-token instead of " 4".
#[test]
#[ignore = "needs the SmolLM2 model: pio models fetch"]
fn digits_are_isolated_after_spaces() {
    let file = open_model();
    let tokenizer = TextTokenizer::from_gguf(&file).unwrap();
    let texts: Vec<&str> = tokenizer
        .encode("x =  42", false)
        .unwrap()
        .into_iter()
        .map(|id| tokenizer.token_text(id).unwrap())
        .collect();
    assert_eq!(texts, ["x", "Ġ=", "ĠĠ", "4", "2"]);
}

#[test]
#[ignore = "needs the SmolLM2 model: pio models fetch"]
fn special_ids_from_metadata() {
    let file = open_model();
    let tokenizer = TextTokenizer::from_gguf(&file).unwrap();
    assert_eq!(tokenizer.bos_id(), Some(1));
    assert_eq!(tokenizer.eos_id(), Some(2));
    // <|endoftext|> and <|im_end|> are control tokens that end generation.
    assert_eq!(tokenizer.eos_ids(), [0, 2]);
    assert!(tokenizer.is_eog(2) && !tokenizer.is_eog(1));
    assert!(tokenizer.is_special(1) && tokenizer.is_special(16) && !tokenizer.is_special(17));
    assert_eq!(tokenizer.token_to_piece(2).unwrap(), b"<|im_end|>");
    assert_eq!(tokenizer.encode("<|im_end|>", false).unwrap(), [2]);
}

#[test]
#[ignore = "needs the SmolLM2 model: pio models fetch"]
fn chat_template_matches_reference() {
    let file = open_model();
    let template = ChatTemplate::from_gguf(&file).unwrap();
    let tokenizer = TextTokenizer::from_gguf(&file).unwrap();
    let reference = reference();
    let chats = reference["chats"].as_object().unwrap();
    assert_eq!(chats.len(), 2);
    for (name, chat) in chats {
        let messages: Vec<ChatMessage> = chat["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let rendered = template.render(&messages, true).unwrap();
        assert_eq!(rendered, chat["rendered"].as_str().unwrap(), "{name}");
        assert_eq!(
            tokenizer.encode(&rendered, false).unwrap(),
            ids(&chat["ids"]),
            "{name}"
        );
    }
    // Without a system message the template inserts its default one.
    let rendered = template.render(&[ChatMessage::user("Hi")], false).unwrap();
    assert_eq!(
        rendered,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}
