//! The lifecycle state machine every kit plugin shares: created → initialized (a valid
//! configuration) → active (a model) → initialized again after `deactivate`. Model code sees
//! only the states it can act in; "not initialized" and "not active" are answered here.

use std::{path::PathBuf, time::Instant};

use pio_plugin_api::{
    ActivateOptions, Health, HealthStatus, PluginError, PluginResult, PluginStats,
};

use crate::{config::parse_config, Activation, Model, Tokenizer};

/// The key under which the host adds the plugin's folder to every configuration.
const PLUGIN_DIR_KEY: &str = "plugin_dir";

/// Where an instance is in its lifecycle.
enum State<M: Model, S> {
    Created,
    Initialized(Configured<M::Config>),
    Active(Configured<M::Config>, Active<M, S>),
}

/// What `initialize` received: the author's configuration and the host's plugin folder.
struct Configured<C> {
    config: C,
    plugin_dir: Option<PathBuf>,
}

/// An active model with the kit's per-activation state `S` beside it.
pub(crate) struct Active<M, S> {
    pub(crate) model: M,
    /// What the adapter keeps per activation (open sequences, ...).
    pub(crate) session: S,
    pub(crate) usage: Usage,
    activate_ms: f64,
}

/// Requests served and tokens processed since activation.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    requests: u64,
    tokens: u64,
}

impl Usage {
    /// Counts one served request of `tokens` tokens (prompt and generated).
    pub(crate) fn record(&mut self, tokens: u64) {
        self.requests += 1;
        self.tokens += tokens;
    }
}

/// The lifecycle of model `M`, with per-activation state `S`.
pub(crate) struct Lifecycle<M: Model, S> {
    state: State<M, S>,
}

impl<M: Model, S: Default> Lifecycle<M, S> {
    pub(crate) fn new() -> Self {
        Self {
            state: State::Created,
        }
    }

    /// Parses and validates the configuration. The host's `plugin_dir` key is taken out first
    /// (it reaches the model as [`Activation::plugin_dir`]), so a configuration type may deny
    /// unknown keys. Refused while active: the configuration an active model was built from
    /// must stay the one reported.
    pub(crate) fn initialize(&mut self, mut json: serde_json::Value) -> PluginResult<()> {
        if let State::Active(..) = self.state {
            return Err(PluginError::invalid_input(
                "cannot initialize an active plugin: deactivate it first",
            ));
        }
        let plugin_dir = json
            .as_object_mut()
            .and_then(|object| object.remove(PLUGIN_DIR_KEY))
            .and_then(|dir| dir.as_str().map(PathBuf::from));
        let config = parse_config(json)?;
        self.state = State::Initialized(Configured { config, plugin_dir });
        Ok(())
    }

    /// Builds the model. An active instance is deactivated first, so the old model's device
    /// memory is free before the new one allocates.
    pub(crate) fn activate(&mut self, options: &ActivateOptions) -> PluginResult<()> {
        self.deactivate();
        let configured = match std::mem::replace(&mut self.state, State::Created) {
            State::Initialized(configured) => configured,
            other => {
                self.state = other;
                return Err(PluginError::invalid_input(
                    "cannot activate: the plugin is not initialized",
                ));
            }
        };
        let started = Instant::now();
        let activation = Activation::new(options, configured.plugin_dir.clone());
        match M::activate(&configured.config, &activation) {
            Ok(model) => {
                let active = Active {
                    model,
                    session: S::default(),
                    usage: Usage::default(),
                    activate_ms: started.elapsed().as_secs_f64() * 1e3,
                };
                self.state = State::Active(configured, active);
                Ok(())
            }
            Err(error) => {
                self.state = State::Initialized(configured);
                Err(error)
            }
        }
    }

    /// Drops the model (and everything in the session), keeping the configuration.
    pub(crate) fn deactivate(&mut self) {
        self.state = match std::mem::replace(&mut self.state, State::Created) {
            State::Active(configured, active) => {
                drop(active);
                State::Initialized(configured)
            }
            other => other,
        };
    }

    /// The configuration and plugin folder, once initialized (active or not).
    pub(crate) fn configured(&self) -> PluginResult<(&M::Config, Option<&PathBuf>)> {
        match &self.state {
            State::Initialized(configured) | State::Active(configured, _) => {
                Ok((&configured.config, configured.plugin_dir.as_ref()))
            }
            State::Created => Err(PluginError::invalid_input("the plugin is not initialized")),
        }
    }

    /// The active model, or the error every call needing one answers.
    pub(crate) fn active(&mut self) -> PluginResult<&mut Active<M, S>> {
        match &mut self.state {
            State::Active(_, active) => Ok(active),
            State::Initialized(_) => Err(PluginError::invalid_input("the plugin is not active")),
            State::Created => Err(PluginError::invalid_input("the plugin is not initialized")),
        }
    }

    /// Readiness, from the state alone.
    pub(crate) fn health(&self) -> Health {
        match self.state {
            State::Active(..) => Health::new(HealthStatus::Ok, "active"),
            State::Initialized(_) => {
                Health::new(HealthStatus::Unavailable, "initialized, not active")
            }
            State::Created => Health::new(HealthStatus::Unavailable, "not initialized"),
        }
    }

    /// The stats: the model's memory and details, the kit's counters and details (`pid`,
    /// `vocab_size`), and the details `extra` adds from the session; empty while inactive.
    pub(crate) fn stats(
        &self,
        extra: impl FnOnce(&Active<M, S>, &mut serde_json::Map<String, serde_json::Value>),
    ) -> PluginStats {
        let State::Active(_, active) = &self.state else {
            return PluginStats::default();
        };
        let model = active.model.stats();
        let mut details = model.details;
        // The process serving the instance: the host's, or a worker's.
        details.insert("pid".to_owned(), std::process::id().into());
        // The host checks `/detokenize` requests against it.
        details.insert(
            "vocab_size".to_owned(),
            active.model.tokenizer().vocab_size().into(),
        );
        extra(active, &mut details);
        PluginStats {
            device_memory_bytes: model.device_memory_bytes,
            host_memory_bytes: model.host_memory_bytes,
            activate_ms: active.activate_ms,
            requests: active.usage.requests,
            tokens: active.usage.tokens,
            details_json: serde_json::Value::Object(details).to_string().into(),
        }
    }
}
