//! Tokenizer, stream decoder and chat template on a tiny hand-built vocabulary.

use pio_gguf::{GgufFile, GgufWriter, MetadataValue};
use pio_text::bytelevel::{byte_to_char, encode_bytes};
use pio_text::{ChatMessage, ChatTemplate, TextError, TextTokenizer, CHATML};

const CONTROL: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const USER_DEFINED: &str = "<tool>";
const MERGES: [&str; 5] = ["Ġ t", "h e", "Ġt he", "Ġ Ġ", "1 2"];

/// Control tokens 0..3, a user-defined token 3, the 256 byte tokens from id
/// 4, then one token per merge.
fn writer(pre: Option<&str>) -> GgufWriter {
    let mut tokens: Vec<String> = CONTROL.iter().map(|s| s.to_string()).collect();
    tokens.push(USER_DEFINED.into());
    tokens.extend(byte_to_char().iter().map(char::to_string));
    tokens.extend(MERGES.iter().map(|m| m.replace(' ', "")));
    let mut types = vec![3i32, 3, 3, 4];
    types.resize(tokens.len(), 1);

    let mut writer = GgufWriter::new();
    writer
        .add_metadata("tokenizer.ggml.model", "gpt2")
        .add_metadata("tokenizer.ggml.tokens", tokens)
        .add_metadata("tokenizer.ggml.token_type", types)
        .add_metadata("tokenizer.ggml.merges", MERGES.to_vec())
        .add_metadata("tokenizer.ggml.bos_token_id", 1u32)
        .add_metadata("tokenizer.ggml.eos_token_id", 0u32)
        .add_metadata("tokenizer.chat_template", CHATML);
    if let Some(pre) = pre {
        writer.add_metadata("tokenizer.ggml.pre", pre);
    }
    writer
}

fn open(writer: &GgufWriter) -> GgufFile {
    GgufFile::from_bytes(writer.to_bytes().unwrap()).unwrap()
}

fn tokenizer(pre: Option<&str>) -> TextTokenizer {
    TextTokenizer::from_gguf(&open(&writer(pre))).unwrap()
}

/// Vocabulary entries of the encoding of `text`.
fn pieces(tokenizer: &TextTokenizer, text: &str) -> Vec<String> {
    tokenizer
        .encode(text, false)
        .unwrap()
        .into_iter()
        .map(|id| tokenizer.token_text(id).unwrap().to_owned())
        .collect()
}

/// Id of the byte token for `b`.
fn byte_id(b: u8) -> u32 {
    4 + u32::from(b)
}

#[test]
fn merges_apply_and_decode_inverts() {
    let tok = tokenizer(None);
    assert_eq!(tok.vocab_size(), 4 + 256 + MERGES.len());
    assert_eq!(pieces(&tok, "the the"), ["t", "he", "Ġthe"]);
    assert_eq!(pieces(&tok, "a   b"), ["a", "ĠĠ", "Ġ", "b"]);
    for text in ["the the", "héllo\n\twörld 🙂", "", "  12 "] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
}

#[test]
fn special_and_user_defined_tokens_are_parsed_from_text() {
    let tok = tokenizer(None);
    let ids = tok.encode("<|im_start|>hi<tool><|im_end|>", false).unwrap();
    assert_eq!(ids, [1, byte_id(b'h'), byte_id(b'i'), 3, 2]);
    assert_eq!(
        tok.decode(&ids, false).unwrap(),
        "<|im_start|>hi<tool><|im_end|>"
    );
    // Only control tokens are skipped; the user-defined one is text.
    assert_eq!(tok.decode(&ids, true).unwrap(), "hi<tool>");
    assert!(tok.is_special(1) && !tok.is_special(3) && !tok.is_special(9999));
    assert_eq!(tok.eos_ids(), [0, 2]);
    assert_eq!(tok.bos_id(), Some(1));
}

