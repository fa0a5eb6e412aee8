//! Compressing an active model: the model loaded again with its tensors stored differently
//! ([`Storage`]: the weight matrices in another type, the KV cache in f16), the perplexity of a
//! calibration text measured before and after so that the caller sees what the compression
//! cost. The engine being compressed serves until the new one is ready; both are in memory
//! meanwhile.

use std::sync::LazyLock;

use pio_gpu::{KvType, WeightDtype};
use pio_plugin_kit::{
    CategoryCompression, Compression, CompressionScope, MemoryCategory, QualityChange,
};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::memory::MemoryNeeds;
use crate::perplexity::Style;
use crate::storage::{Storage, WeightStorage};

/// The calibration text: the opening of the GNU GPL v3 (a public text, the one
/// `tests/fidelity.rs` measures against transformers), about 500 tokens.
fn calibration_text() -> &'static str {
    const TEXT: &str = include_str!("../tests/data/gpl-3.0.txt");
    const BYTES: usize = 2400;
    let end = (0..=BYTES)
        .rev()
        .find(|&i| TEXT.is_char_boundary(i))
        .unwrap_or(0);
    &TEXT[..end]
}

/// The weight formats a model can be compressed to: every type the kernels read.
static WEIGHT_FORMATS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| WeightDtype::ALL.iter().map(|d| d.name()).collect());

/// The formats `scope` can be stored in: every weight type the kernels read, or every KV cache
/// type.
pub fn formats(scope: CompressionScope) -> &'static [&'static str] {
    match scope {
        CompressionScope::Weights => &WEIGHT_FORMATS,
        CompressionScope::KvCache => &KvType::NAMES,
    }
}

/// The perplexity of the calibration text, in windows of at most 512 tokens (fewer when the
/// model's context is shorter).
pub fn calibration_perplexity(engine: &mut Engine) -> Result<f64> {
    let window = engine.model().context().min(512);
    Ok(engine
        .perplexity(calibration_text(), window, Style::Plain)?
        .perplexity)
}

/// The storage `engine` would have with `scope` in `format` (one of [`formats`]).
fn target(engine: &Engine, format: &str, scope: CompressionScope) -> Result<Storage> {
    let mut storage = engine.options().storage;
    match scope {
        CompressionScope::Weights => {
            storage.weights = WeightStorage::from_name(format).map_err(Error::InvalidParams)?
        }
        CompressionScope::KvCache => {
            storage.kv = KvType::from_name(format).map_err(Error::InvalidParams)?
        }
    }
    Ok(storage)
}

/// `engine`'s model loaded again with `scope` stored in `format` (one of [`formats`]), and
/// what that changed: device bytes of the weights and of the KV caches (the model's own and
/// the batched sequences' pool, as configured) before and after, and the calibration
/// perplexity. `engine` is untouched (it keeps serving if this fails); the caller replaces
/// it. Refused while batched sequences are open: they hold blocks of the old pool.
pub fn compress(
    engine: &mut Engine,
    format: &str,
    scope: CompressionScope,
) -> Result<(Engine, Compression)> {
    let open = engine.kv_pool().in_use();
    if open > 0 {
        return Err(Error::InvalidParams(format!(
            "cannot compress while batched sequences are open ({open} KV blocks held): retry \
             when they have finished"
        )));
    }
    let storage = target(engine, format, scope)?;
    let before = calibration_perplexity(engine)?;
    let mut compressed = engine.reloaded(storage)?;
    let after = calibration_perplexity(&mut compressed)?;
    let category = |category, bytes: fn(&MemoryNeeds) -> u64| CategoryCompression {
        category,
        bytes_before: bytes(&engine.memory_needs()),
        bytes_after: bytes(&compressed.memory_needs()),
    };
    let report = Compression {
        method: format!("{format} {}", scope.as_str()),
        categories: vec![
            category(MemoryCategory::Weights, |n| n.weights),
            category(MemoryCategory::KvCache, |n| n.kv_cache + n.batch_cache),
        ],
        quality: Some(QualityChange {
            metric: "perplexity".to_owned(),
            before,
            after,
        }),
    };
    Ok((compressed.compressed_by(report.clone()), report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_model::tiny_engine;

    fn bytes(report: &Compression, category: MemoryCategory) -> (u64, u64) {
        let c = report
            .categories
            .iter()
            .find(|c| c.category == category)
            .unwrap();
        (c.bytes_before, c.bytes_after)
    }

    #[test]
    fn the_calibration_text_is_the_gpl_preamble() {
        let text = calibration_text();
        assert!(text.starts_with("                    GNU GENERAL PUBLIC LICENSE"));
        assert!((2300..=2400).contains(&text.len()), "{}", text.len());
        let weights = formats(CompressionScope::Weights);
        assert!(weights.contains(&"q8_0") && weights.contains(&"f16"));
        assert_eq!(formats(CompressionScope::KvCache), ["f32", "f16"]);
    }

    /// A tiny random model (matrices of five types, f32 among them) compressed to Q8_0: the
    /// weights shrink, the KV cache does not change, the perplexity is measured on both.
    #[test]
    fn weights_compress_to_q8_0_with_both_perplexities() {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = tiny_engine(&dir);
        let (compressed, report) =
            compress(&mut engine, "q8_0", CompressionScope::Weights).unwrap();
        assert_eq!(
            compressed.summary().weights,
            WeightStorage::Convert(WeightDtype::Q8_0)
        );
        assert_eq!(report.method, "q8_0 weights");
        let (before, after) = bytes(&report, MemoryCategory::Weights);
        assert_eq!(before, engine.summary().weight_bytes);
        assert_eq!(after, compressed.summary().weight_bytes);
        assert!(after < before, "{after} vs {before}");
        let (kv_before, kv_after) = bytes(&report, MemoryCategory::KvCache);
        assert_eq!(kv_before, kv_after);
        let quality = report.quality.unwrap();
        let (p0, p1) = (quality.before, quality.after);
        assert!(p0.is_finite() && p1.is_finite() && p0 > 1.0 && p1 > 1.0);
        // Q8_0 moves a random model's logits a little: its perplexity by well under 10%.
        assert!((p1 / p0 - 1.0).abs() < 0.1, "{p0} -> {p1}");
    }

    /// The KV cache in f16 halves both caches' bytes, keeps the weights, and keeps the
    /// perplexity within 1% (each cached value rounded once, 2⁻¹¹ relative).
    #[test]
    fn the_kv_cache_compresses_to_f16() {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = tiny_engine(&dir);
        let (compressed, report) = compress(&mut engine, "f16", CompressionScope::KvCache).unwrap();
        assert_eq!(compressed.options().storage.kv, KvType::F16);
        let (kv_before, kv_after) = bytes(&report, MemoryCategory::KvCache);
        assert_eq!(kv_after * 2, kv_before);
        let (w_before, w_after) = bytes(&report, MemoryCategory::Weights);
        assert_eq!(w_before, w_after);
        let quality = report.quality.unwrap();
        assert!(
            (quality.after / quality.before - 1.0).abs() < 0.01,
            "{quality:?}"
        );
    }

    #[test]
    fn a_format_the_kernels_do_not_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = tiny_engine(&dir);
        let error = compress(&mut engine, "q3_k", CompressionScope::Weights)
            .err()
            .unwrap();
        assert!(error.to_string().contains("q3_k"), "{error}");
    }
}
