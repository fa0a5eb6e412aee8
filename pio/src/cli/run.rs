//! `pio run NAME INPUT`: one input through one plugin.

use std::{io::Write, process::ExitCode};

use anyhow::Context;
use clap::Args;
use pio_host::{
    memory::{parse_size, MemoryPolicy},
    ActivateOptions, Capability, EmbedRequest, GenerateRequest, GenerationParams, PluginManager,
    Prompt, StreamControl,
};

use super::{session::load_manager, PluginDirs};

/// Sampling flags shared by the generating commands.
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Maximum number of new tokens.
    #[arg(long = "max-tokens", default_value_t = 256)]
    max_tokens: u32,
    /// Sampling temperature; 0 means greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Top-k cutoff; 0 disables.
    #[arg(long = "top-k", default_value_t = 40)]
    top_k: u32,
    /// Top-p (nucleus) cutoff; 1 disables.
    #[arg(long = "top-p", default_value_t = 0.95)]
    top_p: f32,
    /// Min-p cutoff; 0 disables.
    #[arg(long = "min-p", default_value_t = 0.05)]
    min_p: f32,
    /// Repetition penalty; 1 disables.
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Random seed (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when this string would be generated; repeatable.
    #[arg(long = "stop", value_name = "TEXT")]
    stop: Vec<String>,
}

impl SamplingArgs {
    /// The generation parameters these flags describe, validated.
    pub fn params(&self) -> anyhow::Result<GenerationParams> {
        let params = GenerationParams {
            max_new_tokens: self.max_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            seed: self.seed,
            stop: self.stop.clone(),
        };
        params.validate()?;
        Ok(params)
    }
}

/// Device and context flags shared by the commands that activate a plugin.
#[derive(Debug, Clone, Default, Args)]
pub struct ActivateArgs {
    /// Adapter to run on: a substring of its name or its index in `pio devices`.
    #[arg(long)]
    adapter: Option<String>,
    /// Context length in tokens (default: the model's).
    #[arg(long = "ctx", default_value_t = 0)]
    context_length: u32,
    /// Device memory all plugins together may hold (`300MiB`, `1.5GB`, bytes); a plugin whose
    /// estimate exceeds it is refused before it allocates, except that the llama plugin keeps
    /// what fits and streams its other layers from the model file [default: none].
    #[arg(long, env = "PIO_MEMORY_BUDGET", value_name = "SIZE", value_parser = parse_size)]
    pub memory_budget: Option<u64>,
}

impl ActivateArgs {
    /// The activation options these flags describe.
    pub fn options(&self) -> ActivateOptions {
        ActivateOptions {
            adapter: self.adapter.clone(),
            context_length: self.context_length,
            memory_budget_bytes: self.memory_budget.unwrap_or(0),
        }
    }

    /// Gives `manager` the memory budget of these flags (for the one-shot commands; `pio serve`
    /// layers it with its configuration).
    pub fn apply_budget(&self, manager: &PluginManager) {
        manager.set_memory_policy(MemoryPolicy {
            budget: self.memory_budget,
            ..MemoryPolicy::default()
        });
    }
}

/// Arguments of `pio run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Plugin name, or `name@version`.
    name: String,
    /// A JSON object (sent to `infer`) or text (sent to `generate`, or `embed`).
    input: String,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    activate: ActivateArgs,
    #[command(flatten)]
    dirs: PluginDirs,
}

/// `pio run NAME INPUT`.
pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let manager = load_manager(&args.dirs)?;
    let summary = manager.info(&args.name)?;
    args.activate.apply_budget(&manager);
    manager.activate(&summary.id, &args.activate.options())?;
    let metadata = summary
        .metadata
        .context("plugin has no metadata (not loaded)")?;

    if let Ok(request @ serde_json::Value::Object(_)) = serde_json::from_str(&args.input) {
        let response = manager.execute(&summary.id, &request)?.response;
        println!("{}", serde_json::to_string_pretty(&response)?);
    } else if metadata.has(Capability::TextGeneration) {
        let request = GenerateRequest {
            prompt: Prompt::Text(args.input.clone()),
            params: args.sampling.params()?,
        };
        let mut stdout = std::io::stdout().lock();
        let served = manager.generate(&summary.id, &request, |event| {
            let written = stdout
                .write_all(event.text.as_bytes())
                .and_then(|()| stdout.flush());
            match written {
                Ok(()) => StreamControl::Continue,
                Err(_) => StreamControl::Stop,
            }
        })?;
        let response = served.response;
        println!();
        tracing::info!(
            tokens = response.tokens.len(),
            finish = response.finish_reason.as_str(),
            "generation done"
        );
    } else if metadata.has(Capability::Embeddings) {
        let request = EmbedRequest {
            inputs: vec![args.input.clone()],
        };
        let response = manager.embed(&summary.id, &request)?.response;
        let vectors: Vec<Vec<f32>> = response.embeddings.iter().map(|v| v.to_vec()).collect();
        println!("{}", serde_json::to_string(&vectors)?);
    } else {
        anyhow::bail!(
            "plugin '{}' offers neither text generation nor embeddings",
            args.name
        );
    }
    manager.deactivate(&summary.id)?;
    Ok(ExitCode::SUCCESS)
}
