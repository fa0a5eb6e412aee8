//! Layer removal by Block Influence against naive choices: for each count of layers removed,
//! the layers chosen by lowest Block Influence (ShortGPT), the last layers, and random layers
//! (fixed seeds), each cut model's perplexity (llama.cpp style), file size and decode speed.
//! Prints one JSON object per line; `scripts/surgery_plot.py` turns them into the plot and
//! table of `docs/benchmarks.md`.
//!
//! ```text
//! cargo run -p pio-plugin-llama --example surgery_sweep -- \
//!     MODEL CALIBRATION_TEXT EVALUATION_TEXT [COUNTS, default 1,2,4,6] [SEEDS, default 1]
//! ```
//!
//! Block Influence is measured once on the full model over the first 256 tokens of the
//! calibration text (the CPU reference), as ShortGPT does; perplexity in plain style (every
//! token scored, windows of 512 tokens) over the evaluation text; decode speed as `pio bench`
//! measures it (a 32-token prompt, then 16 greedy tokens).

use std::path::Path;
use std::time::Instant;

use pio_gguf::surgery::Surgery;
use pio_gguf::GgufFile;
use pio_plugin_llama::bench::{bench_run, BenchConfig};
use pio_plugin_llama::engine::{Engine, LoadOptions};
use pio_plugin_llama::perplexity::Style;
use pio_plugin_llama::reference::ReferenceModel;
use pio_plugin_llama::surgery::{analyze::analyze, apply::apply};

/// `n` distinct layers of `0..layers`, drawn with an xorshift generator seeded by `seed`.
fn random_layers(layers: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut chosen = Vec::new();
    while chosen.len() < n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let layer = (state % layers as u64) as usize;
        if !chosen.contains(&layer) {
            chosen.push(layer);
        }
    }
    chosen.sort_unstable();
    chosen
}

/// Perplexity, file size and decode speed of the model at `path`.
fn measure(path: &Path, text: &str) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let options = LoadOptions {
        context_length: 512,
        kv_blocks: 1,
        ..LoadOptions::default()
    };
    let mut engine = Engine::load(path, options)?;
    let start = Instant::now();
    let ppl = engine.perplexity(text, 512, Style::Plain)?;
    let ppl_s = start.elapsed().as_secs_f64();
    let config = BenchConfig {
        prompt_lengths: Vec::new(),
        decode_prompt: 32,
        decode_tokens: 16,
    };
    let bench = bench_run(engine.model_mut(), &config)?;
    Ok(serde_json::json!({
        "perplexity": ppl.perplexity,
        "scored_tokens": ppl.scored_tokens,
        "perplexity_seconds": ppl_s,
        "bytes": std::fs::metadata(path)?.len(),
        "decode_tok_s": bench.decode.decode_tok_s,
    }))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, calibration, evaluation, rest @ ..] = args.as_slice() else {
        return Err(
            "usage: surgery_sweep MODEL CALIBRATION_TEXT EVALUATION_TEXT [1,2,4,6] [1,2,3]".into(),
        );
    };
    let list = |i: usize, default: &[u64]| -> Result<Vec<u64>, std::num::ParseIntError> {
        match rest.get(i) {
            Some(list) => list.split(',').map(str::parse).collect(),
            None => Ok(default.to_vec()),
        }
    };
    let counts: Vec<usize> = list(0, &[1, 2, 4, 6])?
        .into_iter()
        .map(|n| n as usize)
        .collect();
    let seeds = list(1, &[1])?;
    let file = GgufFile::open(model)?;
    let evaluation = std::fs::read_to_string(evaluation)?;
    let calibration = std::fs::read_to_string(calibration)?;

    // Block Influence on the full model, with the tokenizer of a loaded engine.
    let engine = Engine::load(
        Path::new(model),
        LoadOptions {
            context_length: 512,
            kv_blocks: 1,
            ..LoadOptions::default()
        },
    )?;
    let (mut tokens, bos) = engine.text_tokens(&calibration)?;
    drop(engine);
    tokens.truncate(256);
    let traced: Vec<u32> = bos.into_iter().chain(tokens).collect();
    let start = Instant::now();
    let mut reference = ReferenceModel::load(&file, traced.len())?;
    let analysis = analyze(&mut reference, &traced);
    drop(reference);
    let layers = analysis.layers.len();
    println!(
        "{}",
        serde_json::json!({
            "model": model,
            "layers": layers,
            "block_influence": analysis.layers,
            "analyze_seconds": start.elapsed().as_secs_f64(),
        })
    );

    let mut baseline = measure(Path::new(model), &evaluation)?;
    baseline["strategy"] = "none".into();
    baseline["removed"] = serde_json::json!([]);
    println!("{baseline}");

    let dir = tempfile::tempdir()?;
    let out = dir.path().join("cut.gguf");
    for &n in &counts {
        let mut by_bi: Vec<usize> = analysis.layers[..n].iter().map(|l| l.layer).collect();
        by_bi.sort_unstable();
        let mut choices = vec![
            ("block_influence".to_owned(), by_bi),
            ("last".to_owned(), (layers - n..layers).collect()),
        ];
        for &seed in &seeds {
            choices.push((format!("random_{seed}"), random_layers(layers, n, seed)));
        }
        for (strategy, removed) in choices {
            let surgery = Surgery {
                remove_layers: removed.clone(),
                ..Surgery::default()
            };
            apply(&file, &surgery, &out)?;
            let mut row = measure(&out, &evaluation)?;
            row["strategy"] = strategy.into();
            row["removed"] = serde_json::json!(removed);
            println!("{row}");
        }
    }
    Ok(())
}
