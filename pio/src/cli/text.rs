//! `pio generate`, `pio chat` and `pio perplexity`: the text-model commands. With no plugin
//! named they use the default text plugin with the default model, fetched on first use.

use std::{
    io::{BufRead, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context;
use clap::Args;
use pio_host::{
    ChatMessage, ChatRequest, Constraint, DecodeOptions, GenerateRequest, GenerateResponse, Prompt,
    SequenceRequest, StreamControl, TokenEvent,
};

use pio_host::PluginManager;

use super::{
    run::{ActivateArgs, SamplingArgs},
    session::{fetch_default_model, load_plugins, new_manager},
    PluginDirs,
};

/// The plugin the text commands use when none is named.
pub const DEFAULT_TEXT_PLUGIN: &str = "llama";

/// Which plugin and model a text command runs on.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model file passed to the plugin (default for the `llama` plugin: SmolLM2-135M-Instruct
    /// Q4_1, fetched into the cache on first use).
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    activate: ActivateArgs,
    #[command(flatten)]
    dirs: PluginDirs,
}

/// How the plugin stores the model's weights on the device.
#[derive(Debug, Clone, Default, Args)]
pub struct WeightArgs {
    /// Store the weight matrices as TYPE (e.g. f16, q8_0, q4_0), converted as the model loads;
    /// default: as the model file stores them (the plugin's `weights` setting).
    #[arg(long, value_name = "TYPE")]
    weights: Option<String>,
}

/// How a text plugin stores the model's weights and KV cache, on which devices, and how it
/// tunes its kernels.
#[derive(Debug, Clone, Default, Args)]
pub struct StorageArgs {
    #[command(flatten)]
    weights: WeightArgs,
    /// Store the KV cache as TYPE: f32 (the default) or f16, half the memory per position
    /// (the plugin's `kv_type` setting).
    #[arg(long, value_name = "TYPE")]
    kv_type: Option<String>,
    /// How each matrix kernel's tile is chosen: auto (the default: timed per kernel shape at
    /// the first activation on an adapter, then read from the tuning cache), off (the adapter
    /// class's tiles, no search) or retune (search again, overwriting the cache) (the plugin's
    /// `tuning` setting).
    #[arg(long, value_name = "MODE")]
    pub tuning: Option<String>,
    #[command(flatten)]
    pub devices: DeviceArgs,
}

/// Which devices a text plugin splits the model's layers over.
#[derive(Debug, Clone, Default, Args)]
pub struct DeviceArgs {
    /// Split the layers over these devices, in order: adapter indices or name fragments as
    /// `pio devices` lists them, or `auto` (the default adapter); the same adapter twice is
    /// two logical devices on it, e.g. `--devices 0,0`, and `SELECTOR*N` is N of them,
    /// e.g. `--devices auto*2` (the plugin's `devices` setting).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Layers per device, in order, e.g. `--split 20,10`; default: planned from each layer's
    /// cost and each device's memory (the plugin's `split` setting).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub split: Vec<usize>,
}

impl DeviceArgs {
    /// How many devices the list names (`SELECTOR*N` counting N; a count that is not a number
    /// counts one here and is refused by the plugin).
    pub fn count(&self) -> usize {
        self.devices
            .iter()
            .map(|entry| match entry.rsplit_once('*') {
                Some((_, n)) => n.trim().parse().unwrap_or(1),
                None => 1,
            })
            .sum()
    }

    /// The first device of the list alone.
    pub fn first(&self) -> DeviceArgs {
        let first = self
            .devices
            .first()
            .map(|entry| match entry.rsplit_once('*') {
                Some((selector, _)) => selector.trim().to_owned(),
                None => entry.clone(),
            });
        DeviceArgs {
            devices: first.into_iter().collect(),
            split: Vec::new(),
        }
    }
}

impl From<WeightArgs> for StorageArgs {
    fn from(weights: WeightArgs) -> Self {
        StorageArgs {
            weights,
            ..StorageArgs::default()
        }
    }
}

/// Arguments of `pio generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// `[PLUGIN] PROMPT`: the plugin is optional (default `llama`).
    #[arg(num_args = 1..=2, required = true, value_name = "[PLUGIN] PROMPT")]
    words: Vec<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    constraint: ConstraintArgs,
    #[command(flatten)]
    model: ModelArgs,
}

