//! Loading real built plugin libraries: the happy path, several plugins and versions side by
//! side, every refusal, panics inside plugins, and invalid state transitions.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use pio_host::{
    ActivateOptions, ChatMessage, ChatRequest, EmbedRequest, ErrorKind, FinishReason,
    GenerateRequest, GenerationParams, HostError, Manifest, PluginManager, PluginState, Prompt,
    SequenceRequest, StreamControl,
};
use pio_tests::{build_variant, pack_into, workspace_plugin, Variant};
use serde_json::json;
use tempfile::TempDir;

struct Fixture {
    dir: TempDir,
    manager: PluginManager,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let manager = PluginManager::new(&dir.path().join("shadow")).unwrap();
        Self { dir, manager }
    }

    fn plugins_dir(&self) -> PathBuf {
        let path = self.dir.path().join("plugins");
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    /// Packs a library into the plugin directory.
    fn pack(&self, library: &Path, folder: &str, config: serde_json::Value) -> (PathBuf, Manifest) {
        pack_into(&self.manager, library, &self.plugins_dir(), folder, config)
    }

    fn example(&self, folder: &str) -> PathBuf {
        self.pack(&workspace_plugin("pio_plugin_example"), folder, json!({}))
            .0
    }
}

fn generate(manager: &PluginManager, plugin: &str, prompt: &str) -> String {
    let request = GenerateRequest {
        prompt: Prompt::Text(prompt.into()),
        params: GenerationParams::greedy(64),
    };
    let mut streamed = String::new();
    let response = manager
        .generate(plugin, &request, |event| {
            streamed.push_str(&event.text);
            StreamControl::Continue
        })
        .unwrap()
        .response;
    assert_eq!(
        streamed,
        response.text.as_str(),
        "streamed text equals the response"
    );
    response.text
}

fn rewrite_manifest(folder: &Path, edit: impl FnOnce(&mut Manifest)) {
    let mut manifest = Manifest::read(folder).unwrap();
    edit(&mut manifest);
    manifest.write(folder).unwrap();
}

#[test]
fn happy_path_covers_the_whole_lifecycle() {
    let f = Fixture::new();
    let folder = f.example("example");
    let id = f.manager.load_plugin_from_path(&folder).unwrap();
    assert_eq!(id, "example@0.1.0");
    assert_eq!(
        f.manager.info("example").unwrap().state,
        PluginState::Loaded
    );

    f.manager
        .activate("example", &ActivateOptions::default())
        .unwrap();
    assert_eq!(f.manager.list_active_plugins().len(), 1);
    assert_eq!(generate(&f.manager, "example", "abc"), "cba");

    let chat = ChatRequest {
        messages: vec![
            ChatMessage::new("system", "be brief"),
            ChatMessage::new("user", "hi!"),
        ],
        params: GenerationParams::greedy(10),
    };
    let reply = f
        .manager
        .chat("example", &chat, |_| StreamControl::Continue)
        .unwrap()
        .response;
    assert_eq!(reply.text.as_str(), "!ih");

    let embedded = f
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
    assert_eq!(embedded.embeddings[0].len(), embedded.dimensions as usize);

    let ids = f.manager.tokenize("example", "hé", false).unwrap();
    assert_eq!(ids, vec![u32::from('h'), u32::from('é')]);
    assert_eq!(f.manager.detokenize("example", &ids).unwrap(), "hé");
    assert_eq!(
        f.manager
            .execute("example", &json!({"text": "xy"}))
            .unwrap()
            .response,
        json!({"text": "yx", "version": "0.1.0"})
    );

    let stats = f.manager.stats("example").unwrap();
    assert_eq!(stats.requests, 3, "generate, chat and embed were counted");
    assert_eq!(
        f.manager.health("example").unwrap().status,
        pio_host::HealthStatus::Ok
    );

    f.manager.deactivate("example").unwrap();
    assert_eq!(
        f.manager.info("example").unwrap().state,
        PluginState::Inactive
    );
    f.manager
        .activate("example", &ActivateOptions::default())
        .unwrap();
    f.manager.unload("example").unwrap();
    assert!(matches!(
        f.manager.info("example"),
        Err(HostError::NotFound(_))
    ));
}

