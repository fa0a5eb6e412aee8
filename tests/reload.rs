//! Hot reload under load: a watched plugin directory whose plugin is replaced 20 times
//! (alternating versions, a broken version and a half-written library among them) while
//! several clients send requests; and a plugin removed while a request runs. And the watcher's
//! own robustness: an idle directory stays idle, a refused folder is reported once per change,
//! two folders declaring one plugin keep one winner, and files that are FIFOs, devices or too
//! large are refused without wedging the watcher.

use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use pio_host::{
    manifest::MAX_MANIFEST_BYTES,
    watch::{PluginWatcher, ReloadEvent, WatchOptions},
    FinishReason, GenerateRequest, GenerationParams, HostError, Manifest, PluginManager, Prompt,
    StreamControl,
};
use pio_tests::{build_variant, pack_into, workspace_plugin, Variant};
use serde_json::json;

const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Many debounce and settle intervals: long enough for the watcher to act on anything pending.
const QUIET: Duration = Duration::from_secs(2);

struct Site {
    _tmp: tempfile::TempDir,
    plugins: PathBuf,
    manager: Arc<PluginManager>,
}

impl Site {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let plugins = tmp.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        let plugins = plugins.canonicalize().unwrap();
        let manager = Arc::new(PluginManager::new(&tmp.path().join("shadow")).unwrap());
        Self {
            _tmp: tmp,
            plugins,
            manager,
        }
    }

    fn watch(&self) -> (PluginWatcher, Receiver<ReloadEvent>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let options = WatchOptions {
            give_up_after: Duration::from_secs(2),
            ..WatchOptions::default()
        };
        let watcher =
            PluginWatcher::start(self.manager.clone(), &self.plugins, options, tx).unwrap();
        (watcher, rx)
    }

    /// Packs `library` in a hidden staging folder (ignored by the watcher), then moves the
    /// library and the manifest into `folder` with atomic renames, library first.
    fn install(&self, folder: &str, library: &Path, config: serde_json::Value, step: usize) {
        self.install_edited(folder, library, config, step, |_| ());
    }

    /// [`install`](Self::install), with `edit` applied to the manifest first.
    fn install_edited(
        &self,
        folder: &str,
        library: &Path,
        config: serde_json::Value,
        step: usize,
        edit: impl FnOnce(&mut Manifest),
    ) {
        let staging_name = format!(".staging-{step}");
        let (staging, mut manifest) =
            pack_into(&self.manager, library, &self.plugins, &staging_name, config);
        edit(&mut manifest);
        manifest.write(&staging).unwrap();
        let target = self.plugins.join(folder);
        std::fs::create_dir_all(&target).unwrap();
        std::fs::rename(
            staging.join(&manifest.library),
            target.join(&manifest.library),
        )
        .unwrap();
        std::fs::rename(staging.join("plugin.json"), target.join("plugin.json")).unwrap();
        std::fs::remove_dir_all(staging).unwrap();
    }
}

fn next_event(events: &Receiver<ReloadEvent>) -> ReloadEvent {
    match events.recv_timeout(EVENT_TIMEOUT) {
        Ok(event) => event,
        Err(RecvTimeoutError::Timeout) => panic!("no reload event within {EVENT_TIMEOUT:?}"),
        Err(e) => panic!("event channel closed: {e}"),
    }
}

