//! Out-of-process plugins: every call works through a worker process, and a plugin that
//! crashes, aborts, exits, overflows its stack, exhausts its memory limit or hangs takes down
//! only its worker and the requests running on it.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use pio_host::{
    isolation::{Isolation, IsolationConfig, WorkerError, WorkerSettings},
    ActivateOptions, ChatMessage, ChatRequest, EmbedRequest, GenerateRequest, GenerationParams,
    HealthStatus, HostError, PluginManager, PluginState, Prompt, SequenceRequest, StreamControl,
};
use pio_tests::{build_variant, pack_into, procfs::mapped_files_under, workspace_plugin, Variant};
use serde_json::json;
use tempfile::TempDir;

struct Site {
    dir: TempDir,
    manager: PluginManager,
}

impl Site {
    fn new(settings: WorkerSettings) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut manager = PluginManager::new(&dir.path().join("shadow")).unwrap();
        manager.set_isolation(IsolationConfig {
            default: Isolation::Process,
            per_plugin: BTreeMap::new(),
            worker: settings,
        });
        Self { dir, manager }
    }

    /// Packs the example plugin into `folder` with `config` (packing reads the library's
    /// metadata in this process).
    fn pack_example(&self, folder: &str, config: serde_json::Value) -> PathBuf {
        let plugins = self.dir.path().join("plugins");
        let library = workspace_plugin("pio_plugin_example");
        pack_into(&self.manager, &library, &plugins, folder, config).0
    }

    /// Packs the example plugin into `folder` with `config` and activates it.
    fn example(&self, folder: &str, config: serde_json::Value) {
        let folder = self.pack_example(folder, config);
        let id = self.manager.load_plugin_from_path(&folder).unwrap();
        self.manager
            .activate(&id, &ActivateOptions::default())
            .unwrap();
    }

    fn generate(&self, prompt: &str) -> Result<String, HostError> {
        let request = GenerateRequest {
            prompt: Prompt::Text(prompt.into()),
            params: GenerationParams::greedy(64),
        };
        let mut streamed = String::new();
        let response = self.manager.generate("example", &request, |event| {
            streamed.push_str(&event.text);
            StreamControl::Continue
        })?;
        assert_eq!(streamed, response.response.text.as_str());
        Ok(streamed)
    }

    fn infer(&self, text: &str) -> Result<String, HostError> {
        let served = self.manager.execute("example", &json!({ "text": text }))?;
        Ok(served.response["text"].as_str().unwrap().to_owned())
    }
}

fn process_alive(pid: u32) -> bool {
    // A zombie is not alive: its worker has ended and only waits to be reaped.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.split_whitespace().nth(2).is_none_or(|s| s != "Z"))
}

fn worker_pid(site: &Site) -> u32 {
    let stats = site.manager.stats("example").unwrap();
    let details: serde_json::Value = serde_json::from_str(&stats.details_json).unwrap();
    details["pid"]
        .as_u64()
        .expect("the example reports its pid") as u32
}

