//! Model surgery: which layers and heads a model can do without ([`analyze`](mod@analyze)), and
//! the model file without them ([`apply`](mod@apply)), offered as the `infer` operations
//! `surgery.analyze` and `surgery.apply` (see [`infer_analyze`], [`infer_apply`]; the shapes
//! are documented in `plugin-kit`'s crate docs so other families can answer the same ones).
//!
//! Layers are removed for real (the file shrinks, decoding gets faster); a head is silenced by
//! zeroing its output-projection columns, exact but not smaller (see [`pio_gguf::surgery`]).

pub mod analyze;
pub mod apply;
pub mod cost;

use pio_gguf::surgery::{Head, Surgery};
use pio_gguf::GgufFile;
use serde::Deserialize;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::reference::ReferenceModel;
use analyze::Analysis;
use cost::Calibration;

/// Calibration positions `surgery.analyze` traces when the request does not say.
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// Candidates of each kind whose removal `surgery.analyze` measures when the request does not
/// say.
pub const DEFAULT_MEASURE: usize = 4;

/// A `surgery.analyze` request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnalyzeRequest {
    /// Calibration text.
    text: String,
    /// At most this many of its tokens are traced.
    #[serde(default = "default_max_tokens")]
    max_tokens: usize,
    /// Measure the perplexity without each of this many lowest-scoring layers, and heads.
    #[serde(default = "default_measure")]
    measure: usize,
}

fn default_max_tokens() -> usize {
    DEFAULT_MAX_TOKENS
}

fn default_measure() -> usize {
    DEFAULT_MEASURE
}

/// A `surgery.apply` request: heads are `[layer, head]` pairs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyRequest {
    /// The file to write.
    out: std::path::PathBuf,
    #[serde(default)]
    remove_layers: Vec<usize>,
    #[serde(default)]
    remove_heads: Vec<(usize, usize)>,
    #[serde(default)]
    keep_layers: Vec<usize>,
    #[serde(default)]
    keep_heads: Vec<(usize, usize)>,
}

fn heads(pairs: &[(usize, usize)]) -> Vec<Head> {
    pairs
        .iter()
        .map(|&(layer, head)| Head { layer, head })
        .collect()
}

/// The fields of `request` but `op`, as a `T`.
fn parse<T: for<'de> Deserialize<'de>>(request: &serde_json::Value) -> Result<T> {
    let mut fields = request.clone();
    let op = fields.as_object_mut().and_then(|o| o.remove("op"));
    serde_json::from_value(fields).map_err(|e| {
        Error::InvalidParams(format!(
            "{}: {e}",
            op.as_ref().and_then(|o| o.as_str()).unwrap_or("?")
        ))
    })
}

/// `{"op": "surgery.apply", "out": PATH, "remove_layers": [N, ...], "remove_heads": [[L, H],
/// ...], "keep_layers": [N, ...], "keep_heads": [[L, H], ...]}` on the engine's model file:
/// answers [`apply::Applied`] as JSON. A bad surgery is refused before anything is written.
pub fn infer_apply(engine: &Engine, request: &serde_json::Value) -> Result<serde_json::Value> {
    let r: ApplyRequest = parse(request)?;
    let surgery = Surgery {
        remove_layers: r.remove_layers,
        remove_heads: heads(&r.remove_heads),
        keep_layers: r.keep_layers,
        keep_heads: heads(&r.keep_heads),
    };
    let file = GgufFile::open(&engine.summary().path)?;
    let applied = apply::apply(&file, &surgery, &r.out)?;
    Ok(serde_json::to_value(applied).expect("plain fields serialize"))
}

/// `{"op": "surgery.analyze", "text": TEXT, "max_tokens": N, "measure": K}`: the first
/// `max_tokens` (default [`DEFAULT_MAX_TOKENS`]) tokens of `text` traced through the CPU
/// reference of the engine's model file, then the perplexity of those tokens on the GPU
/// without each of the `measure` (default [`DEFAULT_MEASURE`]) lowest-scoring layers and
/// heads, one at a time.
///
/// Answers `{"tokens", "baseline_perplexity", "layers": [{"layer", "block_influence",
/// "perplexity_without"?}], "heads": [{"layer", "head", "importance",
/// "perplexity_without"?}]}`, each list least important first (see [`analyze::analyze`]).
pub fn infer_analyze(engine: &Engine, request: &serde_json::Value) -> Result<serde_json::Value> {
    let r: AnalyzeRequest = parse(request)?;
    let (mut tokens, bos) = engine.text_tokens(&r.text)?;
    tokens.truncate(r.max_tokens);
    if tokens.len() < 2 {
        return Err(Error::InvalidParams(format!(
            "surgery.analyze needs at least 2 calibration tokens, the text has {}",
            tokens.len()
        )));
    }
    let path = &engine.summary().path;
    let file = GgufFile::open(path)?;
    let traced: Vec<u32> = bos.into_iter().chain(tokens.iter().copied()).collect();
    let mut reference = ReferenceModel::load(&file, traced.len())?;
    let analysis = analyze::analyze(&mut reference, &traced);
    drop(reference);

    let calibration = Calibration {
        tokens: &tokens,
        bos,
        device: &engine.options().device,
    };
    let baseline = calibration.perplexity(path)?;
    measured(&analysis, &calibration, &file, r.measure, baseline)
}

/// The analysis as JSON, with the perplexity without each of the first `k` layers and heads.
fn measured(
    analysis: &Analysis,
    calibration: &Calibration,
    file: &GgufFile,
    k: usize,
    baseline: f64,
) -> Result<serde_json::Value> {
    let mut answer = serde_json::to_value(analysis).expect("plain fields serialize");
    answer["baseline_perplexity"] = baseline.into();
    for (i, layer) in analysis.layers.iter().take(k).enumerate() {
        let surgery = Surgery {
            remove_layers: vec![layer.layer],
            ..Surgery::default()
        };
        answer["layers"][i]["perplexity_without"] =
            calibration.perplexity_after(file, &surgery)?.into();
    }
    for (i, head) in analysis.heads.iter().take(k).enumerate() {
        let surgery = Surgery {
            remove_heads: vec![Head {
                layer: head.layer,
                head: head.head,
            }],
            ..Surgery::default()
        };
        answer["heads"][i]["perplexity_without"] =
            calibration.perplexity_after(file, &surgery)?.into();
    }
    Ok(answer)
}

#[cfg(test)]
mod tests;
