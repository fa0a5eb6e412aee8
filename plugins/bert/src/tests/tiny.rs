//! A small random-weight BERT written to a temporary directory (safetensors, config files and a
//! WordPiece tokenizer.json): the whole GPU forward against the CPU reference, the plugin's
//! lifecycle, and clear errors for broken model directories.

use std::path::Path;

use pio_gpu::WeightDtype;
use pio_plugin_api::serde_json::{json, Value};
use pio_plugin_api::{ActivateOptions, EmbedRequest, ErrorKind, Plugin};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::{gpu, max_rel_error, random_f32, rng};
use crate::compare::cosine;
use crate::embedder::{Embedder, ModelFiles};
use crate::plugin::BertPlugin;
use crate::reference;
use crate::settings::WEIGHT_DTYPES;

const WORDS: [&str; 20] = [
    "the", "cat", "sat", "on", "mat", "a", "dog", "##s", "run", ".", ",", "hello", "world", "gp",
    "##u", "fast", "is", "and", "big", "small",
];
const HIDDEN: usize = 32;
const HEADS: usize = 4;
const LAYERS: usize = 2;
const FFN: usize = 64;
const POSITIONS: usize = 16;
const MAX_SEQ: usize = 12;

fn vocab_size() -> usize {
    4 + WORDS.len()
}

fn tokenizer_json() -> Value {
    let mut vocab = serde_json_map();
    for (i, token) in ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        .iter()
        .chain(WORDS.iter())
        .enumerate()
    {
        vocab.insert((*token).to_owned(), json!(i));
    }
    let special = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": {"max_length": 4, "strategy": "LongestFirst", "stride": 0,
                       "direction": "Right"},
        "padding": null,
        "added_tokens": [special(0, "[PAD]"), special(1, "[UNK]"), special(2, "[CLS]"),
                         special(3, "[SEP]")],
        "normalizer": {"type": "BertNormalizer", "clean_text": true,
                       "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
            }
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    })
}

fn serde_json_map() -> pio_plugin_api::serde_json::Map<String, Value> {
    pio_plugin_api::serde_json::Map::new()
}

/// Every tensor of the tiny model: name, shape, values.
fn tensors(seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = rng(seed);
    let mut out = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        let values = random_f32(&mut rng, n, scale)
            .into_iter()
            .map(|v| v + offset)
            .collect();
        out.push((name, shape, values));
    };
    add(
        "embeddings.word_embeddings.weight".into(),
        vec![vocab_size(), HIDDEN],
        1.0,
        0.0,
    );
    add(
        "embeddings.position_embeddings.weight".into(),
        vec![POSITIONS, HIDDEN],
        0.5,
        0.0,
    );
    add(
        "embeddings.token_type_embeddings.weight".into(),
        vec![2, HIDDEN],
        0.5,
        0.0,
    );
    add("embeddings.LayerNorm.weight".into(), vec![HIDDEN], 0.2, 1.0);
    add("embeddings.LayerNorm.bias".into(), vec![HIDDEN], 0.2, 0.0);
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}");
        for name in ["query", "key", "value"] {
            add(
                format!("{p}.attention.self.{name}.weight"),
                vec![HIDDEN, HIDDEN],
                0.3,
                0.0,
            );
            add(
                format!("{p}.attention.self.{name}.bias"),
                vec![HIDDEN],
                0.1,
                0.0,
            );
        }
        add(
            format!("{p}.attention.output.dense.weight"),
            vec![HIDDEN, HIDDEN],
            0.3,
            0.0,
        );
        add(
            format!("{p}.attention.output.dense.bias"),
            vec![HIDDEN],
            0.1,
            0.0,
        );
        add(
            format!("{p}.attention.output.LayerNorm.weight"),
            vec![HIDDEN],
            0.2,
            1.0,
        );
        add(
            format!("{p}.attention.output.LayerNorm.bias"),
            vec![HIDDEN],
            0.2,
            0.0,
        );
        add(
            format!("{p}.intermediate.dense.weight"),
            vec![FFN, HIDDEN],
            0.3,
            0.0,
        );
        add(format!("{p}.intermediate.dense.bias"), vec![FFN], 0.1, 0.0);
        add(
            format!("{p}.output.dense.weight"),
            vec![HIDDEN, FFN],
            0.2,
            0.0,
        );
        add(format!("{p}.output.dense.bias"), vec![HIDDEN], 0.1, 0.0);
        add(
            format!("{p}.output.LayerNorm.weight"),
            vec![HIDDEN],
            0.2,
            1.0,
        );
        add(format!("{p}.output.LayerNorm.bias"), vec![HIDDEN], 0.2, 0.0);
    }
    out
}

fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| bytemuck::cast_slice(v).to_vec())
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn write_json(path: &Path, value: &Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, value.to_string()).unwrap();
}

/// Writes the tiny model into `dir`.
fn write_model(dir: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    write_json(
        &dir.join("config.json"),
        &json!({
            "model_type": "bert", "hidden_act": "gelu", "hidden_size": HIDDEN,
            "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
            "intermediate_size": FFN, "max_position_embeddings": POSITIONS,
            "type_vocab_size": 2, "vocab_size": vocab_size(), "layer_norm_eps": 1e-12,
            "position_embedding_type": "absolute"
        }),
    );
    write_json(
        &dir.join("sentence_bert_config.json"),
        &json!({"max_seq_length": MAX_SEQ}),
    );
    write_json(
        &dir.join("modules.json"),
        &json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        ]),
    );
    write_json(
        &dir.join("1_Pooling/config.json"),
        &json!({"word_embedding_dimension": HIDDEN, "pooling_mode_mean_tokens": true,
                "pooling_mode_cls_token": false, "pooling_mode_max_tokens": false}),
    );
    write_json(&dir.join("tokenizer.json"), &tokenizer_json());
    write_safetensors(&dir.join("model.safetensors"), tensors);
}

fn tiny_model(seed: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), &tensors(seed));
    dir
}

const TEXTS: [&str; 6] = [
    "the cat sat on the mat.",
    "dogs run",
    "",
    "hello world, the gpu is fast and big and small and the cat sat on a mat",
    "unknown words here",
    "a",
];

#[test]
fn tokenizer_truncates_to_max_seq_length_with_special_tokens() {
    let dir = tiny_model(10);
    let files = ModelFiles::load(dir.path()).unwrap();
    let tok = &files.tokenizer;
    assert_eq!(
        tok.encode("").unwrap(),
        vec![2, 3],
        "empty text is [CLS] [SEP]"
    );
    assert_eq!(tok.encode("dogs").unwrap(), vec![2, 10, 11, 3]);
    // The file's own truncation (4) is replaced by max_seq_length (12).
    let long = tok.encode(TEXTS[3]).unwrap();
    assert_eq!(long.len(), MAX_SEQ);
    assert_eq!((long[0], long[MAX_SEQ - 1]), (2, 3));
    assert_eq!(
        tok.decode(&tok.encode("dogs run").unwrap()).unwrap(),
        "dogs run"
    );
}

