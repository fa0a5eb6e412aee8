//! The OpenAI-compatible HTTP server end to end, with a real HTTP client on loopback: chat and
//! completions (whole and streamed), 16 concurrent streams, every kind of bad request, API
//! keys, continuous batching (concurrent streams share steps and get the text they get alone),
//! a client leaving mid-stream, a full queue and priorities, timeouts; the real Llama plugin
//! with SmolLM2; and the official `openai` Python client.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
};

use pio_host::server::{BatchLayer, ConfigLayer};
use pio_plugin_api::ActivateOptions;
use pio_tests::{
    build_variant,
    http::{chunk_text, Served, TestServer},
    pack_into, target_dir, workspace_plugin, Variant,
};
use serde_json::{json, Value};

/// The example plugin, packed as `example`, with a context of 64 tokens.
fn example_server(layer: ConfigLayer) -> TestServer {
    let library = workspace_plugin("pio_plugin_example");
    TestServer::start(
        &[Served {
            folder: "example",
            library: &library,
            config: json!({}),
        }],
        layer,
        ActivateOptions {
            context_length: 64,
            ..ActivateOptions::default()
        },
    )
}

/// The example plugin built as `slow`: 20 ms per token.
fn slow_library() -> PathBuf {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY
        .get_or_init(|| {
            build_variant(&Variant {
                id: "slow",
                plugin_name: Some("slow"),
                token_delay_ms: Some(20),
                ..Default::default()
            })
        })
        .clone()
}

fn slow_server(layer: ConfigLayer) -> TestServer {
    let library = slow_library();
    TestServer::start(
        &[Served {
            folder: "slow",
            library: &library,
            config: json!({}),
        }],
        layer,
        ActivateOptions::default(),
    )
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// The text of a streamed chat `request`.
fn streamed_text(server: &TestServer, request: &Value) -> String {
    let mut request = request.clone();
    request["stream"] = json!(true);
    let (status, sse) = server.stream("/v1/chat/completions", &request);
    assert_eq!(status, 200);
    let data = sse.collect_all();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    data[..data.len() - 1]
        .iter()
        .map(|d| chunk_text(&serde_json::from_str(d).unwrap()).to_owned())
        .collect()
}

fn error_of(body: &Value) -> (&str, &str, Option<&str>) {
    let error = &body["error"];
    (
        error["type"]
            .as_str()
            .unwrap_or_else(|| panic!("no error type: {body}")),
        error["code"].as_str().unwrap_or(""),
        error["param"].as_str(),
    )
}

#[test]
fn chat_completions_embeddings_and_tokens_non_streaming() {
    let server = example_server(ConfigLayer::default());

    let (status, body) = server.post("/v1/chat/completions", &chat("example", "hello"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], "olleh");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10})
    );
    assert_eq!(body["system_fingerprint"], "example@0.1.0");

    let (status, body) = server.post(
        "/v1/completions",
        &json!({"model": "example@0.1.0", "prompt": "abcdef", "max_tokens": 2, "stop": ["zz"]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], "fe");
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    let (status, body) = server.post(
        "/v1/completions",
        &json!({"model": "example", "prompt": "abcdef", "stop": "c"}),
    );
    assert_eq!(
        (status, body["choices"][0]["text"].as_str()),
        (200, Some("fed"))
    );

    let (status, body) = server.post(
        "/v1/embeddings",
        &json!({"model": "example", "input": ["one", "two"]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 64);
    let (_, base64) = server.post(
        "/v1/embeddings",
        &json!({"model": "example", "input": "one", "encoding_format": "base64"}),
    );
    // 64 little-endian f32 = 256 bytes = 344 base64 characters.
    assert_eq!(base64["data"][0]["embedding"].as_str().unwrap().len(), 344);

    let (status, body) = server.post("/tokenize", &json!({"model": "example", "prompt": "hé"}));
    assert_eq!((status, &body["tokens"]), (200, &json!([104, 233])));
    let (status, body) = server.post(
        "/detokenize",
        &json!({"model": "example", "tokens": [104, 233]}),
    );
    assert_eq!((status, &body["prompt"]), (200, &json!("hé")));

    let (status, models) = server.get("/v1/models");
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], "example");
    assert_eq!(models["data"][0]["version"], "0.1.0");

    let (status, admin) = server.get("/admin/plugins");
    let admin: Value = serde_json::from_str(&admin).unwrap();
    assert_eq!(status, 200);
    let plugin = &admin["plugins"][0];
    assert_eq!(
        (
            &plugin["id"],
            &plugin["state"],
            &plugin["generation"],
            &plugin["serving"]
        ),
        (
            &json!("example@0.1.0"),
            &json!("active"),
            &json!(1),
            &json!(true)
        )
    );
    assert_eq!(admin["events"][0]["event"], "added");

    let metrics = server.metrics();
    assert!(
        metrics.contains("pio_generations_total{plugin=\"example\",outcome=\"stop\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("pio_time_to_first_token_seconds_count{plugin=\"example\"} 3"));
    assert!(metrics.contains("pio_queue_depth{plugin=\"example\"} 0"));
}

#[test]
fn streaming_chat_and_completion_end_with_usage_and_done() {
    let server = example_server(ConfigLayer::default());
    let mut request = chat("example", "stream me");
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let (status, sse) = server.stream("/v1/chat/completions", &request);
    assert_eq!(status, 200);
    let data = sse.collect_all();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let text: String = chunks.iter().map(chunk_text).collect();
    assert_eq!(text, "em maerts");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["usage"]["completion_tokens"], 9);
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 18);

    let (status, sse) = server.stream(
        "/v1/completions",
        &json!({"model": "example", "prompt": "abc", "stream": true}),
    );
    assert_eq!(status, 200);
    let data = sse.collect_all();
    let text: String = data[..data.len() - 1]
        .iter()
        .map(|d| chunk_text(&serde_json::from_str(d).unwrap()).to_owned())
        .collect();
    assert_eq!(text, "cba");
}

