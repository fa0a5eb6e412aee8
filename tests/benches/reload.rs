//! Reload benchmark: latency from "new library landed" to "new version serving", and what
//! each reload leaks (RSS, mapped library copies), for the example plugin.
//!
//! `cargo bench -p pio-tests --bench reload [-- RELOADS]` (default 50 reloads) watches a
//! directory and alternates two versions of the example plugin.
//! `cargo bench -p pio-tests --bench reload -- RELOADS --folder PLUGIN_FOLDER [--model PATH]`
//! instead replaces the plugin in PLUGIN_FOLDER with itself RELOADS times (each a new library
//! load, initialize and activate), e.g. the Llama plugin's bundled folder with its model;
//! `--isolation process` runs each generation in a worker process, and the report adds the
//! workers' memory (the children of this process) to the host's.
//! Build the workspace first (`cargo build --workspace --release`).

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use pio_host::{
    isolation::{Isolation, IsolationConfig},
    watch::{PluginWatcher, ReloadEvent, WatchOptions},
    PluginManager,
};
use pio_tests::{
    build_variant, pack_into,
    procfs::{children_rss_kib, mapped_files_under, status_kib},
    workspace_plugin, Variant,
};
use serde_json::json;

/// Resident memory and mapped library copies at one moment.
struct Memory {
    rss: u64,
    anon: u64,
    file: u64,
    maps: usize,
    workers: u64,
}

impl Memory {
    fn now(shadow: &Path) -> Self {
        Memory {
            rss: status_kib("self", "VmRSS:"),
            anon: status_kib("self", "RssAnon:"),
            file: status_kib("self", "RssFile:"),
            maps: mapped_files_under(shadow).len(),
            workers: children_rss_kib(),
        }
    }

    /// Prints the growth from `before` to `self` per `loads` library loads.
    fn report_growth(&self, before: &Memory, loads: usize) {
        let per_load = |b: u64, a: u64| (a as f64 - b as f64) / loads as f64;
        println!(
            "RSS: {} KiB -> {} KiB (+{:.1} KiB per library load)",
            before.rss,
            self.rss,
            per_load(before.rss, self.rss)
        );
        println!(
            "  of which anonymous (heap, relocated data): +{:.1} KiB per load; file-backed \
             (library pages, reclaimable): +{:.1} KiB per load",
            per_load(before.anon, self.anon),
            per_load(before.file, self.file)
        );
        println!(
            "mapped shadow copies: {} -> {} (libraries are never unloaded)",
            before.maps, self.maps
        );
        println!(
            "worker processes (children): {} KiB -> {} KiB",
            before.workers, self.workers
        );
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let reloads: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(50);
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(std::path::PathBuf::from)
    };
    let isolation = flag("--isolation")
        .map(|mode| {
            mode.to_string_lossy()
                .parse()
                .expect("--isolation in-process|process")
        })
        .unwrap_or_default();
    match flag("--folder") {
        Some(folder) => replace_in_place(&folder, flag("--model"), reloads, isolation),
        None => watched_example(reloads),
    }
}

/// Replaces the plugin in `folder` with itself `reloads` times.
fn replace_in_place(
    folder: &Path,
    model: Option<std::path::PathBuf>,
    reloads: usize,
    isolation: Isolation,
) {
    let tmp = tempfile::tempdir().unwrap();
    let mut manager = PluginManager::new(&tmp.path().join("shadow")).unwrap();
    manager.set_isolation(IsolationConfig {
        default: isolation,
        ..IsolationConfig::default()
    });
    let manifest = pio_host::Manifest::read(folder).unwrap();
    if let Some(model) = model {
        manager.set_config_override(&manifest.name, json!({ "model": model }));
    }
    let shadow = manager.shadow().path().to_owned();
    manager
        .replace_from_path(folder, &Default::default())
        .unwrap();
    let before = Memory::now(&shadow);
    let mut replace_ms = Vec::with_capacity(reloads);
    for _ in 0..reloads {
        let started = Instant::now();
        manager
            .replace_from_path(folder, &Default::default())
            .unwrap();
        replace_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let after = Memory::now(&shadow);
    println!(
        "plugin: {} ({} reloads, isolation {})",
        manifest.label(),
        reloads,
        isolation.as_str()
    );
    println!("replace_from_path (copy, checks, load, initialize, activate, swap, tear down old): median {:.1} ms", median(&mut replace_ms));
    after.report_growth(&before, reloads);
}

/// Watches a directory and alternates two versions of the example plugin in it.
fn watched_example(reloads: usize) {
    let v1 = workspace_plugin("pio_plugin_example");
    let v2 = build_variant(&Variant {
        id: "v0_2_0",
        version: Some("0.2.0"),
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let plugins = plugins.canonicalize().unwrap();
    let manager = Arc::new(PluginManager::new(&tmp.path().join("shadow")).unwrap());

    let install = |library: &Path, step: usize| {
        let staging = format!(".staging-{step}");
        let (dir, manifest) = pack_into(&manager, library, &plugins, &staging, json!({}));
        let target = plugins.join("example");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::rename(dir.join(&manifest.library), target.join(&manifest.library)).unwrap();
        let landed = Instant::now();
        std::fs::rename(dir.join("plugin.json"), target.join("plugin.json")).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        landed
    };

    install(&v1, 0);
    let options = WatchOptions::default();
    println!(
        "watcher: debounce {:?}, settle {:?} (a library must be unchanged for one settle interval)",
        options.debounce, options.settle
    );
    let (tx, events) = crossbeam_channel::unbounded();
    let _watcher = PluginWatcher::start(manager.clone(), &plugins, options, tx).unwrap();
    assert!(matches!(events.recv().unwrap(), ReloadEvent::Added { .. }));

    let shadow = manager.shadow().path().to_owned();
    let before = Memory::now(&shadow);
    let mut latencies_ms = Vec::with_capacity(reloads);
    let mut swap_ms = Vec::with_capacity(reloads);
    for step in 1..=reloads {
        let (library, version) = if step % 2 == 1 {
            (&v2, "0.2.0")
        } else {
            (&v1, "0.1.0")
        };
        let landed = install(library, step);
        let event = events
            .recv_timeout(Duration::from_secs(30))
            .expect("a reload event");
        assert!(matches!(event, ReloadEvent::Replaced { .. }), "{event:?}");
        let serving = Instant::now();
        let served = manager.execute("example", &json!({"text": "x"})).unwrap();
        assert_eq!(served.response["version"], version);
        latencies_ms.push(serving.duration_since(landed).as_secs_f64() * 1e3);
        let swap = Instant::now();
        manager
            .replace_from_path(&plugins.join("example"), &Default::default())
            .unwrap();
        swap_ms.push(swap.elapsed().as_secs_f64() * 1e3);
    }
    let after = Memory::now(&shadow);

    let loads = after.maps - before.maps;
    println!(
        "reloads: {reloads}; library loads in all (packing, watcher, direct replace): {loads}"
    );
    println!(
        "file landed -> new version serving: median {:.1} ms",
        median(&mut latencies_ms)
    );
    println!(
        "replace_from_path alone (load + initialize + activate + swap): median {:.2} ms",
        median(&mut swap_ms)
    );
    after.report_growth(&before, loads);
}