/// A grammar the generated text must match (constrained decoding); at most one.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct ConstraintArgs {
    /// The output is JSON matching the JSON Schema in this file.
    #[arg(long = "json-schema", value_name = "FILE")]
    json_schema: Option<PathBuf>,
    /// The output is a JSON object.
    #[arg(long)]
    json: bool,
    /// The output matches this regular expression as a whole.
    #[arg(long, value_name = "REGEX")]
    regex: Option<String>,
    /// The output matches the grammar in this file (llguidance's Lark dialect).
    #[arg(long, value_name = "FILE")]
    grammar: Option<PathBuf>,
}

impl ConstraintArgs {
    /// The constraint the flags give, its file read.
    fn constraint(&self) -> anyhow::Result<Option<Constraint>> {
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        };
        Ok(if let Some(path) = &self.json_schema {
            Some(Constraint::JsonSchema(read(path)?))
        } else if let Some(path) = &self.grammar {
            Some(Constraint::Lark(read(path)?))
        } else if let Some(regex) = &self.regex {
            Some(Constraint::Regex(regex.clone()))
        } else {
            self.json.then_some(Constraint::JsonObject)
        })
    }
}

/// Arguments of `pio chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The plugin (default `llama`).
    plugin: Option<String>,
    /// Send this one message, print the reply and exit (no interactive session).
    #[arg(long, value_name = "TEXT")]
    message: Option<String>,
    /// A system message opening the conversation.
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    model: ModelArgs,
}

/// Arguments of `pio perplexity` (how windows are formed: see the command's help).
#[derive(Debug, Args)]
pub struct PerplexityArgs {
    /// The plugin (default `llama`).
    plugin: Option<String>,
    /// The text file to evaluate.
    #[arg(long)]
    file: PathBuf,
    /// Window length in tokens.
    #[arg(long = "ctx", default_value_t = 512)]
    window: u32,
    /// How windows are formed and scored: `plain` or `llama.cpp` (see the command's help).
    #[arg(long, value_enum, default_value_t = PerplexityStyle::Plain)]
    style: PerplexityStyle,
    /// Model file passed to the plugin (default for `llama`: SmolLM2-135M-Instruct Q4_1).
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    dirs: PluginDirs,
}

/// `pio perplexity --style`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PerplexityStyle {
    /// Every token scored once.
    Plain,
    /// llama.cpp's `llama-perplexity`: the second half of each window scored.
    #[value(name = "llama.cpp")]
    LlamaCpp,
}

impl PerplexityStyle {
    /// The name the plugin's `perplexity` op takes.
    fn name(self) -> &'static str {
        match self {
            PerplexityStyle::Plain => "plain",
            PerplexityStyle::LlamaCpp => "llama.cpp",
        }
    }
}

/// Loads the plugins with `plugin` configured for `model`, and activates `plugin`.
pub(super) fn open(
    plugin: Option<&str>,
    model: Option<&PathBuf>,
    storage: &StorageArgs,
    activate: &ActivateArgs,
    context_length: Option<u32>,
    dirs: &PluginDirs,
) -> anyhow::Result<(PluginManager, String)> {
    let plugin = plugin.unwrap_or(DEFAULT_TEXT_PLUGIN);
    let mut manager = new_manager()?;
    if model.is_none() {
        fetch_default_model(plugin)?;
    }
    set_config_overrides(&mut manager, plugin, model, storage)?;
    load_plugins(&mut manager, dirs)?;
    let id = manager.resolve(plugin)?;
    let mut options = activate.options();
    if let Some(n) = context_length {
        options.context_length = n;
    }
    activate.apply_budget(&manager);
    manager.activate(&id, &options)?;
    Ok((manager, id))
}