#[test]
fn sixteen_concurrent_streams_each_get_their_own_text() {
    let server = Arc::new(example_server(ConfigLayer::default()));
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let server = server.clone();
            std::thread::spawn(move || {
                let prompt = format!("client {i:02} says hello");
                let mut request = chat("example", &prompt);
                request["stream"] = json!(true);
                let (status, sse) = server.stream("/v1/chat/completions", &request);
                assert_eq!(status, 200);
                let data = sse.collect_all();
                assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
                let text: String = data[..data.len() - 1]
                    .iter()
                    .map(|d| chunk_text(&serde_json::from_str(d).unwrap()).to_owned())
                    .collect();
                (prompt.chars().rev().collect::<String>(), text)
            })
        })
        .collect();
    for client in clients {
        let (expected, got) = client.join().unwrap();
        assert_eq!(got, expected);
    }
    assert_eq!(
        server.metric("pio_generations_total{plugin=\"example\",outcome=\"stop\"}"),
        Some(16.0)
    );
}

#[test]
fn concurrent_streams_share_batched_steps_and_get_the_text_they_get_alone() {
    // A step target no step reaches, so the limit only grows (to 8).
    let server = Arc::new(slow_server(ConfigLayer {
        batch: BatchLayer {
            max_sequences: Some(8),
            target_step_ms: Some(60_000),
        },
        ..ConfigLayer::default()
    }));
    let requests: Vec<Value> = (0..8)
        .map(|i| {
            let mut request = chat("slow", &format!("client {i} hi"));
            request["stop"] = json!(["4 t"]);
            request["max_tokens"] = json!(5 + i);
            request
        })
        .collect();
    let alone: Vec<String> = requests.iter().map(|r| streamed_text(&server, r)).collect();
    let steps_alone = server
        .metric("pio_batch_size_count{plugin=\"slow\"}")
        .unwrap();
    assert_eq!(
        server.metric("pio_batch_size_bucket{plugin=\"slow\",le=\"1\"}"),
        Some(steps_alone),
        "one at a time, every step carries one sequence"
    );

    // A long stream keeps a sequence open while the eight run concurrently.
    let mut long = chat("slow", &"z".repeat(500));
    long["stream"] = json!(true);
    long["max_tokens"] = json!(500);
    let (_, mut running) = server.stream("/v1/chat/completions", &long);
    running.next_data().unwrap();
    let clients: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let server = server.clone();
            std::thread::spawn(move || streamed_text(&server, &request))
        })
        .collect();
    let together: Vec<String> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(together, alone);
    assert_eq!(alone[4], "ih ", "the stop string cut it");

    let steps = server
        .metric("pio_batch_size_count{plugin=\"slow\"}")
        .unwrap();
    let single = server
        .metric("pio_batch_size_bucket{plugin=\"slow\",le=\"1\"}")
        .unwrap();
    assert!(steps > single, "no step carried more than one sequence");
    assert!(server.metric("pio_batch_limit{plugin=\"slow\"}").unwrap() > 1.0);
    drop(running);
    server.wait_for("every sequence to be closed", || {
        server.metric("pio_active_sequences{plugin=\"slow\"}") == Some(0.0)
    });
    assert_eq!(
        server.metric("pio_sequences_closed_total{plugin=\"slow\",reason=\"finished\"}"),
        Some(16.0)
    );
}