#[test]
fn tiny_model_gpu_matches_cpu_reference() {
    let dir = tiny_model(11);
    let files = ModelFiles::load(dir.path()).unwrap();
    let gpu = gpu();
    for dtype in WEIGHT_DTYPES {
        // max_batch 4: the 6 texts run in two packed passes of different lengths.
        let mut embedder = Embedder::new(gpu.clone(), &files, dtype, 4).unwrap();
        let got = embedder.embed(&TEXTS).unwrap();
        let mut worst_err: f64 = 0.0;
        let mut worst_cos: f64 = 1.0;
        let mut tokens = 0;
        for (text, vector) in TEXTS.iter().zip(&got.vectors) {
            let ids = files.tokenizer.encode(text).unwrap();
            tokens += ids.len();
            let want = reference::forward(&files.config, &files.weights, &ids);
            worst_err = worst_err.max(max_rel_error(vector, &want));
            worst_cos = worst_cos.min(cosine(vector, &want));
        }
        assert_eq!(got.tokens, tokens);
        println!(
            "tiny model {}: max relative error {worst_err:.2e}, min cosine {worst_cos:.8}",
            dtype.name()
        );
        // f32: two layers of kernels each within 5e-5 (see kernels.rs) → 2e-4 overall.
        // f16 / q8_0 weights are compared with the f32 reference: precision loss, not bugs.
        let (max_err, min_cos) = match dtype {
            WeightDtype::F32 => (2e-4, 0.999_999),
            WeightDtype::F16 => (5e-3, 0.9999),
            WeightDtype::Q8_0 => (3e-2, 0.999),
            other => panic!("{other:?} is not an offered weight type"),
        };
        assert!(worst_err < max_err, "{dtype:?}: error {worst_err:.2e}");
        assert!(worst_cos > min_cos, "{dtype:?}: cosine {worst_cos}");
    }
}

#[test]
fn batching_does_not_change_embeddings() {
    let dir = tiny_model(12);
    let files = ModelFiles::load(dir.path()).unwrap();
    let gpu = gpu();
    let mut batched = Embedder::new(gpu.clone(), &files, WeightDtype::F32, 32).unwrap();
    let mut single = Embedder::new(gpu, &files, WeightDtype::F32, 1).unwrap();
    let all = batched.embed(&TEXTS).unwrap().vectors;
    for (text, vector) in TEXTS.iter().zip(&all) {
        let alone = &single.embed(&[text]).unwrap().vectors[0];
        let err = max_rel_error(vector, alone);
        assert!(err < 1e-5, "{text:?}: batched vs alone differ by {err:.2e}");
    }
}

fn plugin_for(dir: &Path) -> BertPlugin {
    let mut plugin = BertPlugin::new().unwrap();
    plugin
        .initialize(json!({"model": dir.to_str().unwrap(), "weights": "f32", "max_batch": 2}))
        .unwrap();
    plugin
}

#[test]
fn plugin_embeds_tokenizes_and_reports_stats() {
    let dir = tiny_model(13);
    let mut plugin = plugin_for(dir.path());
    let request = EmbedRequest {
        inputs: TEXTS.iter().map(|t| (*t).into()).collect(),
    };
    let error = plugin.embed(&request).unwrap_err();
    assert!(error.message.contains("not active"), "{}", error.message);
    assert_eq!(plugin.tokenize("dogs", true).unwrap(), vec![2, 10, 11, 3]);
    assert_eq!(plugin.tokenize("dogs", false).unwrap(), vec![10, 11]);
    assert_eq!(plugin.detokenize(&[10, 11]).unwrap(), "dogs");
    // An id outside the vocabulary is the caller's mistake (the server answers 400), named.
    let error = plugin.detokenize(&[10, 999]).unwrap_err();
    assert_eq!(error.kind, ErrorKind::InvalidInput, "{error}");
    assert!(error.message.contains("999"), "{}", error.message);

    plugin.activate(&ActivateOptions::default()).unwrap();
    let response = plugin.embed(&request).unwrap();
    assert_eq!(response.dimensions as usize, HIDDEN);
    assert_eq!(response.embeddings.len(), TEXTS.len());
    for vector in response.embeddings.iter() {
        let norm: f32 = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    let stats = plugin.stats();
    assert!(stats.device_memory_bytes > 0);
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.tokens, u64::from(response.prompt_tokens));
    let details: Value = pio_plugin_api::serde_json::from_str(&stats.details_json).unwrap();
    assert!(details["adapter"]["name"].is_string(), "{details}");
    assert_eq!(details["model"], json!(dir.path().to_str().unwrap()));

    let compare = plugin
        .infer(json!({"op": "compare_compression", "inputs": ["the cat sat", "dogs run"]}))
        .unwrap();
    let results = compare["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for result in results {
        assert!(result["min_cosine"].as_f64().unwrap() > 0.999, "{compare}");
    }
    assert!(plugin.infer(json!({"op": "nope"})).is_err());

    plugin.deactivate().unwrap();
    assert_eq!(plugin.stats().device_memory_bytes, 0);
}