#[test]
fn every_call_works_out_of_process() {
    let site = Site::new(WorkerSettings::default());
    let folder = site.pack_example("example", json!({}));
    let mapped_before = mapped_files_under(site.dir.path());
    let id = site.manager.load_plugin_from_path(&folder).unwrap();
    site.manager
        .activate(&id, &ActivateOptions::default())
        .unwrap();
    assert_eq!(site.generate("abc").unwrap(), "cba");

    // Cancellation reaches the worker at the next token.
    let request = GenerateRequest {
        prompt: Prompt::Text("abcdef".into()),
        params: GenerationParams::greedy(64),
    };
    let mut seen = 0;
    let response = site
        .manager
        .generate("example", &request, |_| {
            seen += 1;
            if seen == 2 {
                StreamControl::Stop
            } else {
                StreamControl::Continue
            }
        })
        .unwrap()
        .response;
    assert_eq!(response.text.as_str(), "fe");

    let chat = ChatRequest {
        messages: vec![ChatMessage::new("user", "hi!")],
        params: GenerationParams::greedy(10),
    };
    let reply = site
        .manager
        .chat("example", &chat, |_| StreamControl::Continue)
        .unwrap();
    assert_eq!(reply.response.text.as_str(), "!ih");
    let embedded = site
        .manager
        .embed(
            "example",
            &EmbedRequest {
                inputs: vec!["a b".into(), "c".into()],
            },
        )
        .unwrap()
        .response;
    assert_eq!(embedded.embeddings.len(), 2);
    let ids = site.manager.tokenize("example", "hé", false).unwrap();
    assert_eq!(site.manager.detokenize("example", &ids).unwrap(), "hé");
    assert_eq!(site.infer("xy").unwrap(), "yx");

    // Batched sequences.
    let opened = site
        .manager
        .open_sequence(
            "example",
            &SequenceRequest::Generate(GenerateRequest {
                prompt: Prompt::Text("ab".into()),
                params: GenerationParams::greedy(8),
            }),
        )
        .unwrap();
    let mut text = String::new();
    loop {
        let step = site
            .manager
            .step_sequences(&opened.plugin, opened.generation, &[opened.response.id])
            .unwrap()
            .remove(0);
        text.push_str(&step.event.text);
        if step.finish.is_some() {
            break;
        }
    }
    assert_eq!(text, "ba");
    site.manager
        .close_sequence(&opened.plugin, opened.generation, opened.response.id)
        .unwrap();

    let stats = site.manager.stats("example").unwrap();
    assert_eq!(
        stats.requests, 5,
        "two generations (one cancelled), chat, embed and the closed sequence"
    );
    assert_ne!(worker_pid(&site), std::process::id(), "it runs in a worker");
    assert_eq!(
        site.manager.health("example").unwrap().status,
        HealthStatus::Ok
    );
    assert_eq!(
        mapped_files_under(site.dir.path()),
        mapped_before,
        "the host maps no library of the plugin it serves"
    );
}

#[test]
fn each_kind_of_crash_fails_only_its_request_and_the_worker_restarts() {
    let cases = [
        ("segfault", "killed by signal 11 (SIGSEGV)"),
        ("abort", "killed by signal 6 (SIGABRT)"),
        ("exit", "exited with status 3"),
        ("stack_overflow", "(SIG"),
        ("allocation", "killed by signal"),
    ];
    let settings = WorkerSettings {
        // The 30 GiB allocation fails against this limit (the allocator then aborts).
        memory_limit_bytes: Some(4 << 30),
        max_crashes: 10,
        restart_backoff: Duration::from_millis(10),
        ..WorkerSettings::default()
    };
    for (fault, expected) in cases {
        let site = Site::new(settings.clone());
        site.example("example", json!({"fail_in": "generate", "fault": fault}));
        let err = site.generate("abc").unwrap_err();
        assert!(
            matches!(
                &err,
                HostError::Worker {
                    error: WorkerError::Crashed(_),
                    ..
                }
            ),
            "{fault}: {err}"
        );
        let message = err.to_string();
        assert!(
            message.starts_with("plugin 'example' crashed: ") && message.contains(expected),
            "{fault}: {message}"
        );
        // The next request restarts the worker, which serves what does not crash.
        assert_eq!(site.infer("ok").unwrap(), "ko", "{fault}");
        assert_eq!(
            site.manager.info("example").unwrap().state,
            PluginState::Active
        );
    }
}