/// Waits for `condition`, failing after [`EVENT_TIMEOUT`].
fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {EVENT_TIMEOUT:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits [`QUIET`], then checks that no event came.
fn assert_quiet(events: &Receiver<ReloadEvent>, why: &str) {
    std::thread::sleep(QUIET);
    let extra: Vec<ReloadEvent> = events.try_iter().collect();
    assert!(extra.is_empty(), "{why}: {extra:?}");
}

fn shadow_copies(manager: &PluginManager) -> usize {
    std::fs::read_dir(manager.shadow().path()).unwrap().count()
}

/// Makes a FIFO at `path`: opening it for reading waits for a writer.
fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

fn mirror(manager: &PluginManager) -> Result<(String, String), HostError> {
    let served = manager.execute("example", &json!({"text": "abc"}))?;
    assert_eq!(served.response["text"], "cba");
    let computed_by = served.response["version"].as_str().unwrap().to_owned();
    Ok((served.plugin, computed_by))
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    /// Requests served by 0.1.0 and by 0.2.0.
    served: [u64; 2],
    /// Responses computed by another version than the one they were attributed to.
    misattributed: u64,
    failures: Vec<String>,
}

impl Tally {
    fn record(&mut self, outcome: Result<(String, String), HostError>) {
        match outcome {
            Ok((served_by, computed_by)) => {
                if served_by != format!("example@{computed_by}") {
                    self.misattributed += 1;
                }
                self.served[usize::from(computed_by == "0.2.0")] += 1;
            }
            Err(e) => self.failures.push(e.to_string()),
        }
    }

    fn merge(mut self, other: Tally) -> Tally {
        self.served[0] += other.served[0];
        self.served[1] += other.served[1];
        self.misattributed += other.misattributed;
        self.failures.extend(other.failures);
        self
    }
}

#[test]
fn twenty_replacements_under_load_drop_no_request() {
    let v1 = workspace_plugin("pio_plugin_example");
    let v2 = build_variant(&Variant {
        id: "v0_2_0",
        version: Some("0.2.0"),
        ..Default::default()
    });
    let site = Site::new();
    site.install("example", &v1, json!({}), 0);
    let (_watcher, events) = site.watch();
    assert!(
        matches!(next_event(&events), ReloadEvent::Added { plugin, generation: 1, .. } if plugin == "example@0.1.0")
    );

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (manager, stop) = (site.manager.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    tally.record(mirror(&manager));
                }
                tally
            })
        })
        .collect();

    let mut expected = "example@0.1.0";
    for step in 1..=20 {
        // Alternate away from whatever serves now.
        let (library, version) = if expected == "example@0.1.0" {
            (&v2, "example@0.2.0")
        } else {
            (&v1, "example@0.1.0")
        };
        match step {
            7 => {
                // A version that panics in initialize: reported, the old one keeps serving.
                site.install("example", library, json!({"fail_in": "initialize"}), step);
                let event = next_event(&events);
                assert!(
                    matches!(&event, ReloadEvent::Failed { reason, .. } if reason.contains("fault injected in initialize")),
                    "step {step}: {event:?}"
                );
            }
            13 => {
                // A half-written library: the manifest lands first, then half the bytes, a pause,
                // then the rest. Only the complete file may be loaded.
                let staging = format!(".staging-{step}");
                let (dir, manifest) =
                    pack_into(&site.manager, library, &site.plugins, &staging, json!({}));
                let full = std::fs::read(dir.join(&manifest.library)).unwrap();
                let target = site.plugins.join("example");
                std::fs::rename(dir.join("plugin.json"), target.join("plugin.json")).unwrap();
                std::fs::write(target.join(&manifest.library), &full[..full.len() / 2]).unwrap();
                std::thread::sleep(Duration::from_millis(700));
                assert!(
                    events.try_recv().is_err(),
                    "nothing happens while the library is incomplete"
                );
                std::fs::write(target.join(&manifest.library), &full).unwrap();
                std::fs::remove_dir_all(dir).unwrap();
                let event = next_event(&events);
                assert!(
                    matches!(&event, ReloadEvent::Replaced { plugin, .. } if plugin == version),
                    "step {step}: {event:?}"
                );
                expected = version;
            }
            _ => {
                site.install("example", library, json!({}), step);
                let event = next_event(&events);
                assert!(
                    matches!(&event, ReloadEvent::Replaced { plugin, .. } if plugin == version),
                    "step {step}: {event:?}"
                );
                expected = version;
            }
        }
        // The served version follows the files.
        let (served_by, _) = mirror(&site.manager).unwrap();
        assert_eq!(served_by, expected, "step {step}");
    }

    stop.store(true, Ordering::Relaxed);
    let tally = clients
        .into_iter()
        .map(|c| c.join().unwrap())
        .fold(Tally::default(), Tally::merge);
    assert!(
        tally.failures.is_empty(),
        "{} requests failed: {:?}",
        tally.failures.len(),
        &tally.failures[..tally.failures.len().min(5)]
    );
    assert_eq!(
        tally.misattributed, 0,
        "responses attributed to the wrong version"
    );
    let [v1_count, v2_count] = tally.served;
    assert!(
        v1_count > 0 && v2_count > 0,
        "both versions served ({v1_count} / {v2_count})"
    );
    eprintln!(
        "{} requests: {v1_count} by 0.1.0, {v2_count} by 0.2.0, none failed",
        v1_count + v2_count
    );

    // The failed attempt stays listed with its reason; exactly one instance serves.
    let listed = site.manager.list_plugins();
    assert_eq!(site.manager.list_active_plugins().len(), 1, "{listed:?}");
}