/// Configures `plugin` with the command line's model file, weight storage, KV cache type,
/// devices and tuning mode, where given.
pub(super) fn set_config_overrides(
    manager: &mut PluginManager,
    plugin: &str,
    model: Option<&PathBuf>,
    storage: &StorageArgs,
) -> anyhow::Result<()> {
    let mut config = serde_json::Map::new();
    if let Some(path) = model {
        let path = path
            .canonicalize()
            .with_context(|| format!("model {}", path.display()))?;
        config.insert("model".into(), path.display().to_string().into());
    }
    if let Some(weights) = &storage.weights.weights {
        config.insert("weights".into(), weights.clone().into());
    }
    if let Some(kv_type) = &storage.kv_type {
        config.insert("kv_type".into(), kv_type.clone().into());
    }
    if let Some(tuning) = &storage.tuning {
        config.insert("tuning".into(), tuning.clone().into());
    }
    if !storage.devices.devices.is_empty() {
        config.insert("devices".into(), storage.devices.devices.clone().into());
    }
    if !storage.devices.split.is_empty() {
        config.insert("split".into(), storage.devices.split.clone().into());
    }
    if !config.is_empty() {
        manager.set_config_override(plugin, config.into());
    }
    Ok(())
}

/// A token callback that prints each piece of text as it arrives.
fn print_tokens(out: &mut impl Write) -> impl FnMut(&TokenEvent) -> StreamControl + '_ {
    move |event| match out
        .write_all(event.text.as_bytes())
        .and_then(|()| out.flush())
    {
        Ok(()) => StreamControl::Continue,
        Err(_) => StreamControl::Stop,
    }
}

fn log_response(response: &GenerateResponse) {
    let generated = response.tokens.len();
    let tok_s = if response.timings.generation_ms > 0.0 && generated > 1 {
        (generated - 1) as f64 / (response.timings.generation_ms / 1e3)
    } else {
        0.0
    };
    tracing::info!(
        prompt_tokens = response.prompt_tokens,
        generated,
        finish = response.finish_reason.as_str(),
        prompt_ms = format!("{:.0}", response.timings.prompt_ms),
        decode_tok_s = format!("{tok_s:.1}"),
        "done"
    );
}

/// `pio generate [PLUGIN] PROMPT`.
pub fn generate(args: &GenerateArgs) -> anyhow::Result<ExitCode> {
    let (plugin, prompt) = match args.words.as_slice() {
        [prompt] => (None, prompt),
        [plugin, prompt] => (Some(plugin.as_str()), prompt),
        _ => unreachable!("clap enforces one or two values"),
    };
    let m = &args.model;
    let (manager, id) = open(
        plugin,
        m.model.as_ref(),
        &m.storage,
        &m.activate,
        None,
        &m.dirs,
    )?;
    let request = GenerateRequest {
        prompt: Prompt::Text(prompt.clone()),
        params: args.sampling.params()?,
    };
    let mut stdout = std::io::stdout().lock();
    if let Some(constraint) = args.constraint.constraint()? {
        generate_constrained(&manager, &id, request, constraint, &mut stdout)?;
        println!();
        return Ok(ExitCode::SUCCESS);
    }
    let response = manager
        .generate(&id, &request, print_tokens(&mut stdout))?
        .response;
    println!();
    log_response(&response);
    Ok(ExitCode::SUCCESS)
}

/// Generates under a grammar: a sequence opened with the constraint (grammars are a sequence
/// option) and stepped alone to its end, its text printed as it comes.
fn generate_constrained(
    manager: &PluginManager,
    plugin: &str,
    request: GenerateRequest,
    constraint: Constraint,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let options = DecodeOptions {
        logprobs: None,
        constraint: Some(constraint),
    };
    let opened =
        manager.open_sequence_with(plugin, &SequenceRequest::Generate(request), &options)?;
    let (instance, generation, id) = (&opened.plugin, opened.generation, opened.response.id);
    let outcome = (|| loop {
        let steps = manager.step_sequences(instance, generation, &[id])?;
        let Some(step) = steps.first() else {
            anyhow::bail!("the plugin returned no token for its sequence");
        };
        out.write_all(step.event.text.as_bytes())?;
        out.flush()?;
        if let Some(finish) = step.finish {
            tracing::info!(
                prompt_tokens = opened.response.prompt_tokens,
                generated = step.event.index + 1,
                finish = finish.as_str(),
                "done"
            );
            return Ok(());
        }
    })();
    manager.close_sequence(instance, generation, id)?;
    outcome
}

