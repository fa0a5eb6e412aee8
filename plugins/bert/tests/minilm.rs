//! The real all-MiniLM-L6-v2 against sentence-transformers' embeddings of the same sentences
//! (`tests/data/minilm_reference.json`, made by `tests/data/make_reference.py` outside the test
//! path). They need the model (`pio models fetch`): ignored by a plain `cargo test`, failing
//! without it when run. Without a GPU adapter they fail.

use std::path::PathBuf;
use std::sync::Arc;

use pio_gpu::{DeviceOptions, Gpu, WeightDtype};
use pio_plugin_bert::compare::cosine;
use pio_plugin_bert::{Embedder, ModelFiles};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The model directory; fails the test when it is missing.
fn require_model() -> PathBuf {
    pio_testkit::model(pio_testkit::MINILM)
}

struct Reference {
    sentences: Vec<String>,
    token_counts: Vec<usize>,
    embeddings: Vec<Vec<f32>>,
}

fn reference(dir: &std::path::Path) -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/minilm_reference.json"
    );
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let digest = Sha256::digest(std::fs::read(dir.join("model.safetensors")).unwrap());
    let sha: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        json["model_sha256"].as_str().unwrap(),
        sha,
        "the model file differs from the one the reference was made with; rerun \
         tests/data/make_reference.py"
    );
    let strings = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    Reference {
        sentences: strings(&json["sentences"]),
        token_counts: json["token_counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap() as usize)
            .collect(),
        embeddings: json["embeddings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect(),
    }
}

fn gpu() -> Arc<Gpu> {
    Arc::new(Gpu::new(&DeviceOptions::default()).unwrap_or_else(|e| {
        panic!("the MiniLM tests need a wgpu adapter (lavapipe is enough): {e}")
    }))
}

/// Embeds the reference sentences with `dtype` weights; returns the cosine with
/// sentence-transformers for each.
fn cosines(dtype: WeightDtype) -> Vec<f64> {
    let dir = require_model();
    let reference = reference(&dir);
    assert!(reference.sentences.len() >= 8);
    assert!(
        reference
            .sentences
            .iter()
            .any(|s| s.split_whitespace().count() > 256),
        "the reference must include a sentence longer than 256 tokens"
    );
    let files = ModelFiles::load(&dir).unwrap();
    for (sentence, &count) in reference.sentences.iter().zip(&reference.token_counts) {
        let ids = files.tokenizer.encode(sentence).unwrap();
        assert_eq!(ids.len(), count, "token count of {sentence:?}");
    }
    let mut embedder = Embedder::new(gpu(), &files, dtype, 4).unwrap();
    let got = embedder.embed(&reference.sentences).unwrap();
    assert_eq!(got.tokens, reference.token_counts.iter().sum::<usize>());
    let cosines: Vec<f64> = got
        .vectors
        .iter()
        .zip(&reference.embeddings)
        .map(|(a, b)| cosine(a, b))
        .collect();
    for (sentence, c) in reference.sentences.iter().zip(&cosines) {
        let shown: String = sentence.chars().take(40).collect();
        println!("{} cosine {c:.9}  {shown:?}", dtype.name());
    }
    cosines
}

#[test]
#[ignore = "needs the all-MiniLM-L6-v2 model: pio models fetch"]
fn minilm_f32_matches_sentence_transformers() {
    let cosines = cosines(WeightDtype::F32);
    let min = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(min >= 0.9999, "min cosine {min}");
}

#[test]
#[ignore = "needs the all-MiniLM-L6-v2 model: pio models fetch"]
fn minilm_f16_weights_stay_close() {
    let cosines = cosines(WeightDtype::F16);
    let min = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(min >= 0.9999, "min cosine {min}");
}

#[test]
#[ignore = "needs the all-MiniLM-L6-v2 model: pio models fetch"]
fn minilm_q8_0_weights_stay_close() {
    let cosines = cosines(WeightDtype::Q8_0);
    let min = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(min >= 0.999, "min cosine {min}");
}
