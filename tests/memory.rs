//! The host's memory manager end to end: a budget too small for a plugin is a clear error; under
//! a budget that fits one plugin of two, requests alternating between them under concurrency all
//! succeed, the swaps are counted, and the resident plugins' reported memory (sampled) never
//! exceeds the budget; `keep_alive` unloads after a request, or refuses to parse (400).
//!
//! The example plugin stands in for a model (its `device_bytes` fixture key makes it report that
//! many device bytes of weights); the last test does the same with the real Llama (SmolLM2) and
//! BERT (MiniLM) plugins and prints the measurements of `docs/benchmarks.md`.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use pio_host::{ActivateOptions, HostError, MemoryPolicy, PluginManager};
use pio_server::ConfigLayer;
use pio_tests::{
    build_variant,
    http::{Served, TestServer},
    pack_into, procfs, workspace_plugin, Variant,
};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

/// A second plugin name from the example's sources (`other`).
fn other_library() -> PathBuf {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY
        .get_or_init(|| {
            build_variant(&Variant {
                id: "other",
                plugin_name: Some("other"),
                ..Default::default()
            })
        })
        .clone()
}

/// The sum of the device bytes the active plugins last reported, from `/admin/plugins`.
fn reported_resident_bytes(server: &TestServer) -> u64 {
    let (status, body) = server.get("/admin/plugins");
    assert_eq!(status, 200, "{body}");
    let listing: Value = serde_json::from_str(&body).unwrap();
    listing["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "active")
        .filter_map(|p| p["memory"]["report"]["device_bytes"].as_u64())
        .sum()
}

/// Samples [`reported_resident_bytes`] and the `pio_resident_device_bytes` gauge on a thread
/// until the returned flag is set; joining gives the largest of each seen.
fn sample_resident(
    server: &Arc<TestServer>,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<(u64, u64, usize)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (server, stopped) = (server.clone(), stop.clone());
    let sampler = std::thread::spawn(move || {
        let (mut reported, mut reserved, mut samples) = (0, 0, 0);
        // At least one sample, however fast the requests are.
        loop {
            reported = reported.max(reported_resident_bytes(&server));
            let gauge = server.metric("pio_resident_device_bytes").unwrap_or(0.0);
            reserved = reserved.max(gauge as u64);
            samples += 1;
            if stopped.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (reported, reserved, samples)
    });
    (stop, sampler)
}

#[test]
fn a_plugin_larger_than_the_budget_is_refused_naming_both_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = PluginManager::new(&tmp.path().join("shadow")).unwrap();
    let (folder, _) = pack_into(
        &manager,
        &workspace_plugin("pio_plugin_example"),
        &tmp.path().join("plugins"),
        "example",
        json!({"device_bytes": 5 * MIB}),
    );
    manager.load_plugin_from_path(&folder).unwrap();
    manager.set_memory_policy(MemoryPolicy {
        budget: Some(MIB),
        ..MemoryPolicy::default()
    });
    let error = manager
        .activate("example", &ActivateOptions::default())
        .unwrap_err();
    assert!(
        matches!(error, HostError::OverBudget { need, budget, .. } if need == 5 * MIB && budget == MIB),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("plugin 'example' needs 5.0 MiB")
            && message.contains("memory budget of 1.0 MiB"),
        "{message}"
    );
    // Nothing was allocated: the plugin is still loaded, and activates under a larger budget.
    manager.set_memory_policy(MemoryPolicy {
        budget: Some(8 * MIB),
        ..MemoryPolicy::default()
    });
    manager
        .activate("example", &ActivateOptions::default())
        .unwrap();
    assert_eq!(manager.resident_bytes(), 5 * MIB);
}

#[test]
fn alternating_requests_swap_two_plugins_within_a_budget_that_fits_one() {
    let (example, other) = (workspace_plugin("pio_plugin_example"), other_library());
    let config = json!({"device_bytes": 6 * MIB});
    let server = Arc::new(TestServer::start(
        &[
            Served {
                folder: "example",
                library: &example,
                config: config.clone(),
            },
            Served {
                folder: "other",
                library: &other,
                config,
            },
        ],
        ConfigLayer {
            memory_budget: Some("10MiB".to_owned()),
            ..ConfigLayer::default()
        },
        ActivateOptions::default(),
    ));
    let (stop, sampler) = sample_resident(&server);
    let ok = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let (server, ok) = (server.clone(), ok.clone());
            std::thread::spawn(move || {
                for i in 0..10 {
                    let model = ["example", "other"][(client + i) % 2];
                    let (status, body) = if i % 3 == 2 {
                        let request = json!({"model": model, "input": "swap me"});
                        server.post("/v1/embeddings", &request)
                    } else {
                        let request = json!({
                            "model": model,
                            "messages": [{"role": "user", "content": "stressed"}],
                            "max_tokens": 8,
                        });
                        server.post("/v1/chat/completions", &request)
                    };
                    assert_eq!(status, 200, "{model}: {body}");
                    ok.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let (reported, reserved, samples) = sampler.join().unwrap();
    assert_eq!(ok.load(Ordering::SeqCst), 40, "every request succeeded");
    assert!(samples >= 2, "sampled {samples} times");
    assert!(reported <= 10 * MIB, "reported {reported} bytes resident");
    assert!(reserved <= 10 * MIB, "reserved {reserved} bytes resident");
    assert!(reported >= 6 * MIB, "a plugin was seen resident");
    let metrics = server.metrics();
    assert!(
        metrics.contains("# TYPE pio_plugin_swaps_total counter"),
        "{metrics}"
    );
    for plugin in ["example", "other"] {
        for direction in ["in", "out"] {
            let series =
                format!("pio_plugin_swaps_total{{plugin=\"{plugin}\",direction=\"{direction}\"}}");
            let swaps = server.metric(&series).unwrap_or(0.0);
            assert!(swaps >= 1.0, "{series} = {swaps}\n{metrics}");
        }
    }
    assert_eq!(
        server.metric("pio_resident_plugins"),
        Some(1.0),
        "{metrics}"
    );
    assert!(metrics.contains(
        "pio_plugin_memory_bytes{plugin=\"example\",category=\"weights\",location=\"device\"} 6291456"
    ) || metrics.contains(
        "pio_plugin_memory_bytes{plugin=\"other\",category=\"weights\",location=\"device\"} 6291456"
    ), "{metrics}");
}

#[test]
fn keep_alive_zero_unloads_after_the_request_and_garbage_is_a_400() {
    let example = workspace_plugin("pio_plugin_example");
    let server = TestServer::start(
        &[Served {
            folder: "example",
            library: &example,
            config: json!({}),
        }],
        ConfigLayer::default(),
        ActivateOptions::default(),
    );
    let chat = |keep_alive: Value| {
        json!({
            "model": "example",
            "messages": [{"role": "user", "content": "stressed"}],
            "keep_alive": keep_alive,
        })
    };
    for bad in [json!("soon"), json!("5 minutes"), json!(true), json!([1])] {
        let (status, body) = server.post("/v1/chat/completions", &chat(bad.clone()));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.to_string().contains("keep_alive"), "{body}");
    }
    let (status, body) = server.post(
        "/v1/embeddings",
        &json!({"model": "example", "input": "x", "keep_alive": "forever"}),
    );
    assert_eq!(status, 400, "{body}");

    let (_, body) = server.get("/admin/plugins");
    let listing: Value = serde_json::from_str(&body).unwrap();
    let memory = &listing["plugins"][0]["memory"];
    assert_eq!(memory["compression"], Value::Null, "{memory}");
    assert!(memory["report"]["categories"].is_array(), "{memory}");
    let swapped_out = || {
        let (_, body) = server.get("/admin/plugins");
        let listing: Value = serde_json::from_str(&body).unwrap();
        listing["plugins"][0]["memory"]["swapped_out"] == json!(true)
    };
    let (status, body) = server.post("/v1/chat/completions", &chat(json!(0)));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "desserts");
    server.wait_for(
        "the plugin to be swapped out after keep_alive 0",
        swapped_out,
    );
    let series = "pio_plugin_swaps_total{plugin=\"example\",direction=\"out\"}";
    assert_eq!(server.metric(series), Some(1.0));
    // Still listed and served: the next request swaps it in, and -1 keeps it loaded.
    let (status, body) = server.get("/v1/models");
    assert!(status == 200 && body.contains("\"example\""), "{body}");
    let (status, body) = server.post("/v1/chat/completions", &chat(json!("-1m")));
    assert_eq!(status, 200, "{body}");
    let series_in = "pio_plugin_swaps_total{plugin=\"example\",direction=\"in\"}";
    assert_eq!(server.metric(series_in), Some(1.0));
    std::thread::sleep(Duration::from_millis(600));
    assert!(!swapped_out());
    assert_eq!(server.metric(series), Some(1.0));
}

/// The memory manager with the real models, and the measurements of `docs/benchmarks.md`
/// (run with `--nocapture` to see them).
#[test]
#[ignore = "needs the SmolLM2 and MiniLM models: pio models fetch"]
fn llama_and_bert_swap_within_a_budget_that_fits_one_of_them() {
    let llama_model = pio_testkit::model(pio_testkit::SMOLLM2);
    let bert_model = pio_testkit::model(pio_testkit::MINILM);
    let (llama, bert) = (
        workspace_plugin("pio_plugin_llama"),
        workspace_plugin("pio_plugin_bert"),
    );
    let activate = ActivateOptions {
        context_length: 512,
        ..ActivateOptions::default()
    };
    // The estimates, from a manager of their own (nothing is activated).
    let tmp = tempfile::tempdir().unwrap();
    let manager = PluginManager::new(&tmp.path().join("shadow")).unwrap();
    let mut estimates = Vec::new();
    for (folder, library, config) in [
        (
            "llama",
            &llama,
            json!({"model": llama_model, "tuning": "off"}),
        ),
        ("bert", &bert, json!({"model": bert_model})),
    ] {
        let (dir, _) = pack_into(&manager, library, &tmp.path().join("p"), folder, config);
        manager.load_plugin_from_path(&dir).unwrap();
        let estimate = manager.estimate_memory(folder, &activate).unwrap();
        estimates.push(estimate.device_bytes());
    }
    let (big, small) = (
        estimates[0].max(estimates[1]),
        estimates[0].min(estimates[1]),
    );
    let budget = big + small / 2;
    println!(
        "estimates: llama {} bytes, bert {} bytes; budget {budget} bytes",
        estimates[0], estimates[1]
    );
    let server = Arc::new(TestServer::start(
        &[
            Served {
                folder: "llama",
                library: &llama,
                config: json!({"model": llama_model, "tuning": "off"}),
            },
            Served {
                folder: "bert",
                library: &bert,
                config: json!({"model": bert_model}),
            },
        ],
        ConfigLayer {
            memory_budget: Some(budget.to_string()),
            request_timeout_secs: Some(1800),
            ..ConfigLayer::default()
        },
        activate,
    ));
    let (stop, sampler) = sample_resident(&server);
    let rss_peak = Arc::new(AtomicU64::new(0));
    let rss_sampling = {
        let (rss_peak, stop) = (rss_peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let rss = procfs::status_kib("self", "VmRSS") * 1024;
                rss_peak.fetch_max(rss, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let started = Instant::now();
    let (ok, total) = (Arc::new(AtomicU64::new(0)), 12);
    let clients: Vec<_> = (0..3)
        .map(|client| {
            let (server, ok) = (server.clone(), ok.clone());
            std::thread::spawn(move || {
                for i in 0..4 {
                    let (status, body) = if (client + i) % 2 == 0 {
                        let request = json!({
                            "model": "llama",
                            "messages": [{"role": "user", "content": "Name a colour."}],
                            "max_tokens": 6,
                            "temperature": 0,
                        });
                        server.post("/v1/chat/completions", &request)
                    } else {
                        let request = json!({"model": "bert", "input": ["a cat", "a dog"]});
                        server.post("/v1/embeddings", &request)
                    };
                    assert_eq!(status, 200, "{body}");
                    ok.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let (reported, reserved, samples) = sampler.join().unwrap();
    rss_sampling.join().unwrap();
    let ok = ok.load(Ordering::SeqCst);
    let metric = |series: &str| server.metric(series).unwrap_or(0.0);
    let swaps = |plugin: &str, direction: &str| {
        metric(&format!(
            "pio_plugin_swaps_total{{plugin=\"{plugin}\",direction=\"{direction}\"}}"
        ))
    };
    let swap_in_seconds = metric("pio_plugin_swap_in_seconds_total{plugin=\"llama\"}")
        + metric("pio_plugin_swap_in_seconds_total{plugin=\"bert\"}");
    let swaps_in = swaps("llama", "in") + swaps("bert", "in");
    let swaps_out = swaps("llama", "out") + swaps("bert", "out");
    println!(
        "requests ok {ok}/{total} in {:.1} s; swaps in {swaps_in} (llama {}, bert {}), out \
         {swaps_out}; mean swap-in {:.3} s; peak resident reported {reported} bytes, reserved \
         {reserved} bytes ({samples} samples); peak process RSS {} bytes",
        started.elapsed().as_secs_f64(),
        swaps("llama", "in"),
        swaps("bert", "in"),
        swap_in_seconds / swaps_in.max(1.0),
        rss_peak.load(Ordering::SeqCst)
    );
    println!("{}", server.get("/admin/plugins").1);
    assert_eq!(ok, total);
    assert!(swaps_in >= 1.0 && swaps_out >= 1.0);
    assert!(reported <= budget, "{reported} > {budget}");
    assert!(reserved <= budget, "{reserved} > {budget}");
}

#[test]
#[ignore = "needs the MiniLM model: pio models fetch"]
fn compressing_a_plugin_over_http_reports_the_change_and_serves_it() {
    let bert = workspace_plugin("pio_plugin_bert");
    let server = TestServer::start(
        &[Served {
            folder: "bert",
            library: &bert,
            config: json!({"model": pio_testkit::model(pio_testkit::MINILM)}),
        }],
        ConfigLayer::default(),
        ActivateOptions::default(),
    );
    let embed = || {
        let (status, body) = server.post(
            "/v1/embeddings",
            &json!({"model": "bert", "input": "A man is eating food."}),
        );
        assert_eq!(status, 200, "{body}");
        body["data"][0]["embedding"].as_array().unwrap().clone()
    };
    let before = embed();
    let (status, body) = server.post(
        "/admin/plugins/bert/compress",
        &json!({"scope": "weights", "format": "q8_0"}),
    );
    assert_eq!(status, 200, "{body}");
    let compression = &body["compression"];
    println!("bert q8_0 over HTTP: {compression}");
    assert_eq!(compression["method"], "q8_0 weights");
    let weights = &compression["categories"][0];
    assert_eq!(weights["category"], "weights");
    assert!(weights["bytes_after"].as_u64() < weights["bytes_before"].as_u64());
    let quality = &compression["quality"];
    assert_eq!(quality["before"], 1.0);
    let after = quality["after"].as_f64().unwrap();
    assert!((0.99..1.0).contains(&after), "{quality}");
    // The plugin serves with the new weights: close to, but not exactly, the f32 embedding.
    let now = embed();
    assert_ne!(now, before);
    let dot: f64 = now
        .iter()
        .zip(&before)
        .map(|(a, b)| a.as_f64().unwrap() * b.as_f64().unwrap())
        .sum();
    assert!(dot > 0.99, "cosine of unit vectors {dot}");

    // What cannot be done is a 400 naming what can.
    for (body, says) in [
        (
            json!({"scope": "kv_cache", "format": "f16"}),
            "supported formats: f32, f16, q8_0",
        ),
        (
            json!({"scope": "weights", "format": "q4_0"}),
            "supported formats: f32, f16, q8_0",
        ),
        (
            json!({"scope": "everything", "format": "q8_0"}),
            "unknown scope 'everything'",
        ),
    ] {
        let (status, answer) = server.post("/admin/plugins/bert/compress", &body);
        assert_eq!(status, 400, "{answer}");
        assert!(answer.to_string().contains(says), "{answer}");
    }
    let (status, _) = server.post(
        "/admin/plugins/nothing/compress",
        &json!({"scope": "weights", "format": "q8_0"}),
    );
    assert_eq!(status, 404);
}
