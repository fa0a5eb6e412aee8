//! `pio surgery analyze|apply MODEL`: which layers and attention heads a model can do without,
//! and the model file without them. Both run through the plugin that serves the model (its
//! `surgery.analyze` and `surgery.apply` operations), so every family a plugin knows can be
//! operated on, and the family's own rules (Gemma 3's layer pattern) stay in the plugin.

use std::{path::PathBuf, process::ExitCode, str::FromStr};

use anyhow::{bail, Context};
use bytesize::ByteSize;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{
    run::ActivateArgs,
    text::{open, StorageArgs, DEFAULT_TEXT_PLUGIN},
    PluginDirs,
};

/// The surgery subcommands.
#[derive(Debug, Subcommand)]
pub enum SurgeryCommand {
    /// Score every layer (Block Influence) and attention head (share of the residual stream it
    /// moves) on calibration text, least important first, and measure the perplexity without
    /// each of the first few that are not kept.
    Analyze(AnalyzeArgs),
    /// Write the model without some layers (removed, the rest renumbered) and query heads
    /// (removed from the projections: their rows of attn_q, their columns of attn_output).
    ///
    /// Grouped-query attention stays exact: a key/value head left with no query head is
    /// removed with its group, and the groups left are cut into parts of their greatest common
    /// divisor, the key/value head copied for each part, so every layer's groups stay equal
    /// and every query head reads the keys and values it read before (SmolLM2, 9 query heads
    /// over 3: removing one head of a layer leaves groups of 3, 3 and 2, so that layer gets 8
    /// key/value heads, more KV cache; removing one head of each group keeps 3). The file
    /// records head_count and head_count_kv per layer, as llama.cpp's per-layer keys do.
    Apply(ApplyArgs),
}

/// Which plugin serves the model.
#[derive(Debug, Args)]
pub struct Target {
    /// The GGUF model.
    model: PathBuf,
    /// The plugin that runs it.
    #[arg(long, default_value = DEFAULT_TEXT_PLUGIN)]
    plugin: String,
    #[command(flatten)]
    dirs: PluginDirs,
}

/// Arguments of `pio surgery analyze`.
#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    target: Target,
    /// Calibration text file [default: the GNU GPL v3 from byte 12 000 on, embedded in the
    /// Llama plugin (plugins/llama/tests/data/gpl-3.0.txt, the text the perplexity numbers
    /// of docs/benchmarks.md are measured on; its first 1300 bytes are their evaluation
    /// text)].
    #[arg(long, value_name = "FILE")]
    text: Option<PathBuf>,
    /// Trace at most this many tokens of the text (on the CPU: about 1 s per token for a
    /// 135M-parameter model).
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,
    /// Measure the perplexity without each of this many lowest-scoring layers, and heads.
    #[arg(long, default_value_t = 4)]
    measure: u32,
    /// Heads to list (all with --json).
    #[arg(long, default_value_t = 10)]
    heads: usize,
    /// Layers (`N`) and heads (`L.H`) that must stay: ranked and marked kept, never measured
    /// as candidates (a kept layer's heads are kept; a layer with a kept head is not a
    /// candidate for removal whole).
    #[arg(long, value_delimiter = ',', value_name = "N|L.H,...")]
    keep: Vec<Keep>,
    /// Print the plugin's answer as JSON.
    #[arg(long)]
    json: bool,
}

/// A query head, `LAYER.HEAD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadArg(usize, usize);

impl FromStr for HeadArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |n: &str| n.parse::<usize>().ok();
        match s.split_once('.').map(|(l, h)| (parse(l), parse(h))) {
            Some((Some(layer), Some(head))) => Ok(HeadArg(layer, head)),
            _ => Err(format!("`{s}` is not LAYER.HEAD (e.g. 3.1)")),
        }
    }
}

/// Something `--keep` preserves: a whole layer (`N`) or a head (`LAYER.HEAD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// A layer, whole.
    Layer(usize),
    /// A query head.
    Head(HeadArg),
}

impl FromStr for Keep {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<usize>() {
            Ok(layer) => Ok(Keep::Layer(layer)),
            Err(_) => s
                .parse()
                .map(Keep::Head)
                .map_err(|_| format!("`{s}` is neither a layer N nor a head LAYER.HEAD")),
        }
    }
}

/// Arguments of `pio surgery apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    target: Target,
    /// Layers to remove, e.g. `24,25` (numbered as in MODEL).
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    remove_layers: Vec<usize>,
    /// Query heads to remove, `LAYER.HEAD`, e.g. `3.1,7.0` (numbered as in MODEL; at least
    /// one head must stay in each layer).
    #[arg(long, value_delimiter = ',', value_name = "L.H,...")]
    remove_heads: Vec<HeadArg>,
    /// Layers (`N`) and heads (`L.H`) that must stay; removing one of them is an error.
    #[arg(long, value_delimiter = ',', value_name = "N|L.H,...")]
    keep: Vec<Keep>,
    /// The file to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// Runs a surgery subcommand.
pub fn surgery(command: &SurgeryCommand) -> anyhow::Result<ExitCode> {
    match command {
        SurgeryCommand::Analyze(args) => analyze(args),
        SurgeryCommand::Apply(args) => apply(args),
    }
}