#[test]
fn bad_requests_get_openai_error_bodies() {
    let server = example_server(ConfigLayer {
        body_limit_bytes: Some(4096),
        max_tokens_limit: Some(100),
        ..ConfigLayer::default()
    });
    let raw = |body: &[u8]| {
        let (status, text) = server.post_raw("/v1/chat/completions", body, None);
        let json: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}"));
        (status, json)
    };

    let (status, body) = raw(b"{\"model\": \"example\", \"messages\": [");
    assert_eq!(status, 400);
    assert_eq!(error_of(&body).0, "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{body}"
    );

    let (status, body) = raw(b"{\"messages\": []}");
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("model"),
        "{body}"
    );

    let (status, body) = server.post("/v1/chat/completions", &chat("nonexistent", "hi"));
    assert_eq!(status, 404);
    assert_eq!(
        error_of(&body),
        ("not_found_error", "model_not_found", Some("model"))
    );

    let huge = chat("example", &"x".repeat(20_000)).to_string();
    let (status, body) = raw(huge.as_bytes());
    assert_eq!(status, 413);
    assert_eq!(error_of(&body).1, "body_too_large");

    let mut request = chat("example", "hi");
    request["max_tokens"] = json!(1000);
    let (status, body) = server.post("/v1/chat/completions", &request);
    assert_eq!(status, 400);
    assert_eq!(error_of(&body).2, Some("max_tokens"));

    request["max_tokens"] = json!(10);
    request["temperature"] = json!(-1);
    let (status, body) = server.post("/v1/chat/completions", &request);
    assert_eq!((status, error_of(&body).2), (400, Some("temperature")));

    // A prompt longer than the context (64 tokens) is a 400 naming the problem, also when
    // streaming.
    let mut long = chat("example", &"y".repeat(100));
    long["stream"] = json!(true);
    let (status, body) = server.post("/v1/chat/completions", &long);
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("100 tokens") && message.contains("context holds 64"),
        "{message}"
    );

    let (status, body) = server.post("/v1/embeddings", &json!({"model": "example", "input": []}));
    assert_eq!((status, error_of(&body).2), (400, Some("input")));

    let (status, text) = server.get("/v1/nothing-here");
    assert_eq!(status, 404);
    assert!(text.contains("unknown_route"), "{text}");

    // The server still serves after all of that.
    let (status, _) = server.post("/v1/chat/completions", &chat("example", "ok"));
    assert_eq!(status, 200);
    let metrics = server.metrics();
    assert!(
        metrics
            .contains("pio_errors_total{type=\"invalid_request_error\",code=\"body_too_large\"} 1"),
        "{metrics}"
    );
}

#[test]
fn api_key_is_required_everywhere_but_health() {
    let server = example_server(ConfigLayer {
        api_key: Some("sesame".to_owned()),
        ..ConfigLayer::default()
    });
    let body = chat("example", "hi").to_string();
    let (status, text) = server.post_raw("/v1/chat/completions", body.as_bytes(), None);
    assert_eq!(status, 401);
    assert!(text.contains("missing API key"), "{text}");
    let (status, text) = server.post_raw("/v1/chat/completions", body.as_bytes(), Some("wrong"));
    assert_eq!(status, 401);
    assert!(text.contains("invalid_api_key"), "{text}");
    let (status, _) = server.post_raw("/v1/chat/completions", body.as_bytes(), Some("sesame"));
    assert_eq!(status, 200);

    assert_eq!(server.get_with_key("/health", None).0, 200);
    assert_eq!(server.get_with_key("/metrics", None).0, 401);
    assert_eq!(server.get_with_key("/v1/models", Some("wrong")).0, 401);
    assert_eq!(server.get("/v1/models").0, 200);
}