#[test]
fn a_crash_leaves_the_other_plugins_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut manager = PluginManager::new(&dir.path().join("shadow")).unwrap();
    // The crashing plugin in a worker, a bystander in this process: modes mix per plugin.
    let per_plugin = BTreeMap::from([("bystander".to_owned(), Isolation::InProcess)]);
    manager.set_isolation(IsolationConfig {
        default: Isolation::Process,
        per_plugin,
        worker: WorkerSettings::default(),
    });
    let bystander = build_variant(&Variant {
        id: "bystander",
        plugin_name: Some("bystander"),
        ..Variant::default()
    });
    let plugins = dir.path().join("plugins");
    for (library, folder, config) in [
        (
            workspace_plugin("pio_plugin_example"),
            "crasher",
            json!({"fail_in": "generate", "fault": "segfault"}),
        ),
        (bystander, "bystander", json!({})),
    ] {
        let (folder, _) = pack_into(&manager, &library, &plugins, folder, config);
        let id = manager.load_plugin_from_path(&folder).unwrap();
        manager.activate(&id, &ActivateOptions::default()).unwrap();
    }
    assert_eq!(manager.isolation_of("example"), Isolation::Process);
    assert_eq!(manager.isolation_of("bystander"), Isolation::InProcess);

    let request = GenerateRequest {
        prompt: Prompt::Text("abc".into()),
        params: GenerationParams::greedy(8),
    };
    let err = manager
        .generate("example", &request, |_| StreamControl::Continue)
        .unwrap_err();
    assert!(err.to_string().contains("SIGSEGV"), "{err}");
    let served = manager
        .generate("bystander", &request, |_| StreamControl::Continue)
        .unwrap();
    assert_eq!(served.response.text.as_str(), "cba");
}

#[test]
fn repeated_crashes_mark_the_plugin_failed_with_the_reason() {
    let site = Site::new(WorkerSettings {
        max_crashes: 2,
        restart_backoff: Duration::from_millis(10),
        ..WorkerSettings::default()
    });
    site.example("example", json!({"fail_in": "generate", "fault": "abort"}));
    for _ in 0..2 {
        assert!(site.generate("abc").is_err());
    }
    let err = site.generate("abc").unwrap_err();
    assert!(
        matches!(
            &err,
            HostError::Worker {
                error: WorkerError::GaveUp { crashes: 2, .. },
                ..
            }
        ),
        "{err}"
    );
    let PluginState::Failed(reason) = site.manager.info("example").unwrap().state else {
        panic!("the plugin is marked failed");
    };
    assert!(
        reason.contains("crashed 2 times") && reason.contains("SIGABRT"),
        "{reason}"
    );
}

#[test]
fn a_hung_worker_is_killed_and_replaced() {
    let site = Site::new(WorkerSettings {
        stall_timeout: Duration::from_secs(1),
        restart_backoff: Duration::from_millis(10),
        ..WorkerSettings::default()
    });
    site.example("example", json!({"fail_in": "generate", "fault": "hang"}));
    let pid = worker_pid(&site);
    let err = site.generate("abc").unwrap_err();
    assert!(
        matches!(
            &err,
            HostError::Worker {
                error: WorkerError::Stalled(_),
                ..
            }
        ),
        "{err}"
    );
    assert!(!process_alive(pid), "the hung worker was killed");
    assert_eq!(site.infer("ok").unwrap(), "ko");
    assert_ne!(worker_pid(&site), pid);
}

#[test]
fn a_reload_ends_the_old_worker() {
    let site = Site::new(WorkerSettings::default());
    site.example("example", json!({}));
    let old = worker_pid(&site);
    let folder = site.dir.path().join("plugins/example");
    site.manager
        .replace_from_path(&folder, &ActivateOptions::default())
        .unwrap();
    assert_eq!(site.infer("ab").unwrap(), "ba");
    let new = worker_pid(&site);
    assert_ne!(old, new);
    assert!(!process_alive(old), "the replaced worker has ended");
}

#[test]
fn the_worker_checks_the_library_it_loads() {
    let site = Site::new(WorkerSettings::default());
    let plugins = site.dir.path().join("plugins");
    let library = workspace_plugin("pio_plugin_example");
    let (folder, manifest) = pack_into(&site.manager, &library, &plugins, "swap", json!({}));
    let id = site.manager.register(&folder).unwrap();
    let path = folder.join(&manifest.library);
    let mut impostor = std::fs::read(&path).unwrap();
    impostor.push(0);
    std::fs::write(&path, impostor).unwrap();
    let err = site.manager.load(&id).unwrap_err();
    assert!(matches!(err, HostError::WorkerRefused { .. }), "{err}");
    assert!(err.to_string().contains(&manifest.sha256), "{err}");
}