#[test]
fn pre_tokenizer_rules() {
    // GPT-2: " 12" is one pre-token, so the "1 2" merge applies.
    let gpt2 = tokenizer(Some("gpt2"));
    assert_eq!(pieces(&gpt2, "a 12"), ["a", "Ġ", "12"]);
    assert_eq!(
        pieces(&gpt2, "x =  42"),
        ["x", "Ġ", "=", "Ġ", "Ġ", "4", "2"]
    );
    // smollm: every digit is isolated first, and the two spaces before it
    // stay together.
    let smollm = tokenizer(Some("smollm"));
    assert_eq!(pieces(&smollm, "a 12"), ["a", "Ġ", "1", "2"]);
    assert_eq!(pieces(&smollm, "x =  42"), ["x", "Ġ", "=", "ĠĠ", "4", "2"]);
    // llama3: numbers split into runs of at most three digits.
    let llama3 = tokenizer(Some("llama3"));
    assert_eq!(pieces(&llama3, "12121"), ["12", "1", "2", "1"]);
    assert_eq!(pieces(&gpt2, "12121"), ["12", "12", "1"]);
}

#[test]
fn unsupported_models_and_pre_tokenizers_are_named() {
    let mut w = writer(Some("mystery-pre"));
    let err = TextTokenizer::from_gguf(&open(&w)).unwrap_err();
    assert!(matches!(err, TextError::UnsupportedPreTokenizer(_)));
    assert!(err.to_string().contains("`mystery-pre`") && err.to_string().contains("smollm"));

    w.add_metadata("tokenizer.ggml.model", "bert");
    let err = TextTokenizer::from_gguf(&open(&w)).unwrap_err().to_string();
    assert!(err.contains("unsupported tokenizer model `bert`"), "{err}");

    let mut w = writer(None);
    w.add_metadata("tokenizer.ggml.token_type", vec![1i32; 3]);
    let err = TextTokenizer::from_gguf(&open(&w)).unwrap_err().to_string();
    assert!(err.contains("3 token types"), "{err}");

    let mut w = writer(None);
    w.add_metadata("tokenizer.ggml.eos_token_id", 100_000u32);
    let err = TextTokenizer::from_gguf(&open(&w)).unwrap_err().to_string();
    assert!(err.contains("eos_token_id"), "{err}");

    let err = TextTokenizer::from_gguf(&open(&GgufWriter::new()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`tokenizer.ggml.model`"), "{err}");
}

#[test]
fn bos_and_eos_follow_metadata() {
    let mut w = writer(None);
    w.add_metadata("tokenizer.ggml.add_bos_token", true)
        .add_metadata("tokenizer.ggml.add_eos_token", true);
    let tok = TextTokenizer::from_gguf(&open(&w)).unwrap();
    assert_eq!(tok.encode("h", true).unwrap(), [1, byte_id(b'h'), 0]);
    assert_eq!(tok.encode("h", false).unwrap(), [byte_id(b'h')]);
    assert_eq!(tokenizer(None).encode("h", true).unwrap(), [byte_id(b'h')]);
}

#[test]
fn stream_decoder_holds_back_partial_characters() {
    let tok = tokenizer(None);
    for ch in ["🙂", "世", "é"] {
        let bytes = ch.as_bytes();
        let mut stream = tok.stream_decoder(false);
        for &b in &bytes[..bytes.len() - 1] {
            assert_eq!(stream.push(byte_id(b)).unwrap(), None, "{ch}");
        }
        assert_eq!(
            stream
                .push(byte_id(*bytes.last().unwrap()))
                .unwrap()
                .as_deref(),
            Some(ch)
        );
        assert_eq!(stream.finish(), None);
    }

    let mut stream = tok.stream_decoder(true);
    assert_eq!(stream.push(byte_id(b'a')).unwrap().as_deref(), Some("a"));
    assert_eq!(stream.push(byte_id(0xE4)).unwrap(), None);
    // A control token in the middle is skipped without disturbing the pending bytes.
    assert_eq!(stream.push(2).unwrap(), None);
    assert_eq!(stream.push(byte_id(0xB8)).unwrap(), None);
    assert_eq!(stream.push(byte_id(0x96)).unwrap().as_deref(), Some("世"));
    // Bytes that can never be valid are replaced at once.
    assert_eq!(
        stream.push(byte_id(0xFF)).unwrap().as_deref(),
        Some("\u{FFFD}")
    );
    // A character cut off at the end is flushed as U+FFFD.
    assert_eq!(stream.push(byte_id(0xF0)).unwrap(), None);
    assert_eq!(stream.finish().as_deref(), Some("\u{FFFD}"));
    assert!(matches!(
        stream.push(100_000),
        Err(TextError::UnknownToken { id: 100_000, .. })
    ));
}

#[test]
fn stream_concatenation_equals_decode() {
    use rand::{Rng, SeedableRng};
    let tok = tokenizer(None);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let n = tok.vocab_size() as u32;
    for round in 0..300 {
        // Mostly UTF-8 text tokens, with random bytes and specials mixed in.
        let text: String = (0..rng.random_range(0..12))
            .map(|_| ['a', 'é', '世', '🙂', ' ', '\n'][rng.random_range(0..6)])
            .collect();
        let mut ids = tok.encode(&text, false).unwrap();
        for _ in 0..rng.random_range(0..3) {
            let at = rng.random_range(0..=ids.len());
            ids.insert(at, rng.random_range(0..n));
        }
        let skip = round % 2 == 0;
        let mut stream = tok.stream_decoder(skip);
        let mut out = String::new();
        for &id in &ids {
            out.extend(stream.push(id).unwrap());
        }
        out.extend(stream.finish());
        assert_eq!(out, tok.decode(&ids, skip).unwrap(), "{ids:?}");
    }
    assert!(tok.decode(&[n], false).is_err());
}

#[test]
fn bytelevel_vocab_helper_round_trips() {
    assert_eq!(encode_bytes(b" the\n"), "ĠtheĊ");
}

#[test]
fn chat_template_from_gguf_and_chatml() {
    let template = ChatTemplate::from_gguf(&open(&writer(None))).unwrap();
    let messages = [ChatMessage::system("Be brief."), ChatMessage::user("Hi")];
    let expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n";
    assert_eq!(template.render(&messages, false).unwrap(), expected);
    assert_eq!(
        template.render(&messages, true).unwrap(),
        format!("{expected}<|im_start|>assistant\n")
    );

    let mut w = GgufWriter::new();
    w.add_metadata("tokenizer.ggml.tokens", MetadataValue::from(vec!["a"]));
    let err = ChatTemplate::from_gguf(&open(&w)).unwrap_err().to_string();
    assert!(err.contains("`tokenizer.chat_template` not found"), "{err}");
}

#[test]
fn template_features_used_by_hf_templates() {
    let source = "{{ bos_token }}\
        {% for m in messages %}\
        {% if m.role == 'user' and not m.content.strip().startswith('!') %}[{{ m.content.strip() | upper }}]{% endif %}\
        {% if loop.index == 2 %}{% break %}{% endif %}\
        {% endfor %}\
        {{ {'k': '<a>'} | tojson }}{{ eos_token }}";
    let template = ChatTemplate::new(source, "<s>", "</s>").unwrap();
    let messages = [
        ChatMessage::user("  hi  "),
        ChatMessage::user("!skip"),
        ChatMessage::user("never reached"),
    ];
    assert_eq!(
        template.render(&messages, false).unwrap(),
        "<s>[HI]{\"k\":\"<a>\"}</s>"
    );

    // trim_blocks + lstrip_blocks, as transformers renders templates.
    let template = ChatTemplate::new("  {% if true %}\nX\n  {% endif %}\nY", "", "").unwrap();
    assert_eq!(template.render(&[], false).unwrap(), "X\nY");
}

#[test]
fn template_errors_carry_the_templates_message() {
    let template = ChatTemplate::new(
        "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with a user message') }}{% endif %}ok",
        "",
        "",
    )
    .unwrap();
    assert_eq!(
        template.render(&[ChatMessage::user("x")], false).unwrap(),
        "ok"
    );
    let err = template
        .render(&[ChatMessage::assistant("x")], false)
        .unwrap_err();
    assert!(matches!(err, TextError::Template(_)));
    assert!(
        err.to_string()
            .contains("Conversation must start with a user message"),
        "{err}"
    );

    let err = ChatTemplate::new("{% for %}", "", "")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("chat template: syntax error"), "{err}");
}

#[test]
fn types_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TextTokenizer>();
    assert_send_sync::<ChatTemplate>();
}
