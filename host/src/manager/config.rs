//! The configuration a plugin's `initialize` receives.

use std::path::Path;

/// Host-side configuration layered around a manifest's `config`.
#[derive(Debug, Clone, Default)]
pub(super) struct ConfigLayers {
    /// Used where neither the manifest nor the overrides set a key.
    pub defaults: Option<serde_json::Value>,
    /// Replace the manifest's keys.
    pub overrides: Option<serde_json::Value>,
}

impl ConfigLayers {
    /// Defaults, then the manifest's `config`, then the overrides (later top-level keys win),
    /// plus `plugin_dir`, the absolute plugin folder, so a plugin can resolve the relative
    /// model paths of its manifest.
    pub fn merge(&self, manifest: &serde_json::Value, dir: &Path) -> serde_json::Value {
        let mut merged = serde_json::Map::new();
        let layers = [&self.defaults, &Some(manifest.clone()), &self.overrides];
        for layer in layers.into_iter().flatten() {
            if let serde_json::Value::Object(object) = layer {
                merged.extend(object.clone());
            }
        }
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
        merged.insert("plugin_dir".to_owned(), dir.display().to_string().into());
        serde_json::Value::Object(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn layers_apply_in_order() {
        let layers = ConfigLayers {
            defaults: Some(json!({"model": "default.gguf", "threads": 2})),
            overrides: Some(json!({"threads": 8})),
        };
        let merged = layers.merge(
            &json!({"model": "mine.gguf", "threads": 4}),
            Path::new("/x"),
        );
        assert_eq!(
            merged,
            json!({"model": "mine.gguf", "threads": 8, "plugin_dir": "/x"})
        );
    }
}
