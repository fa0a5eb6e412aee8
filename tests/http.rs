//! The OpenAI-compatible HTTP server end to end, with a real HTTP client on loopback: chat and
//! completions (whole and streamed), 16 concurrent streams, every kind of bad request (hostile
//! sampling values, wrong types, unknown roles, token ids outside the vocabulary, oversized
//! bodies and headers), API keys, connection timeouts (half-sent requests, idle connections),
//! the admin listing through reloads, the server enforcing max_tokens and stop strings on a
//! plugin that ignores them, continuous batching (concurrent streams share steps and get the
//! text they get alone), a client leaving mid-stream, a full queue and priorities, timeouts;
//! the real Llama plugin with SmolLM2; and the official `openai` Python client.

use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use pio_host::{
    isolation::{Isolation, IsolationLayer},
    ActivateOptions,
};
use pio_server::{BatchLayer, ConfigLayer};
use pio_tests::{
    build_variant,
    http::{chunk_text, Served, TestServer},
    pack_into, target_dir, workspace_plugin, Variant,
};
use serde_json::{json, Value};

/// The example plugin, packed as `example`, with a context of 64 tokens.
fn example_server(layer: ConfigLayer) -> TestServer {
    example_server_with(json!({}), layer)
}

/// [`example_server`] with the plugin configured by `config`.
fn example_server_with(config: Value, layer: ConfigLayer) -> TestServer {
    let library = workspace_plugin("pio_plugin_example");
    TestServer::start(
        &[Served {
            folder: "example",
            library: &library,
            config,
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

/// The example plugin built as `unbatched`: without the batched-generation capability, so the
/// server runs each sequence through one streaming call.
fn unbatched_library() -> PathBuf {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY
        .get_or_init(|| {
            build_variant(&Variant {
                id: "unbatched",
                plugin_name: Some("unbatched"),
                without_batching: true,
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
fn a_sequence_too_long_for_a_batch_slot_runs_alone() {
    // The plugin refuses to open a batched sequence for lack of memory (as the Llama plugin
    // does for a prompt longer than its slots can grow to): the server serves the request on
    // the single-sequence path instead of failing it.
    let server = example_server_with(
        json!({"fail_in": "open_sequence", "fault": "out_of_memory"}),
        ConfigLayer::default(),
    );
    assert_eq!(
        streamed_text(&server, &chat("example", "too long")),
        "gnol oot"
    );
    let (status, body) = server.post("/v1/chat/completions", &chat("example", "again"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "niaga");
}

#[test]
fn a_plugin_in_a_worker_process_is_served_and_its_crash_fails_only_that_request() {
    let layer = ConfigLayer {
        isolation: IsolationLayer {
            mode: Some(Isolation::Process),
            ..IsolationLayer::default()
        },
        ..ConfigLayer::default()
    };
    // Every batched sequence's first step crashes the worker; single calls work.
    let server = example_server_with(
        json!({"fail_in": "step_sequences", "fault": "segfault"}),
        layer,
    );
    let (status, body) = server.post("/v1/chat/completions", &chat("example", "crash"));
    assert_eq!(status, 503, "{body}");
    let (_, code, _) = error_of(&body);
    assert_eq!(code, "plugin_crashed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("killed by signal 11 (SIGSEGV)"),
        "{message}"
    );
    // The worker restarts for the next request.
    let (status, body) = server.post("/tokenize", &json!({"model": "example", "prompt": "ab"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 2);
    assert_eq!(server.get("/health").0, 200);

    // Two more crashes within the window (three in all): the plugin is marked failed, with
    // the reason in /health and /admin/plugins.
    for _ in 0..2 {
        let (status, _) = server.post("/v1/chat/completions", &chat("example", "crash"));
        assert_eq!(status, 503);
    }
    let (status, body) = server.post("/v1/chat/completions", &chat("example", "crash"));
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("not restarted again"), "{message}");
    let (status, health) = server.get("/health");
    assert_eq!(status, 503, "{health}");
    let health: Value = serde_json::from_str(&health).unwrap();
    let reason = health["failed"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("crashed 3 times") && reason.contains("SIGSEGV"),
        "{reason}"
    );
}

/// A plugin stuck in an endless loop in one request (here: every batched prompt) must not take
/// its other requests with it, in either isolation mode.
fn a_stuck_plugin_call_does_not_block_later_requests(mode: Isolation) {
    let layer = ConfigLayer {
        request_timeout_secs: Some(1),
        isolation: IsolationLayer {
            mode: Some(mode),
            stall_timeout_secs: Some(2),
            ..IsolationLayer::default()
        },
        ..ConfigLayer::default()
    };
    let server = example_server_with(json!({"fail_in": "open_sequence", "fault": "hang"}), layer);
    let (status, body) = server.post("/v1/chat/completions", &chat("example", "loop"));
    assert_eq!(status, 503, "{body}");
    assert_eq!(error_of(&body).1, "timeout");

    // Queued behind the stuck call, this would time out too; it is served once the stall
    // timeout has passed (in process: by a new instance on a new scheduler; in a worker
    // process: by a restarted worker).
    let mut answered = None;
    server.wait_for("a request to be served after the stuck one", || {
        let (status, body) = server.post("/tokenize", &json!({"model": "example", "prompt": "ab"}));
        answered = Some(body);
        status == 200
    });
    assert_eq!(answered.unwrap()["count"], 2);
    assert_eq!(server.get("/health").0, 200);
    let stuck = server.metric("pio_stuck_calls_total{plugin=\"example\"}");
    match mode {
        Isolation::InProcess => {
            assert_eq!(stuck, Some(1.0));
            let (_, plugins) = server.get("/admin/plugins");
            assert!(plugins.contains("\"generation\":2"), "{plugins}");
        }
        Isolation::Process => assert_eq!(stuck, None, "the worker's stall timeout frees it"),
    }
}

#[test]
fn a_stuck_in_process_plugin_is_replaced_and_serves_again() {
    a_stuck_plugin_call_does_not_block_later_requests(Isolation::InProcess);
}

#[test]
fn a_stuck_worker_is_killed_and_serves_again() {
    a_stuck_plugin_call_does_not_block_later_requests(Isolation::Process);
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
fn logprobs_echo_and_several_choices_with_the_example_plugin() {
    let server = example_server(ConfigLayer::default());
    // The mirror is certain of each token it writes (log-probability 0).
    let mut request = chat("example", "hello");
    request["n"] = json!(2);
    request["logprobs"] = json!(true);
    request["top_logprobs"] = json!(2);
    let (status, body) = server.post("/v1/chat/completions", &request);
    assert_eq!(status, 200, "{body}");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        assert_eq!(choice["message"]["content"], "olleh");
        let content = choice["logprobs"]["content"].as_array().unwrap();
        let tokens: Vec<&str> = content
            .iter()
            .map(|t| t["token"].as_str().unwrap())
            .collect();
        assert_eq!(tokens, ["o", "l", "l", "e", "h"]);
        assert!(content.iter().all(|t| t["logprob"] == 0.0), "{choice}");
        assert_eq!(content[0]["bytes"], json!([111]));
        assert_eq!(
            content[0]["top_logprobs"],
            json!([{"token": "o", "logprob": 0.0, "bytes": [111]}])
        );
    }
    assert_eq!(body["usage"]["prompt_tokens"], 5, "the prompt counts once");
    assert_eq!(body["usage"]["completion_tokens"], 10);

    // Two prompts, two choices each, echoed and scored: the mirror finds every character
    // equally likely, so each prompt token after the first has log-probability −ln(0x110000).
    let uniform = -(f64::from(0x11_0000u32)).ln();
    let request = json!({"model": "example", "prompt": ["abc", "xy"], "n": 2, "echo": true,
                         "logprobs": 1, "max_tokens": 2});
    let (status, body) = server.post("/v1/completions", &request);
    assert_eq!(status, 200, "{body}");
    let choices = body["choices"].as_array().unwrap();
    let texts: Vec<&str> = choices
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["abccb", "abccb", "xyyx", "xyyx"]);
    let logprobs = &choices[0]["logprobs"];
    assert_eq!(logprobs["tokens"], json!(["a", "b", "c", "c", "b"]));
    assert_eq!(logprobs["text_offset"], json!([0, 1, 2, 3, 4]));
    let values = logprobs["token_logprobs"].as_array().unwrap();
    assert!(values[0].is_null() && logprobs["top_logprobs"][0].is_null());
    for value in &values[1..3] {
        assert!((value.as_f64().unwrap() - uniform).abs() < 1e-4, "{value}");
    }
    assert_eq!(&values[3..], [json!(0.0), json!(0.0)]);
    assert_eq!(logprobs["top_logprobs"][3], json!({"c": 0.0}));
    assert_eq!(body["usage"]["prompt_tokens"], 5);

    // `max_tokens: 0` with echo and logprobs scores the prompt alone.
    let request = json!({"model": "example", "prompt": "abc", "echo": true, "logprobs": 0,
                         "max_tokens": 0});
    let (status, body) = server.post("/v1/completions", &request);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["text"], "abc");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(
        body["choices"][0]["logprobs"]["tokens"],
        json!(["a", "b", "c"])
    );

    // Streamed: every chunk names its choice; each choice's pieces give its whole text, and the
    // log-probabilities arrive with the text they belong to.
    let mut request = chat("example", "abc");
    request["n"] = json!(3);
    request["logprobs"] = json!(true);
    request["stream"] = json!(true);
    let (status, sse) = server.stream("/v1/chat/completions", &request);
    assert_eq!(status, 200);
    let data = sse.collect_all();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let mut texts = vec![String::new(); 3];
    let mut tokens = vec![0usize; 3];
    for chunk in &data[..data.len() - 1] {
        let chunk: Value = serde_json::from_str(chunk).unwrap();
        let choice = &chunk["choices"][0];
        let index = choice["index"].as_u64().unwrap() as usize;
        let text = choice["delta"]["content"].as_str().unwrap_or("");
        texts[index].push_str(text);
        if let Some(content) = choice["logprobs"]["content"].as_array() {
            tokens[index] += content.len();
        }
    }
    assert_eq!(texts, ["cba", "cba", "cba"]);
    assert_eq!(tokens, [3, 3, 3]);

    // lm-eval's remote tokenizer: `/tokenizer_info`, and `/tokenize` without a model when one
    // text plugin is served.
    let (status, info) = server.get("/tokenizer_info");
    assert_eq!(status, 200, "{info}");
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(
        (&info["model"], &info["vocab_size"]),
        (&json!("example"), &json!(0x11_0000))
    );
    assert!(
        info.as_object().unwrap().contains_key("eos_token"),
        "{info}"
    );
    let (status, body) = server.post(
        "/tokenize",
        &json!({"prompt": "ab", "add_special_tokens": false}),
    );
    assert_eq!((status, &body["tokens"]), (200, &json!([97, 98])), "{body}");

    // What the mirror cannot do, and what no request may ask, is a 400 naming the field.
    let mut request = chat("example", "hi");
    request["response_format"] = json!({"type": "json_object"});
    let (status, body) = server.post("/v1/chat/completions", &request);
    assert_eq!((status, error_of(&body).1), (400, "unsupported"), "{body}");
    for (extra, field) in [
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (json!({"n": 17}), "n"),
        (json!({"echo": true}), "echo"),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
            "response_format",
        ),
    ] {
        let mut request = chat("example", "hi");
        request
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, body) = server.post("/v1/chat/completions", &request);
        assert_eq!((status, error_of(&body).2), (400, Some(field)), "{body}");
    }
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
    // The scheme is case-insensitive (RFC 7235); the key is not.
    for authorization in ["bearer sesame", "BEARER sesame", "bEaReR   sesame"] {
        let (status, text) =
            server.post_with_authorization("/v1/chat/completions", body.as_bytes(), authorization);
        assert_eq!(status, 200, "{authorization}: {text}");
    }
    for (authorization, why) in [
        ("bearer SESAME", "invalid API key"),
        ("Basic sesame", "missing API key"),
        ("bearer", "missing API key"),
    ] {
        let (status, text) =
            server.post_with_authorization("/v1/chat/completions", body.as_bytes(), authorization);
        assert_eq!(status, 401, "{authorization}: {text}");
        assert!(text.contains(why), "{authorization}: {text}");
    }

    assert_eq!(server.get_with_key("/health", None).0, 200);
    assert_eq!(server.get_with_key("/metrics", None).0, 401);
    assert_eq!(server.get_with_key("/v1/models", Some("wrong")).0, 401);
    assert_eq!(server.get("/v1/models").0, 200);
}

#[test]
fn detokenize_refuses_ids_outside_the_vocabulary_with_a_400_naming_them() {
    let server = example_server(ConfigLayer::default());
    // At or above the vocabulary size the plugin reports (its stats' `vocab_size`): refused by
    // the server before the plugin sees it.
    let (status, body) = server.post(
        "/detokenize",
        &json!({"model": "example", "tokens": [104, 1_114_112]}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        error_of(&body),
        ("invalid_request_error", "invalid_value", Some("tokens"))
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("1114112") && message.contains("tokens[1]"),
        "{message}"
    );
    // Inside the vocabulary but refused by the plugin (a surrogate code point has no text):
    // the plugin's invalid_input is the client's mistake too.
    let (status, body) = server.post(
        "/detokenize",
        &json!({"model": "example", "tokens": [0xD800]}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_of(&body).2, Some("tokens"));
    assert!(
        body["error"]["message"].as_str().unwrap().contains("55296"),
        "{body}"
    );
    let (status, body) = server.post("/detokenize", &json!({"model": "example", "tokens": [104]}));
    assert_eq!((status, &body["prompt"]), (200, &json!("h")));
    assert!(
        !server.metrics().contains("type=\"server_error\""),
        "no 500 was answered"
    );
}

#[test]
fn unknown_or_templated_roles_and_empty_messages_are_refused() {
    let server = example_server(ConfigLayer::default());
    for role in [
        "wizard",
        "{{ 7*7 }}",
        "{% raw %}",
        "tool",
        "function",
        "User",
        "",
    ] {
        let request = json!({"model": "example", "messages": [
            {"role": "system", "content": "be nice"},
            {"role": role, "content": "hi"},
            {"role": "user", "content": "hello"},
        ]});
        let (status, body) = server.post("/v1/chat/completions", &request);
        assert_eq!(status, 400, "{role:?}: {body}");
        assert_eq!(
            error_of(&body),
            (
                "invalid_request_error",
                "invalid_value",
                Some("messages[1].role")
            ),
            "{role:?}"
        );
    }
    let (status, body) = server.post(
        "/v1/chat/completions",
        &json!({"model": "example", "messages": []}),
    );
    assert_eq!(
        (status, error_of(&body).2),
        (400, Some("messages")),
        "{body}"
    );
    let (status, body) = server.post(
        "/v1/chat/completions",
        &json!({"model": "example", "messages": [{"content": "no role"}]}),
    );
    assert_eq!(
        (status, error_of(&body).0),
        (400, "invalid_request_error"),
        "{body}"
    );
    // `developer` is OpenAI's newer name for system instructions: accepted as `system`.
    let (status, body) = server.post(
        "/v1/chat/completions",
        &json!({"model": "example", "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": "abc"},
            {"role": "assistant", "content": "cba"},
            {"role": "user", "content": "xyz"},
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "zyx");
}

/// Writes `bytes` (ignoring a refusal: the server may close first) and reads until the server
/// closes the connection; `None` if it did not within [`pio_tests::http::WAIT`].
fn send_and_read_to_close(stream: &mut std::net::TcpStream, bytes: &[u8]) -> Option<Vec<u8>> {
    let _ = stream.write_all(bytes);
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => Some(received),
        // Closed with our bytes unread: a reset is a close too.
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Some(received),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(e) => panic!("reading failed: {e}"),
    }
}

#[test]
fn half_sent_requests_and_idle_connections_are_closed() {
    let server = example_server(ConfigLayer {
        header_read_timeout_secs: Some(1),
        idle_timeout_secs: Some(1),
        ..ConfigLayer::default()
    });

    // Half a request line, then nothing: closed after the header timeout, unanswered.
    let mut half = server.connect();
    let received = send_and_read_to_close(&mut half, b"GET /health HT")
        .expect("the server keeps a half-sent request open");
    assert!(
        received.is_empty(),
        "{}",
        String::from_utf8_lossy(&received)
    );

    // Complete headers arriving slowly are closed as well.
    let mut slow = server.connect();
    slow.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    let received = send_and_read_to_close(&mut slow, b"Host: x\r\n");
    assert!(received.is_some(), "the server waits for headers forever");

    // A connection that never sends anything is closed after the idle timeout.
    let mut silent = server.connect();
    assert_eq!(send_and_read_to_close(&mut silent, b""), Some(Vec::new()));

    // A kept-alive connection is answered, then closed once idle.
    let mut kept = server.connect();
    let received = send_and_read_to_close(&mut kept, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("an idle kept-alive connection stays open");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    // A body that stops half-way is answered 408 and the connection closed.
    let mut half_body = server.connect();
    let body = chat("example", "hi").to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..body.len() / 2]
    );
    let received = send_and_read_to_close(&mut half_body, request.as_bytes())
        .expect("the server waits for a half-sent body forever");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");

    // The server still answers.
    assert_eq!(server.get("/health").0, 200);
}

#[test]
fn oversized_headers_are_refused() {
    let server = example_server(ConfigLayer {
        header_limit_bytes: Some(8192),
        ..ConfigLayer::default()
    });
    // Within the limit: served.
    let mut fits = server.connect();
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(4000)
    );
    let received = send_and_read_to_close(&mut fits, request.as_bytes()).unwrap();
    assert!(received.starts_with(b"HTTP/1.1 200"));

    // Over it: 431, or closed unanswered.
    let mut big = server.connect();
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let received =
        send_and_read_to_close(&mut big, request.as_bytes()).expect("the connection is closed");
    let text = String::from_utf8_lossy(&received);
    assert!(
        received.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert_eq!(server.get("/health").0, 200);
}

#[test]
fn requests_longer_than_the_connection_timeouts_are_served() {
    // 20 ms per token, 100 tokens: two seconds with nothing sent before the answer, longer
    // than both timeouts, which apply only while no request is in flight.
    let server = slow_server(ConfigLayer {
        header_read_timeout_secs: Some(1),
        idle_timeout_secs: Some(1),
        ..ConfigLayer::default()
    });
    let prompt = "z".repeat(100);
    let mut request = chat("slow", &prompt);
    request["max_tokens"] = json!(100);
    let (status, body) = server.post("/v1/chat/completions", &request);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], json!(prompt));
    assert_eq!(streamed_text(&server, &request), prompt);
}

/// The admin listing's entries for plugin `name`, by generation.
fn admin_entries(server: &TestServer, name: &str) -> Vec<Value> {
    let (status, text) = server.get("/admin/plugins");
    assert_eq!(status, 200, "{text}");
    let admin: Value = serde_json::from_str(&text).unwrap();
    admin["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == name)
        .cloned()
        .collect()
}

fn entry(entries: &[Value], generation: u64) -> &Value {
    entries
        .iter()
        .find(|p| p["generation"] == generation)
        .unwrap_or_else(|| panic!("no generation {generation} in {entries:?}"))
}

#[test]
fn admin_plugins_tells_serving_retiring_and_failed_instances_apart() {
    let server = slow_server(ConfigLayer::default());
    let library = slow_library();
    // A long stream keeps a batched sequence open on generation 1.
    let mut long = chat("slow", &"z".repeat(500));
    long["stream"] = json!(true);
    long["max_tokens"] = json!(500);
    let (_, mut running) = server.stream("/v1/chat/completions", &long);
    running.next_data().unwrap();

    // The same version again, configured differently: generation 2 serves, generation 1
    // retires once its sequence closes.
    server.install("slow", &library, json!({"dimensions": 32}));
    server.wait_for("generation 2 to serve", || {
        admin_entries(&server, "slow")
            .iter()
            .any(|p| p["generation"] == 2 && p["serving"] == true)
    });
    let entries = admin_entries(&server, "slow");
    let (old, new) = (entry(&entries, 1), entry(&entries, 2));
    assert_eq!(
        (
            &old["role"],
            &old["serving"],
            &old["retiring"],
            &old["open_sequences"]
        ),
        (&json!("retiring"), &json!(false), &json!(true), &json!(1)),
        "{old}"
    );
    assert_eq!(
        (
            &new["role"],
            &new["serving"],
            &new["retiring"],
            &new["state"]
        ),
        (
            &json!("serving"),
            &json!(true),
            &json!(false),
            &json!("active")
        ),
        "{new}"
    );
    let (_, models) = server.get("/v1/models");
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(
        models["data"].as_array().unwrap().len(),
        1,
        "a retiring instance is not offered: {models}"
    );
    assert_eq!(models["data"][0]["generation"], 2);

    // A version whose initialization fails: a failed attempt with its reason, serving nothing.
    server.install("slow", &library, json!({"fail_in": "initialize"}));
    server.wait_for("the failed reload", || {
        server
            .get("/admin/plugins")
            .1
            .contains("\"event\":\"failed\"")
    });
    let entries = admin_entries(&server, "slow");
    let failed = entry(&entries, 3);
    assert_eq!(
        (
            &failed["role"],
            &failed["serving"],
            &failed["retiring"],
            &failed["state"]
        ),
        (
            &json!("failed"),
            &json!(false),
            &json!(false),
            &json!("failed")
        ),
        "{failed}"
    );
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("fault injected in initialize"),
        "{failed}"
    );
    assert_eq!(
        entries.iter().filter(|p| p["serving"] == true).count(),
        1,
        "{entries:?}"
    );
    assert_eq!(entry(&entries, 2)["role"], "serving");

    // Once its sequence closes, the retired instance is gone.
    drop(running);
    server.wait_for("generation 1 to be torn down", || {
        admin_entries(&server, "slow")
            .iter()
            .all(|p| p["generation"] != 1)
    });
    let (status, _) = server.post("/v1/chat/completions", &chat("slow", "ab"));
    assert_eq!(status, 200);
}

/// Checks that the server cuts `model`, a plugin that ignores max_tokens and stop strings.
fn check_limits_enforced(server: &TestServer, model: &str) {
    // The mirror would give all ten characters reversed.
    let mut request = chat(model, "abcdefghij");
    request["max_tokens"] = json!(3);
    let (status, body) = server.post("/v1/chat/completions", &request);
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(
        (&choice["message"]["content"], &choice["finish_reason"]),
        (&json!("jih"), &json!("length")),
        "{model}: {body}"
    );
    assert_eq!(body["usage"]["completion_tokens"], 3, "{body}");

    request["stream"] = json!(true);
    let (status, sse) = server.stream("/v1/chat/completions", &request);
    assert_eq!(status, 200);
    let data = sse.collect_all();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks.iter().map(chunk_text).collect();
    let finish = &chunks.last().unwrap()["choices"][0]["finish_reason"];
    assert_eq!(
        (text.as_str(), finish),
        ("jih", &json!("length")),
        "{model}"
    );

    // A stop string split over two tokens ("f", "e"): cut before it, never sent.
    let mut request = chat(model, "abcdefghij");
    request["stop"] = json!(["fe"]);
    request["stream"] = json!(true);
    let (_, sse) = server.stream("/v1/chat/completions", &request);
    let data = sse.collect_all();
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks.iter().map(chunk_text).collect();
    let finish = &chunks.last().unwrap()["choices"][0]["finish_reason"];
    assert_eq!((text.as_str(), finish), ("jihg", &json!("stop")), "{model}");

    let (status, body) = server.post(
        "/v1/completions",
        &json!({"model": model, "prompt": "abcdefghij", "stop": "gf", "max_tokens": 50}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            &body["choices"][0]["text"],
            &body["choices"][0]["finish_reason"]
        ),
        (&json!("jih"), &json!("stop")),
        "{model}"
    );
}

#[test]
fn the_server_enforces_max_tokens_and_stop_strings_itself() {
    // Batched: the server closes the sequence at the limit.
    let server = example_server_with(json!({"ignore_limits": true}), ConfigLayer::default());
    check_limits_enforced(&server, "example");
    let closed = "pio_sequences_closed_total{plugin=\"example\",reason=\"limit\"}";
    assert_eq!(server.metric(closed), Some(4.0), "{}", server.metrics());
    server.wait_for("no sequence to be open", || {
        server.metric("pio_active_sequences{plugin=\"example\"}") == Some(0.0)
    });

    // One streaming call per sequence: the token callback tells the plugin to stop.
    let library = unbatched_library();
    let server = TestServer::start(
        &[Served {
            folder: "unbatched",
            library: &library,
            config: json!({"ignore_limits": true}),
        }],
        ConfigLayer::default(),
        ActivateOptions::default(),
    );
    check_limits_enforced(&server, "unbatched");
    // The plugin stopped when told: it made no token past the last one the server took
    // (3 + 3, then 6 and 5 up to the end of the stop string), not its ten each time.
    assert_eq!(
        server.metric("pio_generated_tokens_total{plugin=\"unbatched\"}"),
        Some(17.0)
    );
}

#[test]
fn hostile_sampling_values_and_wrong_types_are_refused() {
    let server = example_server(ConfigLayer {
        body_limit_bytes: Some(64 * 1024),
        ..ConfigLayer::default()
    });
    let with = |field: &str, value: Value| {
        let mut request = chat("example", "hi");
        request[field] = value;
        request
    };
    // Out of range: 400 naming the field.
    let ranged = [
        ("temperature", json!(-1)),
        ("temperature", json!(-0.0001)),
        ("temperature", json!(2.5)),
        ("temperature", json!(1e39)),
        ("top_p", json!(0)),
        ("top_p", json!(-0.1)),
        ("top_p", json!(1.5)),
        ("min_p", json!(-0.1)),
        ("min_p", json!(1.01)),
        ("repetition_penalty", json!(0)),
        ("repetition_penalty", json!(-1)),
        ("max_tokens", json!(0)),
        ("max_tokens", json!(1_000_000)),
        ("n", json!(0)),
        ("n", json!(17)),
    ];
    for (field, value) in ranged {
        let (status, body) = server.post("/v1/chat/completions", &with(field, value.clone()));
        assert_eq!(status, 400, "{field} = {value}: {body}");
        assert_eq!(
            error_of(&body),
            ("invalid_request_error", "invalid_value", Some(field)),
            "{field} = {value}"
        );
    }
    // Wrong types (and numbers no field can hold): 400, the body is not what the route takes.
    let mistyped = [
        ("temperature", json!("NaN")),
        ("temperature", json!("hot")),
        ("top_k", json!(-1)),
        ("top_k", json!(1.5)),
        ("top_k", json!("5")),
        ("top_k", json!(1u64 << 40)),
        ("max_tokens", json!(-1)),
        ("max_tokens", json!("10")),
        ("seed", json!(-1)),
        ("stream", json!("yes")),
        ("stop", json!(5)),
        ("stop", json!([1, 2])),
        ("messages", json!("hi")),
        ("messages", json!([{"role": "user", "content": 5}])),
        ("messages", json!([{"role": 1, "content": "x"}])),
        ("model", json!(5)),
        ("priority", json!("high")),
    ];
    for (field, value) in mistyped {
        let (status, body) = server.post("/v1/chat/completions", &with(field, value.clone()));
        assert_eq!(status, 400, "{field} = {value}: {body}");
        assert_eq!(
            error_of(&body).0,
            "invalid_request_error",
            "{field} = {value}"
        );
    }
    // NaN, Infinity and out-of-range numbers are not JSON at all.
    for raw in [
        r#"{"model": "example", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}"#,
        r#"{"model": "example", "messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}"#,
        r#"{"model": "example", "messages": [{"role": "user", "content": "hi"}], "min_p": 1e400}"#,
    ] {
        let (status, text) = server.post_raw("/v1/chat/completions", raw.as_bytes(), None);
        assert_eq!(status, 400, "{raw}: {text}");
        assert!(text.contains("invalid_request_error"), "{text}");
    }
    // Thousands of stop strings, or a very long one: 400 naming the limit.
    let many: Vec<String> = (0..2000).map(|i| format!("s{i}")).collect();
    let (status, body) = server.post("/v1/chat/completions", &with("stop", json!(many)));
    assert_eq!((status, error_of(&body).2), (400, Some("stop")), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 16"),
        "{body}"
    );
    let (status, body) = server.post(
        "/v1/chat/completions",
        &with("stop", json!(["x".repeat(10_000)])),
    );
    assert_eq!((status, error_of(&body).2), (400, Some("stop")), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 256"),
        "{body}"
    );
    // A body over the limit: 413, whether its length is announced or it comes in chunks.
    let huge = chat("example", &"x".repeat(100_000)).to_string();
    let (status, text) = server.post_raw("/v1/chat/completions", huge.as_bytes(), None);
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("body_too_large"), "{text}");
    let mut chunked = server.connect();
    let mut request = String::from(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for piece in huge.as_bytes().chunks(8192) {
        request.push_str(&format!(
            "{:x}\r\n{}\r\n",
            piece.len(),
            std::str::from_utf8(piece).unwrap()
        ));
    }
    request.push_str("0\r\n\r\n");
    let received = send_and_read_to_close(&mut chunked, request.as_bytes()).unwrap();
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");

    // Nothing was a server error, and the server still serves.
    assert!(!server.metrics().contains("type=\"server_error\""));
    assert_eq!(
        server
            .post("/v1/chat/completions", &chat("example", "ok"))
            .0,
        200
    );
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

/// A stop signal's drain: readiness turns 503 "draining" at once while liveness stays 200, a
/// new request is refused with 503 and `Connection: close`, and the stream in flight runs to
/// its end before `drain` returns; with a grace period shorter than a stream, `drain` reports
/// it still running.
#[test]
fn draining_finishes_requests_in_flight_and_takes_no_new_ones() {
    for (grace, tokens, cut) in [
        (Duration::from_secs(60), 40, 0),
        (Duration::from_millis(200), 400, 1),
    ] {
        let server = slow_server(ConfigLayer::default());
        let mut request = chat("slow", &"y".repeat(tokens));
        request["stream"] = json!(true);
        request["max_tokens"] = json!(tokens);
        let (status, mut sse) = server.stream("/v1/chat/completions", &request);
        assert_eq!(status, 200);
        let first = sse.next_data().unwrap();
        std::thread::scope(|scope| {
            let drained = scope.spawn(|| server.drain(grace));
            server.wait_for("readiness to say draining", || {
                server.get("/health/ready").0 == 503
            });
            let (status, body) = server.get("/health");
            assert_eq!(status, 503);
            assert_eq!(
                serde_json::from_str::<Value>(&body).unwrap()["status"],
                "draining"
            );
            assert_eq!(server.get("/health/live").0, 200);
            let (status, body) = server.post("/v1/chat/completions", &chat("slow", "new"));
            assert_eq!((status, error_of(&body).1), (503, "draining"), "{body}");
            if cut == 0 {
                let rest = sse.collect_all();
                assert_eq!(rest.last().map(String::as_str), Some("[DONE]"));
                let text: String = std::iter::once(&first)
                    .chain(&rest[..rest.len() - 1])
                    .map(|d| chunk_text(&serde_json::from_str(d).unwrap()).to_owned())
                    .collect();
                assert_eq!(text, "y".repeat(tokens), "the whole answer arrived");
            }
            assert_eq!(drained.join().unwrap(), cut, "grace {grace:?}");
        });
    }
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

/// A server of the `llama` plugin on SmolLM2 with the settings of `config` (beside the model;
/// untuned unless `config` sets `tuning`, so tests never write the user's tuning cache) and a
/// context of `context_length`.
fn smollm2_server(mut config: Value, context_length: u32) -> TestServer {
    config["model"] = json!(pio_testkit::model(pio_testkit::SMOLLM2));
    if config.get("tuning").is_none() {
        config["tuning"] = json!("off");
    }
    let library = workspace_plugin("pio_plugin_llama");
    TestServer::start(
        &[Served {
            folder: "llama",
            library: &library,
            config,
        }],
        ConfigLayer::default(),
        ActivateOptions {
            context_length,
            ..ActivateOptions::default()
        },
    )
}

/// SmolLM2 split over two logical devices of one adapter answers as on one, and
/// `/admin/plugins` and `/metrics` show each device's layers and what crossed between them.
#[test]
#[ignore = "needs the SmolLM2 model: pio models fetch"]
fn llama_split_over_two_devices_reports_them() {
    let server = smollm2_server(json!({"devices": ["auto", "auto"]}), 256);
    let mut request = chat("llama", "What is the capital of France?");
    request["temperature"] = json!(0);
    request["max_tokens"] = json!(16);
    let (status, body) = server.post("/v1/chat/completions", &request);
    assert_eq!(status, 200, "{body}");
    let answer = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.contains("Paris"), "{answer}");

    let (status, admin) = server.get("/admin/plugins");
    assert_eq!(status, 200);
    let admin: Value = serde_json::from_str(&admin).unwrap();
    let devices = &admin["plugins"][0]["devices"];
    let ranges: Vec<(u64, u64)> = devices["devices"]
        .as_array()
        .unwrap_or_else(|| panic!("no devices in {admin}"))
        .iter()
        .map(|d| {
            (
                d["layers"][0].as_u64().unwrap(),
                d["layers"][1].as_u64().unwrap(),
            )
        })
        .collect();
    // The 30 layers, split where the planner put them (the tied head weighs on the second).
    assert_eq!(ranges.len(), 2, "{devices}");
    assert_eq!(
        (ranges[0].0, ranges[0].1, ranges[1].1),
        (0, ranges[1].0, 30)
    );
    assert!(ranges[0].1 > 15, "{devices}");
    // 576 f32 per token each way.
    assert_eq!(
        devices["transferred_bytes_per_token"].as_f64(),
        Some(4608.0)
    );
    let metrics = server.metrics();
    let layers = format!(
        "pio_plugin_device_layers{{plugin=\"llama\",device=\"1\"}} {}",
        ranges[1].1 - ranges[1].0
    );
    assert!(
        metrics.contains(&layers),
        "{layers} missing from\n{metrics}"
    );
    assert!(
        metrics.contains("# TYPE pio_plugin_transferred_bytes_total counter"),
        "{metrics}"
    );
}

#[test]
#[ignore = "needs the SmolLM2 model: pio models fetch"]
fn llama_chat_end_to_end_with_smollm2() {
    let server = smollm2_server(json!({}), 512);
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
    // An id outside the vocabulary is the client's mistake, named.
    let (status, body) = server.post(
        "/detokenize",
        &json!({"model": "llama", "tokens": [1, 999_999]}),
    );
    assert_eq!((status, error_of(&body).2), (400, Some("tokens")), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("999999"),
        "{body}"
    );
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