#[test]
fn host_can_cancel_a_generation() {
    let f = Fixture::new();
    let folder = f.example("example");
    f.manager.load_plugin_from_path(&folder).unwrap();
    f.manager
        .activate("example", &ActivateOptions::default())
        .unwrap();
    let request = GenerateRequest {
        prompt: Prompt::Text("abcdefgh".into()),
        params: GenerationParams::greedy(64),
    };
    let mut seen = 0;
    let response = f
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
    assert_eq!(response.finish_reason, FinishReason::Cancelled);
    assert_eq!(response.text.as_str(), "hg");
}

#[test]
fn prompt_longer_than_the_context_is_refused_and_the_plugin_keeps_serving() {
    let f = Fixture::new();
    let folder = f.example("example");
    f.manager.load_plugin_from_path(&folder).unwrap();
    let options = ActivateOptions {
        context_length: 4,
        ..Default::default()
    };
    f.manager.activate("example", &options).unwrap();
    let request = GenerateRequest {
        prompt: Prompt::Text("far too long".into()),
        params: GenerationParams::greedy(8),
    };
    let err = f
        .manager
        .generate("example", &request, |_| StreamControl::Continue)
        .unwrap_err();
    let HostError::Plugin { error, .. } = &err else {
        panic!("unexpected {err}")
    };
    assert_eq!(error.kind, ErrorKind::InvalidInput);
    assert!(error.message.contains("context"), "{err}");
    assert_eq!(generate(&f.manager, "example", "ab"), "ba");
}

#[test]
fn directory_loading_reports_junk_and_loads_the_rest() {
    let f = Fixture::new();
    f.example("good");
    let plugins = f.plugins_dir();
    std::fs::write(plugins.join("junk.txt"), "not a plugin").unwrap();
    std::fs::create_dir_all(plugins.join("empty-folder")).unwrap();
    let report = f.manager.load_plugins_from_directory(&plugins).unwrap();
    assert_eq!(report.loaded, vec!["example@0.1.0".to_owned()]);
    let reasons: Vec<String> = report
        .failures
        .iter()
        .map(|(p, e)| format!("{}: {e}", p.display()))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("junk.txt") && r.contains("not a plugin folder")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("empty-folder") && r.contains("no manifest")),
        "{reasons:?}"
    );
}

#[test]
fn two_plugins_and_two_versions_load_side_by_side() {
    let v2 = build_variant(&Variant {
        id: "v0_2_0",
        version: Some("0.2.0"),
        ..Default::default()
    });
    let echo = build_variant(&Variant {
        id: "echo",
        plugin_name: Some("echo"),
        ..Default::default()
    });
    let f = Fixture::new();
    f.example("example-0.1.0");
    f.pack(&v2, "example-0.2.0", json!({}));
    f.pack(&echo, "echo", json!({}));
    let report = f
        .manager
        .load_plugins_from_directory(&f.plugins_dir())
        .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.loaded.len(), 3);

    for id in ["example@0.1.0", "example@0.2.0", "echo@0.1.0"] {
        f.manager.activate(id, &ActivateOptions::default()).unwrap();
    }
    // Each library reports its own metadata: the copies did not collapse into one.
    let versions: Vec<String> = f
        .manager
        .list_plugins()
        .iter()
        .map(|p| format!("{}", p.metadata.as_ref().unwrap().version))
        .collect();
    assert_eq!(versions, vec!["0.1.0", "0.1.0", "0.2.0"]);
    assert_eq!(
        f.manager.resolve("example").unwrap(),
        "example@0.2.0",
        "bare name picks the newest"
    );
    for id in ["example@0.1.0", "example@0.2.0", "echo@0.1.0"] {
        assert_eq!(generate(&f.manager, id, "123"), "321", "{id}");
    }
    f.manager.unload("example@0.2.0").unwrap();
    assert_eq!(
        generate(&f.manager, "example", "45"),
        "54",
        "0.1.0 still serves"
    );
}