#[test]
fn junk_and_tampered_folders_are_reported_and_nothing_else_is_disturbed() {
    let site = Site::new();
    site.install(
        "good",
        &workspace_plugin("pio_plugin_example"),
        json!({}),
        0,
    );
    let (_watcher, events) = site.watch();
    assert!(matches!(next_event(&events), ReloadEvent::Added { .. }));

    std::fs::write(site.plugins.join("junk.txt"), "x").unwrap();
    let event = next_event(&events);
    assert!(
        matches!(&event, ReloadEvent::Failed { reason, .. } if reason.contains("not a plugin folder")),
        "{event:?}"
    );

    std::fs::create_dir_all(site.plugins.join("no-manifest")).unwrap();
    std::fs::write(site.plugins.join("no-manifest/lib.so"), "x").unwrap();
    let event = next_event(&events);
    assert!(
        matches!(&event, ReloadEvent::Failed { reason, .. } if reason.contains("no manifest")),
        "{event:?}"
    );

    site.install(
        "tampered",
        &workspace_plugin("pio_plugin_example"),
        json!({}),
        1,
    );
    let library = site.plugins.join("tampered/libpio_plugin_example.so");
    let mut bytes = std::fs::read(&library).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&library, bytes).unwrap();
    let event = next_event(&events);
    assert!(
        matches!(&event, ReloadEvent::Failed { reason, .. } if reason.contains("sha256")),
        "{event:?}"
    );

    assert_eq!(mirror(&site.manager).unwrap().0, "example@0.1.0");
}

#[test]
fn plugin_removed_while_busy_finishes_its_request_first() {
    let site = Site::new();
    site.install(
        "example",
        &workspace_plugin("pio_plugin_example"),
        json!({}),
        0,
    );
    let (_watcher, events) = site.watch();
    assert!(matches!(next_event(&events), ReloadEvent::Added { .. }));

    let (first_token_tx, first_token) = crossbeam_channel::bounded(1);
    let manager = site.manager.clone();
    let busy = std::thread::spawn(move || {
        let request = GenerateRequest {
            prompt: Prompt::Text("slow request".into()),
            params: GenerationParams::greedy(64),
        };
        manager.generate("example", &request, |event| {
            if event.index == 0 {
                let _ = first_token_tx.send(());
            }
            std::thread::sleep(Duration::from_millis(60));
            StreamControl::Continue
        })
    });
    first_token.recv_timeout(EVENT_TIMEOUT).unwrap();
    std::fs::remove_dir_all(site.plugins.join("example")).unwrap();

    let served = busy
        .join()
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(served.response.text.as_str(), "tseuqer wols");
    assert_eq!(served.response.finish_reason, FinishReason::Stop);
    let event = next_event(&events);
    assert!(
        matches!(&event, ReloadEvent::Removed { plugin, .. } if plugin == "example@0.1.0"),
        "{event:?}"
    );
    assert!(matches!(mirror(&site.manager), Err(HostError::NotFound(_))));
}