/// `pio chat [PLUGIN]`: one message with `--message`, else an interactive session that keeps
/// the conversation's history (`/reset` clears it, `/exit` or end of input leaves).
pub fn chat(args: &ChatArgs) -> anyhow::Result<ExitCode> {
    let m = &args.model;
    let (manager, id) = open(
        args.plugin.as_deref(),
        m.model.as_ref(),
        &m.storage,
        &m.activate,
        None,
        &m.dirs,
    )?;
    let params = args.sampling.params()?;
    let opening: Vec<ChatMessage> = args
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s))
        .collect();
    let mut history = opening.clone();
    let ask = |history: &mut Vec<ChatMessage>, text: &str| -> anyhow::Result<()> {
        history.push(ChatMessage::new("user", text));
        let request = ChatRequest {
            messages: history.clone(),
            params: params.clone(),
        };
        let mut stdout = std::io::stdout().lock();
        let response = manager
            .chat(&id, &request, print_tokens(&mut stdout))?
            .response;
        println!();
        log_response(&response);
        history.push(ChatMessage::new("assistant", &response.text));
        Ok(())
    };

    if let Some(message) = &args.message {
        ask(&mut history, message)?;
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("chatting with {id}; /reset clears the history, /exit or Ctrl-D leaves");
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => history = opening.clone(),
            text => {
                if let Err(error) = ask(&mut history, text) {
                    // Keep the session: drop the failed turn and report.
                    history.pop();
                    eprintln!("error: {error:#}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `pio perplexity [PLUGIN] --file F --ctx N [--style S]`: prints `PPL = <number>`.
pub fn perplexity(args: &PerplexityArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let result = model_perplexity(
        args.plugin.as_deref(),
        args.model.as_ref(),
        &args.storage,
        &text,
        args.window,
        args.style,
        &args.dirs,
    )?;
    eprintln!(
        "{} windows of up to {} tokens, {} tokens scored",
        result.windows, args.window, result.scored_tokens
    );
    println!("PPL = {:.4}", result.perplexity);
    Ok(ExitCode::SUCCESS)
}

/// What a plugin's `perplexity` operation measured.
#[derive(Debug, Clone, Copy)]
pub struct Perplexity {
    /// exp(−mean log-probability of the scored tokens).
    pub perplexity: f64,
    /// Tokens scored.
    pub scored_tokens: u64,
    /// Windows the text was cut into.
    pub windows: u64,
}

/// The perplexity of `text` under `model` (default: the plugin's default model) run by
/// `plugin` (default: the default text plugin), in windows of `window` tokens.
pub fn model_perplexity(
    plugin: Option<&str>,
    model: Option<&PathBuf>,
    storage: &StorageArgs,
    text: &str,
    window: u32,
    style: PerplexityStyle,
    dirs: &PluginDirs,
) -> anyhow::Result<Perplexity> {
    let activate = ActivateArgs::default();
    let (manager, id) = open(plugin, model, storage, &activate, Some(window), dirs)?;
    let request = serde_json::json!({
        "op": "perplexity",
        "text": text,
        "window": window,
        "style": style.name(),
    });
    let result = manager.execute(&id, &request)?.response;
    let number = |key: &str| {
        result[key]
            .as_f64()
            .with_context(|| format!("the plugin's perplexity response has no number '{key}'"))
    };
    Ok(Perplexity {
        perplexity: number("perplexity")?,
        scored_tokens: number("scored_tokens")? as u64,
        windows: number("windows")? as u64,
    })
}