/// A plugin folder for a library `pack` cannot load (a foreign API version, a broken file): the
/// example's manifest with the library's bytes and real digest swapped in, then `edit`ed.
fn pack_foreign(
    f: &Fixture,
    folder: &str,
    bytes: &[u8],
    edit: impl FnOnce(&mut Manifest),
) -> PathBuf {
    let (dir, manifest) = f.pack(&workspace_plugin("pio_plugin_example"), folder, json!({}));
    let library = dir.join(&manifest.library);
    std::fs::write(&library, bytes).unwrap();
    rewrite_manifest(&dir, |m| {
        m.sha256 = pio_host::digest::sha256_file(&library).unwrap();
        edit(m);
    });
    dir
}

#[test]
fn unsatisfied_host_range_is_refused() {
    let f = Fixture::new();
    let folder = f.example("example");
    rewrite_manifest(&folder, |m| m.host = ">=7.0".parse().unwrap());
    let err = f
        .manager
        .load_plugin_from_path(&folder)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "plugin 'example' 0.1.0 needs pio host >=7.0, this host is 0.1.0"
    );
}

#[test]
fn hash_mismatch_is_refused() {
    let f = Fixture::new();
    let (folder, manifest) = f.pack(
        &workspace_plugin("pio_plugin_example"),
        "tampered",
        json!({}),
    );
    let library = folder.join(&manifest.library);
    let mut bytes = std::fs::read(&library).unwrap();
    bytes.push(0);
    std::fs::write(&library, bytes).unwrap();
    let err = f.manager.load_plugin_from_path(&folder).unwrap_err();
    assert!(matches!(err, HostError::HashMismatch { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("tampered/libpio_plugin_example.so") && text.contains(&manifest.sha256),
        "{text}"
    );
}

#[test]
fn library_swapped_between_check_and_load_is_refused() {
    let f = Fixture::new();
    let (folder, manifest) = f.pack(&workspace_plugin("pio_plugin_example"), "swap", json!({}));
    let id = f.manager.register(&folder).unwrap();
    // After the checks passed, an impostor takes the library's place: a loadable library (the
    // same one with a byte appended) that the manifest's digest does not vouch for.
    let library = folder.join(&manifest.library);
    let mut impostor = std::fs::read(&library).unwrap();
    impostor.push(0);
    std::fs::write(&library, impostor).unwrap();

    let err = f.manager.load(&id).unwrap_err();
    assert!(matches!(err, HostError::HashMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&manifest.sha256), "{err}");
    assert!(matches!(
        f.manager.info(&id).unwrap().state,
        PluginState::Failed(_)
    ));
    assert!(
        f.manager.info(&id).unwrap().metadata.is_none(),
        "no library was opened"
    );
}

#[test]
fn manifest_paths_escaping_the_folder_are_refused() {
    let f = Fixture::new();
    let folder = f.example("escape");
    let outside = f.dir.path().join("outside.so");
    std::fs::copy(workspace_plugin("pio_plugin_example"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, folder.join("link.so")).unwrap();
    for path in ["../outside.so", outside.to_str().unwrap(), "link.so"] {
        rewrite_manifest(&folder, |m| m.library = path.to_owned());
        let err = f.manager.register(&folder).unwrap_err();
        assert!(matches!(err, HostError::PathEscape { .. }), "{path}: {err}");
        assert!(err.to_string().contains("plugin 'example'"), "{err}");
    }
}

#[test]
fn random_bytes_and_truncated_libraries_are_refused() {
    let f = Fixture::new();
    let noise: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let real = std::fs::read(workspace_plugin("pio_plugin_example")).unwrap();
    let cases = [
        ("noise", noise),
        ("truncated", real[..real.len() / 2].to_vec()),
        ("header-only", real[..64].to_vec()),
    ];
    for (folder, bytes) in cases {
        let dir = pack_foreign(&f, folder, &bytes, |_| ());
        let err = f.manager.load_plugin_from_path(&dir).unwrap_err();
        assert!(matches!(err, HostError::Library { .. }), "{folder}: {err}");
        assert!(
            err.to_string().contains("not a loadable shared library"),
            "{folder}: {err}"
        );
    }
    // The manager still works.
    let good = f.example("good");
    f.manager.load_plugin_from_path(&good).unwrap();
}

#[test]
fn shared_library_without_a_root_module_is_refused() {
    let library = build_variant(&Variant {
        id: "no_root",
        without_root_module: true,
        ..Default::default()
    });
    let f = Fixture::new();
    let dir = pack_foreign(&f, "no-root", &std::fs::read(library).unwrap(), |_| ());
    let err = f.manager.load_plugin_from_path(&dir).unwrap_err();
    assert!(
        err.to_string()
            .contains("not an Inference-PIO plugin (no root module)"),
        "{err}"
    );
}

#[test]
fn panic_in_initialize_fails_only_that_plugin() {
    let f = Fixture::new();
    let library = workspace_plugin("pio_plugin_example");
    f.pack(&library, "good", json!({}));
    let (bad, _) = f.pack(
        &build_variant(&Variant {
            id: "echo",
            plugin_name: Some("echo"),
            ..Default::default()
        }),
        "bad",
        json!({"fail_in": "initialize"}),
    );
    let report = f
        .manager
        .load_plugins_from_directory(&f.plugins_dir())
        .unwrap();
    assert_eq!(report.loaded, vec!["example@0.1.0".to_owned()]);
    let (path, err) = &report.failures[0];
    assert_eq!(path, &bad);
    let HostError::Plugin {
        error, operation, ..
    } = err
    else {
        panic!("unexpected {err}")
    };
    assert_eq!((*operation, error.kind), ("initialize", ErrorKind::Panic));
    assert!(
        error.message.contains("fault injected in initialize"),
        "{error}"
    );
    assert!(matches!(
        f.manager.info("echo").unwrap().state,
        PluginState::Failed(_)
    ));

    f.manager
        .activate("example", &ActivateOptions::default())
        .unwrap();
    assert_eq!(generate(&f.manager, "example", "ok"), "ko");
}

#[test]
fn panic_in_infer_is_an_error_and_the_host_keeps_serving() {
    let f = Fixture::new();
    let library = workspace_plugin("pio_plugin_example");
    f.pack(&library, "good", json!({}));
    f.pack(
        &build_variant(&Variant {
            id: "echo",
            plugin_name: Some("echo"),
            ..Default::default()
        }),
        "bad",
        json!({"fail_in": "infer"}),
    );
    let report = f
        .manager
        .load_plugins_from_directory(&f.plugins_dir())
        .unwrap();
    assert_eq!(report.loaded.len(), 2);
    for name in ["example", "echo"] {
        f.manager
            .activate(name, &ActivateOptions::default())
            .unwrap();
    }
    let err = f
        .manager
        .execute("echo", &json!({"text": "x"}))
        .unwrap_err();
    let HostError::Plugin { error, .. } = &err else {
        panic!("unexpected {err}")
    };
    assert_eq!(error.kind, ErrorKind::Panic);
    assert!(matches!(
        f.manager.info("echo").unwrap().state,
        PluginState::Failed(_)
    ));
    // The failed plugin refuses work; the other one serves.
    assert!(matches!(
        f.manager.execute("echo", &json!({"text": "x"})),
        Err(HostError::InvalidTransition { .. })
    ));
    assert_eq!(
        f.manager
            .execute("example", &json!({"text": "ab"}))
            .unwrap()
            .response,
        json!({"text": "ba", "version": "0.1.0"})
    );
    // A failed plugin can be loaded again, which makes a fresh instance.
    f.manager.load("echo").unwrap();
    assert_eq!(f.manager.info("echo").unwrap().state, PluginState::Loaded);
}

#[test]
fn invalid_state_transitions_are_errors() {
    let f = Fixture::new();
    let folder = f.example("example");
    f.manager.register(&folder).unwrap();
    let expect_invalid = |result: Result<(), HostError>, what: &str| {
        let err = result.unwrap_err();
        assert!(
            matches!(err, HostError::InvalidTransition { .. }),
            "{what}: {err}"
        );
    };
    expect_invalid(
        f.manager.activate("example", &ActivateOptions::default()),
        "activate discovered",
    );
    expect_invalid(
        f.manager.execute("example", &json!({})).map(drop),
        "execute discovered",
    );
    f.manager.load("example").unwrap();
    expect_invalid(f.manager.load("example"), "load twice");
    expect_invalid(f.manager.deactivate("example"), "deactivate loaded");
    expect_invalid(
        f.manager
            .execute("example", &json!({"text": "a"}))
            .map(drop),
        "execute loaded",
    );
    f.manager
        .activate("example", &ActivateOptions::default())
        .unwrap();
    expect_invalid(
        f.manager.activate("example", &ActivateOptions::default()),
        "activate twice",
    );
    assert!(matches!(
        f.manager.register(&folder),
        Err(HostError::AlreadyRegistered(_))
    ));
}

fn open_sequence(manager: &PluginManager, prompt: &str) -> (String, u64, u64) {
    let request = SequenceRequest::Generate(GenerateRequest {
        prompt: Prompt::Text(prompt.into()),
        params: GenerationParams::greedy(64),
    });
    let opened = manager.open_sequence("example", &request).unwrap();
    (opened.plugin, opened.generation, opened.response.id)
}

/// Rewrites `folder`'s manifest with an empty configuration (no fault) and reloads it as a new
/// generation.
fn reload_with_healthy_config(manager: &PluginManager, folder: &Path) {
    rewrite_manifest(folder, |m| m.config = json!({}));
    manager
        .replace_from_path(folder, &ActivateOptions::default())
        .unwrap();
}

#[test]
fn retired_instance_is_torn_down_after_its_closes_fail() {
    let f = Fixture::new();
    let (folder, _) = f.pack(
        &workspace_plugin("pio_plugin_example"),
        "closing",
        json!({"fail_in": "close_sequence", "fault": "error"}),
    );
    f.manager
        .replace_from_path(&folder, &ActivateOptions::default())
        .unwrap();
    let sequences = [
        open_sequence(&f.manager, "one"),
        open_sequence(&f.manager, "two"),
    ];
    reload_with_healthy_config(&f.manager, &folder);
    assert_eq!(f.manager.list_plugins().len(), 2, "the old instance waits");

    for (plugin, generation, id) in &sequences {
        let err = f
            .manager
            .close_sequence(plugin, *generation, *id)
            .unwrap_err();
        assert!(err.to_string().contains("fault injected"), "{err}");
    }
    let generations: Vec<u64> = f
        .manager
        .list_plugins()
        .iter()
        .map(|p| p.generation)
        .collect();
    assert_eq!(
        generations,
        vec![2],
        "torn down once its last sequence closed"
    );
}

#[test]
fn retired_instance_is_torn_down_after_a_failed_step() {
    let f = Fixture::new();
    let (folder, _) = f.pack(
        &workspace_plugin("pio_plugin_example"),
        "stepping",
        json!({"fail_in": "step_sequences"}),
    );
    f.manager
        .replace_from_path(&folder, &ActivateOptions::default())
        .unwrap();
    let (plugin, generation, id) = open_sequence(&f.manager, "doomed");
    reload_with_healthy_config(&f.manager, &folder);

    let err = f
        .manager
        .step_sequences(&plugin, generation, &[id])
        .unwrap_err();
    assert!(err.to_string().contains("fault injected"), "{err}");
    // The instance failed with the panic: its plugin can no longer close the sequence, but the
    // host counts it closed.
    assert!(f.manager.close_sequence(&plugin, generation, id).is_err());
    let generations: Vec<u64> = f
        .manager
        .list_plugins()
        .iter()
        .map(|p| p.generation)
        .collect();
    assert_eq!(generations, vec![2]);
}

#[test]
fn stuck_plugin_does_not_block_its_replacement() {
    let f = Fixture::new();
    let manager = Arc::new(PluginManager::new(&f.dir.path().join("shadow-stuck")).unwrap());
    let (folder, _) = f.pack(
        &workspace_plugin("pio_plugin_example"),
        "stuck",
        json!({"fail_in": "infer", "fault": "hang"}),
    );
    manager
        .replace_from_path(&folder, &ActivateOptions::default())
        .unwrap();
    let (started, calling) = crossbeam_channel::bounded(1);
    let stuck = manager.clone();
    std::thread::spawn(move || {
        started.send(()).unwrap();
        // Never returns: the plugin loops forever inside the call.
        let _ = stuck.execute("example", &json!({"text": "x"}));
    });
    calling.recv().unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let (done, replaced) = crossbeam_channel::bounded(1);
    let reloading = manager.clone();
    let healthy = folder.clone();
    std::thread::spawn(move || {
        reload_with_healthy_config(&reloading, &healthy);
        done.send(()).unwrap();
    });
    replaced
        .recv_timeout(Duration::from_secs(60))
        .expect("the reload finished while the old instance was stuck in a call");
    let served = manager.execute("example", &json!({"text": "ok"})).unwrap();
    assert_eq!(served.generation, 2);
    assert_eq!(served.response["text"], "ko");
}

/// The minimal kit plugin (`plugins/example-minimal`: the kit's glue around a model of two
/// small functions) loads like any plugin, with its metadata from its `Cargo.toml`, and the
/// kit serves it generation with stop strings and batched sequences that agree with it.
#[test]
fn the_minimal_kit_plugin_loads_and_generates_alone_and_batched() {
    let f = Fixture::new();
    let library = workspace_plugin("pio_plugin_example_minimal");
    let (folder, manifest) = f.pack(&library, "minimal", json!({}));
    assert_eq!(
        (manifest.name.as_str(), manifest.host.to_string().as_str()),
        ("example-minimal", ">=0.1.0, <0.2.0")
    );
    f.manager.load_plugin_from_path(&folder).unwrap();
    let metadata = f.manager.info("example-minimal").unwrap().metadata.unwrap();
    assert_eq!(metadata.author, "Inference-PIO developers");
    assert!(metadata.description.contains("smallest"), "{metadata:?}");
    f.manager
        .activate("example-minimal", &ActivateOptions::default())
        .unwrap();
    assert_eq!(
        generate(&f.manager, "example-minimal", "Hello, kit"),
        "HELLO, KIT"
    );

    let mut params = GenerationParams::greedy(64);
    params.stop = vec!["DE".into()];
    let request = GenerateRequest {
        prompt: Prompt::Text("abcdefg".into()),
        params,
    };
    let stopped = f
        .manager
        .generate("example-minimal", &request, |_| StreamControl::Continue)
        .unwrap()
        .response;
    assert_eq!(
        (stopped.text.as_str(), stopped.finish_reason),
        ("ABC", FinishReason::Stop)
    );

    let opened = f
        .manager
        .open_sequence("example-minimal", &SequenceRequest::Generate(request))
        .unwrap();
    let mut text = String::new();
    loop {
        let step = f
            .manager
            .step_sequences(&opened.plugin, opened.generation, &[opened.response.id])
            .unwrap()
            .remove(0);
        text.push_str(&step.event.text);
        if let Some(finish) = step.finish {
            assert_eq!((text.as_str(), finish), ("ABC", FinishReason::Stop));
            break;
        }
    }
    f.manager
        .close_sequence(&opened.plugin, opened.generation, opened.response.id)
        .unwrap();
    let chat = ChatRequest {
        messages: vec![ChatMessage::new("user", "hi")],
        params: GenerationParams::greedy(8),
    };
    let error = f
        .manager
        .chat("example-minimal", &chat, |_| StreamControl::Continue)
        .unwrap_err();
    assert!(error.to_string().contains("chat"), "{error}");
}