/// `request` through the plugin of `target`, activated with a context of `context` positions.
fn call(target: &Target, context: u32, request: &Value) -> anyhow::Result<Value> {
    let (manager, id) = open(
        Some(&target.plugin),
        Some(&target.model),
        &StorageArgs::default(),
        &ActivateArgs::default(),
        Some(context),
        &target.dirs,
    )?;
    Ok(manager.execute(&id, request)?.response)
}

fn heads(list: &[HeadArg]) -> Vec<[usize; 2]> {
    list.iter().map(|h| [h.0, h.1]).collect()
}

/// The layers and heads of a `--keep` list.
fn split_keep(keep: &[Keep]) -> (Vec<usize>, Vec<[usize; 2]>) {
    let (mut layers, mut kept_heads) = (Vec::new(), Vec::new());
    for keep in keep {
        match *keep {
            Keep::Layer(n) => layers.push(n),
            Keep::Head(h) => kept_heads.push(h),
        }
    }
    (layers, heads(&kept_heads))
}

fn apply(args: &ApplyArgs) -> anyhow::Result<ExitCode> {
    if args.remove_layers.is_empty() && args.remove_heads.is_empty() {
        bail!("nothing to remove: give --remove-layers and/or --remove-heads");
    }
    let (keep_layers, keep_heads) = split_keep(&args.keep);
    let out =
        std::path::absolute(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
    let request = json!({
        "op": "surgery.apply",
        "out": out,
        "remove_layers": args.remove_layers,
        "remove_heads": heads(&args.remove_heads),
        "keep_layers": keep_layers,
        "keep_heads": keep_heads,
    });
    // Nothing is decoded: the smallest context.
    let applied = call(&args.target, 16, &request)?;
    let count = |key: &str| applied[key].as_u64().unwrap_or(0);
    println!(
        "wrote {}: {} of {} layers, {} → {}",
        out.display(),
        count("layers_after"),
        count("layers_before"),
        ByteSize(count("bytes_before")),
        ByteSize(count("bytes_after")),
    );
    if !args.remove_layers.is_empty() {
        println!(
            "removed layers {} (the others renumbered from 0)",
            join(&args.remove_layers)
        );
    }
    if !args.remove_heads.is_empty() {
        let names: Vec<String> = args
            .remove_heads
            .iter()
            .map(|h| format!("{}.{}", h.0, h.1))
            .collect();
        let counts = |key: &str| -> Vec<usize> {
            let list = applied[key].as_array().into_iter().flatten();
            list.map(|n| n.as_u64().unwrap_or(0) as usize).collect()
        };
        println!(
            "removed heads {} from the projections; query heads per layer now {}, key/value \
             heads {}",
            names.join(", "),
            join(&counts("heads_after")),
            join(&counts("kv_heads_after"))
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn join(list: &[usize]) -> String {
    let items: Vec<String> = list.iter().map(usize::to_string).collect();
    items.join(", ")
}

fn analyze(args: &AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let (keep_layers, keep_heads) = split_keep(&args.keep);
    let mut request = json!({
        "op": "surgery.analyze",
        "max_tokens": args.max_tokens,
        "measure": args.measure,
        "keep_layers": keep_layers,
        "keep_heads": keep_heads,
    });
    // Without --text the plugin traces its default calibration text.
    if let Some(path) = &args.text {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        request["text"] = text.into();
    }
    // The calibration window: the tokens and BOS.
    let answer = call(&args.target, args.max_tokens + 1, &request)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    let baseline = answer["baseline_perplexity"].as_f64().unwrap_or(f64::NAN);
    println!(
        "{} calibration tokens; perplexity {baseline:.4}",
        answer["tokens"]
    );
    let without = |entry: &Value| match entry["perplexity_without"].as_f64() {
        Some(p) => format!("{p:.4} ({:+.1}%)", 100.0 * (p / baseline - 1.0)),
        None if entry["kept"] == true => "kept (--keep)".to_owned(),
        None => String::new(),
    };
    println!("\nrank  layer  block influence  perplexity without it");
    for (rank, layer) in answer["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        println!(
            "{:>4}  {:>5}  {:>15.6}  {}",
            rank + 1,
            layer["layer"].as_u64().unwrap_or_default(),
            layer["block_influence"].as_f64().unwrap_or(f64::NAN),
            without(layer)
        );
    }
    println!("\nrank  head   importance  perplexity without it");
    let heads = answer["heads"].as_array().into_iter().flatten();
    for (rank, head) in heads.take(args.heads).enumerate() {
        println!(
            "{:>4}  {:>5}  {:>10.6}  {}",
            rank + 1,
            format!("{}.{}", head["layer"], head["head"]),
            head["importance"].as_f64().unwrap_or(f64::NAN),
            without(head)
        );
    }
    println!(
        "\nBlock influence: 1 - mean cosine(hidden state entering, leaving) (ShortGPT). Head \
         importance: the head's share of its layer's attention output times the size of that \
         output relative to the residual stream, averaged over the tokens."
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_keep_lists_parse() {
        assert_eq!("3.1".parse::<HeadArg>(), Ok(HeadArg(3, 1)));
        assert!("3".parse::<HeadArg>().is_err());
        assert!("3.x".parse::<HeadArg>().is_err());
        assert_eq!("24".parse::<Keep>(), Ok(Keep::Layer(24)));
        assert_eq!("2.0".parse::<Keep>(), Ok(Keep::Head(HeadArg(2, 0))));
        assert!("-1".parse::<Keep>().unwrap_err().contains("neither"));
    }
}
