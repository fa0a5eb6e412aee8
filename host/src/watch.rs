//! Watching a plugin directory and hot-reloading its plugin folders.
//!
//! The watcher observes the directory itself (recursively, through `notify`), so atomic renames
//! and deletions of whole folders are seen. Events are debounced per plugin folder; a folder is
//! acted on only once it is complete: its manifest parses, its library has stopped changing
//! (same size and modification time across a settle interval) and the library's sha256 matches
//! the manifest. A half-copied or half-built library is therefore never loaded. Then:
//!
//! - a new folder is loaded and activated ([`ReloadEvent::Added`]);
//! - a changed folder is loaded as a new generation beside the old one and swapped in with
//!   [`PluginManager::replace_from_path`] ([`ReloadEvent::Replaced`]); requests running on the
//!   old instance finish there;
//! - a removed folder's plugin is drained and unloaded ([`ReloadEvent::Removed`]);
//! - anything that fails is reported ([`ReloadEvent::Failed`]) and the old version keeps serving.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use crossbeam_channel::{select, Receiver, Sender};
use notify::{RecursiveMode, Watcher};
use pio_plugin_api::ActivateOptions;
use serde::Serialize;

use crate::{
    digest::sha256_file,
    error::{HostError, HostResult},
    manifest::Manifest,
    PluginManager,
};

/// Timing and activation settings of a [`PluginWatcher`].
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Quiet time after the last file event before a folder is examined.
    pub debounce: Duration,
    /// How long a library must keep its size and modification time to count as complete.
    pub settle: Duration,
    /// How long an incomplete folder (no manifest, digest mismatch) is waited for before it
    /// is reported as failed.
    pub give_up_after: Duration,
    /// Options for activating loaded plugins.
    pub activate: ActivateOptions,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(200),
            settle: Duration::from_millis(150),
            give_up_after: Duration::from_secs(5),
            activate: ActivateOptions::default(),
        }
    }
}

/// What the watcher did, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ReloadEvent {
    /// A new plugin folder is serving.
    Added {
        /// The folder.
        folder: PathBuf,
        /// `name@version`.
        plugin: String,
        /// Its reload generation.
        generation: u64,
    },
    /// A changed folder's new version replaced the old one.
    Replaced {
        /// The folder.
        folder: PathBuf,
        /// `name@version` now serving.
        plugin: String,
        /// Its reload generation.
        generation: u64,
    },
    /// A removed folder's plugin was drained and unloaded.
    Removed {
        /// The folder.
        folder: PathBuf,
        /// `name@version` that was unloaded.
        plugin: String,
    },
    /// A folder could not be (re)loaded; whatever served before still serves.
    Failed {
        /// The folder (or file).
        folder: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A running directory watcher; dropping it stops the watching.
pub struct PluginWatcher {
    stop: Sender<()>,
    worker: Option<JoinHandle<()>>,
    _watcher: notify::RecommendedWatcher,
}

impl PluginWatcher {
    /// Loads every plugin folder now in `dir`, then watches `dir` and keeps the manager in step
    /// with it, sending every action to `events`.
    pub fn start(
        manager: Arc<PluginManager>,
        dir: &Path,
        options: WatchOptions,
        events: Sender<ReloadEvent>,
    ) -> HostResult<Self> {
        let dir = dir.canonicalize().map_err(|e| HostError::io(dir, e))?;
        let (raw_tx, raw_rx) = crossbeam_channel::unbounded::<PathBuf>();
        let mut watcher =
            notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
                if let Ok(event) = result {
                    for path in event.paths {
                        let _ = raw_tx.send(path);
                    }
                }
            })
            .map_err(|e| HostError::io(&dir, std::io::Error::other(e.to_string())))?;
        watcher
            .watch(&dir, RecursiveMode::Recursive)
            .map_err(|e| HostError::io(&dir, std::io::Error::other(e.to_string())))?;

        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let mut reconciler = Reconciler {
            manager,
            dir: dir.clone(),
            options,
            events,
            pending: HashMap::new(),
        };
        reconciler.initial_scan();
        let worker = std::thread::Builder::new()
            .name("pio-watch".to_owned())
            .spawn(move || reconciler.run(&raw_rx, &stop_rx))
            .map_err(|e| HostError::io(&dir, e))?;
        Ok(Self {
            stop,
            worker: Some(worker),
            _watcher: watcher,
        })
    }
}

impl Drop for PluginWatcher {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// A folder with file events not yet acted on.
#[derive(Debug)]
struct Pending {
    first_event: Instant,
    last_event: Instant,
    /// Library size and modification time at the last look, to see whether it still changes.
    library_stamp: Option<(u64, SystemTime)>,
}

/// What examining a folder concluded.
enum Verdict {
    /// Act now.
    Ready,
    /// Look again later (still changing or not yet complete), with the reason if it stays so.
    NotYet(String),
    /// The folder is gone.
    Gone,
    /// Not a plugin folder at all.
    Junk(String),
}

struct Reconciler {
    manager: Arc<PluginManager>,
    dir: PathBuf,
    options: WatchOptions,
    events: Sender<ReloadEvent>,
    pending: HashMap<PathBuf, Pending>,
}

impl Reconciler {
    fn initial_scan(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut folders: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        folders.sort();
        let now = Instant::now();
        for folder in folders {
            self.pending.insert(
                folder,
                Pending {
                    first_event: now,
                    last_event: now - self.options.debounce,
                    library_stamp: None,
                },
            );
        }
    }

