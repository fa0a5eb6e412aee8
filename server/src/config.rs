//! Server configuration: built-in defaults, a named profile, a TOML file, `PIO_*` environment
//! variables and command-line flags, each layer overriding the ones before it
//! (flags > environment > file > profile > defaults), validated with errors that name the
//! field and where its value came from.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use serde::Deserialize;

use pio_host::isolation::{IsolationConfig, IsolationLayer};
use pio_host::memory::{parse_size, KeepAlive, MemoryPolicy};

/// Seconds requests in flight may take to finish after a stop signal, unless configured:
/// Kubernetes' default termination grace period is 30 s, so a pod's drain ends before its
/// SIGKILL.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 25;

/// A named bundle of queue and limit settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Balanced defaults.
    Default,
    /// Short queues and timeouts: a request waits little or is refused at once.
    LowLatency,
    /// Long queues and timeouts: accept much work and let it wait.
    Throughput,
}

impl Profile {
    /// Every profile, by name.
    pub const ALL: [(&'static str, Profile); 3] = [
        ("default", Profile::Default),
        ("low-latency", Profile::LowLatency),
        ("throughput", Profile::Throughput),
    ];

    /// `(queue_depth, request_timeout_secs, max_tokens_limit)` of the profile.
    fn limits(self) -> (usize, u64, u32) {
        match self {
            Profile::Default => (64, 300, 4096),
            Profile::LowLatency => (8, 30, 1024),
            Profile::Throughput => (512, 1800, 8192),
        }
    }

    /// `(batch.max_sequences, batch.target_step_ms)` of the profile: small batches and a
    /// tight step target for latency, a loose target for throughput. The default's 300 ms lets
    /// the software Vulkan device (about 70 ms for a one-sequence step, growing almost linearly
    /// with the batch) batch 3-4 sequences; on a GPU every target here allows full batches. No
    /// profile goes above 8 sequences, the software device's useful batch; a plugin that
    /// cannot hold a sequence now refuses it with `out_of_memory` and the scheduler waits.
    fn batch(self) -> (usize, u64) {
        match self {
            Profile::Default => (8, 300),
            Profile::LowLatency => (4, 40),
            Profile::Throughput => (8, 1000),
        }
    }
}

impl FromStr for Profile {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Profile::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p)
            .ok_or_else(|| {
                let names: Vec<&str> = Profile::ALL.iter().map(|(n, _)| *n).collect();
                format!("unknown profile '{name}' (one of: {})", names.join(", "))
            })
    }
}

/// The validated configuration of `pio serve`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Address to listen on (loopback by default).
    pub addr: SocketAddr,
    /// Plugin directory to load and watch; `None` serves the bundled default plugins.
    pub plugins: Option<PathBuf>,
    /// Bearer token every route but `/health` requires; `None` disables authentication.
    pub api_key: Option<String>,
    /// The profile the limits below started from.
    pub profile: Profile,
    /// Requests that may wait per plugin and priority class; one more is answered 429.
    pub queue_depth: usize,
    /// How long a request may take from arrival to its last token.
    pub request_timeout: Duration,
    /// After SIGTERM or SIGINT, how long requests in flight may take to finish before the
    /// process exits (see [`RunningServer::drain`](crate::RunningServer::drain)).
    pub shutdown_grace: Duration,
    /// Largest request body accepted, in bytes; larger ones are answered 413.
    pub body_limit_bytes: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens_limit: u32,
    /// `max_tokens` of requests that give none.
    pub default_max_tokens: u32,
    /// Continuous batching of plugins with batched generation.
    pub batch: BatchConfig,
    /// Connection limits: header read and idle timeouts, header size.
    pub connection: ConnectionLimits,
    /// Where plugins run (in this process or in worker processes) and the workers' limits.
    pub isolation: IsolationConfig,
    /// The device-memory budget of all plugins together and how long idle plugins stay
    /// resident (see `pio_host::memory`).
    pub memory: MemoryPolicy,
}