#[test]
#[ignore = "needs the SmolLM2 model: pio models fetch"]
fn llama_plugin_is_replaced_while_it_generates() {
    let model = pio_testkit::model(pio_testkit::SMOLLM2);
    let site = Site::new();
    let llama = workspace_plugin("pio_plugin_llama");
    site.install("llama", &llama, json!({ "model": model }), 0);
    let (tx, events) = crossbeam_channel::unbounded();
    let options = WatchOptions {
        activate: pio_host::ActivateOptions {
            context_length: 256,
            ..Default::default()
        },
        ..WatchOptions::default()
    };
    let _watcher = PluginWatcher::start(site.manager.clone(), &site.plugins, options, tx).unwrap();
    assert!(matches!(next_event(&events), ReloadEvent::Added { .. }));

    let chat = pio_host::ChatRequest {
        messages: vec![pio_host::ChatMessage::new(
            "user",
            "What is the capital of France?",
        )],
        params: GenerationParams::greedy(32),
    };
    let (first_token_tx, first_token) = crossbeam_channel::bounded(1);
    let manager = site.manager.clone();
    let request = chat.clone();
    let busy = std::thread::spawn(move || {
        manager.chat("llama", &request, |event| {
            if event.index == 0 {
                let _ = first_token_tx.send(());
            }
            // Slow enough for the replacement to land while this generation runs.
            std::thread::sleep(Duration::from_millis(100));
            StreamControl::Continue
        })
    });
    first_token.recv_timeout(EVENT_TIMEOUT).unwrap();
    // A new manifest (other batch settings) for the same library: a new version to load.
    site.install(
        "llama",
        &llama,
        json!({ "model": model, "kv_blocks": 64 }),
        1,
    );
    let event = next_event(&events);
    assert!(
        matches!(&event, ReloadEvent::Replaced { generation: 2, .. }),
        "{event:?}"
    );

    let in_flight = busy.join().unwrap().expect("the in-flight chat completes");
    assert_eq!(
        in_flight.generation, 1,
        "finished on the instance it started on"
    );
    let after = site
        .manager
        .chat("llama", &chat, |_| StreamControl::Continue)
        .unwrap();
    assert_eq!(after.generation, 2, "new requests go to the new instance");
    assert_eq!(in_flight.response.text, after.response.text);
    assert!(
        after.response.text.contains("Paris"),
        "{:?}",
        after.response.text
    );
}

#[test]
fn batched_sequences_finish_on_the_instance_that_opened_them() {
    let site = Site::new();
    site.install(
        "example",
        &workspace_plugin("pio_plugin_example"),
        json!({}),
        0,
    );
    let folder = site.plugins.join("example");
    let manager = &site.manager;
    manager
        .replace_from_path(&folder, &Default::default())
        .unwrap();
    let request = pio_host::SequenceRequest::Generate(GenerateRequest {
        prompt: Prompt::Text("batched".into()),
        params: GenerationParams::greedy(64),
    });
    let opened = manager.open_sequence("example", &request).unwrap();
    let (plugin, old) = (opened.plugin.clone(), opened.generation);
    let id = opened.response.id;

    // A reload while the sequence is open: new sequences go to the new instance, the open one
    // keeps stepping on the old one, which is torn down when it closes.
    manager
        .replace_from_path(&folder, &Default::default())
        .unwrap();
    let newer = manager.open_sequence("example", &request).unwrap();
    assert!(
        newer.generation > old,
        "new sequences open on the new instance"
    );
    assert_eq!(
        manager.list_plugins().len(),
        2,
        "the old instance waits for its sequence"
    );
    let mut text = String::new();
    loop {
        let step = manager
            .step_sequences(&plugin, old, &[id])
            .unwrap()
            .remove(0);
        text.push_str(&step.event.text);
        if step.finish.is_some() {
            break;
        }
    }
    assert_eq!(text, "dehctab", "the old instance finished the sequence");
    manager.close_sequence(&plugin, old, id).unwrap();
    let left: Vec<u64> = manager
        .list_plugins()
        .iter()
        .map(|p| p.generation)
        .collect();
    assert_eq!(
        left,
        vec![newer.generation],
        "retired once its last sequence closed"
    );
    assert!(matches!(
        manager.step_sequences(&plugin, old, &[id]),
        Err(HostError::InstanceGone { .. })
    ));
}

