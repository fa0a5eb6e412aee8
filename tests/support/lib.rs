//! Support for the integration tests: locating the workspace's built plugins, building variants
//! of the example plugin (other versions, names, API versions, slow token rates), packing plugin
//! folders, and ([`http`]) running the HTTP server on loopback with a client for it.

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

/// How a variant of the example plugin differs from the original.
#[derive(Debug, Clone, Default)]
pub struct Variant {
    /// Unique short name of the variant (folder and crate-name suffix).
    pub id: &'static str,
    /// Plugin version (default: the example's).
    pub version: Option<&'static str>,
    /// Plugin name reported in metadata (default: `example`).
    pub plugin_name: Option<&'static str>,
    /// Build against a copy of `pio-plugin-api` with this version instead of the real one.
    pub api_version: Option<&'static str>,
    /// Leave out `export_plugin!`: a shared library with no root module.
    pub without_root_module: bool,
    /// With `api_version`: the copied API appends a function to the root module, as a later
    /// minor version of the API would.
    pub api_appends_function: bool,
    /// Leave out the `batched-generation` capability: the host runs each sequence through one
    /// streaming `generate` / `chat` call instead of batched steps.
    pub without_batching: bool,
    /// Sleep this many milliseconds before making each token (streamed or batched: a step of
    /// n sequences sleeps n times): a slow model, so tests can act while a generation runs.
    pub token_delay_ms: Option<u64>,
}

static VARIANT_BUILDS: Mutex<()> = Mutex::new(());

/// Builds `variant` in its own workspace under `target/variants` (a target directory apart
/// from the main one, so copies of workspace crates never overwrite the real artifacts) and
/// returns the library.
pub fn build_variant(variant: &Variant) -> PathBuf {
    let _serialised = VARIANT_BUILDS.lock().unwrap_or_else(|p| p.into_inner());
    let root = workspace_root();
    let variants = target_dir().join("variants");
    let src = variants.join("src").join(variant.id);
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(src.join("src")).unwrap();

    let example = root.join("plugins/example");
    for entry in std::fs::read_dir(example.join("src")).unwrap() {
        let entry = entry.unwrap();
        let mut text = std::fs::read_to_string(entry.path()).unwrap();
        if let Some(name) = variant.plugin_name {
            text = text.replace("metadata!(\"example\")", &format!("metadata!(\"{name}\")"));
        }
        if let Some(ms) = variant.token_delay_ms {
            // Every token of both generation paths (streaming and batched) is made here.
            let anchor = "fn step(&mut self, rest: &mut Vec<u32>) -> PluginResult<Next> {";
            assert!(
                entry.file_name() != "lib.rs" || text.contains(anchor),
                "lib.rs no longer contains {anchor:?}"
            );
            text = text.replace(
                anchor,
                &format!("{anchor}\nstd::thread::sleep(std::time::Duration::from_millis({ms}));"),
            );
        }
        if variant.without_batching {
            let capability = "Capability::BatchedGeneration,";
            assert!(
                entry.file_name() != "lib.rs" || text.contains(capability),
                "lib.rs no longer contains {capability:?}"
            );
            text = text.replace(capability, "");
        }
        if variant.without_root_module {
            text = text
                .replace("export_plugin!(ExamplePlugin);", "")
                .replace("export_plugin, ", "");
        }
        std::fs::write(src.join("src").join(entry.file_name()), text).unwrap();
    }

    let kit_path = match variant.api_version {
        None => root.join("plugin-kit"),
        Some(version) => {
            let api = copy_api_crate(&root, &src, version, variant.api_appends_function);
            copy_kit_crate(&root, &src, &api)
        }
    };
    let package = format!("pio-plugin-example-{}", variant.id);
    let version = variant.version.unwrap_or("0.1.0");
    std::fs::write(
        src.join("Cargo.toml"),
        format!(
            r#"[package]
name = "{package}"
version = "{version}"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
pio-plugin-kit = {{ path = "{kit}" }}
serde = {{ version = "1", features = ["derive"] }}

[workspace]
"#,
            kit = kit_path.display()
        ),
    )
    .unwrap();
    std::fs::copy(root.join("Cargo.lock"), src.join("Cargo.lock")).unwrap();

    let status = Command::new(env!("CARGO"))
        .args(["build", "--offline", "--quiet", "--manifest-path"])
        .arg(src.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(variants.join("target"))
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("cargo runs");
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

/// Copies the API crate into the variant's folder with another version number, optionally
/// appending a function `answer` to the root module.
fn copy_api_crate(
    root: &Path,
    variant_src: &Path,
    version: &str,
    append_function: bool,
) -> PathBuf {
    let api = variant_src.join("plugin-api");
    std::fs::create_dir_all(api.join("src")).unwrap();
    for entry in std::fs::read_dir(root.join("plugin-api/src")).unwrap() {
        let entry = entry.unwrap();
        let mut text = std::fs::read_to_string(entry.path()).unwrap();
        if append_function {
            text = append_root_module_function(&entry.file_name().to_string_lossy(), text);
        }
        std::fs::write(api.join("src").join(entry.file_name()), text).unwrap();
    }
    std::fs::write(
        api.join("Cargo.toml"),
        format!(
            r#"[package]
name = "pio-plugin-api"
version = "{version}"
edition = "2021"

[dependencies]
abi_stable = "0.11.3"
semver = {{ version = "1", features = ["serde"] }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"
"#
        ),
    )
    .unwrap();
    api
}

/// Copies the kit crate into the variant's folder, built against the API crate at `api`.
fn copy_kit_crate(root: &Path, variant_src: &Path, api: &Path) -> PathBuf {
    let kit = variant_src.join("plugin-kit");
    std::fs::create_dir_all(kit.join("src")).unwrap();
    for entry in std::fs::read_dir(root.join("plugin-kit/src")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), kit.join("src").join(entry.file_name())).unwrap();
    }
    std::fs::write(
        kit.join("Cargo.toml"),
        format!(
            r#"[package]
name = "pio-plugin-kit"
version = "0.1.0"
description = "The authoring kit, built against another API version."
license = "MIT OR Apache-2.0"
edition = "2021"

[dependencies]
pio-plugin-api = {{ path = "{api}" }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"
serde_path_to_error = "0.1"
"#,
            api = api.display()
        ),
    )
    .unwrap();
    kit
}

fn append_root_module_function(file: &str, text: String) -> String {
    let edit = |text: String, anchor: &str, addition: &str| {
        assert!(
            text.contains(anchor),
            "{file} no longer contains {anchor:?}"
        );
        text.replacen(anchor, &format!("{anchor}{addition}"), 1)
    };
    match file {
        "abi.rs" => edit(
            text,
            "pub new_instance: extern \"C\" fn() -> RResult<PluginInstanceBox, PluginError>,",
            "\n    /// Appended by a later API version.\n    pub answer: extern \"C\" fn() -> u32,",
        ),
        "author.rs" => {
            let text = edit(
                text,
                "new_instance: new_instance::<P>,",
                "\n        answer,",
            );
            text + "\nextern \"C\" fn answer() -> u32 {\n    42\n}\n"
        }
        _ => text,
    }
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
