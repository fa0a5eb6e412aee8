//! HTTP serving throughput: aggregate decode tokens/s with 1, 4 and 16 concurrent streaming
//! chat requests, and the time to first token under that load.
//!
//! `cargo bench -p pio-tests --bench http` serves the Llama plugin with SmolLM2 when the model
//! is cached (else the example plugin, whose numbers only measure the server's overhead).
//! Both plugins offer batched generation, so the server batches concurrent streams
//! continuously (default profile: at most 8 sequences per step, 100 ms step target); the table
//! shows the mean sequences per step and the adaptive limit after each round. `PIO_*` server
//! variables apply (e.g. `PIO_BATCH_TARGET_STEP_MS=1000`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use pio_host::ActivateOptions;
use pio_server::ConfigLayer;
use pio_tests::{
    http::{chunk_text, Served, TestServer},
    workspace_plugin,
};
use serde_json::{json, Value};

const MAX_TOKENS: u32 = 48;

/// What one stream measured.
struct Stream {
    first_token: Duration,
    tokens: u64,
}

fn run_stream(server: &TestServer, model: &str, i: usize) -> Stream {
    let request = json!({
        "model": model,
        "messages": [{"role": "user", "content": format!("Write a short story about robot number {i}.")}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.7,
        "seed": i,
        "stream": true,
    });
    let started = Instant::now();
    let (status, mut sse) = server.stream("/v1/chat/completions", &request);
    assert_eq!(status, 200);
    let mut first_token = None;
    let mut tokens = 0;
    while let Some(data) = sse.next_data() {
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&data).unwrap();
        if first_token.is_none() && !chunk_text(&chunk).is_empty() {
            first_token = Some(started.elapsed());
        }
        if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
            tokens = n;
        }
    }
    Stream {
        first_token: first_token.unwrap_or_else(|| started.elapsed()),
        tokens,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let (library, model, config) = match pio_testkit::find_model(pio_testkit::SMOLLM2) {
        Some(path) => (
            workspace_plugin("pio_plugin_llama"),
            "llama",
            json!({"model": path}),
        ),
        None => (workspace_plugin("pio_plugin_example"), "example", json!({})),
    };
    let server = Arc::new(TestServer::start(
        &[Served {
            folder: model,
            library: &library,
            config,
        }],
        ConfigLayer::from_env(|name| std::env::var(name).ok()).unwrap(),
        ActivateOptions {
            context_length: 512,
            ..ActivateOptions::default()
        },
    ));
    // Warm-up: pipelines compiled, caches touched.
    run_stream(&server, model, 0);

    println!("plugin {model}, max_tokens {MAX_TOKENS}, streaming chat");
    println!(
        "streams  tokens  wall s  aggregate tok/s  TTFT p50 ms  TTFT max ms  mean batch  limit"
    );
    let batch_series = format!("pio_batch_size_sum{{plugin=\"{model}\"}}");
    let steps_series = format!("pio_batch_size_count{{plugin=\"{model}\"}}");
    let counters = || {
        (
            server.metric(&batch_series).unwrap_or(0.0),
            server.metric(&steps_series).unwrap_or(0.0),
        )
    };
    for streams in [1usize, 4, 16] {
        let (sequences_before, steps_before) = counters();
        let started = Instant::now();
        let clients: Vec<_> = (0..streams)
            .map(|i| {
                let server = server.clone();
                std::thread::spawn(move || run_stream(&server, model, i + 1))
            })
            .collect();
        let results: Vec<Stream> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        let wall = started.elapsed();
        let tokens: u64 = results.iter().map(|r| r.tokens).sum();
        let mut ttft: Vec<Duration> = results.iter().map(|r| r.first_token).collect();
        ttft.sort();
        let (sequences, steps) = counters();
        let limit = server
            .metric(&format!("pio_batch_limit{{plugin=\"{model}\"}}"))
            .unwrap_or(0.0);
        println!(
            "{streams:>7}  {tokens:>6}  {:>6.2}  {:>15.1}  {:>11.0}  {:>11.0}  {:>10.1}  {limit:>5}",
            wall.as_secs_f64(),
            tokens as f64 / wall.as_secs_f64(),
            percentile(&ttft, 0.5).as_secs_f64() * 1e3,
            percentile(&ttft, 1.0).as_secs_f64() * 1e3,
            (sequences - sequences_before) / (steps - steps_before).max(1.0),
        );
    }
}