#[test]
fn an_idle_directory_is_not_examined_again() {
    let site = Site::new();
    site.install(
        "example",
        &workspace_plugin("pio_plugin_example"),
        json!({}),
        0,
    );
    let (watcher, events) = site.watch();
    assert!(matches!(next_event(&events), ReloadEvent::Added { .. }));
    let looks = watcher.folders_examined();
    // The watcher's checks and the load read the folder's files, and a request runs: none of
    // that changes the folder.
    mirror(&site.manager).unwrap();
    assert_quiet(&events, "nothing happens in an idle directory");
    assert_eq!(
        watcher.folders_examined(),
        looks,
        "an idle folder is examined again"
    );
}

#[test]
fn a_folder_refused_after_loading_is_reported_once_per_change() {
    let site = Site::new();
    let (watcher, events) = site.watch();
    let library = workspace_plugin("pio_plugin_example");
    // Every check before loading passes (the API version is in the host's band); the library's
    // own metadata then disagrees with the manifest.
    site.install_edited("example", &library, json!({}), 0, |m| {
        m.plugin_api.patch += 1
    });
    let event = next_event(&events);
    assert!(
        matches!(&event, ReloadEvent::Failed { reason, .. } if reason.contains("plugin_api")),
        "{event:?}"
    );
    let copies = shadow_copies(&site.manager);

    // Opening its files for writing and closing them changes nothing: the watcher looks, sees
    // the folder as it was refused, and does nothing.
    let looks = watcher.folders_examined();
    let folder = site.plugins.join("example");
    for file in ["plugin.json", "libpio_plugin_example.so"] {
        drop(
            OpenOptions::new()
                .append(true)
                .open(folder.join(file))
                .unwrap(),
        );
    }
    wait_until("the folder is looked at again", || {
        watcher.folders_examined() > looks
    });
    assert_quiet(&events, "a refused folder is reported once");
    assert_eq!(
        shadow_copies(&site.manager),
        copies,
        "a refused folder is not loaded again"
    );

    // Fixed, it loads.
    site.install("example", &library, json!({}), 1);
    let event = next_event(&events);
    assert!(
        matches!(&event, ReloadEvent::Added { plugin, .. } if plugin == "example@0.1.0"),
        "{event:?}"
    );
}

