//! `pio plugins new`: writes a standalone plugin crate, built on the authoring kit, that
//! `cargo build --release`, `pio plugins pack` and `pio plugins check` accept as it is.
//!
//! The crate depends on the kit by path: the kit's sources this `pio` was built from (found
//! beside the workspace it was built in, or given with `--kit`), so it builds on a fresh
//! machine with nothing published. It also gets the workspace's `Cargo.lock`, so it builds with
//! the dependency versions `pio` was tested with (offline, when they are cached). Its README
//! says how a released plugin depends on the published kit instead.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

/// Arguments of `pio plugins new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The plugin name (lowercase letters, digits, `-` and `_`); also the crate's name.
    name: String,
    /// What the plugin does.
    #[arg(long, value_enum, default_value_t = Kind::Text)]
    kind: Kind,
    /// The directory to create the crate in (as `DIR/NAME`).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// The authoring kit's sources (`plugin-kit/` of a checkout). Default: the ones this `pio`
    /// was built from.
    #[arg(long, value_name = "DIR")]
    kit: Option<PathBuf>,
}

/// The kind of plugin a scaffold starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// Text generation, chat and batched generation (a model of `open` and `step`).
    Text,
    /// Sentence embeddings (a model of `embed`).
    Embeddings,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Embeddings => "embeddings",
        }
    }

    fn lib_rs(self) -> &'static str {
        match self {
            Kind::Text => include_str!("../../templates/text/lib.rs.in"),
            Kind::Embeddings => include_str!("../../templates/embeddings/lib.rs.in"),
        }
    }

    /// What the kit supplies beyond lifecycle, configuration and metadata.
    fn kit_extras(self) -> &'static str {
        match self {
            Kind::Text => {
                ", and `generate`, `chat` and batched sequences with stop strings, \
                 `max_new_tokens`, cancellation, timings and usage counts"
            }
            Kind::Embeddings => ", and the `embed` call",
        }
    }

    /// The README's example of running the plugin.
    fn run_example(self, name: &str) -> String {
        match self {
            Kind::Text => format!("pio run --dir plugins {name} \"Hello\""),
            Kind::Embeddings => format!("pio embed --dir plugins --plugin {name} \"Hello\""),
        }
    }
}

const CARGO_TOML: &str = include_str!("../../templates/Cargo.toml.in");
const README: &str = include_str!("../../templates/README.md.in");
/// The versions `pio` was built and tested with; cargo keeps only the entries the crate uses.
const CARGO_LOCK: &str = include_str!("../../../Cargo.lock");

/// `pio plugins new`.
pub fn new(args: &NewArgs) -> anyhow::Result<()> {
    pio_host::validate_plugin_name(&args.name).map_err(anyhow::Error::msg)?;
    let kit = match &args.kit {
        Some(kit) => kit.clone(),
        None => built_kit()?,
    };
    let kit = kit
        .canonicalize()
        .with_context(|| format!("the kit sources at {}", kit.display()))?;
    if !kit.join("Cargo.toml").is_file() {
        bail!("{} holds no crate (no Cargo.toml)", kit.display());
    }
    let root = args.dir.join(&args.name);
    if root.exists() {
        bail!(
            "{} exists already; pick another name or --dir",
            root.display()
        );
    }
    let crate_name = args.name.replace('-', "_");
    let fill = |template: &str| {
        template
            .replace("{{name}}", &args.name)
            .replace("{{crate}}", &crate_name)
            .replace("{{kind}}", args.kind.name())
            .replace(
                "{{description}}",
                &format!("The {} Inference-PIO plugin.", args.name),
            )
            .replace("{{kit_path}}", &toml_path(&kit))
            .replace("{{kit_extras}}", args.kind.kit_extras())
            .replace("{{run_example}}", &args.kind.run_example(&args.name))
    };
    let files = [
        ("Cargo.toml", fill(CARGO_TOML)),
        ("Cargo.lock", CARGO_LOCK.to_owned()),
        ("README.md", fill(README)),
        ("src/lib.rs", fill(args.kind.lib_rs())),
        (".gitignore", "/target\n/plugins\n".to_owned()),
    ];
    for (path, text) in files {
        write(&root.join(path), &text)?;
    }
    println!(
        "created the {} plugin crate {} (kit: {})\nnext: cd {} && cargo build --release",
        args.kind.name(),
        root.display(),
        kit.display(),
        root.display()
    );
    Ok(())
}

/// The kit's sources beside the workspace this `pio` was built in.
fn built_kit() -> anyhow::Result<PathBuf> {
    let kit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-kit");
    if kit.join("Cargo.toml").is_file() {
        Ok(kit)
    } else {
        bail!(
            "the authoring kit's sources are not at {} (this pio was built elsewhere): pass \
             --kit DIR with the plugin-kit folder of an Inference-PIO checkout",
            kit.display()
        )
    }
}

/// `path` as a TOML basic-string body.
fn toml_path(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