#[test]
fn a_client_leaving_mid_stream_cancels_its_generation() {
    let server = slow_server(ConfigLayer::default());
    let prompt = "z".repeat(500);
    let mut request = chat("slow", &prompt);
    request["stream"] = json!(true);
    request["max_tokens"] = json!(500);
    let (status, mut sse) = server.stream("/v1/chat/completions", &request);
    assert_eq!(status, 200);
    let first: Value = serde_json::from_str(&sse.next_data().unwrap()).unwrap();
    assert_eq!(chunk_text(&first), "z");
    drop(sse);

    let cancelled = "pio_generations_total{plugin=\"slow\",outcome=\"disconnected\"}";
    server.wait_for("the generation to be cancelled", || {
        server.metric(cancelled) == Some(1.0)
    });
    let generated = server
        .metric("pio_generated_tokens_total{plugin=\"slow\"}")
        .unwrap();
    assert!(
        generated < 500.0,
        "{generated} tokens: the generation ran to its end"
    );
    assert_eq!(
        server.metric("pio_sequences_closed_total{plugin=\"slow\",reason=\"disconnected\"}"),
        Some(1.0),
        "the plugin's sequence was closed"
    );
    assert_eq!(
        server.metric("pio_active_sequences{plugin=\"slow\"}"),
        Some(0.0)
    );
}

#[test]
fn a_full_queue_answers_429_and_priorities_are_honoured() {
    let server = Arc::new(slow_server(ConfigLayer {
        queue_depth: Some(1),
        batch: BatchLayer {
            max_sequences: Some(1),
            target_step_ms: None,
        },
        ..ConfigLayer::default()
    }));
    // A long generation occupies the plugin's only batch slot.
    let mut long = chat("slow", &"z".repeat(500));
    long["stream"] = json!(true);
    long["max_tokens"] = json!(500);
    let (_, mut running) = server.stream("/v1/chat/completions", &long);
    running.next_data().unwrap();

    // One request waits in each priority class, queued in the order normal, low, high.
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiting = Vec::new();
    for (queued, (label, priority)) in [("normal", 0), ("low", -3), ("high", 2)]
        .into_iter()
        .enumerate()
    {
        let (client, order) = (server.clone(), order.clone());
        waiting.push(std::thread::spawn(move || {
            let mut request = chat("slow", "ab");
            request["priority"] = json!(priority);
            let (status, body) = client.post("/v1/chat/completions", &request);
            assert_eq!(status, 200, "{body}");
            order.lock().unwrap().push(label);
        }));
        server.wait_for("the request to be queued", || {
            server.metric("pio_queue_depth{plugin=\"slow\"}") == Some(queued as f64 + 1.0)
        });
    }

    // The normal class is full: refused at once.
    let (status, body) = server.post("/v1/chat/completions", &chat("slow", "ab"));
    assert_eq!(status, 429, "{body}");
    assert_eq!(error_of(&body), ("rate_limit_error", "queue_full", None));

    // Leaving frees the plugin; the queued requests run highest priority first.
    drop(running);
    for client in waiting {
        client.join().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), ["high", "normal", "low"]);
}

#[test]
fn a_request_past_its_timeout_is_answered_503() {
    let server = slow_server(ConfigLayer {
        request_timeout_secs: Some(1),
        ..ConfigLayer::default()
    });
    let mut request = chat("slow", &"z".repeat(500));
    request["max_tokens"] = json!(500);
    let (status, body) = server.post("/v1/chat/completions", &request);
    assert_eq!(status, 503, "{body}");
    assert_eq!(error_of(&body).1, "timeout");
    server.wait_for("the generation to stop", || {
        server.metric("pio_generations_total{plugin=\"slow\",outcome=\"timeout\"}") == Some(1.0)
    });
}

#[test]
fn a_removed_plugin_folder_stops_being_served() {
    let server = example_server(ConfigLayer::default());
    assert_eq!(
        server
            .post("/v1/chat/completions", &chat("example", "hi"))
            .0,
        200
    );
    std::fs::remove_dir_all(server.plugin_dir.join("example")).unwrap();
    server.wait_for("the removal event", || {
        server
            .get("/admin/plugins")
            .1
            .contains("\"event\":\"removed\"")
    });
    let (status, body) = server.post("/v1/chat/completions", &chat("example", "hi"));
    assert_eq!((status, error_of(&body).1), (404, "model_not_found"));
    let (status, health) = server.get("/health");
    assert_eq!(status, 503);
    assert!(health.contains("no plugin is active"), "{health}");
}

