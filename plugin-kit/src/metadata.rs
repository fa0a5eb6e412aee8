//! Plugin metadata from a builder: Cargo supplies what it knows, the kit supplies the API
//! version and the host range, the author adds capabilities, the model family and tags.

use pio_plugin_api::{
    semver::{Version, VersionReq},
    Capability, ModelInfo, PluginMetadata,
};

/// Builds a plugin's [`PluginMetadata`].
///
/// Start with [`metadata!`](crate::metadata), which reads the plugin crate's `Cargo.toml`
/// (`version`, `authors`, `license`, `description`) at the plugin's compile site:
///
/// ```
/// use pio_plugin_kit::{metadata, Capability};
///
/// let metadata = metadata!("echo")
///     .capabilities([Capability::TextGeneration])
///     .tags(["demo"])
///     .build();
/// assert_eq!(metadata.name, "echo");
/// assert_eq!(metadata.plugin_api, pio_plugin_kit::api::api_version());
/// assert!(metadata.host.matches(&pio_plugin_kit::api::api_version()));
/// ```
#[derive(Debug, Clone)]
#[must_use = "call build() to get the metadata"]
pub struct Metadata {
    metadata: PluginMetadata,
}

impl Metadata {
    /// Metadata for plugin `name` at `version` (semver, as Cargo writes it), with the API version
    /// this kit was built against and [`default_host_range`]. Prefer [`metadata!`](crate::metadata).
    ///
    /// Panics if `version` is not semver: Cargo never passes one that is not, and the panic
    /// (in `metadata`, which the glue guards) names it.
    pub fn new(name: &str, version: &str) -> Self {
        let version = Version::parse(version)
            .unwrap_or_else(|e| panic!("plugin version '{version}' is not semver: {e}"));
        Self {
            metadata: PluginMetadata {
                name: name.to_owned(),
                version,
                plugin_api: pio_plugin_api::api_version(),
                host: default_host_range(),
                author: String::new(),
                description: String::new(),
                license: String::new(),
                capabilities: Vec::new(),
                model: ModelInfo::default(),
                tags: Vec::new(),
            },
        }
    }

    /// Authors, as Cargo's `CARGO_PKG_AUTHORS` lists them (separated by `:`).
    pub fn authors(mut self, authors: &str) -> Self {
        self.metadata.author = authors
            .split(':')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect::<Vec<_>>()
            .join(", ");
        self
    }

    /// One sentence on what the plugin does.
    pub fn description(mut self, description: &str) -> Self {
        self.metadata.description = description.to_owned();
        self
    }

    /// SPDX license expression.
    pub fn license(mut self, license: &str) -> Self {
        self.metadata.license = license.to_owned();
        self
    }

    /// Host versions the plugin works with, when [`default_host_range`] is not right (a plugin
    /// that relies on a host fix names the first host with it).
    pub fn host(mut self, range: VersionReq) -> Self {
        self.metadata.host = range;
        self
    }

    /// The operation families the plugin offers: what the host will route to it.
    pub fn capabilities(mut self, capabilities: impl IntoIterator<Item = Capability>) -> Self {
        self.metadata.capabilities = capabilities.into_iter().collect();
        self
    }

    /// The model family served.
    pub fn model(mut self, model: ModelInfo) -> Self {
        self.metadata.model = model;
        self
    }

    /// Free-form search tags.
    pub fn tags<'a>(mut self, tags: impl IntoIterator<Item = &'a str>) -> Self {
        self.metadata.tags = tags.into_iter().map(str::to_owned).collect();
        self
    }

    /// The finished metadata.
    pub fn build(self) -> PluginMetadata {
        self.metadata
    }
}

/// The host versions a plugin works with unless it says otherwise: the hosts of the API band
/// the kit was built against (same major version; same minor version while the major is 0).
/// A host's version moves in step with the API band it speaks, so these are exactly the hosts
/// whose API check accepts the plugin.
pub fn default_host_range() -> VersionReq {
    let api = pio_plugin_api::api_version();
    let range = if api.major == 0 {
        format!(">={}.{}.0, <0.{}.0", api.major, api.minor, api.minor + 1)
    } else {
        format!(">={}.0.0, <{}.0.0", api.major, api.major + 1)
    };
    VersionReq::parse(&range).unwrap_or_else(|e| panic!("host range '{range}' is invalid: {e}"))
}

/// A [`Metadata`] builder filled from the calling crate's `Cargo.toml`: `version`, `authors`,
/// `license` and `description`, read with `env!` where the macro is used (the plugin crate),
/// never copied by hand. The argument is the plugin's name (what the host and clients call it;
/// usually shorter than the package name).
#[macro_export]
macro_rules! metadata {
    ($name:expr) => {
        $crate::Metadata::new($name, env!("CARGO_PKG_VERSION"))
            .authors(env!("CARGO_PKG_AUTHORS"))
            .license(env!("CARGO_PKG_LICENSE"))
            .description(env!("CARGO_PKG_DESCRIPTION"))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_fields_fill_the_metadata_and_the_kit_fills_the_versions() {
        let metadata = crate::metadata!("kit-test").build();
        assert_eq!(metadata.version.to_string(), env!("CARGO_PKG_VERSION"));
        assert_eq!(metadata.license, "MIT OR Apache-2.0");
        assert!(metadata.description.contains("authoring kit"));
        let api = pio_plugin_api::api_version();
        assert_eq!(metadata.plugin_api, api);
        assert!(metadata.host.matches(&api), "{}", metadata.host);
        let next_band = match api.major {
            0 => Version::new(0, api.minor + 1, 0),
            major => Version::new(major + 1, 0, 0),
        };
        assert!(!metadata.host.matches(&next_band), "{}", metadata.host);
    }

    #[test]
    fn cargo_authors_are_listed_with_commas() {
        let metadata = Metadata::new("a", "1.2.3")
            .authors("Ann <ann@example.org>:Bob")
            .build();
        assert_eq!(metadata.author, "Ann <ann@example.org>, Bob");
    }
}
