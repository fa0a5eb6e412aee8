//! How close embeddings computed with compressed weights are to the f32 ones: the measure of
//! the `compress` call and the `compare_compression` infer operation.
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

/// How closely embeddings computed with one weight storage type agree with f32 ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    /// The storage type.
    pub dtype: WeightDtype,
    /// Lowest and mean cosine similarity between an input's two embeddings.
    pub min_cosine: f64,
    /// Mean cosine similarity over the inputs.
    pub mean_cosine: f64,
    /// Device bytes of the weights in this type.
    pub weight_bytes: u64,
    /// Milliseconds to embed the inputs.
    pub ms: f64,
}

/// Embeds `inputs` with f32 weights and with each of `dtypes` on `gpu` (loading the model
/// from `files` for each, one at a time), and reports how each agrees with f32.
pub fn agreement(
    gpu: &Arc<Gpu>,
    files: &ModelFiles,
    max_batch: usize,
    inputs: &[String],
    dtypes: &[WeightDtype],
) -> PluginResult<Vec<Agreement>> {
    let run = |dtype: WeightDtype| -> PluginResult<(Vec<Vec<f32>>, u64, f64)> {
        let mut embedder = Embedder::new(Arc::clone(gpu), files, dtype, max_batch)?;
        let weight_bytes = embedder.model().weight_bytes();
        let start = Instant::now();
        let vectors = embedder.embed(inputs)?.vectors;
        Ok((vectors, weight_bytes, start.elapsed().as_secs_f64() * 1e3))
    };
    let (reference, _, _) = run(WeightDtype::F32)?;
    dtypes
        .iter()
        .map(|&dtype| {
            let (vectors, weight_bytes, ms) = run(dtype)?;
            let cosines: Vec<f64> = vectors
                .iter()
                .zip(&reference)
                .map(|(a, b)| cosine(a, b))
                .collect();
            Ok(Agreement {
                dtype,
                min_cosine: cosines.iter().copied().fold(f64::INFINITY, f64::min),
                mean_cosine: cosines.iter().sum::<f64>() / cosines.len() as f64,
                weight_bytes,
                ms,
            })
        })
        .collect()
}

/// [`agreement`] on the built-in sentences.
pub fn default_agreement(
    gpu: &Arc<Gpu>,
    files: &ModelFiles,
    max_batch: usize,
    dtypes: &[WeightDtype],
) -> PluginResult<Vec<Agreement>> {
    let inputs: Vec<String> = DEFAULT_INPUTS.iter().map(|s| (*s).to_owned()).collect();
    agreement(gpu, files, max_batch, &inputs, dtypes)
}

/// The `compare_compression` operation: [`agreement`] of the request's inputs and formats.
pub fn compare_compression(
    gpu: &Arc<Gpu>,
    files: &ModelFiles,
    max_batch: usize,
    request: &Value,
) -> PluginResult<Value> {
    let (inputs, formats) = parse_request(request)?;
    let results: Vec<Value> = agreement(gpu, files, max_batch, &inputs, &formats)?
        .into_iter()
        .map(|a| {
            json!({
                "weights": a.dtype.name(),
                "min_cosine": a.min_cosine,
                "mean_cosine": a.mean_cosine,
                "weight_bytes": a.weight_bytes,
                "ms": a.ms,
            })
        })
        .collect();
    Ok(json!({
        "reference": "f32",
        "inputs": inputs.len(),
        "results": results,
    }))
}