#[test]
fn memory_is_estimated_without_a_device_reported_and_cleaned_up() {
    use pio_plugin_api::{MemoryCategory, MemoryReport};
    let bytes = |report: &MemoryReport, c: MemoryCategory| {
        report
            .categories
            .iter()
            .find(|m| m.category == c)
            .map_or(0, |m| m.device_bytes)
    };
    let dir = tiny_model(5);
    let mut plugin = plugin_for(dir.path());
    let options = ActivateOptions::default();
    let estimate = plugin.estimate_memory(&options).unwrap();
    assert!(plugin.memory_report().unwrap().categories.is_empty());
    plugin.activate(&options).unwrap();
    let report = plugin.memory_report().unwrap();
    // The weights are exactly what the estimate computed from the configuration.
    assert_eq!(
        bytes(&report, MemoryCategory::Weights),
        bytes(&estimate, MemoryCategory::Weights)
    );
    assert_eq!(report.device_bytes(), plugin.stats().device_memory_bytes);
    // Two texts of the longest length fill a batch: the workspace reaches the estimate's.
    let long = "the cat sat ".repeat(64);
    let request = EmbedRequest {
        inputs: vec![long.as_str().into(), long.as_str().into()].into(),
    };
    plugin.embed(&request).unwrap();
    let report = plugin.memory_report().unwrap();
    let workspace = bytes(&report, MemoryCategory::Activations);
    assert_eq!(workspace, bytes(&estimate, MemoryCategory::Activations));
    assert!(
        report.device_bytes() <= estimate.device_bytes() + bytes(&report, MemoryCategory::Other)
    );
    let freed = plugin.force_memory_cleanup().unwrap();
    assert_eq!(freed.categories[0].device_bytes, workspace);
    assert_eq!(
        bytes(
            &plugin.memory_report().unwrap(),
            MemoryCategory::Activations
        ),
        0
    );
    // The workspace comes back with the next batch.
    plugin.embed(&request).unwrap();
    assert_eq!(
        bytes(
            &plugin.memory_report().unwrap(),
            MemoryCategory::Activations
        ),
        workspace
    );
}

#[test]
fn configuration_errors_are_clear() {
    let mut plugin = BertPlugin::new().unwrap();
    let error = plugin.initialize(json!({"weights": "f32"})).unwrap_err();
    assert!(error.message.contains("'model'"), "{}", error.message);
    let error = plugin
        .initialize(json!({"model": "/nonexistent/bert"}))
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::ModelLoad);
    assert!(
        error.message.contains("/nonexistent/bert"),
        "{}",
        error.message
    );
    let dir = tiny_model(14);
    let error = plugin
        .initialize(json!({"model": dir.path().to_str().unwrap(), "weights": "q4"}))
        .unwrap_err();
    assert!(error.message.contains("'weights'"), "{}", error.message);
}

