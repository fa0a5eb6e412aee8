use pio_gguf::surgery::{Head, Surgery};
use pio_gguf::{GgufFile, GgufWriter};
use pio_gpu::testing::{gpu as test_gpu, max_abs_diff};
use pio_plugin_kit::api::{ErrorKind, Plugin};

use super::analyze::analyze;
use super::apply::apply;
use crate::forward::Forward;
use crate::reference::ReferenceModel;
use crate::runtime::GpuModel;
use crate::test_model::{
    active_plugin, tiny_file, tiny_gemma3, tiny_llama, tiny_llama_bytes, LlamaPlugin, TinyConfig,
};

fn prompt() -> Vec<u32> {
    (0..17).map(|i| (i * 31 + 7) % 290).collect()
}

/// `file` with `surgery` applied, written into `dir` and opened.
fn cut(file: &GgufFile, surgery: &Surgery, dir: &tempfile::TempDir) -> GgufFile {
    let out = dir.path().join("cut.gguf");
    apply(file, surgery, &out).unwrap();
    GgufFile::open(&out).unwrap()
}

fn logits(file: &GgufFile) -> Vec<f32> {
    ReferenceModel::load(file, 32)
        .unwrap()
        .forward(&prompt(), 0, true)
        .unwrap()
}

/// Llama, and Gemma 3 with its global layer (the sixth) moved to index 3 by the removal: the
/// cut file is the reference model without those layers, bit for bit, and the GPU runs it.
#[test]
fn removed_layers_give_the_reference_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let llama = tiny_llama(&TinyConfig {
        n_layer: 4,
        ..TinyConfig::default()
    });
    let gemma = tiny_gemma3(&TinyConfig::gemma3());
    for (file, removed) in [(llama, vec![2, 0]), (gemma, vec![1, 3])] {
        let surgery = Surgery {
            remove_layers: removed.clone(),
            ..Surgery::default()
        };
        let out = cut(&file, &surgery, &dir);
        let mut expected = ReferenceModel::load(&file, 32)
            .unwrap()
            .without_layers(&removed);
        let want = expected.forward(&prompt(), 0, true).unwrap();
        assert_eq!(logits(&out), want, "{removed:?}");
        assert_ne!(logits(&file), want, "the removed layers did something");
        let mut gpu = GpuModel::new(test_gpu(), &out, 32, 8).unwrap();
        let got = gpu.forward(&prompt(), 0, true).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-3);
    }
}

#[test]
fn a_removed_head_gives_the_reference_with_it_silenced() {
    let dir = tempfile::tempdir().unwrap();
    // Heads of 32 values: whole blocks of every type the tiny model cycles through.
    let cfg = TinyConfig {
        n_layer: 3,
        n_embd: 128,
        ..TinyConfig::default()
    };
    let file = tiny_llama(&cfg);
    let surgery = Surgery {
        remove_heads: vec![Head { layer: 1, head: 2 }],
        ..Surgery::default()
    };
    let out = cut(&file, &surgery, &dir);
    let want = ReferenceModel::load(&file, 32)
        .unwrap()
        .without_head(1, 2)
        .forward(&prompt(), 0, true)
        .unwrap();
    assert!(max_abs_diff(&logits(&out), &want) < 1e-6);
    assert!(
        max_abs_diff(&logits(&file), &want) > 1e-3,
        "the head did something"
    );
    assert_eq!(
        std::fs::metadata(dir.path().join("cut.gguf"))
            .unwrap()
            .len(),
        tiny_llama_bytes(&cfg).len() as u64,
        "a silenced head keeps its bytes"
    );
}

/// `file` with layer 1's attention and feed-forward outputs all zero: an identity layer.
fn with_identity_layer(file: &GgufFile) -> GgufFile {
    let mut w = GgufWriter::new();
    for (key, value) in file.metadata() {
        w.add_metadata(key.clone(), value.clone());
    }
    for info in file.tensors() {
        let data = file.tensor(&info.name).unwrap().data.to_vec();
        let data = match info.name.as_str() {
            "blk.1.attn_output.weight" | "blk.1.ffn_down.weight" => {
                let n = info.n_elements().unwrap() as usize;
                pio_gguf::writer::quantize(info.dtype, &vec![0.0; n]).unwrap()
            }
            _ => data,
        };
        w.add_tensor(info.name.clone(), &info.dims, info.dtype, data)
            .unwrap();
    }
    GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap()
}

