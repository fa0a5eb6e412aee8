//! The bad-input suite: each hostile or broken input ends in an error that names the problem,
//! and the host goes on serving a good plugin afterwards.
//!
//! Cases covered elsewhere, by input: tampered, swapped, truncated, random and non-plugin
//! libraries, path escapes and version mismatches (`plugins.rs`); crashing, aborting, exiting,
//! hung and memory-exhausting plugins (`isolation.rs`); malformed manifests and folders the
//! watcher refuses (`reload.rs`); malformed HTTP bodies and out-of-range request values
//! (`http.rs`); corrupt GGUF files at the reader (`plugins/gguf/tests/corrupt.rs`).

use std::path::{Path, PathBuf};

use pio_host::{
    ActivateOptions, ChatMessage, ChatRequest, ErrorKind, GenerateRequest, GenerationParams,
    HostError, PluginManager, Prompt, SequenceRequest, StreamControl,
};
use pio_tests::{build_variant, pack_into, workspace_plugin, Variant};
use serde_json::json;

/// A manager serving a good plugin, `bystander`, beside whatever a case loads.
struct Host {
    dir: tempfile::TempDir,
    manager: PluginManager,
}

impl Host {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let manager = PluginManager::new(&dir.path().join("shadow")).unwrap();
        let bystander = build_variant(&Variant {
            id: "bystander",
            plugin_name: Some("bystander"),
            ..Variant::default()
        });
        let host = Self { dir, manager };
        let folder = host.pack(&bystander, "bystander", json!({}));
        host.manager
            .replace_from_path(&folder, &ActivateOptions::default())
            .unwrap();
        host
    }

    fn pack(&self, library: &Path, folder: &str, config: serde_json::Value) -> PathBuf {
        let plugins = self.dir.path().join("plugins");
        pack_into(&self.manager, library, &plugins, folder, config).0
    }

    /// The good plugin still answers.
    fn assert_still_serving(&self, case: &str) {
        let served = self
            .manager
            .execute("bystander", &json!({"text": "ok"}))
            .unwrap_or_else(|e| panic!("{case}: the good plugin stopped serving: {e}"));
        assert_eq!(served.response["text"], "ko", "{case}");
    }
}

fn greedy(prompt: &str) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Text(prompt.into()),
        params: GenerationParams::greedy(8),
    }
}

/// Runs the call named `call` on the `example` plugin.
fn exercise(manager: &PluginManager, call: &str) -> Result<(), HostError> {
    let go_on = |_: &_| StreamControl::Continue;
    match call {
        "infer" => manager.execute("example", &json!({"text": "x"})).map(drop),
        "generate" => manager.generate("example", &greedy("abc"), go_on).map(drop),
        "chat" => {
            let request = ChatRequest {
                messages: vec![ChatMessage::new("user", "hi")],
                params: GenerationParams::greedy(8),
            };
            manager.chat("example", &request, go_on).map(drop)
        }
        "open_sequence" | "step_sequences" | "close_sequence" => {
            let opened =
                manager.open_sequence("example", &SequenceRequest::Generate(greedy("ab")))?;
            let (plugin, generation, id) = (&opened.plugin, opened.generation, opened.response.id);
            manager.step_sequences(plugin, generation, &[id])?;
            manager.close_sequence(plugin, generation, id)
        }
        other => panic!("no such call: {other}"),
    }
}

#[test]
fn a_panic_in_each_plugin_call_is_a_named_error() {
    let host = Host::new();
    let example = workspace_plugin("pio_plugin_example");
    for call in [
        "initialize",
        "activate",
        "infer",
        "generate",
        "chat",
        "open_sequence",
        "step_sequences",
        "close_sequence",
    ] {
        let folder = host.pack(&example, call, json!({"fail_in": call}));
        let result = host
            .manager
            .replace_from_path(&folder, &ActivateOptions::default())
            .and_then(|_| exercise(&host.manager, call));
        let err = result.expect_err(call);
        match &err {
            HostError::Plugin { error, .. } => {
                assert_eq!(error.kind, ErrorKind::Panic, "{call}: {err}");
                assert!(
                    error.message.contains(&format!("fault injected in {call}")),
                    "{call}: {err}"
                );
            }
            other => panic!("{call}: expected the plugin's panic as an error, got {other}"),
        }
        host.assert_still_serving(call);
    }
}

#[test]
fn broken_model_files_are_named_errors() {
    let host = Host::new();
    let llama = workspace_plugin("pio_plugin_llama");
    let models = host.dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();

    let mut huge_counts = b"GGUF".to_vec();
    huge_counts.extend_from_slice(&3u32.to_le_bytes());
    huge_counts.extend_from_slice(&(1u64 << 60).to_le_bytes()); // tensors
    huge_counts.extend_from_slice(&(1u64 << 60).to_le_bytes()); // metadata entries
    let mut truncated = b"GGUF".to_vec();
    truncated.extend_from_slice(&3u32.to_le_bytes());
    truncated.extend_from_slice(&1u64.to_le_bytes());
    truncated.extend_from_slice(&1u64.to_le_bytes());
    truncated.extend_from_slice(&20u64.to_le_bytes()); // a key of 20 bytes, then nothing
    truncated.extend_from_slice(b"general.arch");
    let cases: [(&str, Vec<u8>); 3] = [
        ("huge-counts", huge_counts),
        ("truncated", truncated),
        ("not-gguf", b"PK\x03\x04 a zip file, not a model".to_vec()),
    ];
    for (case, bytes) in cases {
        let model = models.join(format!("{case}.gguf"));
        std::fs::write(&model, bytes).unwrap();
        let folder = host.pack(&llama, case, json!({ "model": model }));
        // The plugin reads its model when it is activated.
        let err = host
            .manager
            .replace_from_path(&folder, &ActivateOptions::default())
            .expect_err(case);
        let message = err.to_string();
        assert!(
            message.contains(&format!("{case}.gguf")),
            "{case}: the error names the file: {message}"
        );
        host.manager.unload_folder(&folder);
        host.assert_still_serving(case);
    }
}
