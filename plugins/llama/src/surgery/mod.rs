//! Model surgery: which layers and heads a model can do without ([`analyze`](mod@analyze)), and
//! the model file without them ([`apply`](mod@apply)), offered as the `infer` operations
//! `surgery.analyze` and `surgery.apply` (see [`infer_analyze`], [`infer_apply`]; the shapes
//! are documented in `plugin-kit`'s crate docs so other families can answer the same ones).
//!
//! Both are removed for real: a layer's tensors are dropped, a query head's rows of `attn_q`
//! and columns of `attn_output` (with the key/value heads regrouped exactly, see
//! [`pio_gguf::surgery::HeadPlan`]), so the file shrinks and decoding does less work; the
//! runtimes read the per-layer head counts such a file records ([`crate::hparams::HParams`]).

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

/// The GNU GPL v3 (a public text; `pio perplexity` and the surgery tables of
/// docs/benchmarks.md are measured on it).
const GPL3: &str = include_str!("../../tests/data/gpl-3.0.txt");

/// Where [`default_text`] starts in the GPL v3: past the 1300 bytes docs/benchmarks.md
/// evaluates perplexity on, so calibration and evaluation stay apart.
pub const DEFAULT_TEXT_START: usize = 12_000;

/// The calibration text of a `surgery.analyze` request without one: the GNU GPL v3 from byte
/// [`DEFAULT_TEXT_START`] on (about 5 000 tokens, so `max_tokens` decides how much is traced).
pub fn default_text() -> &'static str {
    &GPL3[DEFAULT_TEXT_START..]
}

/// A `surgery.analyze` request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnalyzeRequest {
    /// Calibration text ([`default_text`] when absent).
    text: Option<String>,
    /// At most this many of its tokens are traced.
    #[serde(default = "default_max_tokens")]
    max_tokens: usize,
    /// Measure the perplexity without each of this many lowest-scoring layers, and heads.
    #[serde(default = "default_measure")]
    measure: usize,
    /// Layers that must stay: ranked, never candidates.
    #[serde(default)]
    keep_layers: Vec<usize>,
    /// Heads (`[layer, head]`) that must stay: ranked, never candidates.
    #[serde(default)]
    keep_heads: Vec<(usize, usize)>,
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

/// `{"op": "surgery.analyze", "text": TEXT, "max_tokens": N, "measure": K, "keep_layers":
/// [N, ...], "keep_heads": [[L, H], ...]}`: the first `max_tokens` (default
/// [`DEFAULT_MAX_TOKENS`]) tokens of `text` (default [`default_text`]) traced through the CPU
/// reference of the engine's model file, then the perplexity of those tokens on the GPU
/// without each of the `measure` (default [`DEFAULT_MEASURE`]) lowest-scoring layers and
/// heads that are not kept, one at a time. Keep lists naming components the model does not
/// have are refused before anything is traced.
///
/// Answers `{"tokens", "baseline_perplexity", "layers": [{"layer", "block_influence", "kept",
/// "perplexity_without"?}], "heads": [{"layer", "head", "importance", "kept",
/// "perplexity_without"?}]}`, each list least important first (see [`analyze::analyze`]).
pub fn infer_analyze(engine: &Engine, request: &serde_json::Value) -> Result<serde_json::Value> {
    let r: AnalyzeRequest = parse(request)?;
    let path = &engine.summary().path;
    let file = GgufFile::open(path)?;
    let keep = Surgery {
        keep_layers: r.keep_layers,
        keep_heads: heads(&r.keep_heads),
        ..Surgery::default()
    };
    apply::check(&file, &keep)?;
    let text = r.text.as_deref().unwrap_or_else(|| default_text());
    let (mut tokens, bos) = engine.text_tokens(text)?;
    tokens.truncate(r.max_tokens);
    if tokens.len() < 2 {
        return Err(Error::InvalidParams(format!(
            "surgery.analyze needs at least 2 calibration tokens, the text has {}",
            tokens.len()
        )));
    }
    let traced: Vec<u32> = bos.into_iter().chain(tokens.iter().copied()).collect();
    let mut reference = ReferenceModel::load(&file, traced.len())?;
    let mut analysis = analyze::analyze(&mut reference, &traced);
    drop(reference);
    analysis.keep(&keep.keep_layers, &keep.keep_heads);

    let calibration = Calibration {
        tokens: &tokens,
        bos,
        device: &engine.options().device,
    };
    let baseline = calibration.perplexity(path)?;
    measured(&analysis, &calibration, &file, r.measure, baseline)
}

/// The analysis as JSON, with the perplexity without each of the first `k` layers and heads
/// that are not kept.
fn measured(
    analysis: &Analysis,
    calibration: &Calibration,
    file: &GgufFile,
    k: usize,
    baseline: f64,
) -> Result<serde_json::Value> {
    let mut answer = serde_json::to_value(analysis).expect("plain fields serialize");
    answer["baseline_perplexity"] = baseline.into();
    let candidates = analysis.layers.iter().enumerate().filter(|(_, l)| !l.kept);
    for (i, layer) in candidates.take(k) {
        let surgery = Surgery {
            remove_layers: vec![layer.layer],
            ..Surgery::default()
        };
        answer["layers"][i]["perplexity_without"] =
            calibration.perplexity_after(file, &surgery)?.into();
    }
    let candidates = analysis.heads.iter().enumerate().filter(|(_, h)| !h.kept);
    for (i, head) in candidates.take(k) {
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
