//! Which plugins the server serves and how they get there: a plugin directory (loaded,
//! activated, then watched and hot-reloaded) or plugins the caller loads itself (the `pio`
//! binary's bundled default plugins). Loading runs on its own thread while the server already
//! answers (`/health` says 503 until it is done); every reload event is kept in a short log for
//! `/admin/plugins`.

use std::{
    collections::VecDeque,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use crossbeam_channel::{select, Receiver};
use serde::Serialize;

use pio_host::{
    watch::{PluginWatcher, ReloadEvent, WatchOptions},
    HostError, PluginManager,
};

use super::{engine::Engine, openai::unix_seconds};

/// How many reload events the log keeps.
const EVENT_LOG_LEN: usize = 100;

/// Where the served plugins come from.
pub enum PluginSource {
    /// Every plugin folder in this directory, watched and hot-reloaded.
    Directory(PathBuf),
    /// Plugins this function loads into the manager, called once on the loading thread (the
    /// `pio` binary fetches the default models and loads the bundled plugins). The plugins it
    /// reports are activated and served; nothing is watched.
    Loader(LoadPlugins),
}

/// The function of a [`PluginSource::Loader`].
pub type LoadPlugins = Box<dyn FnOnce(&PluginManager) -> LoadReport + Send>;

impl fmt::Debug for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginSource::Directory(dir) => f.debug_tuple("Directory").field(dir).finish(),
            PluginSource::Loader(_) => f.write_str("Loader(..)"),
        }
    }
}

/// What the function of a [`PluginSource::Loader`] did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Plugins (`name@version`) to activate and serve.
    pub activate: Vec<String>,
    /// What failed (a plugin folder, or the name of what could not be prepared), with the
    /// reason; each becomes a `failed` reload event.
    pub failures: Vec<(PathBuf, String)>,
}

/// Whether the initial load has finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Plugins are being loaded and activated.
    Loading,
    /// The initial load is done (some plugins may have failed; see the admin listing).
    Ready,
    /// The source could not be read at all.
    Failed(String),
}

/// A reload event with when it happened.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedEvent {
    /// Unix seconds.
    pub at: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: ReloadEvent,
}

/// The loading state and the last reload events.
#[derive(Debug)]
pub struct PluginLog {
    readiness: Mutex<Readiness>,
    events: Mutex<VecDeque<LoggedEvent>>,
    print: bool,
}

impl PluginLog {
    /// A log in the loading state; with `print`, every event is also printed as a JSON line
    /// on stdout (the event stream of `pio serve`).
    pub fn new(print: bool) -> Self {
        Self {
            readiness: Mutex::new(Readiness::Loading),
            events: Mutex::new(VecDeque::new()),
            print,
        }
    }

    /// The loading state.
    pub fn readiness(&self) -> Readiness {
        lock(&self.readiness).clone()
    }

    /// The last events, oldest first.
    pub fn events(&self) -> Vec<LoggedEvent> {
        lock(&self.events).iter().cloned().collect()
    }

    fn set(&self, readiness: Readiness) {
        *lock(&self.readiness) = readiness;
    }

    fn record(&self, event: ReloadEvent) {
        let logged = LoggedEvent {
            at: unix_seconds(),
            event,
        };
        if self.print {
            if let Ok(line) = serde_json::to_string(&logged.event) {
                println!("{line}");
            }
        }
        let mut events = lock(&self.events);
        if events.len() == EVENT_LOG_LEN {
            events.pop_front();
        }
        events.push_back(logged);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Loads `source` into `manager` on a new thread, opening an engine queue for every plugin
/// activated; for a directory, then watches it until `stop` says so (or is dropped).
pub fn start_loading(
    manager: Arc<PluginManager>,
    engine: Arc<Engine>,
    log: Arc<PluginLog>,
    source: PluginSource,
    watch: WatchOptions,
    stop: Receiver<()>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("pio-plugins".to_owned())
        .spawn(move || {
            let loader = Loader {
                manager,
                engine,
                log,
                watch,
            };
            match source {
                PluginSource::Loader(load) => {
                    loader.load_with(load);
                    loader.log.set(Readiness::Ready);
                }
                PluginSource::Directory(dir) => match loader.load_directory(&dir) {
                    Ok(()) => {
                        loader.log.set(Readiness::Ready);
                        loader.watch(&dir, &stop);
                    }
                    Err(e) => loader.log.set(Readiness::Failed(e.to_string())),
                },
            }
        })
        .map(drop)
}

struct Loader {
    manager: Arc<PluginManager>,
    engine: Arc<Engine>,
    log: Arc<PluginLog>,
    watch: WatchOptions,
}

impl Loader {
    /// Loads and activates every plugin folder of `dir`.
    fn load_directory(&self, dir: &Path) -> Result<(), HostError> {
        let report = self.manager.load_plugins_from_directory(dir)?;
        for (folder, error) in report.failures {
            self.log.record(ReloadEvent::Failed {
                folder,
                reason: error.to_string(),
            });
        }
        for id in report.loaded {
            self.activate(&id);
        }
        Ok(())
    }

    /// Runs the caller's `load` and activates the plugins it reports.
    fn load_with(&self, load: LoadPlugins) {
        let report = load(&self.manager);
        for (folder, reason) in report.failures {
            self.log.record(ReloadEvent::Failed { folder, reason });
        }
        for id in report.activate {
            self.activate(&id);
        }
    }

    fn activate(&self, id: &str) {
        let Ok(summary) = self.manager.info(id) else {
            return;
        };
        let result = self
            .manager
            .activate(id, &self.watch.activate)
            .and_then(|()| self.engine.open(&summary.manifest.name));
        self.log.record(match result {
            Ok(()) => ReloadEvent::Added {
                folder: summary.dir,
                plugin: summary.id,
                generation: summary.generation,
            },
            Err(error) => ReloadEvent::Failed {
                folder: summary.dir,
                reason: error.to_string(),
            },
        });
    }

    /// Follows the directory's changes until stopped, keeping the engine's queues in step.
    fn watch(&self, dir: &Path, stop: &Receiver<()>) {
        let (events_tx, events) = crossbeam_channel::unbounded();
        let _watcher =
            match PluginWatcher::start(self.manager.clone(), dir, self.watch.clone(), events_tx) {
                Ok(watcher) => watcher,
                Err(error) => {
                    self.log.record(ReloadEvent::Failed {
                        folder: dir.to_owned(),
                        reason: format!("cannot watch the plugin directory: {error}"),
                    });
                    return;
                }
            };
        loop {
            select! {
                recv(stop) -> _ => return,
                recv(events) -> event => match event {
                    Ok(event) => self.follow(event),
                    Err(_) => return,
                },
            }
        }
    }

    fn follow(&self, event: ReloadEvent) {
        match &event {
            ReloadEvent::Added { plugin, .. } | ReloadEvent::Replaced { plugin, .. } => {
                let name = plugin.split('@').next().unwrap_or(plugin);
                if let Err(error) = self.engine.open(name) {
                    tracing::error!(%plugin, "cannot start the plugin's scheduler: {error}");
                }
            }
            ReloadEvent::Removed { plugin, .. } => {
                self.engine
                    .close_if_unserved(plugin.split('@').next().unwrap_or(plugin));
            }
            ReloadEvent::Failed { .. } => {}
        }
        self.log.record(event);
    }
}
