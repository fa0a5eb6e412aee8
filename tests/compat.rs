//! API compatibility: plugins built against the plugin API as released (0.1.0, frozen in
//! `tests/fixtures/api-0.1.0`, and 0.1.1 in `tests/fixtures/api-0.1.1`) load and serve in
//! today's host, which has appended calls since (loaded through the host's frozen layout of
//! their version; the appended calls answer unsupported); so do plugins built against the
//! next compatible release (one appended root-module function); plugins of the next
//! incompatible release are refused — from the manifest before any code runs, and by the
//! library's own version check when a manifest lies about it.

use std::path::{Path, PathBuf};

use pio_host::{
    ActivateOptions, GenerateRequest, GenerationParams, HostError, Manifest, PluginManager,
    PluginState, Prompt, StreamControl,
};
use pio_tests::{
    frozen_api::{frozen_api_plugin, ApiRelease},
    pack_into,
};
use serde_json::json;
use tempfile::TempDir;

struct Host {
    dir: TempDir,
    manager: PluginManager,
}

impl Host {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let manager = PluginManager::new(&dir.path().join("shadow")).unwrap();
        Self { dir, manager }
    }

    fn pack(&self, library: &Path, folder: &str) -> (PathBuf, Manifest) {
        pack_into(
            &self.manager,
            library,
            &self.dir.path().join("plugins"),
            folder,
            json!({}),
        )
    }

    /// Loads, activates and asks the `compat` plugin to answer `prompt`.
    fn serve(&self, folder: &Path, prompt: &str) -> String {
        self.manager.load_plugin_from_path(folder).unwrap();
        self.manager
            .activate("compat", &ActivateOptions::default())
            .unwrap();
        let request = GenerateRequest {
            prompt: Prompt::Text(prompt.into()),
            params: GenerationParams::greedy(16),
        };
        let mut streamed = String::new();
        let served = self
            .manager
            .generate("compat", &request, |event| {
                streamed.push_str(&event.text);
                StreamControl::Continue
            })
            .unwrap();
        assert_eq!(streamed, served.response.text);
        streamed
    }

    /// A folder holding the library of the next incompatible release under a manifest that
    /// says `plugin_api` (packing cannot load that library, so the manifest of the released
    /// build is reused with the other library's bytes and digest).
    fn next_major_folder(&self, folder: &str, plugin_api: &str) -> PathBuf {
        let (dir, mut manifest) = self.pack(&frozen_api_plugin(ApiRelease::Released), folder);
        let library = dir.join(&manifest.library);
        std::fs::copy(frozen_api_plugin(ApiRelease::NextMajor), &library).unwrap();
        manifest.sha256 = pio_host::digest::sha256_file(&library).unwrap();
        manifest.plugin_api = plugin_api.parse().unwrap();
        manifest.write(&dir).unwrap();
        dir
    }
}

#[test]
fn a_plugin_built_against_the_released_api_loads_and_serves() {
    let host = Host::new();
    let (folder, manifest) = host.pack(&frozen_api_plugin(ApiRelease::Released), "released");
    assert_eq!(manifest.plugin_api.to_string(), "0.1.0");
    assert_eq!(host.serve(&folder, "stressed"), "desserts");
    // A call appended after 0.1.0 is answered by the host, naming the plugin's API version.
    let error = host
        .manager
        .score("compat", &Prompt::Text("ab".into()), 0)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("built against pio-plugin-api 0.1.0, which lacks them"),
        "{error}"
    );
}

#[test]
fn a_plugin_built_against_api_0_1_1_serves_its_calls_and_lacks_only_the_memory_calls() {
    let host = Host::new();
    let (folder, manifest) = host.pack(&frozen_api_plugin(ApiRelease::V0_1_1), "v0.1.1");
    assert_eq!(manifest.plugin_api.to_string(), "0.1.1");
    // Under a memory budget it still activates: it estimates nothing, so it counts for its
    // reports alone (none).
    host.manager.set_memory_policy(pio_host::MemoryPolicy {
        budget: Some(1 << 20),
        ..pio_host::MemoryPolicy::default()
    });
    assert_eq!(host.serve(&folder, "stressed"), "desserts");
    // A call 0.1.1 appended reaches the plugin.
    let scored = host
        .manager
        .score("compat", &Prompt::Text("ab".into()), 0)
        .unwrap()
        .response;
    assert_eq!(scored.len(), 2);
    assert!(scored[0].chosen.logprob.is_nan() && scored[1].chosen.logprob == 0.0);
    // The calls 0.1.2 appended are answered by the host, naming the plugin's API version.
    let error = host
        .manager
        .memory_report("compat")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("memory reports: the plugin was built against pio-plugin-api 0.1.1"),
        "{error}"
    );
    let error = host
        .manager
        .force_memory_cleanup("compat")
        .unwrap_err()
        .to_string();
    assert!(error.contains("pio-plugin-api 0.1.1"), "{error}");
    assert_eq!(host.manager.info("compat").unwrap().estimate_bytes, None);
}

#[test]
fn a_plugin_built_against_the_next_minor_api_loads_and_serves() {
    let host = Host::new();
    let (folder, manifest) = host.pack(&frozen_api_plugin(ApiRelease::NextMinor), "next-minor");
    assert_eq!(manifest.plugin_api.to_string(), "0.1.1");
    assert_eq!(host.serve(&folder, "drawer"), "reward");
}

#[test]
fn a_plugin_of_the_next_major_api_is_refused_before_loading() {
    let host = Host::new();
    let folder = host.next_major_folder("next-major", "0.2.0");
    let error = host
        .manager
        .load_plugin_from_path(&folder)
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("plugin 'compat' 0.1.0 needs pio-plugin-api ^0.2, this host has 0.1."),
        "{error}"
    );
    let listed = host.manager.list_plugins();
    assert!(matches!(&listed[0].state, PluginState::Failed(reason) if reason == &error));
}

#[test]
fn a_manifest_hiding_the_next_major_api_is_caught_by_the_library_checks() {
    let host = Host::new();
    let folder = host.next_major_folder("liar", "0.1.0");
    let error = host.manager.load_plugin_from_path(&folder).unwrap_err();
    assert!(
        matches!(error, HostError::Library { .. }),
        "unexpected {error}"
    );
    let text = error.to_string();
    assert!(
        text.contains("plugin 'compat'") && text.contains("liar/libpio_plugin_compat"),
        "{text}"
    );
    assert!(text.contains("incompatible package versions"), "{text}");
    assert!(text.len() < 1200, "the layout dump is condensed: {text}");
}
