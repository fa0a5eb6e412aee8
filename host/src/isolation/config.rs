//! Where plugins run, as configured: [`IsolationLayer`] is one layer of settings (the `[isolation]`
//! table of `pio.toml`, `PIO_*` variables, flags), [`IsolationConfig`] the resolved result.

use std::{collections::BTreeMap, time::Duration};

use bytesize::ByteSize;
use serde::Deserialize;

use super::{Isolation, WorkerSettings};

/// The resolved isolation settings of a host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IsolationConfig {
    /// Where plugins run unless named in `per_plugin`.
    pub default: Isolation,
    /// Plugins (by name) that run elsewhere than `default`.
    pub per_plugin: BTreeMap<String, Isolation>,
    /// How workers are started, limited and supervised.
    pub worker: WorkerSettings,
}

impl IsolationConfig {
    /// Where the plugin `name` runs.
    pub fn of(&self, name: &str) -> Isolation {
        self.per_plugin.get(name).copied().unwrap_or(self.default)
    }
}

/// One layer of isolation settings; every field optional. In `pio.toml`:
///
/// ```toml
/// [isolation]
/// mode = "process"            # or "in-process" (the default)
/// memory_limit = "4GiB"       # address-space limit of each worker
/// cpu_limit_secs = 3600       # CPU-time limit of each worker
/// stall_timeout_secs = 300    # a call silent this long is stuck (worker killed, or instance replaced)
/// [isolation.plugins]
/// bert = "in-process"         # per plugin name
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolationLayer {
    /// See [`IsolationConfig::default`].
    pub mode: Option<Isolation>,
    /// See [`WorkerSettings::memory_limit_bytes`].
    pub memory_limit: Option<ByteSize>,
    /// See [`WorkerSettings::cpu_limit_secs`].
    pub cpu_limit_secs: Option<u64>,
    /// See [`WorkerSettings::stall_timeout`], in seconds.
    pub stall_timeout_secs: Option<u64>,
    /// See [`IsolationConfig::per_plugin`]; a lower layer's entries are kept unless this one
    /// names the same plugin.
    #[serde(default)]
    pub plugins: BTreeMap<String, Isolation>,
}

impl IsolationLayer {
    /// Reads `PIO_ISOLATION`, `PIO_WORKER_MEMORY_LIMIT`, `PIO_WORKER_CPU_LIMIT_SECS` and
    /// `PIO_WORKER_STALL_TIMEOUT_SECS` through `var`.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        fn parsed<T: std::str::FromStr>(
            var: &impl Fn(&str) -> Option<String>,
            name: &str,
        ) -> Result<Option<T>, String>
        where
            T::Err: std::fmt::Display,
        {
            var(name)
                .map(|value| {
                    value
                        .trim()
                        .parse()
                        .map_err(|e| format!("{name}: '{value}': {e}"))
                })
                .transpose()
        }
        Ok(Self {
            mode: parsed(&var, "PIO_ISOLATION")?,
            memory_limit: parsed(&var, "PIO_WORKER_MEMORY_LIMIT")?,
            cpu_limit_secs: parsed(&var, "PIO_WORKER_CPU_LIMIT_SECS")?,
            stall_timeout_secs: parsed(&var, "PIO_WORKER_STALL_TIMEOUT_SECS")?,
            plugins: BTreeMap::new(),
        })
    }

    /// This layer with `lower`'s values where this one has none.
    pub fn over(self, lower: IsolationLayer) -> IsolationLayer {
        let mut plugins = lower.plugins;
        plugins.extend(self.plugins);
        IsolationLayer {
            mode: self.mode.or(lower.mode),
            memory_limit: self.memory_limit.or(lower.memory_limit),
            cpu_limit_secs: self.cpu_limit_secs.or(lower.cpu_limit_secs),
            stall_timeout_secs: self.stall_timeout_secs.or(lower.stall_timeout_secs),
            plugins,
        }
    }

    /// The final settings, defaults where no layer set a value.
    pub fn resolve(self) -> Result<IsolationConfig, String> {
        let defaults = WorkerSettings::default();
        if self.stall_timeout_secs == Some(0) {
            return Err("isolation.stall_timeout_secs must be at least 1".to_owned());
        }
        if self.cpu_limit_secs == Some(0) {
            return Err("isolation.cpu_limit_secs must be at least 1".to_owned());
        }
        if let Some(limit) = self.memory_limit.filter(|l| l.as_u64() < 64 << 20) {
            return Err(format!(
                "isolation.memory_limit must be at least 64 MiB (a worker maps its driver), \
                 got {limit}"
            ));
        }
        Ok(IsolationConfig {
            default: self.mode.unwrap_or_default(),
            per_plugin: self.plugins,
            worker: WorkerSettings {
                memory_limit_bytes: self.memory_limit.map(|l| l.as_u64()),
                cpu_limit_secs: self.cpu_limit_secs,
                stall_timeout: self
                    .stall_timeout_secs
                    .map_or(defaults.stall_timeout, Duration::from_secs),
                ..defaults
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_merge_and_resolve() {
        let file: IsolationLayer = toml::from_str(
            "mode = \"process\"\nmemory_limit = \"2GiB\"\n[plugins]\nbert = \"in-process\"\n",
        )
        .unwrap();
        let env = IsolationLayer::from_env(|name| {
            (name == "PIO_WORKER_STALL_TIMEOUT_SECS").then(|| "30".to_owned())
        })
        .unwrap();
        let config = env.over(file).resolve().unwrap();
        assert_eq!(config.of("llama"), Isolation::Process);
        assert_eq!(config.of("bert"), Isolation::InProcess);
        assert_eq!(config.worker.memory_limit_bytes, Some(2 << 30));
        assert_eq!(config.worker.stall_timeout, Duration::from_secs(30));
    }

    #[test]
    fn bad_values_name_the_field() {
        let err = IsolationLayer::from_env(|name| (name == "PIO_ISOLATION").then(|| "vm".into()))
            .unwrap_err();
        assert!(
            err.contains("PIO_ISOLATION") && err.contains("in-process"),
            "{err}"
        );
        let err = toml::from_str::<IsolationLayer>("mode = \"sandbox\"").unwrap_err();
        assert!(err.to_string().contains("sandbox"), "{err}");
        let tiny = IsolationLayer {
            memory_limit: Some(ByteSize::kib(1)),
            ..IsolationLayer::default()
        };
        assert!(tiny.resolve().unwrap_err().contains("memory_limit"));
    }
}
