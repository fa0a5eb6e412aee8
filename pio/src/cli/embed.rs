//! `pio embed [PLUGIN] TEXT... | --file F`: embeddings as JSON.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Args;
use pio_host::EmbedRequest;

use super::{
    run::ActivateArgs,
    session::{fetch_default_model, load_plugins, new_manager},
    text::{set_config_overrides, StorageArgs, WeightArgs},
    PluginDirs,
};

/// The plugin `pio embed` uses when none is named.
pub const DEFAULT_EMBEDDING_PLUGIN: &str = "bert";

/// Arguments of `pio embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Embed through this plugin (default `bert`, with all-MiniLM-L6-v2 fetched on first use).
    #[arg(long)]
    plugin: Option<String>,
    /// Texts to embed.
    texts: Vec<String>,
    /// Read texts from this file, one per line (must be UTF-8).
    #[arg(long)]
    file: Option<PathBuf>,
    #[command(flatten)]
    weights: WeightArgs,
    #[command(flatten)]
    activate: ActivateArgs,
    #[command(flatten)]
    dirs: PluginDirs,
}

/// `pio embed`: prints `{"model", "dimensions", "prompt_tokens", "embeddings": [[...], ...]}`.
pub fn embed(args: &EmbedArgs) -> anyhow::Result<ExitCode> {
    let mut texts = args.texts.clone();
    if let Some(file) = &args.file {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let content = String::from_utf8(bytes)
            .with_context(|| format!("{} is not valid UTF-8", file.display()))?;
        texts.extend(content.lines().map(str::to_owned));
    }
    anyhow::ensure!(!texts.is_empty(), "nothing to embed: give texts or --file");
    let plugin = args.plugin.as_deref().unwrap_or(DEFAULT_EMBEDDING_PLUGIN);
    fetch_default_model(plugin)?;
    let mut manager = new_manager()?;
    set_config_overrides(
        &mut manager,
        plugin,
        None,
        &StorageArgs::from(args.weights.clone()),
    )?;
    load_plugins(&mut manager, &args.dirs)?;
    let id = manager.resolve(plugin)?;
    args.activate.apply_budget(&manager);
    manager.activate(&id, &args.activate.options())?;
    let request = EmbedRequest {
        inputs: texts.to_vec(),
    };
    let served = manager.embed(&id, &request)?;
    let response = served.response;
    let vectors: Vec<Vec<f32>> = response.embeddings.iter().map(|v| v.to_vec()).collect();
    let output = serde_json::json!({
        "model": served.plugin,
        "dimensions": response.dimensions,
        "prompt_tokens": response.prompt_tokens,
        "embeddings": vectors,
    });
    println!("{output}");
    Ok(ExitCode::SUCCESS)
}
