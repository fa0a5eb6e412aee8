//! Plugin metadata: what a plugin is, which API it was built against and what it can do.
//!
//! Metadata crosses the boundary as JSON, not as an ABI struct, so later versions can add fields
//! without a layout change: unknown fields are ignored and missing optional ones take defaults.

use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};

/// An operation family a plugin offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// Continue a prompt (`generate`, `tokenize`, `detokenize`).
    TextGeneration,
    /// Answer a conversation of role/content messages (`chat`).
    Chat,
    /// Turn texts into vectors (`embed`).
    Embeddings,
    /// Decode several sequences together, one token each per step (`open_sequence`,
    /// `step_sequences`, `close_sequence`): what continuous batching needs.
    BatchedGeneration,
}

impl Capability {
    /// The kebab-case name used in manifests, tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::TextGeneration => "text-generation",
            Capability::Chat => "chat",
            Capability::Embeddings => "embeddings",
            Capability::BatchedGeneration => "batched-generation",
        }
    }
}

/// What a plugin says about the model family it serves. All fields are optional: a plugin that
/// learns the model only at initialization leaves them empty here and reports them in its stats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelInfo {
    /// Model architecture, e.g. `llama` or `bert`.
    pub architecture: Option<String>,
    /// Number of parameters.
    pub parameter_count: Option<u64>,
    /// Weight format, e.g. `Q4_1` or `f32`.
    pub quantization: Option<String>,
    /// Maximum context length in tokens.
    pub context_length: Option<u32>,
    /// Memory the plugin needs when active, in bytes.
    pub required_memory_bytes: Option<u64>,
}

/// Everything the host learns about a plugin before creating an instance of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginMetadata {
    /// Unique plugin name: lowercase letters, digits, `-` and `_`.
    pub name: String,
    /// The plugin's own version.
    pub version: Version,
    /// The `pio-plugin-api` version the plugin was compiled against (filled in by
    /// [`export_plugin!`](crate::export_plugin), never by hand).
    pub plugin_api: Version,
    /// Host versions the plugin works with.
    pub host: VersionReq,
    /// Who wrote it.
    #[serde(default)]
    pub author: String,
    /// One sentence on what it does.
    #[serde(default)]
    pub description: String,
    /// SPDX license expression.
    #[serde(default)]
    pub license: String,
    /// Operation families offered.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// The model family served.
    #[serde(default)]
    pub model: ModelInfo,
    /// Free-form search tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

impl PluginMetadata {
    /// Whether the plugin offers `capability`.
    pub fn has(&self, capability: Capability) -> bool {
        self.capabilities.contains(&capability)
    }
}

/// Checks that `name` is a valid plugin name (used by manifests and metadata alike).
pub fn validate_plugin_name(name: &str) -> Result<(), String> {
    let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "plugin name '{name}' must be 1 to 64 characters long"
        ));
    }
    if !name.chars().all(valid_char) {
        return Err(format!(
            "plugin name '{name}' may only contain lowercase letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}