/// Block influence is `1 - mean cos(input, output)` of the traced states, in [0, 2]; an
/// identity layer scores 0 and ranks first, and its heads add nothing.
#[test]
fn block_influence_matches_a_direct_computation() {
    let cfg = TinyConfig {
        n_layer: 3,
        ..TinyConfig::default()
    };
    let file = with_identity_layer(&tiny_llama(&cfg));
    let tokens = prompt();
    let mut model = ReferenceModel::load(&file, 32).unwrap();
    let analysis = analyze(&mut model, &tokens);
    assert_eq!(analysis.tokens, tokens.len());

    // The same states, recorded and scored by hand.
    let mut states = vec![Vec::new(); cfg.n_layer];
    let mut triangle = true;
    model.trace(&tokens, |t| {
        states[t.layer].push((t.input.to_vec(), t.output.to_vec()));
        triangle &= t.attention_norm <= t.head_norms.iter().sum::<f64>() * (1.0 + 1e-9);
    });
    assert!(triangle, "the heads' parts sum to the attention output");
    for layer in 0..cfg.n_layer - 1 {
        for (pos, (_, out)) in states[layer].iter().enumerate() {
            assert_eq!(
                out,
                &states[layer + 1][pos].0,
                "layer {layer} feeds the next"
            );
        }
    }
    for score in &analysis.layers {
        let pairs = &states[score.layer];
        let mean_cos = pairs
            .iter()
            .map(|(x, y)| {
                let d = |a: &[f32], b: &[f32]| -> f64 {
                    a.iter().zip(b).map(|(&u, &v)| u as f64 * v as f64).sum()
                };
                d(x, y) / (d(x, x) * d(y, y)).sqrt()
            })
            .sum::<f64>()
            / pairs.len() as f64;
        assert!((score.block_influence - (1.0 - mean_cos)).abs() < 1e-12);
        assert!((0.0..=2.0).contains(&score.block_influence));
    }
    assert_eq!(analysis.layers[0].layer, 1);
    assert!(analysis.layers[0].block_influence.abs() < 1e-12);
    assert!(analysis.layers[1].block_influence > 1e-4);
    let ranked: Vec<usize> = analysis.layers.iter().map(|l| l.layer).collect();
    assert_eq!(ranked.len(), 3);
    // Layer 1's four heads add nothing; every other head something.
    let silent: Vec<_> = analysis.heads[..cfg.n_head]
        .iter()
        .map(|h| h.layer)
        .collect();
    assert_eq!(silent, [1; 4]);
    assert!(analysis.heads[..cfg.n_head]
        .iter()
        .all(|h| h.importance == 0.0));
    assert!(analysis.heads[cfg.n_head].importance > 0.0);
}

/// A tiny three-layer model written into `dir`, and the plugin serving it.
fn three_layer_plugin(dir: &tempfile::TempDir) -> (std::path::PathBuf, LlamaPlugin) {
    let cfg = TinyConfig {
        n_layer: 3,
        ..TinyConfig::default()
    };
    let path = tiny_file(dir, &cfg);
    let plugin = active_plugin(serde_json::json!({ "model": path }), 64);
    (path, plugin)
}

#[test]
fn bad_surgery_is_refused_through_the_plugin_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut plugin) = three_layer_plugin(&dir);
    let out = dir.path().join("out.gguf");
    let cases = [
        (
            serde_json::json!({"remove_layers": [0, 1, 2]}),
            "all 3 layers",
        ),
        (
            serde_json::json!({"remove_layers": [3]}),
            "layer 3 is out of range",
        ),
        (
            serde_json::json!({"remove_heads": [[0, 4]]}),
            "head 0.4 is out of range",
        ),
        (
            serde_json::json!({"remove_layers": [1], "keep_layers": [1]}),
            "both kept and removed",
        ),
        (serde_json::json!({"remove_layer": [1]}), "unknown field"),
    ];
    for (mut request, expect) in cases {
        request["op"] = "surgery.apply".into();
        request["out"] = out.display().to_string().into();
        let err = plugin.infer(request.clone()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput, "{request}");
        assert!(err.message.contains(expect), "{request}: {}", err.message);
        assert!(!out.exists(), "{request} wrote nothing");
    }
    let request = serde_json::json!({"op": "surgery.apply", "out": path, "remove_layers": [1]});
    let err = plugin.infer(request).unwrap_err();
    assert!(
        err.message.contains("is the model itself"),
        "{}",
        err.message
    );

    // A good one writes a smaller model of 2 layers.
    let request = serde_json::json!({"op": "surgery.apply", "out": out, "remove_layers": [1]});
    let applied = plugin.infer(request).unwrap();
    assert_eq!(applied["layers_after"], 2);
    assert!(applied["bytes_after"].as_u64() < applied["bytes_before"].as_u64());
    let cut = GgufFile::open(&out).unwrap();
    assert_eq!(cut.get_u32("llama.block_count").unwrap(), 2);
}