#[test]
fn broken_model_files_are_named_in_errors() {
    // A missing tensor.
    let dir = tempfile::tempdir().unwrap();
    let mut t = tensors(15);
    t.retain(|(name, _, _)| name != "encoder.layer.1.output.dense.bias");
    write_model(dir.path(), &t);
    let error = ModelFiles::load(dir.path()).unwrap_err();
    assert!(
        error
            .message
            .contains("'encoder.layer.1.output.dense.bias' is missing"),
        "{}",
        error.message
    );

    // A tensor of the wrong shape.
    let mut t = tensors(15);
    let up = t
        .iter_mut()
        .find(|(name, _, _)| name == "encoder.layer.0.intermediate.dense.weight")
        .unwrap();
    up.1 = vec![HIDDEN, FFN];
    write_model(dir.path(), &t);
    let error = ModelFiles::load(dir.path()).unwrap_err();
    assert!(
        error
            .message
            .contains("encoder.layer.0.intermediate.dense.weight")
            && error.message.contains("shape"),
        "{}",
        error.message
    );

    // A config field missing, then a pooling width that does not match.
    write_model(dir.path(), &tensors(15));
    let config = dir.path().join("config.json");
    let mut value: Value =
        pio_plugin_api::serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    value.as_object_mut().unwrap().remove("num_attention_heads");
    write_json(&config, &value);
    let error = ModelFiles::load(dir.path()).unwrap_err();
    assert!(
        error.message.contains("config.json")
            && error.message.contains("'num_attention_heads' is missing"),
        "{}",
        error.message
    );

    write_model(dir.path(), &tensors(15));
    write_json(
        &dir.path().join("1_Pooling/config.json"),
        &json!({"word_embedding_dimension": 7, "pooling_mode_mean_tokens": true}),
    );
    let error = ModelFiles::load(dir.path()).unwrap_err();
    assert!(
        error.message.contains("word_embedding_dimension"),
        "{}",
        error.message
    );

    // A tokenizer that does not match the model's vocabulary.
    write_model(dir.path(), &tensors(15));
    let mut value: Value =
        pio_plugin_api::serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    value["vocab_size"] = json!(5);
    write_json(&config, &value);
    let error = ModelFiles::load(dir.path()).unwrap_err();
    assert!(
        error.message.contains("tokenizer") && error.message.contains("vocab_size"),
        "{}",
        error.message
    );
}

#[test]
fn compressing_the_weights_reports_bytes_and_cosine_and_keeps_embedding() {
    use pio_plugin_api::{CompressionRequest, CompressionScope, MemoryCategory};
    let dir = tiny_model(21);
    let mut plugin = plugin_for(dir.path());
    plugin.activate(&ActivateOptions::default()).unwrap();
    let request = EmbedRequest {
        inputs: TEXTS.iter().map(|t| (*t).into()).collect(),
    };
    let before = plugin.embed(&request).unwrap();
    assert_eq!(plugin.compression_stats().unwrap(), None);

    let q8 = CompressionRequest {
        scope: CompressionScope::Weights,
        format: "q8_0".into(),
    };
    let report = plugin.compress(&q8).unwrap();
    assert_eq!(report.method.as_str(), "q8_0 weights");
    let weights = report.categories[0];
    assert_eq!(weights.category, MemoryCategory::Weights);
    // Only the linear layers are quantized (embeddings and norms stay f32): smaller, not 4x.
    assert!(weights.bytes_after < weights.bytes_before, "{weights:?}");
    let quality = report.quality.clone().into_option().unwrap();
    // f32 against itself, then Q8_0 against f32 on the built-in sentences.
    assert!((quality.before - 1.0).abs() < 1e-6, "{quality:?}");
    assert!(
        quality.after < quality.before && quality.after > 0.99,
        "{quality:?}"
    );
    assert_eq!(plugin.compression_stats().unwrap(), Some(report));
    let details: Value =
        pio_plugin_api::serde_json::from_str(&plugin.stats().details_json).unwrap();
    assert_eq!(details["weights"], "q8_0");
    let after = plugin.embed(&request).unwrap();
    for (a, b) in after.embeddings.iter().zip(before.embeddings.iter()) {
        assert!(cosine(a, b) > 0.99);
    }

    // What the plugin cannot do is refused with what it can.
    for (scope, format) in [
        (CompressionScope::Weights, "q4_0"),
        (CompressionScope::KvCache, "f16"),
    ] {
        let request = CompressionRequest {
            scope,
            format: format.into(),
        };
        let error = plugin.compress(&request).unwrap_err();
        assert_eq!(error.kind, ErrorKind::InvalidInput);
        assert!(
            error.message.contains("supported formats: f32, f16, q8_0"),
            "{}",
            error.message
        );
    }
}