#[test]
fn llama_chat_end_to_end_with_smollm2() {
    let Some(model) = pio_testkit::cached_model(pio_testkit::SMOLLM2) else {
        return;
    };
    let library = workspace_plugin("pio_plugin_llama");
    let server = TestServer::start(
        &[Served {
            folder: "llama",
            library: &library,
            config: json!({"model": model}),
        }],
        ConfigLayer::default(),
        ActivateOptions {
            context_length: 512,
            ..ActivateOptions::default()
        },
    );
    let mut request = chat("llama", "What is the capital of France?");
    request["temperature"] = json!(0);
    request["max_tokens"] = json!(24);
    let (status, body) = server.post("/v1/chat/completions", &request);
    assert_eq!(status, 200, "{body}");
    let answer = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.contains("Paris"), "{answer}");
    let usage = &body["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 5, "{usage}");
    assert!(
        (1..=24).contains(&usage["completion_tokens"].as_u64().unwrap()),
        "{usage}"
    );

    request["stream"] = json!(true);
    let (status, sse) = server.stream("/v1/chat/completions", &request);
    assert_eq!(status, 200);
    let data = sse.collect_all();
    let streamed: String = data[..data.len() - 1]
        .iter()
        .map(|d| chunk_text(&serde_json::from_str(d).unwrap()).to_owned())
        .collect();
    assert_eq!(streamed, answer, "greedy streaming gives the same text");
    // The second request repeated the first prompt: its keys and values came from the prefix
    // cache, and the answer is the same.
    let metrics = server.metrics();
    for line in [
        "pio_prefix_cache_lookups_total{plugin=\"llama\",result=\"miss\"} 1",
        "pio_prefix_cache_lookups_total{plugin=\"llama\",result=\"hit\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }

    let (status, body) = server.post("/tokenize", &json!({"model": "llama", "prompt": "Paris"}));
    assert_eq!(status, 200, "{body}");
    let (status, text) = server.post(
        "/detokenize",
        &json!({"model": "llama", "tokens": body["tokens"]}),
    );
    assert_eq!((status, text["prompt"].as_str()), (200, Some("Paris")));
}

#[test]
fn the_official_openai_python_client_works_unmodified() {
    let has_client = Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_client {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs the openai Python package (scripts/test installs it)"
        );
        eprintln!("\n*** SKIPPED: python3 cannot import openai (pip install openai) ***\n");
        return;
    }
    let server = example_server(ConfigLayer {
        api_key: Some("test-key".to_owned()),
        ..ConfigLayer::default()
    });
    let script = pio_tests::workspace_root().join("tests/openai_client.py");
    let output = Command::new("python3")
        .arg(script)
        .env("OPENAI_BASE_URL", server.url("/v1"))
        .env("OPENAI_API_KEY", "test-key")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.trim_end().ends_with("all ok"), "{stdout}");
}

/// The `pio` binary of the running test's profile.
fn pio_binary() -> PathBuf {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    target_dir().join(profile).join("pio")
}

#[test]
fn pio_serve_command_reads_its_config_serves_and_prints_reload_events() {
    let tmp = tempfile::tempdir().unwrap();
    let plugins = tmp.path().join("plugins");
    let manager = pio_host::PluginManager::new(&tmp.path().join("shadow")).unwrap();
    pack_into(
        &manager,
        &workspace_plugin("pio_plugin_example"),
        &plugins,
        "example",
        json!({}),
    );

    // A misspelt key in the file is refused, naming it.
    let config = tmp.path().join("pio.toml");
    std::fs::write(&config, "queue_dept = 3\n").unwrap();
    let output = Command::new(pio_binary())
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("PIO_CACHE_DIR", tmp.path().join("cache"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("queue_dept") && stderr.contains("pio.toml"),
        "{stderr}"
    );

    // The file names the directory, an address and a key; the environment overrides the
    // address and the key; the flag overrides the environment's address.
    std::fs::write(
        &config,
        format!(
            "plugins = \"{}\"\naddr = \"127.0.0.1:1\"\napi_key = \"from-file\"\n",
            plugins.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(pio_binary())
        .args([
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
        ])
        .env("PIO_CACHE_DIR", tmp.path().join("cache"))
        .env("PIO_ADDR", "127.0.0.1:2")
        .env("PIO_API_KEY", "from-env")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert_ne!(stderr.read_line(&mut line).unwrap(), 0, "pio serve exited");
        if let Some(rest) = line.strip_prefix("listening on http://") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut event = String::new();
    stdout.read_line(&mut event).unwrap();
    let event: Value = serde_json::from_str(&event).unwrap();
    assert_eq!(
        (&event["event"], &event["plugin"]),
        (&json!("added"), &json!("example@0.1.0"))
    );

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let models = |key: &str| {
        agent
            .get(format!("http://{addr}/v1/models"))
            .header("Authorization", &format!("Bearer {key}"))
            .call()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(models("from-env"), 200);
    assert_eq!(models("from-file"), 401);
    child.kill().unwrap();
    child.wait().unwrap();
}
