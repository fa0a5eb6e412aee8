//! A plugin's configuration: the JSON the host hands to `initialize` (the manifest's `config`
//! merged with the host's), deserialized into the author's type and validated once, so model
//! code only ever sees a valid configuration.

use pio_plugin_api::{PluginError, PluginResult};
use serde::de::DeserializeOwned;

/// A plugin's configuration type.
///
/// Derive `serde::Deserialize` (with `#[serde(default)]` for optional keys, and
/// `#[serde(deny_unknown_fields)]` to refuse misspelt ones) and, for rules serde cannot express,
/// override [`validate`](Config::validate):
///
/// ```
/// use pio_plugin_kit::Config;
///
/// #[derive(Debug, serde::Deserialize)]
/// #[serde(default, deny_unknown_fields)]
/// struct Settings {
///     dimensions: usize,
/// }
///
/// impl Default for Settings {
///     fn default() -> Self {
///         Self { dimensions: 64 }
///     }
/// }
///
/// impl Config for Settings {
///     fn validate(&self) -> Result<(), String> {
///         match self.dimensions {
///             1..=4096 => Ok(()),
///             n => Err(format!("dimensions must be in 1..=4096, got {n}")),
///         }
///     }
/// }
///
/// let error = pio_plugin_kit::parse_config::<Settings>(serde_json::json!({"dimensions": 0}));
/// assert_eq!(
///     error.unwrap_err().message.as_str(),
///     "configuration: dimensions must be in 1..=4096, got 0"
/// );
/// ```
pub trait Config: DeserializeOwned + Send + 'static {
    /// Checks what deserialization cannot; the message names the key and the allowed values.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The configuration of a plugin with nothing to configure: any JSON object (its keys are
/// ignored).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub struct NoConfig {}

impl Config for NoConfig {}

/// Deserializes and validates a configuration. Errors are `invalid_input` and name the
/// offending key by its path (`batch.slots: invalid type: string "8", expected u32`).
pub fn parse_config<C: Config>(json: serde_json::Value) -> PluginResult<C> {
    let config: C = serde_path_to_error::deserialize(json).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." {
            format!("configuration: {inner}")
        } else {
            format!("configuration: {path}: {inner}")
        };
        PluginError::invalid_input(message)
    })?;
    config
        .validate()
        .map_err(|reason| PluginError::invalid_input(format!("configuration: {reason}")))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        model: String,
        #[serde(default)]
        batch: Batch,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Batch {
        slots: u32,
    }

    impl Config for Settings {
        fn validate(&self) -> Result<(), String> {
            if self.batch.slots > 64 {
                return Err(format!(
                    "batch.slots must be at most 64, got {}",
                    self.batch.slots
                ));
            }
            Ok(())
        }
    }

    fn error(json: serde_json::Value) -> String {
        let error = parse_config::<Settings>(json).unwrap_err();
        assert_eq!(error.kind, pio_plugin_api::ErrorKind::InvalidInput);
        error.message.into_string()
    }

    #[test]
    fn a_valid_configuration_parses() {
        let settings: Settings = parse_config(json!({"model": "m.gguf"})).unwrap();
        assert_eq!(
            (settings.model.as_str(), settings.batch.slots),
            ("m.gguf", 0)
        );
    }

    #[test]
    fn errors_name_the_key_by_its_path() {
        assert_eq!(
            error(json!({"model": "m", "batch": {"slots": "8"}})),
            "configuration: batch.slots: invalid type: string \"8\", expected u32"
        );
        assert_eq!(error(json!({})), "configuration: missing field `model`");
        assert_eq!(
            error(json!({"model": "m", "modle": 1})),
            "configuration: modle: unknown field `modle`, expected `model` or `batch`"
        );
        assert_eq!(
            error(json!("m.gguf")),
            "configuration: invalid type: string \"m.gguf\", expected struct Settings"
        );
    }

    #[test]
    fn validation_errors_come_after_parsing() {
        assert_eq!(
            error(json!({"model": "m", "batch": {"slots": 65}})),
            "configuration: batch.slots must be at most 64, got 65"
        );
    }

    #[test]
    fn no_config_takes_any_object_and_only_objects() {
        assert!(parse_config::<NoConfig>(json!({"whatever": 1})).is_ok());
        assert_eq!(
            parse_config::<NoConfig>(json!(3))
                .unwrap_err()
                .message
                .as_str(),
            "configuration: invalid type: integer `3`, expected struct NoConfig"
        );
    }
}
