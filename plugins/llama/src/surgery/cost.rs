//! What removing a component costs: the perplexity of the calibration tokens under the model
//! with it removed, measured on the GPU ([`GpuModel`]) from a temporary surgered file.

use std::path::Path;

use pio_gguf::surgery::Surgery;
use pio_gguf::{GgufError, GgufFile};
use pio_gpu::{DeviceOptions, Gpu};

use super::apply::apply;
use crate::error::Result;
use crate::perplexity::perplexity;
use crate::runtime::{GpuModel, DEFAULT_MAX_BATCH};

/// Calibration tokens and how to score them.
#[derive(Debug, Clone)]
pub struct Calibration<'a> {
    /// The tokens, without BOS.
    pub tokens: &'a [u32],
    /// The BOS token each window starts with, when the tokenizer adds one.
    pub bos: Option<u32>,
    /// The device to measure on.
    pub device: &'a DeviceOptions,
}

impl Calibration<'_> {
    /// Perplexity of the tokens under the model in `path`, in one window from BOS (plain
    /// style: every token scored, see [`perplexity`]).
    pub fn perplexity(&self, path: &Path) -> Result<f64> {
        let file = GgufFile::open(path)?;
        let window = self.tokens.len() + usize::from(self.bos.is_some());
        let max_batch = DEFAULT_MAX_BATCH.min(window);
        let mut model = GpuModel::new(Gpu::new(self.device)?, &file, window, max_batch)?;
        Ok(perplexity(&mut model, self.tokens, window, self.bos)?.perplexity)
    }

    /// Perplexity of the tokens under `file` with `surgery` applied (written to a temporary
    /// file, deleted afterwards).
    pub fn perplexity_after(&self, file: &GgufFile, surgery: &Surgery) -> Result<f64> {
        let dir = std::env::temp_dir().join(format!("pio-surgery-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| GgufError::Io {
            path: dir.clone(),
            source,
        })?;
        let out = dir.join("candidate.gguf");
        let result = apply(file, surgery, &out).and_then(|_| self.perplexity(&out));
        // Best effort: a leftover temporary file is harmless.
        let _ = std::fs::remove_dir_all(&dir);
        result
    }
}
