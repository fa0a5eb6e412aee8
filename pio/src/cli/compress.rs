//! `pio compress MODEL --to SCHEME --out FILE`: a GGUF model rewritten in other storage types
//! (llama.cpp's `llama-quantize` schemes, `pio_gguf::requantize`), its size per part before and
//! after, and with `--evaluate TEXT` the perplexity of both files on that text.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use anyhow::{bail, Context};
use bytesize::ByteSize;
use clap::Args;
use pio_gguf::{
    requantize::{compress as compress_file, Scheme},
    GgufFile, TensorInfo,
};

use super::{
    same_file,
    text::{model_perplexity, PerplexityStyle, StorageArgs, DEFAULT_TEXT_PLUGIN},
    PluginDirs,
};

/// Arguments of `pio compress`.
#[derive(Debug, Args)]
pub struct CompressArgs {
    /// The GGUF model to compress.
    model: PathBuf,
    /// The scheme: f32, f16, q8_0, q6_k, q5_1, q5_k, q5_0, q4_1, q4_k_m, q4_k or q4_0 (matrices
    /// whose rows a K-quant cannot tile take llama.cpp's fallback; norms stay as they are).
    #[arg(long)]
    to: String,
    /// The file to write (refused if it is the model itself).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Also measure the perplexity of the model and of the result on this text file (with the
    /// `llama` plugin, llama.cpp-style windows of `--ctx` tokens).
    #[arg(long, value_name = "TEXT")]
    evaluate: Option<PathBuf>,
    /// Window length of `--evaluate`, in tokens.
    #[arg(long = "ctx", default_value_t = 512)]
    window: u32,
    #[command(flatten)]
    dirs: PluginDirs,
}

/// The part of a model a tensor belongs to, for the size table.
fn part(info: &TensorInfo) -> &'static str {
    let name = info.name.as_str();
    if info.dims.len() < 2 {
        "norms and vectors"
    } else if name.starts_with("token_embd") || name.starts_with("output") {
        "embedding and output"
    } else if name.contains(".attn_") {
        "attention"
    } else if name.contains(".ffn_") {
        "feed-forward"
    } else {
        "other"
    }
}

/// Bytes of each part of a model, and the tensor types found in it.
type Sizes = BTreeMap<&'static str, (u64, Vec<&'static str>)>;

/// The [`Sizes`] of `file`'s tensors.
fn sizes(file: &GgufFile) -> anyhow::Result<Sizes> {
    let mut parts = Sizes::new();
    for info in file.tensors() {
        let bytes = info
            .byte_size()
            .map_err(|e| anyhow::anyhow!("tensor `{}`: {e}", info.name))?;
        let entry = parts.entry(part(info)).or_default();
        entry.0 += bytes;
        if !entry.1.contains(&info.dtype.name()) {
            entry.1.push(info.dtype.name());
        }
    }
    Ok(parts)
}

/// `pio compress`: writes the compressed model, prints the size table (and perplexities).
pub fn compress(args: &CompressArgs) -> anyhow::Result<ExitCode> {
    let Some(scheme) = Scheme::from_name(&args.to) else {
        bail!(
            "unknown compression scheme `{}`; the schemes are {}",
            args.to,
            Scheme::NAMES.join(", ")
        );
    };
    if same_file(&args.model, &args.out) {
        bail!(
            "--out {} is the model itself; write the compressed model to another file",
            args.out.display()
        );
    }
    let text = match &args.evaluate {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => None,
    };
    let file = GgufFile::open(&args.model)
        .with_context(|| format!("cannot read the model {}", args.model.display()))?;
    let writer = compress_file(&file, scheme)
        .with_context(|| format!("cannot compress {} to {}", args.model.display(), args.to))?;
    // Written beside the target and renamed into place: an interrupted run leaves no
    // half-written model under the requested name.
    let partial = args.out.with_extension("partial");
    writer
        .write_to(&partial)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, &args.out)
        .with_context(|| format!("cannot rename {} into place", partial.display()))?;

    let compressed = GgufFile::open(&args.out)
        .with_context(|| format!("cannot read back {}", args.out.display()))?;
    print_sizes(&sizes(&file)?, &sizes(&compressed)?);
    if let Some(text) = text {
        let ppl = |model: &PathBuf| {
            model_perplexity(
                Some(DEFAULT_TEXT_PLUGIN),
                Some(model),
                &StorageArgs::default(),
                &text,
                args.window,
                PerplexityStyle::LlamaCpp,
                &args.dirs,
            )
        };
        let (before, after) = (ppl(&args.model)?, ppl(&args.out)?);
        println!(
            "perplexity ({} tokens scored, windows of {}): {:.4} -> {:.4} ({:+.2}%)",
            before.scored_tokens,
            args.window,
            before.perplexity,
            after.perplexity,
            (after.perplexity / before.perplexity - 1.0) * 100.0
        );
    }
    println!("wrote {} ({})", args.out.display(), scheme.name());
    Ok(ExitCode::SUCCESS)
}

fn print_sizes(before: &Sizes, after: &Sizes) {
    println!(
        "{:<22} {:>11} {:>11} {:>7}  types",
        "part", "before", "after", "ratio"
    );
    let mut totals = (0, 0);
    for (part, (bytes, old_types)) in before {
        let (compressed, types) = &after[part];
        totals = (totals.0 + bytes, totals.1 + compressed);
        println!(
            "{part:<22} {:>11} {:>11} {:>7.3}  {} -> {}",
            ByteSize(*bytes).to_string(),
            ByteSize(*compressed).to_string(),
            *compressed as f64 / *bytes as f64,
            old_types.join(" "),
            types.join(" ")
        );
    }
    println!(
        "{:<22} {:>11} {:>11} {:>7.3}",
        "total",
        ByteSize(totals.0).to_string(),
        ByteSize(totals.1).to_string(),
        totals.1 as f64 / totals.0 as f64
    );
}
