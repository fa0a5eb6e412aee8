//! Sentence-embedding throughput of all-MiniLM-L6-v2: 256 short sentences embedded in batches
//! of 1, 8 and 32, compared with sentence-transformers on this machine.
//!
//! `cargo bench -p pio-plugin-bert --bench embed [-- f32|f16|q8_0] [--sentences FILE]`
//! (the model must have been fetched: `pio models fetch all-minilm-l6-v2`; `PIO_MODEL_DIR`
//! overrides its location).
//!
//! With `--sentences FILE` (one sentence a line, e.g. `tests/data/apache-2.0-sentences.txt`:
//! cargo runs benches in the package's folder, `plugins/bert`) it embeds that file in one `embed` call
//! of at most 32 a pass, as `scripts/minilm-numpy` (the numpy peer) and sentence-transformers'
//! `encode(batch_size=32)` do, and reports sentences/s with and without the model load. With
//! `--per-kernel` as well it then embeds the file once more with every kernel launch timed on
//! its own ([`pio_gpu::Gpu::profile`]) and prints the time per kernel.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use pio_gpu::{DeviceOptions, Gpu, WeightDtype};
use pio_plugin_bert::settings::weight_dtype;
use pio_plugin_bert::{Embedder, ModelFiles};

/// sentence-transformers (torch, CPU, 2 threads) on this machine, sentences/s for short
/// sentences, measured by the project.
const SENTENCE_TRANSFORMERS_PER_SECOND: f64 = 320.0;
const SENTENCES: usize = 256;

fn model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PIO_MODEL_DIR") {
        return PathBuf::from(dir);
    }
    pio_testkit::models_dir().join(pio_testkit::MINILM)
}

/// 256 varied short sentences (6–12 words).
fn sentences() -> Vec<String> {
    let subjects = [
        "The cat",
        "A developer",
        "My neighbour",
        "The old train",
        "Every student",
        "This model",
        "The river",
        "Our team",
    ];
    let verbs = [
        "quickly reads",
        "carefully paints",
        "never forgets",
        "slowly crosses",
        "happily explains",
        "often visits",
        "rarely builds",
        "loudly describes",
    ];
    let objects = [
        "a long letter",
        "the morning news",
        "an empty bridge",
        "the blue house",
        "a difficult theorem",
        "the quiet garden",
        "two red apples",
        "a small village",
    ];
    let tails = [".", " before dinner.", " in the rain.", " every Sunday."];
    (0..SENTENCES)
        .map(|i| {
            format!(
                "{} {} {}{}",
                subjects[i % 8],
                verbs[(i / 8) % 8],
                objects[(i * 3 + i / 64) % 8],
                tails[(i / 2) % 4]
            )
        })
        .collect()
}

/// What the command line asks for.
struct Arguments {
    /// The weight format (first free argument, default f32).
    dtype: WeightDtype,
    /// `--sentences FILE`.
    sentences: Option<PathBuf>,
    /// `--per-kernel`: time every kernel launch of one more pass over the file.
    per_kernel: bool,
}

/// Parses the command line; `cargo bench` adds `--bench`, which is skipped.
fn arguments() -> Arguments {
    let mut dtype = WeightDtype::F32;
    let mut sentences = None;
    let mut per_kernel = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--sentences" {
            sentences = Some(PathBuf::from(args.next().expect("--sentences FILE")));
        } else if arg == "--per-kernel" {
            per_kernel = true;
        } else if !arg.starts_with('-') {
            dtype = weight_dtype(&arg).unwrap_or_else(|| panic!("unknown weight format {arg:?}"));
        }
    }
    Arguments {
        dtype,
        sentences,
        per_kernel,
    }
}

/// Embeds every line of `path` in one call (passes of at most 32, sorted longest first by the
/// embedder), after one untimed pass of the first 32, and prints sentences/s; with
/// `per_kernel`, then the time per kernel of one more such call.
fn bench_file(embedder: &mut Embedder, path: &Path, load_seconds: f64, per_kernel: bool) {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let sentences: Vec<&str> = text.lines().collect();
    embedder
        .embed(&sentences[..sentences.len().min(32)])
        .expect("embed");
    let start = Instant::now();
    let tokens = embedder.embed(&sentences).expect("embed").tokens;
    let seconds = start.elapsed().as_secs_f64();
    let count = sentences.len() as f64;
    println!(
        "{} sentences ({tokens} tokens) from {}, batch 32: {:.2} sentences/s tokenization \
         included, {:.2} with the model load ({load_seconds:.2} s)",
        sentences.len(),
        path.display(),
        count / seconds,
        count / (load_seconds + seconds)
    );
    if per_kernel {
        let (_, profile) = embedder.embed_profiled(&sentences).expect("embed");
        println!(
            "per kernel ({}, {:.1} ms in all):",
            profile.method.as_str(),
            profile.total_ms()
        );
        for k in profile.by_kernel() {
            println!(
                "  {:<48} {:>4} calls {:>9.1} ms {:>5.1}%",
                k.kernel,
                k.calls,
                k.total_ms,
                k.share * 100.0
            );
        }
    }
}

fn main() {
    let Arguments {
        dtype,
        sentences: sentence_file,
        per_kernel,
    } = arguments();
    let load_start = Instant::now();
    let dir = model_dir();
    let files = ModelFiles::load(&dir)
        .unwrap_or_else(|e| panic!("loading {}: {}", dir.display(), e.message));
    let gpu =
        Arc::new(Gpu::new(&DeviceOptions::default()).expect("a GPU adapter (lavapipe is enough)"));
    println!("adapter: {}", gpu.adapter_info());
    println!("model: {} ({} weights)", dir.display(), dtype.name());
    let mut embedder = Embedder::new(gpu, &files, dtype, 32).expect("embedder");
    if let Some(path) = sentence_file {
        bench_file(
            &mut embedder,
            &path,
            load_start.elapsed().as_secs_f64(),
            per_kernel,
        );
        return;
    }
    let sentences = sentences();
    for batch in [1usize, 8, 32] {
        // One untimed batch of this size (buffers grow to it).
        embedder.embed(&sentences[..batch]).expect("embed");
        let start = Instant::now();
        for chunk in sentences.chunks(batch) {
            embedder.embed(chunk).expect("embed");
        }
        let seconds = start.elapsed().as_secs_f64();
        let rate = SENTENCES as f64 / seconds;
        println!(
            "batch {batch:>2}: {rate:7.1} sentences/s ({:6.1} ms per batch); \
             sentence-transformers ~{SENTENCE_TRANSFORMERS_PER_SECOND} sentences/s → ratio {:.2}",
            seconds * 1e3 / sentences.len().div_ceil(batch) as f64,
            rate / SENTENCE_TRANSFORMERS_PER_SECOND
        );
    }
}