#[test]
fn two_folders_with_one_plugin_keep_one_winner_until_it_is_removed() {
    let site = Site::new();
    let library = workspace_plugin("pio_plugin_example");
    let (first, second) = (site.plugins.join("first"), site.plugins.join("second"));
    site.install("first", &library, json!({}), 0);
    let (_watcher, events) = site.watch();
    let event = next_event(&events);
    assert!(
        matches!(&event, ReloadEvent::Added { folder, .. } if *folder == first),
        "{event:?}"
    );

    site.install("second", &library, json!({}), 1);
    match next_event(&events) {
        ReloadEvent::Failed { folder, reason } => {
            assert_eq!(folder, second);
            for part in [
                second.to_str().unwrap(),
                first.to_str().unwrap(),
                "example@0.1.0",
            ] {
                assert!(reason.contains(part), "{part:?} not in {reason}");
            }
        }
        other => panic!("the second folder is refused, not {other:?}"),
    }
    assert_quiet(&events, "the conflict is reported once and settles");
    let serving = site.manager.info("example").unwrap();
    assert_eq!(
        (serving.dir, serving.generation),
        (first.clone(), 1),
        "the first folder keeps serving"
    );

    std::fs::remove_dir_all(&first).unwrap();
    let event = next_event(&events);
    assert!(
        matches!(&event, ReloadEvent::Removed { folder, .. } if *folder == first),
        "{event:?}"
    );
    let event = next_event(&events);
    assert!(
        matches!(&event, ReloadEvent::Added { folder, plugin, .. } if *folder == second && plugin == "example@0.1.0"),
        "{event:?}"
    );
    assert_eq!(site.manager.info("example").unwrap().dir, second);
    assert_eq!(mirror(&site.manager).unwrap().0, "example@0.1.0");
}

#[test]
fn fifos_devices_and_oversized_manifests_are_refused_and_later_folders_load() {
    let site = Site::new();
    let (_watcher, events) = site.watch();
    let library = workspace_plugin("pio_plugin_example");
    // Each bad folder is built in a hidden staging folder and renamed into place whole.
    let stage = |folder: &str, config: serde_json::Value, spoil: &dyn Fn(&Path, &Manifest)| {
        let staging = format!(".staging-{folder}");
        let (dir, manifest) = pack_into(&site.manager, &library, &site.plugins, &staging, config);
        spoil(&dir, &manifest);
        std::fs::rename(dir, site.plugins.join(folder)).unwrap();
    };
    let replace = |path: PathBuf, make: &dyn Fn(&Path)| {
        std::fs::remove_file(&path).unwrap();
        make(&path);
    };
    let to_dev_zero = |path: &Path| std::os::unix::fs::symlink("/dev/zero", path).unwrap();
    stage("fifo-manifest", json!({}), &|dir, _| {
        replace(dir.join("plugin.json"), &mkfifo)
    });
    stage("zero-manifest", json!({}), &|dir, _| {
        replace(dir.join("plugin.json"), &to_dev_zero)
    });
    stage("fifo-library", json!({}), &|dir, m| {
        replace(dir.join(&m.library), &mkfifo)
    });
    stage("zero-library", json!({}), &|dir, m| {
        replace(dir.join(&m.library), &to_dev_zero)
    });
    // A valid manifest, over the size limit.
    let padding = "x".repeat(MAX_MANIFEST_BYTES as usize);
    stage("big-manifest", json!({ "padding": padding }), &|_, _| ());

    let expected = BTreeMap::from([
        (
            "big-manifest",
            "plugin.json: larger than the limit of 1048576 bytes",
        ),
        (
            "fifo-library",
            "libpio_plugin_example.so: not a regular file (a FIFO)",
        ),
        ("fifo-manifest", "plugin.json: not a regular file (a FIFO)"),
        ("zero-library", "outside the plugin folder"),
        (
            "zero-manifest",
            "plugin.json: not a regular file (a character device)",
        ),
    ]);
    let mut failures = BTreeMap::new();
    while failures.len() < expected.len() {
        match next_event(&events) {
            ReloadEvent::Failed { folder, reason } => {
                let name = folder.file_name().unwrap().to_str().unwrap().to_owned();
                assert!(
                    failures.insert(name, reason).is_none(),
                    "reported twice: {folder:?}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for (folder, part) in expected {
        let reason = &failures[folder];
        assert!(reason.contains(part), "{folder}: {part:?} not in {reason}");
    }

    site.install("good", &library, json!({}), 0);
    let event = next_event(&events);
    assert!(
        matches!(&event, ReloadEvent::Added { folder, .. } if folder.ends_with("good")),
        "{event:?}"
    );
    assert_quiet(&events, "refused folders are reported once");
}