/// Limits on client connections, so half-sent requests and idle connections do not pile up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Once the first byte of a request has arrived, its request line and headers must be
    /// complete within this time; else the connection is closed.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight (a fresh one before its first byte, or a kept-alive
    /// one between requests) is closed after this long; a request body must also have arrived
    /// whole within this time of the handler starting to read it (else 408).
    pub idle_timeout: Duration,
    /// Largest request line plus headers, in bytes; larger is answered 431 and the connection
    /// closed.
    pub header_limit_bytes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            header_limit_bytes: 16 * 1024,
        }
    }
}

/// How the scheduler batches the sequences of a plugin with batched generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// The most sequences one step may carry; the adaptive limit stays in `1..=` this. A
    /// sequence the plugin cannot hold now (`out_of_memory` at opening: the Llama plugin's KV
    /// block pool is taken) waits for the open ones to finish.
    pub max_sequences: usize,
    /// The step latency the adaptive limit aims at: it grows while full steps are faster and
    /// shrinks when a step is slower.
    pub target_step: Duration,
}

/// The `[batch]` table of a configuration layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchLayer {
    /// See [`BatchConfig::max_sequences`].
    pub max_sequences: Option<usize>,
    /// See [`BatchConfig::target_step`], in milliseconds.
    pub target_step_ms: Option<u64>,
}

/// One layer of settings: every field optional. The TOML file has exactly these keys.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    /// See [`ServerConfig::addr`].
    pub addr: Option<String>,
    /// See [`ServerConfig::plugins`].
    pub plugins: Option<PathBuf>,
    /// See [`ServerConfig::api_key`].
    pub api_key: Option<String>,
    /// See [`ServerConfig::profile`].
    pub profile: Option<String>,
    /// See [`ServerConfig::queue_depth`].
    pub queue_depth: Option<usize>,
    /// See [`ServerConfig::request_timeout`], in seconds.
    pub request_timeout_secs: Option<u64>,
    /// See [`ServerConfig::shutdown_grace`], in seconds.
    pub shutdown_grace_secs: Option<u64>,
    /// See [`ServerConfig::body_limit_bytes`].
    pub body_limit_bytes: Option<usize>,
    /// See [`ServerConfig::max_tokens_limit`].
    pub max_tokens_limit: Option<u32>,
    /// See [`ServerConfig::default_max_tokens`].
    pub default_max_tokens: Option<u32>,
    /// See [`ConnectionLimits::header_read_timeout`], in seconds.
    pub header_read_timeout_secs: Option<u64>,
    /// See [`ConnectionLimits::idle_timeout`], in seconds.
    pub idle_timeout_secs: Option<u64>,
    /// See [`ConnectionLimits::header_limit_bytes`].
    pub header_limit_bytes: Option<usize>,
    /// See [`ServerConfig::batch`]; the TOML table `[batch]`.
    #[serde(default)]
    pub batch: BatchLayer,
    /// See [`ServerConfig::isolation`]; the TOML table `[isolation]`.
    #[serde(default)]
    pub isolation: IsolationLayer,
    /// The memory budget of all plugins together: `"300MiB"`, `"1.5GB"` or bytes (see
    /// [`MemoryPolicy::budget`]); none by default.
    pub memory_budget: Option<String>,
    /// How long a plugin stays resident after its last request: a duration (`"5m"`), seconds,
    /// or negative for always (the default); a request's `keep_alive` overrides it.
    pub keep_alive: Option<String>,
    /// Per-plugin keep-alive, by plugin name; the TOML table `[plugin_keep_alive]`.
    #[serde(default)]
    pub plugin_keep_alive: BTreeMap<String, String>,
}

/// The default listening address: loopback only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";

