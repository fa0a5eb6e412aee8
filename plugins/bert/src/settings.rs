//! The plugin's configuration JSON (from `initialize`), validated.
//!
//! Keys:
//! - `model` (string, required): the sentence-transformers model directory; a relative path is
//!   resolved against `plugin_dir`;
//! - `plugin_dir` (string, optional): the plugin's folder, passed by the host;
//! - `weights` (`"f32"` | `"f16"` | `"q8_0"`, default `"f32"`): device storage of the linear
//!   layers' weights;
//! - `max_batch` (integer 1..=256, default 32): most texts run in one pass.

use std::path::PathBuf;

use pio_plugin_api::serde_json::Value;
use pio_plugin_api::{PluginError, PluginResult};

use pio_gpu::WeightDtype;

use crate::embedder::DEFAULT_MAX_BATCH;

/// The weight storage types offered: those whose fidelity against sentence-transformers is
/// tested (`tests/minilm.rs`).
pub const WEIGHT_DTYPES: [WeightDtype; 3] = [WeightDtype::F32, WeightDtype::F16, WeightDtype::Q8_0];

/// The offered weight storage type called `name` (`"f32"`, `"f16"` or `"q8_0"`).
pub fn weight_dtype(name: &str) -> Option<WeightDtype> {
    WeightDtype::from_name(name).filter(|dtype| WEIGHT_DTYPES.contains(dtype))
}

/// Largest accepted `max_batch`.
const MAX_BATCH_LIMIT: u64 = 256;

/// Validated plugin configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The model directory.
    pub model: PathBuf,
    /// Storage type of the linear layers' weights on the device.
    pub weights: WeightDtype,
    /// Most texts per pass.
    pub max_batch: usize,
}

fn string<'a>(config: &'a Value, key: &str) -> PluginResult<Option<&'a str>> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(PluginError::invalid_input(format!(
            "configuration '{key}' must be a string, got {other}"
        ))),
    }
}

impl Settings {
    /// Parses the configuration object.
    pub fn from_json(config: &Value) -> PluginResult<Self> {
        if !config.is_object() {
            return Err(PluginError::invalid_input(
                "configuration must be a JSON object",
            ));
        }
        let model = string(config, "model")?.ok_or_else(|| {
            PluginError::invalid_input(
                "configuration key 'model' (the sentence-transformers model directory) is missing",
            )
        })?;
        let mut model = PathBuf::from(model);
        if model.is_relative() {
            if let Some(dir) = string(config, "plugin_dir")? {
                model = PathBuf::from(dir).join(model);
            }
        }
        let weights = match string(config, "weights")? {
            None => WeightDtype::F32,
            Some(name) => weight_dtype(name).ok_or_else(|| {
                PluginError::invalid_input(format!(
                    "configuration 'weights' must be \"f32\", \"f16\" or \"q8_0\", got {name:?}"
                ))
            })?,
        };
        let max_batch = match config.get("max_batch") {
            None => DEFAULT_MAX_BATCH,
            Some(value) => value
                .as_u64()
                .filter(|n| (1..=MAX_BATCH_LIMIT).contains(n))
                .ok_or_else(|| {
                    PluginError::invalid_input(format!(
                        "configuration 'max_batch' must be an integer in 1..={MAX_BATCH_LIMIT}, \
                         got {value}"
                    ))
                })? as usize,
        };
        Ok(Self {
            model,
            weights,
            max_batch,
        })
    }
}
