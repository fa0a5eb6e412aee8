//! Sentence-embedding throughput of all-MiniLM-L6-v2: 256 short sentences embedded in batches
//! of 1, 8 and 32, compared with sentence-transformers on this machine.
//!
//! `cargo bench -p pio-plugin-bert --bench embed [-- f32|f16|q8_0]`
//! (the model must have been fetched: `pio models fetch all-minilm-l6-v2`; `PIO_MODEL_DIR`
//! overrides its location).

use std::path::PathBuf;
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

fn main() {
    let dtype = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| weight_dtype(&a).unwrap_or_else(|| panic!("unknown weight format {a:?}")))
        .unwrap_or(WeightDtype::F32);
    let dir = model_dir();
    let files = ModelFiles::load(&dir)
        .unwrap_or_else(|e| panic!("loading {}: {}", dir.display(), e.message));
    let gpu =
        Arc::new(Gpu::new(&DeviceOptions::default()).expect("a GPU adapter (lavapipe is enough)"));
    println!("adapter: {}", gpu.adapter_info());
    println!("model: {} ({} weights)", dir.display(), dtype.name());
    let mut embedder = Embedder::new(gpu, &files, dtype, 32).expect("embedder");
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
