//! Support for the integration tests: locating the workspace's built plugins, building variants
//! of the example plugin (other versions, names, slow token rates) and ([`frozen_api`]) plugins
//! of other API releases, packing plugin folders, and ([`http`]) running the HTTP server on
//! loopback with a client for it.

pub mod frozen_api;
pub mod http;
pub mod procfs;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use pio_host::{
    pack::{pack, PackRequest},
    Manifest, PluginManager,
};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_owned()
}

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The built library of workspace plugin crate `crate_name` (e.g. `pio_plugin_example`), from
/// the same profile as the running test. Fails with the command to run when it is missing.
pub fn workspace_plugin(crate_name: &str) -> PathBuf {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let file = format!("lib{crate_name}{}", std::env::consts::DLL_SUFFIX);
    let path = target_dir().join(profile).join(&file);
    assert!(
        path.exists(),
        "{} is missing: build the plugins first with `cargo build --workspace{}`",
        path.display(),
        if profile == "release" {
            " --release"
        } else {
            ""
        }
    );
    path
}

/// How a variant of the example plugin differs from the original. Variants are built from the
/// example's own sources under a manifest of their own, configured by the build-time knobs its
/// `fixture` module documents — never by editing its source.
#[derive(Debug, Clone, Default)]
pub struct Variant {
    /// Unique short name of the variant (crate-name suffix).
    pub id: &'static str,
    /// Plugin version (default: the example's).
    pub version: Option<&'static str>,
    /// Plugin name reported in metadata (default: `example`).
    pub plugin_name: Option<&'static str>,
    /// Leave out the plugin export: a shared library with no root module.
    pub without_root_module: bool,
    /// Leave out the `batched-generation` capability: the host runs each sequence through one
    /// streaming `generate` / `chat` call instead of batched steps.
    pub without_batching: bool,
    /// Sleep this many milliseconds per token of a batched step (a step of n sequences sleeps
    /// n times): a slow model, so tests can act while a generation runs.
    pub token_delay_ms: Option<u64>,
}

/// Builds `variant` as its own package (the example's sources, another package name and
/// version) in a target directory under `target/variants`, apart from the main one so the real
/// artifacts are never overwritten; returns the library.
pub fn build_variant(variant: &Variant) -> PathBuf {
    static VARIANT_BUILDS: Mutex<()> = Mutex::new(());
    let _serialised = VARIANT_BUILDS.lock().unwrap_or_else(|p| p.into_inner());
    let root = workspace_root();
    let variants = target_dir().join("variants");
    let package = format!("pio-plugin-example-{}", variant.id);
    let manifest_dir = variants.join("src").join(variant.id);
    std::fs::create_dir_all(&manifest_dir).unwrap();
    let example = root.join("plugins/example");
    std::fs::write(
        manifest_dir.join("Cargo.toml"),
        format!(
            r#"[package]
name = "{package}"
version = "{version}"
authors = ["Inference-PIO developers"]
description = "A variant of the example plugin, for the host's tests."
license = "MIT OR Apache-2.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]
path = "{lib}"

[features]
no-root-module = []

[dependencies]
pio-plugin-kit = {{ path = "{kit}" }}
serde = {{ version = "1", features = ["derive"] }}

[workspace]
"#,
            version = variant.version.unwrap_or("0.1.0"),
            lib = example.join("src/lib.rs").display(),
            kit = root.join("plugin-kit").display(),
        ),
    )
    .unwrap();
    std::fs::copy(root.join("Cargo.lock"), manifest_dir.join("Cargo.lock")).unwrap();

    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--offline", "--quiet", "--manifest-path"])
        .arg(manifest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(variants.join("target"))
        .env_remove("CARGO_TARGET_DIR");
    if let Some(name) = variant.plugin_name {
        build.env("PIO_EXAMPLE_NAME", name);
    }
    if variant.without_batching {
        build.env("PIO_EXAMPLE_UNBATCHED", "1");
    }
    if let Some(ms) = variant.token_delay_ms {
        build.env("PIO_EXAMPLE_TOKEN_DELAY_MS", ms.to_string());
    }
    if variant.without_root_module {
        build.args(["--features", "no-root-module"]);
    }
    let status = build.status().expect("cargo runs");
    assert!(
        status.success(),
        "building plugin variant {} failed",
        variant.id
    );
    let file = format!(
        "lib{}{}",
        package.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    );
    variants.join("target/debug").join(file)
}

/// Packs `library` into `dir/<folder>` with `config`, returning the folder and its manifest.
pub fn pack_into(
    manager: &PluginManager,
    library: &Path,
    dir: &Path,
    folder: &str,
    config: serde_json::Value,
) -> (PathBuf, Manifest) {
    let out_dir = dir.join(folder);
    let manifest = pack(
        &PackRequest {
            library: library.to_owned(),
            out_dir: out_dir.clone(),
            models: Vec::new(),
            config,
        },
        manager.shadow(),
    )
    .unwrap_or_else(|e| panic!("packing {}: {e}", library.display()));
    (out_dir, manifest)
}
