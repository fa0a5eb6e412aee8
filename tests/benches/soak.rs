//! Soak: the Llama plugin is reloaded again and again while streaming clients keep it busy.
//! Reports failed requests (the target is none), latency percentiles and the server process's
//! memory (and its workers') at the end.
//!
//! `cargo bench -p pio-tests --bench soak [-- --reloads 50 --clients 16 --isolation process]`
//! serves SmolLM2 (which must be cached: `pio models fetch`). Each reload installs the plugin
//! folder again with a changed configuration, so the watcher loads a new generation, activates
//! it and retires the old one while clients stream from both.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use pio_host::{isolation::IsolationLayer, ActivateOptions};
use pio_server::ConfigLayer;
use pio_tests::{
    http::{Served, TestServer},
    procfs::{children_rss_kib, status_kib},
    workspace_plugin,
};
use serde_json::{json, Value};

/// What the clients saw.
#[derive(Default)]
struct Outcomes {
    latencies: Vec<Duration>,
    failures: Vec<String>,
}

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: cannot parse '{v}'"))
        })
        .unwrap_or(default)
}

/// One streamed chat; an error describes what went wrong.
fn stream_once(server: &TestServer, i: usize) -> Result<(), String> {
    let request = json!({
        "model": "llama",
        "messages": [{"role": "user", "content": format!("Count to {i}.")}],
        "max_tokens": 16,
        "temperature": 0,
        "stream": true,
    });
    let (status, mut sse) = server.stream("/v1/chat/completions", &request);
    if status != 200 {
        return Err(format!("status {status}: {}", sse.into_text()));
    }
    while let Some(data) = sse.next_data() {
        if data == "[DONE]" {
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(&data).map_err(|e| e.to_string())?;
        if let Some(error) = chunk.get("error") {
            return Err(error.to_string());
        }
    }
    Err("the stream ended without [DONE]".to_owned())
}

fn serving_generation(server: &TestServer) -> u64 {
    let (_, body) = server.get("/admin/plugins");
    let body: Value = serde_json::from_str(&body).unwrap_or_default();
    body["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == "llama" && p["serving"] == true)
        .filter_map(|p| p["generation"].as_u64())
        .max()
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let reloads: usize = arg("--reloads", 50);
    let clients: usize = arg("--clients", 16);
    let isolation: String = arg("--isolation", "in-process".to_owned());
    let model = pio_testkit::model(pio_testkit::SMOLLM2);
    let library = workspace_plugin("pio_plugin_llama");
    let layer = ConfigLayer {
        isolation: IsolationLayer {
            mode: Some(isolation.parse().expect("--isolation in-process|process")),
            ..IsolationLayer::default()
        },
        ..ConfigLayer::from_env(|name| std::env::var(name).ok()).unwrap()
    };
    let server = Arc::new(TestServer::start(
        &[Served {
            folder: "llama",
            library: &library,
            config: json!({ "model": model }),
        }],
        layer,
        ActivateOptions {
            context_length: 512,
            ..ActivateOptions::default()
        },
    ));
    let (rss_start, workers_start) = (status_kib("self", "VmRSS:"), children_rss_kib());
    let done = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let (server, done, outcomes) = (server.clone(), done.clone(), outcomes.clone());
            std::thread::spawn(move || {
                let mut i = client;
                while !done.load(Ordering::Relaxed) {
                    let begun = Instant::now();
                    let result = stream_once(&server, i);
                    let mut outcomes = outcomes.lock().unwrap();
                    match result {
                        Ok(()) => outcomes.latencies.push(begun.elapsed()),
                        Err(why) => outcomes.failures.push(why),
                    }
                    i += clients;
                }
            })
        })
        .collect();
    for reload in 1..=reloads {
        let before = serving_generation(&server);
        // A changed configuration makes a new generation (the plugin ignores the extra key).
        server.install(
            "llama",
            &library,
            json!({ "model": model, "soak_reload": reload }),
        );
        server.wait_for("the reload to serve", || {
            serving_generation(&server) > before
        });
    }
    done.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    let wall = started.elapsed();
    // Let the last retired instance finish its tear-down before measuring.
    std::thread::sleep(Duration::from_secs(2));
    let (rss_end, workers_end) = (status_kib("self", "VmRSS:"), children_rss_kib());
    let mut outcomes = outcomes.lock().unwrap();
    outcomes.latencies.sort();
    let served = outcomes.latencies.len();
    println!(
        "isolation {isolation}: {reloads} reloads, {clients} streaming clients, {:.0} s",
        wall.as_secs_f64()
    );
    println!(
        "requests: {served} served, {} failed",
        outcomes.failures.len()
    );
    for failure in outcomes.failures.iter().take(5) {
        println!("  failure: {failure}");
    }
    if served > 0 {
        println!(
            "latency (16 tokens, streamed): p50 {:.2} s, p99 {:.2} s, max {:.2} s",
            percentile(&outcomes.latencies, 0.5).as_secs_f64(),
            percentile(&outcomes.latencies, 0.99).as_secs_f64(),
            percentile(&outcomes.latencies, 1.0).as_secs_f64(),
        );
    }
    println!(
        "RSS: server process {} MiB -> {} MiB; worker processes {} MiB -> {} MiB",
        rss_start / 1024,
        rss_end / 1024,
        workers_start / 1024,
        workers_end / 1024
    );
}
