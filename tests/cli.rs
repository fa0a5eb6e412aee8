//! The `pio` binary end to end on the example plugin: pack, check, list, run, and a refusal
//! with a non-zero exit; `pio devices`, which runs the `pio-devices` executable; and `pio shard`
//! cutting a model and merging it back.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use pio_tests::{target_dir, workspace_plugin};

fn pio(cache: &Path, args: &[&str]) -> (bool, String, String) {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let output = Command::new(target_dir().join(profile).join("pio"))
        .args(args)
        .env("PIO_CACHE_DIR", cache)
        .env_remove("PIO_PLUGIN_PATH")
        .output()
        .expect("the pio binary runs (build it with `cargo build --workspace`)");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `pio plugins pack`s the example plugin under `root`; returns the cache, the plugin directory
/// and the plugin folder.
fn pack_example(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let cache = root.join("cache");
    let plugins = root.join("plugins");
    let folder = plugins.join("example");
    let library = workspace_plugin("pio_plugin_example");
    let (ok, out, err) = pio(
        &cache,
        &[
            "plugins",
            "pack",
            library.to_str().unwrap(),
            "--out",
            folder.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("packed example 0.1.0"), "{out}");
    (cache, plugins, folder)
}

#[test]
fn pack_check_list_run_and_refuse() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, plugins, folder) = pack_example(tmp.path());

    let (ok, out, err) = pio(&cache, &["plugins", "check", folder.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.starts_with("ok: example 0.1.0"), "{out}");

    let (ok, out, _) = pio(
        &cache,
        &["plugins", "list", "--dir", plugins.to_str().unwrap()],
    );
    assert!(ok);
    let row = out
        .lines()
        .find(|l| l.starts_with("example"))
        .expect("a row for example");
    assert!(
        row.contains("0.1.0")
            && row.contains("loaded")
            && row.contains("text-generation,chat,embeddings"),
        "{row}"
    );

    let (ok, out, err) = pio(
        &cache,
        &[
            "run",
            "example",
            "stressed",
            "--dir",
            plugins.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "desserts");

    // The memory estimate before activation, the report after, by category.
    let (ok, out, err) = pio(
        &cache,
        &[
            "plugins",
            "info",
            "example",
            "--activate",
            "--dir",
            plugins.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    for line in [
        "estimate:     device 0 B",
        "memory:       device 0 B",
        "  kv_cache    device 0 B",
    ] {
        assert!(out.contains(line), "{line:?} missing from\n{out}");
    }
    assert!(
        out.contains("compression:  none (tensors as loaded)"),
        "{out}"
    );

    // Tamper with the library: check refuses with the reason and a non-zero exit.
    let lib_in_folder = folder.join("libpio_plugin_example.so");
    let mut bytes = std::fs::read(&lib_in_folder).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&lib_in_folder, bytes).unwrap();
    let (ok, _, err) = pio(&cache, &["plugins", "check", folder.to_str().unwrap()]);
    assert!(!ok, "a tampered plugin must fail the check");
    assert!(
        err.contains("refused")
            && err.contains("sha256 is")
            && err.contains("libpio_plugin_example.so"),
        "{err}"
    );
}

#[test]
fn process_isolation_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, plugins, folder) = pack_example(tmp.path());
    let dir = plugins.to_str().unwrap();

    let (ok, out, err) = pio(
        &cache,
        &[
            "--isolation",
            "process",
            "run",
            "example",
            "worker",
            "--dir",
            dir,
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "rekrow");

    let (ok, _, err) = pio(
        &cache,
        &[
            "--isolation",
            "sandbox",
            "run",
            "example",
            "x",
            "--dir",
            dir,
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("in-process") && err.contains("process"),
        "{err}"
    );

    // A library refused by the checks the worker runs.
    let lib_in_folder = folder.join("libpio_plugin_example.so");
    let mut bytes = std::fs::read(&lib_in_folder).unwrap();
    bytes.push(0);
    std::fs::write(&lib_in_folder, bytes).unwrap();
    let (ok, _, err) = pio(
        &cache,
        &[
            "--isolation",
            "process",
            "plugins",
            "check",
            folder.to_str().unwrap(),
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("refused") && err.contains("sha256 is"),
        "{err}"
    );
}

/// `pio devices` gets its listing from `pio-devices` (built beside `pio`) and prints one row
/// per adapter, numbered from 0 as `--adapter` takes them, with its device memory (lavapipe's
/// Vulkan heap is the host's RAM) and the adapter plugins use marked `*` (here the only one).
/// Like every GPU test, it fails without an adapter (scripts/install-system installs Mesa's
/// software one).
#[test]
fn devices_lists_the_adapters_through_pio_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out, err) = pio(tmp.path(), &["devices"]);
    assert!(ok, "{err}");
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["#", "NAME", "BACKEND", "TYPE", "MEMORY", "DRIVER"],
        "{out}"
    );
    let first = lines.next().unwrap_or_default();
    assert!(first.starts_with("0"), "no adapter row: {out}");
    assert!(out.contains("* the adapter plugins use"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("0*") || l.starts_with("1*")),
        "{out}"
    );
    assert!(first.contains("iB "), "no memory size in {first:?}");
    assert!(
        ["vulkan", "metal", "dx12"]
            .iter()
            .any(|backend| first.contains(backend)),
        "no backend in {first:?}"
    );
}

/// `pio plugins new` writes a crate outside the workspace that builds with
/// `cargo build --release`, and `pio plugins pack` and `check` accept what it builds; the
/// plugin then serves. Both kinds of scaffold.
#[test]
fn a_new_plugin_crate_builds_packs_checks_and_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let plugins = tmp.path().join("plugins");
    for (name, kind) in [("my-echo", "text"), ("my-embedder", "embeddings")] {
        let (ok, out, err) = pio(
            &cache,
            &[
                "plugins",
                "new",
                name,
                "--kind",
                kind,
                "--dir",
                tmp.path().to_str().unwrap(),
            ],
        );
        assert!(ok, "{err}");
        assert!(out.contains("created the"), "{out}");
        let crate_dir = tmp.path().join(name);
        // One target directory for both scaffolds and every run: the kit and its dependencies
        // are compiled once.
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--offline", "--quiet"])
            .current_dir(&crate_dir)
            .env("CARGO_TARGET_DIR", target_dir().join("scaffolds"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "the {kind} scaffold does not build");
        let library = target_dir()
            .join("scaffolds/release")
            .join(format!("lib{}.so", name.replace('-', "_")));
        let folder = plugins.join(name);
        let (ok, _, err) = pio(
            &cache,
            &[
                "plugins",
                "pack",
                library.to_str().unwrap(),
                "--out",
                folder.to_str().unwrap(),
            ],
        );
        assert!(ok, "{err}");
        let (ok, out, err) = pio(&cache, &["plugins", "check", folder.to_str().unwrap()]);
        assert!(ok, "{err}");
        assert!(out.starts_with(&format!("ok: {name} 0.1.0")), "{out}");
    }

    let dir = plugins.to_str().unwrap();
    let (ok, out, err) = pio(&cache, &["run", "--dir", dir, "my-echo", "Hello, scaffold"]);
    assert!(ok, "{err}");
    assert!(out.contains("Hello, scaffold"), "{out}");
    let (ok, out, err) = pio(
        &cache,
        &["embed", "--dir", dir, "--plugin", "my-embedder", "Hello"],
    );
    assert!(ok, "{err}");
    let embedded: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(embedded["dimensions"], 64, "{out}");
    let vector = embedded["embeddings"][0].as_array().expect("one vector");
    assert_eq!(vector.len(), 64, "{out}");
    let norm: f64 = vector.iter().map(|x| x.as_f64().unwrap().powi(2)).sum();
    assert!((norm - 1.0).abs() < 1e-5, "not L2-normalised: {norm}");
}

#[test]
fn a_new_plugin_needs_a_valid_name_and_a_free_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let dir = tmp.path().to_str().unwrap();
    let (ok, _, err) = pio(&cache, &["plugins", "new", "Bad Name", "--dir", dir]);
    assert!(!ok);
    assert!(err.contains("may only contain lowercase letters"), "{err}");
    std::fs::create_dir(tmp.path().join("taken")).unwrap();
    let (ok, _, err) = pio(&cache, &["plugins", "new", "taken", "--dir", dir]);
    assert!(!ok);
    assert!(err.contains("exists already"), "{err}");
}