impl ConfigLayer {
    /// Reads a TOML file; unknown keys are errors.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Reads the `PIO_*` variables through `var` (the process environment in `pio serve`):
    /// `PIO_ADDR`, `PIO_API_KEY`, `PIO_PROFILE`, `PIO_QUEUE_DEPTH`, `PIO_REQUEST_TIMEOUT_SECS`,
    /// `PIO_BODY_LIMIT_BYTES`, `PIO_MAX_TOKENS_LIMIT`, `PIO_DEFAULT_MAX_TOKENS`,
    /// `PIO_HEADER_READ_TIMEOUT_SECS`, `PIO_IDLE_TIMEOUT_SECS`, `PIO_HEADER_LIMIT_BYTES`,
    /// `PIO_BATCH_MAX_SEQUENCES`, `PIO_BATCH_TARGET_STEP_MS`, `PIO_MEMORY_BUDGET`,
    /// `PIO_KEEP_ALIVE`, and the isolation variables of
    /// [`IsolationLayer::from_env`].
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        fn number<T: FromStr>(
            var: &impl Fn(&str) -> Option<String>,
            name: &str,
        ) -> Result<Option<T>, String> {
            var(name)
                .map(|value| {
                    value.trim().parse().map_err(|_| {
                        format!("{name}: expected a non-negative integer, got '{value}'")
                    })
                })
                .transpose()
        }
        Ok(Self {
            addr: var("PIO_ADDR"),
            plugins: None,
            api_key: var("PIO_API_KEY"),
            profile: var("PIO_PROFILE"),
            queue_depth: number(&var, "PIO_QUEUE_DEPTH")?,
            request_timeout_secs: number(&var, "PIO_REQUEST_TIMEOUT_SECS")?,
            shutdown_grace_secs: number(&var, "PIO_SHUTDOWN_GRACE_SECS")?,
            body_limit_bytes: number(&var, "PIO_BODY_LIMIT_BYTES")?,
            max_tokens_limit: number(&var, "PIO_MAX_TOKENS_LIMIT")?,
            default_max_tokens: number(&var, "PIO_DEFAULT_MAX_TOKENS")?,
            header_read_timeout_secs: number(&var, "PIO_HEADER_READ_TIMEOUT_SECS")?,
            idle_timeout_secs: number(&var, "PIO_IDLE_TIMEOUT_SECS")?,
            header_limit_bytes: number(&var, "PIO_HEADER_LIMIT_BYTES")?,
            batch: BatchLayer {
                max_sequences: number(&var, "PIO_BATCH_MAX_SEQUENCES")?,
                target_step_ms: number(&var, "PIO_BATCH_TARGET_STEP_MS")?,
            },
            isolation: IsolationLayer::from_env(&var)?,
            memory_budget: var("PIO_MEMORY_BUDGET"),
            keep_alive: var("PIO_KEEP_ALIVE"),
            plugin_keep_alive: BTreeMap::new(),
        })
    }

    /// This layer with `lower`'s values where this one has none.
    pub fn over(self, lower: ConfigLayer) -> ConfigLayer {
        ConfigLayer {
            addr: self.addr.or(lower.addr),
            plugins: self.plugins.or(lower.plugins),
            api_key: self.api_key.or(lower.api_key),
            profile: self.profile.or(lower.profile),
            queue_depth: self.queue_depth.or(lower.queue_depth),
            request_timeout_secs: self.request_timeout_secs.or(lower.request_timeout_secs),
            shutdown_grace_secs: self.shutdown_grace_secs.or(lower.shutdown_grace_secs),
            body_limit_bytes: self.body_limit_bytes.or(lower.body_limit_bytes),
            max_tokens_limit: self.max_tokens_limit.or(lower.max_tokens_limit),
            default_max_tokens: self.default_max_tokens.or(lower.default_max_tokens),
            header_read_timeout_secs: self
                .header_read_timeout_secs
                .or(lower.header_read_timeout_secs),
            idle_timeout_secs: self.idle_timeout_secs.or(lower.idle_timeout_secs),
            header_limit_bytes: self.header_limit_bytes.or(lower.header_limit_bytes),
            batch: BatchLayer {
                max_sequences: self.batch.max_sequences.or(lower.batch.max_sequences),
                target_step_ms: self.batch.target_step_ms.or(lower.batch.target_step_ms),
            },
            isolation: self.isolation.over(lower.isolation),
            memory_budget: self.memory_budget.or(lower.memory_budget),
            keep_alive: self.keep_alive.or(lower.keep_alive),
            plugin_keep_alive: {
                let mut merged = lower.plugin_keep_alive;
                merged.extend(self.plugin_keep_alive);
                merged
            },
        }
    }

    /// The final configuration: the profile's limits where the layer sets none, then every
    /// field validated.
    pub fn resolve(self) -> Result<ServerConfig, String> {
        let profile: Profile = self.profile.as_deref().unwrap_or("default").parse()?;
        let (queue_depth, timeout_secs, max_tokens_limit) = profile.limits();
        let addr_text = self.addr.as_deref().unwrap_or(DEFAULT_ADDR);
        let addr = addr_text.parse().map_err(|_| {
            format!("addr: '{addr_text}' is not an address with a port (e.g. {DEFAULT_ADDR})")
        })?;
        let max_tokens_limit = self.max_tokens_limit.unwrap_or(max_tokens_limit);
        let (max_sequences, target_step_ms) = profile.batch();
        let connection = ConnectionLimits::default();
        let isolation = self.isolation.resolve()?;
        let memory = MemoryPolicy {
            budget: self
                .memory_budget
                .as_deref()
                .map(parse_size)
                .transpose()
                .map_err(|e| format!("memory_budget: {e}"))?,
            keep_alive: self
                .keep_alive
                .as_deref()
                .map(KeepAlive::parse)
                .transpose()
                .map_err(|e| format!("keep_alive: {e}"))?
                .unwrap_or(KeepAlive::Forever),
            plugin_keep_alive: self
                .plugin_keep_alive
                .iter()
                .map(|(name, text)| {
                    KeepAlive::parse(text)
                        .map(|keep_alive| (name.clone(), keep_alive))
                        .map_err(|e| format!("plugin_keep_alive.{name}: {e}"))
                })
                .collect::<Result<_, _>>()?,
        };
        let config = ServerConfig {
            addr,
            plugins: self.plugins,
            api_key: self.api_key,
            profile,
            queue_depth: self.queue_depth.unwrap_or(queue_depth),
            request_timeout: Duration::from_secs(self.request_timeout_secs.unwrap_or(timeout_secs)),
            shutdown_grace: Duration::from_secs(
                self.shutdown_grace_secs
                    .unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECS),
            ),
            body_limit_bytes: self.body_limit_bytes.unwrap_or(1 << 20),
            max_tokens_limit,
            default_max_tokens: self.default_max_tokens.unwrap_or(256.min(max_tokens_limit)),
            batch: BatchConfig {
                max_sequences: self.batch.max_sequences.unwrap_or(max_sequences),
                target_step: Duration::from_millis(
                    self.batch.target_step_ms.unwrap_or(target_step_ms),
                ),
            },
            connection: ConnectionLimits {
                header_read_timeout: self
                    .header_read_timeout_secs
                    .map_or(connection.header_read_timeout, Duration::from_secs),
                idle_timeout: self
                    .idle_timeout_secs
                    .map_or(connection.idle_timeout, Duration::from_secs),
                header_limit_bytes: self
                    .header_limit_bytes
                    .unwrap_or(connection.header_limit_bytes),
            },
            isolation,
            memory,
        };
        config.validate()?;
        Ok(config)
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), String> {
        let check = |ok: bool, message: String| if ok { Ok(()) } else { Err(message) };
        check(
            (1..=65_536).contains(&self.queue_depth),
            format!("queue_depth must be in 1..=65536, got {}", self.queue_depth),
        )?;
        check(
            !self.request_timeout.is_zero(),
            "request_timeout_secs must be at least 1".to_owned(),
        )?;
        check(
            self.body_limit_bytes >= 1024,
            format!(
                "body_limit_bytes must be at least 1024, got {}",
                self.body_limit_bytes
            ),
        )?;
        check(
            self.max_tokens_limit >= 1,
            "max_tokens_limit must be at least 1".to_owned(),
        )?;
        check(
            (1..=self.max_tokens_limit).contains(&self.default_max_tokens),
            format!(
                "default_max_tokens must be in 1..=max_tokens_limit ({}), got {}",
                self.max_tokens_limit, self.default_max_tokens
            ),
        )?;
        check(
            (1..=1024).contains(&self.batch.max_sequences),
            format!(
                "batch.max_sequences must be in 1..=1024, got {}",
                self.batch.max_sequences
            ),
        )?;
        let target_ms = self.batch.target_step.as_millis();
        check(
            (1..=60_000).contains(&target_ms),
            format!("batch.target_step_ms must be in 1..=60000, got {target_ms}"),
        )?;
        let connection = &self.connection;
        for (field, timeout) in [
            ("header_read_timeout_secs", connection.header_read_timeout),
            ("idle_timeout_secs", connection.idle_timeout),
        ] {
            check(
                (1..=3600).contains(&timeout.as_secs()),
                format!("{field} must be in 1..=3600, got {}", timeout.as_secs()),
            )?;
        }
        check(
            (1024..=1 << 20).contains(&connection.header_limit_bytes),
            format!(
                "header_limit_bytes must be in 1024..=1048576, got {}",
                connection.header_limit_bytes
            ),
        )?;
        check(
            self.memory.budget != Some(0),
            "memory_budget must be more than 0 bytes (leave it out for no budget)".to_owned(),
        )?;
        if let Some(key) = &self.api_key {
            check(
                !key.is_empty() && key.chars().all(|c| c.is_ascii_graphic()),
                "api_key must be non-empty printable ASCII without spaces".to_owned(),
            )?;
        }
        Ok(())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ConfigLayer::default()
            .resolve()
            .expect("the built-in defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn memory_budget_and_keep_alive_come_from_file_env_and_flags() {
        let file: ConfigLayer = toml::from_str(
            "memory_budget = \"300MiB\"\nkeep_alive = \"5m\"\n[plugin_keep_alive]\nbert = \"-1\"",
        )
        .unwrap();
        let config = file.clone().resolve().unwrap();
        assert_eq!(config.memory.budget, Some(300 << 20));
        assert_eq!(
            config.memory.keep_alive,
            KeepAlive::For(Duration::from_secs(300))
        );
        assert_eq!(
            config.memory.plugin_keep_alive.get("bert"),
            Some(&KeepAlive::Forever)
        );
        let env = ConfigLayer::from_env(env(&[("PIO_MEMORY_BUDGET", "1.5GB")])).unwrap();
        let config = env.over(file).resolve().unwrap();
        assert_eq!(config.memory.budget, Some(1_500_000_000));
        assert_eq!(ServerConfig::default().memory, MemoryPolicy::default());
        for (layer, error) in [
            (
                "memory_budget = \"lots\"",
                "memory_budget: invalid size 'lots'",
            ),
            ("memory_budget = \"0\"", "memory_budget must be more than 0"),
            (
                "keep_alive = \"soon\"",
                "keep_alive: invalid keep_alive 'soon'",
            ),
        ] {
            let layer: ConfigLayer = toml::from_str(layer).unwrap();
            let message = layer.resolve().unwrap_err();
            assert!(message.contains(error), "{message}");
        }
    }

    #[test]
    fn flags_beat_env_beat_file_beat_profile() {
        let file: ConfigLayer =
            toml::from_str("profile = \"low-latency\"\nqueue_depth = 3\nrequest_timeout_secs = 7")
                .unwrap();
        let env = ConfigLayer::from_env(env(&[("PIO_QUEUE_DEPTH", "5")])).unwrap();
        let flags = ConfigLayer {
            addr: Some("127.0.0.1:9999".to_owned()),
            ..ConfigLayer::default()
        };
        let config = flags.over(env).over(file).resolve().unwrap();
        assert_eq!(config.addr.port(), 9999);
        assert_eq!(config.queue_depth, 5, "env over file");
        assert_eq!(
            config.request_timeout,
            Duration::from_secs(7),
            "file over profile"
        );
        assert_eq!(
            config.max_tokens_limit, 1024,
            "from the low-latency profile"
        );
        assert_eq!(config.profile, Profile::LowLatency);
        assert_eq!(
            config.batch,
            BatchConfig {
                max_sequences: 4,
                target_step: Duration::from_millis(40)
            },
            "from the low-latency profile"
        );
    }

    #[test]
    fn batch_settings_come_from_the_table_env_and_profile() {
        let file: ConfigLayer = toml::from_str(
            "profile = \"throughput\"\n[batch]\nmax_sequences = 3\ntarget_step_ms = 70",
        )
        .unwrap();
        let env = ConfigLayer::from_env(env(&[("PIO_BATCH_MAX_SEQUENCES", "9")])).unwrap();
        let config = env.over(file).resolve().unwrap();
        assert_eq!(config.batch.max_sequences, 9, "env over file");
        assert_eq!(config.batch.target_step, Duration::from_millis(70));
        let throughput = ConfigLayer {
            profile: Some("throughput".to_owned()),
            ..ConfigLayer::default()
        };
        let default = ServerConfig::default().batch;
        let throughput = throughput.resolve().unwrap().batch;
        assert!(throughput.max_sequences >= default.max_sequences);
        assert!(throughput.target_step > default.target_step);

        let error = toml::from_str::<ConfigLayer>("[batch]\nmax_sequence = 3").unwrap_err();
        assert!(error.to_string().contains("max_sequence"), "{error}");
        for (max_sequences, target_step_ms, field) in [
            (Some(0), None, "batch.max_sequences"),
            (None, Some(0), "batch.target_step_ms"),
        ] {
            let layer = ConfigLayer {
                batch: BatchLayer {
                    max_sequences,
                    target_step_ms,
                },
                ..ConfigLayer::default()
            };
            assert!(layer.resolve().unwrap_err().contains(field));
        }
    }

    #[test]
    fn defaults_listen_on_loopback() {
        let config = ServerConfig::default();
        assert!(config.addr.ip().is_loopback());
        assert_eq!(config.queue_depth, 64);
        assert!(config.api_key.is_none());
    }

    #[test]
    fn errors_name_the_field_and_source() {
        let error = ConfigLayer::from_env(env(&[("PIO_QUEUE_DEPTH", "many")])).unwrap_err();
        assert!(
            error.contains("PIO_QUEUE_DEPTH") && error.contains("many"),
            "{error}"
        );

        let error = toml::from_str::<ConfigLayer>("queue_depht = 3").unwrap_err();
        assert!(error.to_string().contains("queue_depht"), "{error}");

        let layer = ConfigLayer {
            queue_depth: Some(0),
            ..ConfigLayer::default()
        };
        assert!(layer.resolve().unwrap_err().contains("queue_depth"));

        let layer = ConfigLayer {
            profile: Some("fastest".to_owned()),
            ..ConfigLayer::default()
        };
        let error = layer.resolve().unwrap_err();
        assert!(
            error.contains("fastest") && error.contains("low-latency"),
            "{error}"
        );

        let layer = ConfigLayer {
            addr: Some("localhost".to_owned()),
            ..ConfigLayer::default()
        };
        assert!(layer.resolve().unwrap_err().starts_with("addr:"));

        let layer = ConfigLayer {
            default_max_tokens: Some(10_000),
            ..ConfigLayer::default()
        };
        assert!(layer.resolve().unwrap_err().contains("default_max_tokens"));

        for (layer, field) in [
            (
                ConfigLayer {
                    header_read_timeout_secs: Some(0),
                    ..ConfigLayer::default()
                },
                "header_read_timeout_secs",
            ),
            (
                ConfigLayer {
                    idle_timeout_secs: Some(0),
                    ..ConfigLayer::default()
                },
                "idle_timeout_secs",
            ),
            (
                ConfigLayer {
                    header_limit_bytes: Some(10),
                    ..ConfigLayer::default()
                },
                "header_limit_bytes",
            ),
        ] {
            assert!(layer.resolve().unwrap_err().contains(field), "{field}");
        }
    }

    #[test]
    fn connection_limits_come_from_every_layer() {
        let defaults = ServerConfig::default().connection;
        assert_eq!(defaults, ConnectionLimits::default());
        assert_eq!(defaults.header_read_timeout, Duration::from_secs(10));
        assert_eq!(defaults.idle_timeout, Duration::from_secs(60));
        assert_eq!(defaults.header_limit_bytes, 16 * 1024);
        let file: ConfigLayer = toml::from_str(
            "header_read_timeout_secs = 3\nidle_timeout_secs = 4\nheader_limit_bytes = 9000",
        )
        .unwrap();
        let env = ConfigLayer::from_env(env(&[("PIO_IDLE_TIMEOUT_SECS", "5")])).unwrap();
        let limits = env.over(file).resolve().unwrap().connection;
        assert_eq!(
            limits,
            ConnectionLimits {
                header_read_timeout: Duration::from_secs(3),
                idle_timeout: Duration::from_secs(5),
                header_limit_bytes: 9000,
            }
        );
    }
}
