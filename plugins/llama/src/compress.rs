//! Compressing an active model's weights: the model loaded again with its matrices stored in
//! another type ([`WeightStorage::Convert`]), the perplexity of a calibration text measured
//! before and after so that the caller sees what the compression cost.

use std::sync::LazyLock;

use pio_gpu::WeightDtype;

use crate::engine::Engine;
use crate::error::Result;
use crate::perplexity::Style;
use crate::storage::WeightStorage;

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
pub static WEIGHT_FORMATS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| WeightDtype::ALL.iter().map(|d| d.name()).collect());

/// The perplexity of the calibration text, in windows of at most 512 tokens (fewer when the
/// model's context is shorter).
pub fn calibration_perplexity(engine: &mut Engine) -> Result<f64> {
    let window = engine.model().context().min(512);
    Ok(engine
        .perplexity(calibration_text(), window, Style::Plain)?
        .perplexity)
}

/// What [`compress_weights`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightCompression {
    /// Device bytes of the weights before and after.
    pub bytes: (u64, u64),
    /// Calibration perplexity before and after.
    pub perplexity: (f64, f64),
}

/// `engine`'s model loaded again with its weights stored as `weights`, and what that changed.
/// `engine` is untouched (it keeps serving if this fails); the caller replaces it.
pub fn compress_weights(
    engine: &mut Engine,
    weights: WeightStorage,
) -> Result<(Engine, WeightCompression)> {
    let before = calibration_perplexity(engine)?;
    let mut compressed = engine.reloaded(weights)?;
    let after = calibration_perplexity(&mut compressed)?;
    let bytes = (
        engine.summary().weight_bytes,
        compressed.summary().weight_bytes,
    );
    Ok((
        compressed,
        WeightCompression {
            bytes,
            perplexity: (before, after),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::LoadOptions;
    use crate::test_model::{tiny_file, TinyConfig};

    #[test]
    fn the_calibration_text_is_the_gpl_preamble() {
        let text = calibration_text();
        assert!(text.starts_with("                    GNU GENERAL PUBLIC LICENSE"));
        assert!((2300..=2400).contains(&text.len()), "{}", text.len());
        assert!(WEIGHT_FORMATS.contains(&"q8_0") && WEIGHT_FORMATS.contains(&"f16"));
    }

    /// A tiny random f32 model compressed to Q8_0: a quarter-and-a-bit of the matrices'
    /// bytes (9 words per 32 weights against 32), the perplexity measured on both.
    #[test]
    fn weights_compress_to_q8_0_with_both_perplexities() {
        let dir = tempfile::tempdir().unwrap();
        let path = tiny_file(&dir, &TinyConfig::default());
        let options = LoadOptions {
            context_length: 64,
            ..LoadOptions::default()
        };
        let mut engine = Engine::load(&path, options).unwrap();
        let q8 = WeightStorage::Convert(WeightDtype::Q8_0);
        let (compressed, report) = compress_weights(&mut engine, q8).unwrap();
        assert_eq!(compressed.summary().weights, q8);
        let (before, after) = report.bytes;
        assert_eq!(before, engine.summary().weight_bytes);
        assert!(after < before / 2, "{after} vs {before}");
        let (p0, p1) = report.perplexity;
        assert!(p0.is_finite() && p1.is_finite() && p0 > 1.0 && p1 > 1.0);
        // Q8_0 moves a random model's logits a little: its perplexity by well under 10%.
        assert!((p1 / p0 - 1.0).abs() < 0.1, "{p0} -> {p1}");
    }
}