    fn run(mut self, raw: &Receiver<PathBuf>, stop: &Receiver<()>) {
        let tick = Duration::from_millis(25);
        loop {
            select! {
                recv(stop) -> _ => return,
                recv(raw) -> path => match path {
                    Ok(path) => self.note(&path),
                    Err(_) => return,
                },
                default(tick) => {}
            }
            self.examine_due(Instant::now());
        }
    }

    /// Records a file event under the plugin folder it belongs to.
    fn note(&mut self, path: &Path) {
        let Ok(relative) = path.strip_prefix(&self.dir) else {
            return;
        };
        let Some(first) = relative.components().next() else {
            return;
        };
        let folder = self.dir.join(first);
        if is_hidden(&folder) {
            return;
        }
        let now = Instant::now();
        let pending = self.pending.entry(folder).or_insert(Pending {
            first_event: now,
            last_event: now,
            library_stamp: None,
        });
        pending.last_event = now;
    }

    /// Examines every folder that has been quiet for the debounce interval at `now`.
    fn examine_due(&mut self, now: Instant) {
        let due: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_event) >= self.options.debounce)
            .map(|(folder, _)| folder.clone())
            .collect();
        for folder in due {
            let verdict = self.examine(&folder);
            match verdict {
                Verdict::NotYet(reason) => {
                    let pending = self
                        .pending
                        .get_mut(&folder)
                        .expect("due folders are pending");
                    if pending.first_event.elapsed() >= self.options.give_up_after {
                        self.pending.remove(&folder);
                        self.emit(ReloadEvent::Failed { folder, reason });
                    } else {
                        // Look again after another settle interval.
                        pending.last_event =
                            Instant::now() - self.options.debounce + self.options.settle;
                    }
                }
                Verdict::Ready => {
                    self.pending.remove(&folder);
                    self.apply(&folder);
                }
                Verdict::Gone => {
                    self.pending.remove(&folder);
                    self.remove(&folder);
                }
                Verdict::Junk(reason) => {
                    self.pending.remove(&folder);
                    self.emit(ReloadEvent::Failed { folder, reason });
                }
            }
        }
    }

    fn examine(&mut self, folder: &Path) -> Verdict {
        if !folder.exists() {
            return Verdict::Gone;
        }
        if !folder.is_dir() {
            return Verdict::Junk(
                "not a plugin folder (plugins are folders with a plugin.json)".to_owned(),
            );
        }
        let manifest = match Manifest::read(folder) {
            Ok(manifest) => manifest,
            Err(e) => return Verdict::NotYet(e.to_string()),
        };
        let library = match manifest.library_path(folder) {
            Ok(library) => library,
            Err(e @ HostError::PathEscape { .. }) => return Verdict::Junk(e.to_string()),
            Err(e) => return Verdict::NotYet(e.to_string()),
        };
        let stamp = std::fs::metadata(&library).and_then(|m| Ok((m.len(), m.modified()?)));
        let Ok(stamp) = stamp else {
            return Verdict::NotYet(format!("{}: library not readable", library.display()));
        };
        let pending = self
            .pending
            .get_mut(folder)
            .expect("examined folders are pending");
        let previous = pending.library_stamp.replace(stamp);
        if previous != Some(stamp) {
            return Verdict::NotYet(format!("{}: still changing", library.display()));
        }
        match sha256_file(&library) {
            Ok(digest) if digest == manifest.sha256 => Verdict::Ready,
            Ok(digest) => Verdict::NotYet(format!(
                "plugin '{}': {}: sha256 is {digest}, the manifest says {}",
                manifest.name,
                library.display(),
                manifest.sha256
            )),
            Err(e) => Verdict::NotYet(e.to_string()),
        }
    }

    /// Loads a complete folder as a new plugin or a new generation of the one it holds.
    fn apply(&mut self, folder: &Path) {
        let current = self.manager.plugins_in_folder(folder);
        let unchanged = Manifest::read(folder).ok().is_some_and(|manifest| {
            current
                .iter()
                .any(|p| p.manifest == manifest && p.state == crate::PluginState::Active)
        });
        if unchanged {
            return;
        }
        let replacing = current
            .iter()
            .any(|p| p.state == crate::PluginState::Active);
        let started = Instant::now();
        match self
            .manager
            .replace_from_path(folder, &self.options.activate)
        {
            Ok(plugin) => {
                let generation = self.manager.info(&plugin).map_or(0, |p| p.generation);
                tracing::info!(%plugin, generation, ms = started.elapsed().as_millis() as u64, "plugin folder applied");
                let folder = folder.to_owned();
                self.emit(if replacing {
                    ReloadEvent::Replaced {
                        folder,
                        plugin,
                        generation,
                    }
                } else {
                    ReloadEvent::Added {
                        folder,
                        plugin,
                        generation,
                    }
                });
            }
            Err(e) => self.emit(ReloadEvent::Failed {
                folder: folder.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    /// Drains and unloads every plugin loaded from a folder that is gone.
    fn remove(&mut self, folder: &Path) {
        for (plugin, result) in self.manager.unload_folder(folder) {
            self.emit(match result {
                Ok(()) => ReloadEvent::Removed {
                    folder: folder.to_owned(),
                    plugin,
                },
                Err(e) => ReloadEvent::Failed {
                    folder: folder.to_owned(),
                    reason: e.to_string(),
                },
            });
        }
    }

    fn emit(&self, event: ReloadEvent) {
        match &event {
            ReloadEvent::Failed { folder, reason } => {
                tracing::warn!(folder = %folder.display(), "{reason}")
            }
            other => tracing::info!(?other, "plugin directory change"),
        }
        let _ = self.events.send(event);
    }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}
