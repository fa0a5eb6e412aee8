//! The `compare_compression` infer operation: how close embeddings computed with compressed
//! weights are to the f32 ones.
//!
//! Request: `{"op": "compare_compression", "inputs": ["text", ...], "formats": ["f16", "q8_0"]}`
//! (`inputs` optional: a built-in set of varied sentences; `formats` optional: f16 and q8_0).
//! Response: `{"reference": "f32", "inputs": N, "results": [{"weights": "f16",
//! "min_cosine": c, "mean_cosine": c, "weight_bytes": b, "ms": t}, ...]}` where the cosines
//! compare each input's embedding with that format against f32, `weight_bytes` is the device
//! memory the model's weights take in that format and `ms` the time to embed the inputs.

use std::sync::Arc;
use std::time::Instant;

use pio_gpu::Gpu;
use pio_plugin_api::serde_json::{json, Value};
use pio_plugin_api::{PluginError, PluginResult};

use pio_gpu::WeightDtype;

use crate::embedder::{Embedder, ModelFiles};
use crate::settings::weight_dtype;

/// Inputs used when the request names none.
const DEFAULT_INPUTS: [&str; 6] = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog.",
    "Inference engines run transformer kernels as compute shaders.",
    "Il pleut depuis trois jours sur la ville.",
    "What is the capital of Australia?",
    "",
];

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(f64::MIN_POSITIVE)
}

fn parse_request(request: &Value) -> PluginResult<(Vec<String>, Vec<WeightDtype>)> {
    let inputs = match request.get("inputs") {
        None => DEFAULT_INPUTS.iter().map(|s| (*s).to_owned()).collect(),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| PluginError::invalid_input("'inputs' must be an array of strings"))?,
        Some(_) => {
            return Err(PluginError::invalid_input(
                "'inputs' must be a non-empty array of strings",
            ))
        }
    };
    let formats = match request.get("formats") {
        None => vec![WeightDtype::F16, WeightDtype::Q8_0],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().and_then(weight_dtype))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                PluginError::invalid_input("'formats' must list \"f32\", \"f16\" or \"q8_0\"")
            })?,
        Some(_) => return Err(PluginError::invalid_input("'formats' must be an array")),
    };
    Ok((inputs, formats))
}

/// Embeds the request's inputs with f32 weights and with each requested format on `gpu`
/// (reloading the model files from `files`), and reports their agreement.
pub fn compare_compression(
    gpu: &Arc<Gpu>,
    files: &ModelFiles,
    max_batch: usize,
    request: &Value,
) -> PluginResult<Value> {
    let (inputs, formats) = parse_request(request)?;
    let run = |dtype: WeightDtype| -> PluginResult<(Vec<Vec<f32>>, u64, f64)> {
        let mut embedder = Embedder::new(Arc::clone(gpu), files, dtype, max_batch)?;
        let weight_bytes = embedder.model().weight_bytes();
        let start = Instant::now();
        let vectors = embedder.embed(&inputs)?.vectors;
        Ok((vectors, weight_bytes, start.elapsed().as_secs_f64() * 1e3))
    };
    let (reference, _, _) = run(WeightDtype::F32)?;
    let mut results = Vec::new();
    for dtype in formats {
        let (vectors, weight_bytes, ms) = run(dtype)?;
        let cosines: Vec<f64> = vectors
            .iter()
            .zip(&reference)
            .map(|(a, b)| cosine(a, b))
            .collect();
        let min = cosines.iter().copied().fold(f64::INFINITY, f64::min);
        let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
        results.push(json!({
            "weights": dtype.name(),
            "min_cosine": min,
            "mean_cosine": mean,
            "weight_bytes": weight_bytes,
            "ms": ms,
        }));
    }
    Ok(json!({
        "reference": "f32",
        "inputs": inputs.len(),
        "results": results,
    }))
}
