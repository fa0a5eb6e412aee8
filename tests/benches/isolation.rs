//! The cost of process isolation per call and per streamed token, measured on the example
//! plugin (no model, no GPU: what is left is the relay), in process and in a worker.
//!
//! `cargo bench -p pio-tests --bench isolation` (build the workspace first). Multiply the
//! per-token cost by a model's decode rate to get its share: at 26 tok/s, 100 µs per token
//! is 0.26 %.

use std::time::{Duration, Instant};

use pio_host::{
    isolation::{Isolation, IsolationConfig},
    ActivateOptions, GenerateRequest, GenerationParams, PluginManager, Prompt, StreamControl,
};
use pio_tests::{pack_into, workspace_plugin};
use serde_json::json;

const TOKENS: usize = 2000;
const CALLS: usize = 2000;

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn measure(isolation: Isolation) -> (Duration, Duration) {
    let tmp = tempfile::tempdir().unwrap();
    let mut manager = PluginManager::new(&tmp.path().join("shadow")).unwrap();
    manager.set_isolation(IsolationConfig {
        default: isolation,
        ..IsolationConfig::default()
    });
    let library = workspace_plugin("pio_plugin_example");
    let (folder, _) = pack_into(&manager, &library, tmp.path(), "example", json!({}));
    let id = manager.load_plugin_from_path(&folder).unwrap();
    let options = ActivateOptions {
        context_length: 2 * TOKENS as u32 + 8,
        ..ActivateOptions::default()
    };
    manager.activate(&id, &options).unwrap();

    // The example mirrors its prompt: a prompt of TOKENS characters streams TOKENS tokens.
    let request = GenerateRequest {
        prompt: Prompt::Text("ab".repeat(TOKENS / 2)),
        params: GenerationParams::greedy(TOKENS as u32),
    };
    let per_token = median(
        (0..5)
            .map(|_| {
                let mut tokens = 0;
                let started = Instant::now();
                manager
                    .generate("example", &request, |_| {
                        tokens += 1;
                        StreamControl::Continue
                    })
                    .unwrap();
                assert_eq!(tokens, TOKENS);
                started.elapsed() / TOKENS as u32
            })
            .collect(),
    );
    let per_call = median(
        (0..5)
            .map(|_| {
                let started = Instant::now();
                for _ in 0..CALLS {
                    manager.tokenize("example", "ab", false).unwrap();
                }
                started.elapsed() / CALLS as u32
            })
            .collect(),
    );
    (per_token, per_call)
}

fn main() {
    println!("isolation    per streamed token  per call (tokenize)");
    for isolation in [Isolation::InProcess, Isolation::Process] {
        let (per_token, per_call) = measure(isolation);
        println!(
            "{:<11}  {:>15.1} µs  {:>16.1} µs",
            isolation.as_str(),
            per_token.as_secs_f64() * 1e6,
            per_call.as_secs_f64() * 1e6
        );
    }
}
