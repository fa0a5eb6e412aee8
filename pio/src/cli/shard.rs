//! `pio shard MODEL (--max-size SIZE | --max-tensors N) --out DIR`: a GGUF model cut into
//! shards in llama.cpp's split format, with a manifest of their hashes (`pio_gguf::split`);
//! `pio shard --merge FIRST_SHARD --out FILE`: a split model joined back into one file.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use anyhow::{bail, Context};
use clap::Args;
use pio_gguf::{
    split::{self, Limit, Manifest, ShardName},
    GgufFile,
};
use pio_host::memory::{format_size, parse_size};

use super::same_file;

/// Arguments of `pio shard`.
#[derive(Debug, Args)]
pub struct ShardArgs {
    /// The GGUF model to cut into shards.
    #[arg(required_unless_present = "merge", conflicts_with = "merge")]
    model: Option<PathBuf>,
    /// Most bytes per shard file, header included (e.g. 512K, 10M, 1.5GiB; K, M, G are powers
    /// of 1000 as in llama.cpp's gguf-split). A tensor larger than this is written alone in a
    /// shard of its own.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, conflicts_with = "max_tensors")]
    max_size: Option<u64>,
    /// Most tensors per shard (1: one tensor per shard).
    #[arg(long, value_name = "N")]
    max_tensors: Option<usize>,
    /// Join the split model whose first shard is FIRST_SHARD back into one GGUF file (every
    /// shard is checked against the manifest beside them, if there is one).
    #[arg(long, value_name = "FIRST_SHARD", conflicts_with_all = ["max_size", "max_tensors"])]
    merge: Option<PathBuf>,
    /// Where to write: the folder of the shards (named after MODEL), or with --merge the file.
    #[arg(long, value_name = "DIR|FILE")]
    out: PathBuf,
}

/// `pio shard`: cuts or merges, then prints what it wrote and how long it took.
pub fn shard(args: &ShardArgs) -> anyhow::Result<ExitCode> {
    match (&args.model, &args.merge) {
        (_, Some(first)) => merge(first, &args.out),
        (Some(model), None) => {
            let limit = match (args.max_size, args.max_tensors) {
                (Some(bytes), _) => Limit::Bytes(bytes),
                (None, Some(tensors)) => Limit::Tensors(tensors),
                (None, None) => {
                    bail!("say how large a shard may be: --max-size SIZE or --max-tensors N")
                }
            };
            cut(model, limit, &args.out)
        }
        (None, None) => unreachable!("clap requires MODEL unless --merge is given"),
    }
}

fn cut(model: &Path, limit: Limit, out: &Path) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let file = GgufFile::open(model)
        .with_context(|| format!("cannot read the model {}", model.display()))?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let stem = model
        .file_stem()
        .with_context(|| format!("{} has no file name", model.display()))?;
    let prefix = out.join(stem);
    let manifest = split::split(&file, limit, &prefix)
        .with_context(|| format!("cannot cut {} into shards", model.display()))?;
    let elapsed = start.elapsed();

    let sizes: Vec<u64> = manifest.shards.iter().map(|s| s.bytes).collect();
    let total: u64 = sizes.iter().sum();
    println!(
        "cut {} ({} tensors) into {} shards ({} in all) in {:.2} s",
        model.display(),
        file.tensors().len(),
        sizes.len(),
        format_size(total),
        elapsed.as_secs_f64()
    );
    println!(
        "shard sizes: smallest {}, largest {}",
        format_size(sizes.iter().copied().min().unwrap_or(0)),
        format_size(sizes.iter().copied().max().unwrap_or(0))
    );
    if let Limit::Bytes(max) = limit {
        let over = sizes.iter().filter(|&&bytes| bytes > max).count();
        match over {
            0 => {}
            1 => println!(
                "1 shard exceeds --max-size {max} bytes ({}): it holds one tensor larger than that",
                format_size(max)
            ),
            _ => println!(
                "{over} shards exceed --max-size {max} bytes ({}): each holds one tensor larger \
                 than that",
                format_size(max)
            ),
        }
    }
    let first = ShardName::new(&prefix, 0, sizes.len());
    println!("first shard: {}", first.path().display());
    println!("manifest: {}", first.manifest_path().display());
    Ok(ExitCode::SUCCESS)
}

fn merge(first: &Path, out: &Path) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let file = GgufFile::open(first)
        .with_context(|| format!("cannot read the split model {}", first.display()))?;
    let opened = start.elapsed();
    if file.shard_paths().len() == 1 {
        bail!(
            "{} is one file, not the first shard of a split model: nothing to merge",
            first.display()
        );
    }
    if file.shard_paths().any(|shard| same_file(shard, out)) {
        bail!(
            "--out {} is one of the shards; write the merged model to another file",
            out.display()
        );
    }
    let written =
        split::merge(&file, out).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "merged {} shards into {} ({}) in {:.2} s (opening and checking them: {:.2} s)",
        file.shard_paths().len(),
        out.display(),
        format_size(written.bytes),
        start.elapsed().as_secs_f64(),
        opened.as_secs_f64()
    );
    println!("sha256 {}", written.sha256);
    let manifest = ShardName::parse(first)
        .map(|name| name.manifest_path())
        .filter(|path| path.exists());
    if let Some(path) = manifest {
        let manifest = Manifest::read(&path)?;
        match manifest.original {
            Some(original) if original.sha256 == written.sha256 => {
                println!("identical to the original, {}", original.file)
            }
            Some(original) => println!(
                "differs from the original {} (sha256 {}): its layout was not the one GGUF \
                 writers use, the model is the same",
                original.file, original.sha256
            ),
            None => println!("the manifest records no original file to compare with"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