/// `pio shard` cuts a small model by size, `--merge` gives the file back byte for byte, and a
/// changed shard is refused naming it and the hash it should have.
#[test]
fn shard_cuts_and_merges_a_model_back() {
    use pio_gguf::{GgufWriter, TensorType};

    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny.gguf");
    let mut writer = GgufWriter::new();
    writer.add_metadata("general.architecture", "llama");
    for i in 0..6 {
        let values: Vec<f32> = (0..256 * (i + 1)).map(|v| v as f32 / 256.0).collect();
        writer
            .add_f32_tensor(
                format!("t{i}"),
                &[values.len() as u64],
                TensorType::F32,
                &values,
            )
            .unwrap();
    }
    writer.write_to(&model).unwrap();
    let (cache, shards) = (tmp.path().join("cache"), tmp.path().join("shards"));
    let run = |args: &[&str]| pio(&cache, args);

    let (ok, out, err) = run(&[
        "shard",
        model.to_str().unwrap(),
        "--max-size",
        "8K",
        "--out",
        shards.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    // Tensors of 1, 2, ..., 6 KiB: 8 kB takes the first three together, then one per shard.
    assert!(out.contains("(6 tensors) into 4 shards"), "{out}");
    let first = shards.join("tiny-00001-of-00004.gguf");
    assert!(
        out.contains(&format!("first shard: {}", first.display())),
        "{out}"
    );

    let merged = tmp.path().join("merged.gguf");
    let (ok, out, err) = run(&[
        "shard",
        "--merge",
        first.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("identical to the original, tiny.gguf"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&merged).unwrap(),
        std::fs::read(&model).unwrap()
    );
    let (ok, _, err) = run(&[
        "shard",
        "--merge",
        model.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("not the first shard of a split model"),
        "{err}"
    );

    let last = shards.join("tiny-00004-of-00004.gguf");
    let mut bytes = std::fs::read(&last).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&last, bytes).unwrap();
    let (ok, _, err) = run(&[
        "shard",
        "--merge",
        first.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("tiny-00004-of-00004.gguf: shard changed: sha256"),
        "{err}"
    );
}
