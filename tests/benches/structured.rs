//! What constrained decoding costs per token: the Llama plugin (SmolLM2) generating the same
//! prompt greedily, free and under a JSON Schema, as one batched sequence; prints decode
//! milliseconds per token for both and the grammar-mask milliseconds per token the kit measures
//! (its `grammar_masks` / `grammar_mask_ms` stats).
//!
//! `cargo build --release -p pio-plugin-llama && cargo bench -p pio-tests --bench structured`

use std::time::Instant;

use pio_host::{
    ActivateOptions, ChatMessage, ChatRequest, Constraint, DecodeOptions, GenerationParams,
    PluginManager, SequenceRequest,
};
use pio_tests::{pack_into, workspace_plugin};
use serde_json::{json, Value};

const RUNS: usize = 3;
const MAX_TOKENS: u32 = 96;

/// Generates one sequence to its end; returns (tokens, seconds).
fn run(manager: &PluginManager, options: &DecodeOptions) -> (u32, f64) {
    let request = SequenceRequest::Chat(ChatRequest {
        messages: vec![ChatMessage::new(
            "user",
            "Describe the weather in Paris today, with the temperature. Answer in JSON.",
        )],
        params: GenerationParams::greedy(MAX_TOKENS),
    });
    let opened = manager
        .open_sequence_with("llama", &request, options)
        .unwrap();
    let (plugin, generation, id) = (&opened.plugin, opened.generation, opened.response.id);
    let started = Instant::now();
    let mut tokens = 0;
    loop {
        let step = manager.step_sequences(plugin, generation, &[id]).unwrap();
        tokens += 1;
        if step[0].finish.is_some() {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    manager.close_sequence(plugin, generation, id).unwrap();
    (tokens, seconds)
}

fn details(manager: &PluginManager) -> Value {
    serde_json::from_str(&manager.stats("llama").unwrap().details_json).unwrap()
}

fn main() {
    let Some(model) = pio_testkit::find_model(pio_testkit::SMOLLM2) else {
        eprintln!("needs the SmolLM2 model: pio models fetch");
        std::process::exit(1);
    };
    let dir = tempfile::tempdir().unwrap();
    let manager = PluginManager::new(&dir.path().join("shadow")).unwrap();
    let (folder, _) = pack_into(
        &manager,
        &workspace_plugin("pio_plugin_llama"),
        &dir.path().join("plugins"),
        "llama",
        json!({ "model": model }),
    );
    manager.load_plugin_from_path(&folder).unwrap();
    manager
        .activate("llama", &ActivateOptions::default())
        .unwrap();
    let schema = json!({"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 40},
        "temperature_c": {"type": "number"},
        "condition": {"enum": ["sunny", "cloudy", "rain", "snow"]}
    }, "required": ["city", "temperature_c", "condition"]});
    let constrained = DecodeOptions {
        logprobs: None,
        constraint: Some(Constraint::JsonSchema(schema.to_string())),
    };
    // The vocabulary's token trie is built at the first constrained request: time it apart.
    let started = Instant::now();
    run(&manager, &constrained);
    let first = started.elapsed().as_secs_f64();

    println!("| run | free ms/token | constrained ms/token | mask ms/token |");
    println!("|---|---|---|---|");
    for round in 1..=RUNS {
        let (free_tokens, free_s) = run(&manager, &DecodeOptions::default());
        let before = details(&manager);
        let (tokens, seconds) = run(&manager, &constrained);
        let after = details(&manager);
        let masks =
            after["grammar_masks"].as_u64().unwrap() - before["grammar_masks"].as_u64().unwrap();
        let mask_ms = after["grammar_mask_ms"].as_f64().unwrap()
            - before["grammar_mask_ms"].as_f64().unwrap();
        println!(
            "| {round} | {:.1} ({free_tokens} tokens) | {:.1} ({tokens} tokens) | {:.2} ({masks} masks) |",
            free_s * 1e3 / f64::from(free_tokens),
            seconds * 1e3 / f64::from(tokens),
            mask_ms / masks as f64,
        );
    }
    println!("first constrained request (builds the token trie, {MAX_TOKENS} tokens at most): {first:.2} s");
}