#[test]
fn analyze_through_the_plugin_ranks_every_layer_and_measures_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut plugin) = three_layer_plugin(&dir);
    let answer = plugin
        .infer(serde_json::json!({
            "op": "surgery.analyze",
            "text": "The capital of France is Paris. The cat sat on the mat.",
            "max_tokens": 12,
            "measure": 2,
        }))
        .unwrap();
    // The tiny tokenizer adds no BOS.
    assert_eq!(answer["tokens"], 12, "{answer}");
    let layers = answer["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    let baseline = answer["baseline_perplexity"].as_f64().unwrap();
    assert!(baseline > 1.0);
    for (i, layer) in layers.iter().enumerate() {
        let measured = layer.get("perplexity_without").and_then(|p| p.as_f64());
        assert_eq!(measured.is_some(), i < 2, "{layer}");
        // Without a layer, the random model predicts differently.
        assert!(measured.is_none_or(|p| p > 1.0 && p != baseline), "{layer}");
    }
    let heads = answer["heads"].as_array().unwrap();
    assert_eq!(heads.len(), 3 * 4);
    assert!(heads[0]["perplexity_without"].as_f64().is_some());
    let err = plugin
        .infer(serde_json::json!({"op": "surgery.analyze", "text": ""}))
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
}

/// SmolLM2: every one of its 30 layers scored; without the two lowest, the GPU model loads the
/// cut file, has 28 layers, and still models English text (a perplexity near the full
/// model's, far below a model that predicts nothing).
#[test]
#[ignore = "needs the SmolLM2 model: pio models fetch"]
fn smollm2_without_its_two_least_influential_layers_still_generates() {
    use crate::engine::{Engine, LoadOptions};
    use crate::perplexity::Style;

    let path = crate::test_model::smollm2();
    let file = GgufFile::open(&path).unwrap();
    let text = &include_str!("../../tests/data/gpl-3.0.txt")[..1500];
    let options = || LoadOptions {
        context_length: 256,
        kv_blocks: 1,
        ..LoadOptions::default()
    };
    let mut full = Engine::load(&path, options()).unwrap();
    let (tokens, bos) = full.text_tokens(text).unwrap();
    let traced: Vec<u32> = bos
        .into_iter()
        .chain(tokens[..24].iter().copied())
        .collect();
    let mut reference = ReferenceModel::load(&file, traced.len()).unwrap();
    let analysis = analyze(&mut reference, &traced);
    drop(reference);
    assert_eq!(analysis.layers.len(), 30);
    assert_eq!(analysis.heads.len(), 30 * 9);
    assert!(analysis
        .layers
        .iter()
        .all(|l| (0.0..=2.0).contains(&l.block_influence)));
    let lowest: Vec<usize> = analysis.layers[..2].iter().map(|l| l.layer).collect();
    eprintln!(
        "SmolLM2 lowest Block Influence: {:?}",
        &analysis.layers[..4]
    );

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cut.gguf");
    let surgery = Surgery {
        remove_layers: lowest,
        ..Surgery::default()
    };
    let applied = apply(&file, &surgery, &out).unwrap();
    assert_eq!((applied.layers_before, applied.layers_after), (30, 28));
    assert!(applied.bytes_after < applied.bytes_before);
    let mut cut = Engine::load(&out, options()).unwrap();
    assert_eq!(cut.summary().spec.hparams.n_layer, 28);
    let before = full.perplexity(text, 256, Style::Plain).unwrap().perplexity;
    let after = cut.perplexity(text, 256, Style::Plain).unwrap().perplexity;
    eprintln!("SmolLM2 perplexity: full {before:.3}, without two layers {after:.3}");
    assert!(
        after.is_finite() && after < 2.0 * before,
        "{before} → {after}"
    );
    let prompt = cut.text_tokens("The capital of France is").unwrap().0;
    let mut greedy = crate::sampler::Sampler::new(Default::default()).unwrap();
    let next = cut
        .model_mut()
        .next_token(&prompt, 0, &mut greedy, &prompt)
        .unwrap();
    assert!((next as usize) < cut.summary().spec.hparams.vocab_size);
}
