//! SmolLM2 loaded from the first shard of its split form (one tensor per shard) computes what
//! the single file computes: the same logits, bit for bit, and the same greedy answer; with a
//! shard changed, it is not loaded, and the error names the shard and its expected hash.

use pio_gguf::split::{self, Limit, ShardName};
use pio_gguf::GgufFile;
use pio_plugin_kit::api::{
    ActivateOptions, ChatMessage, ChatRequest, FnSink, GenerationParams, Plugin, StreamControl,
    TokenEvent, TokenStream,
};
use pio_plugin_kit::{Message, TextModel, TextPlugin};
use pio_plugin_llama::engine::{Engine, LoadOptions};
use pio_plugin_llama::forward::Forward;

/// The greedy chat answer's tokens and the last-position logits of its prompt, for the model
/// at `path`.
fn answer_and_logits(path: &std::path::Path) -> (Vec<u32>, Vec<f32>) {
    let options = LoadOptions {
        context_length: 256,
        ..LoadOptions::default()
    };
    let mut engine = Engine::load(path, options).expect("the model loads");
    let question = Message {
        role: "user".into(),
        content: "What is the capital of France?".into(),
    };
    let prompt = engine.chat_prompt(&[question]).unwrap();
    let logits = engine.model_mut().forward(&prompt, 0, false).unwrap();
    drop(engine);

    let mut plugin = TextPlugin::<Engine>::new().unwrap();
    plugin
        .initialize(serde_json::json!({ "model": path, "tuning": "off" }))
        .unwrap();
    let options = ActivateOptions {
        context_length: 256,
        ..ActivateOptions::default()
    };
    plugin.activate(&options).expect("the model activates");
    let request = ChatRequest {
        messages: vec![ChatMessage::new("user", "What is the capital of France?")].into(),
        params: GenerationParams::greedy(24),
    };
    let mut sink = FnSink(|_: &TokenEvent| StreamControl::Continue);
    let answer = plugin
        .chat(&request, &mut TokenStream::new(sink.as_sink()))
        .unwrap();
    assert_eq!(answer.text.as_str(), "The capital of France is Paris.");
    (answer.tokens.to_vec(), logits)
}

#[test]
#[ignore = "needs the SmolLM2 model: pio models fetch"]
fn smollm2_from_its_first_shard_answers_as_the_single_file_and_not_once_changed() {
    let path = pio_testkit::model(pio_testkit::SMOLLM2);
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("smollm2");
    let manifest =
        split::split(&GgufFile::open(&path).unwrap(), Limit::Tensors(1), &prefix).unwrap();
    let first = ShardName::new(&prefix, 0, manifest.shards.len()).path();

    let (single_tokens, single_logits) = answer_and_logits(&path);
    let (split_tokens, split_logits) = answer_and_logits(&first);
    assert_eq!(split_tokens, single_tokens);
    assert!(
        split_logits == single_logits,
        "the same weights give the same logits"
    );

    let changed = ShardName::new(&prefix, 100, manifest.shards.len()).path();
    let mut bytes = std::fs::read(&changed).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    std::fs::write(&changed, bytes).unwrap();
    let Err(err) = Engine::load(&first, LoadOptions::default()) else {
        panic!("a model with a changed shard must not load");
    };
    let message = err.to_string();
    let file = changed.file_name().unwrap().to_str().unwrap();
    assert!(
        message.contains(file) && message.contains(&manifest.shards[100].sha256),
        "{message}"
    );
}
