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
//!
//! Only changes count: file opens and reads (the watcher's own hashing and copying among them)
//! are ignored. A refused folder is reported once, then left alone until its contents change
//! (a fingerprint of its entries' inodes, sizes and times), so it is never reloaded in a loop.
//! Two folders declaring the same `name@version` are a conflict: the folder serving it keeps
//! serving, the other is reported, and picked up once the first is removed.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use crossbeam_channel::{select, Receiver, Sender};
use notify::{
    event::{AccessKind, AccessMode},
    EventKind, RecursiveMode, Watcher,
};
use serde::Serialize;

use crate::{
    digest::sha256_file,
    error::{HostError, HostResult},
    manifest::Manifest,
    ActivateOptions, PluginManager, PluginState,
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
    looks: Arc<AtomicU64>,
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
                let Ok(event) = result else {
                    return;
                };
                if is_change(&event.kind) {
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
        let looks = Arc::new(AtomicU64::new(0));
        let mut reconciler = Reconciler {
            manager,
            dir: dir.clone(),
            options,
            events,
            pending: HashMap::new(),
            refused: HashMap::new(),
            conflicts: HashMap::new(),
            looks: looks.clone(),
        };
        reconciler.initial_scan();
        let worker = std::thread::Builder::new()
            .name("pio-watch".to_owned())
            .spawn(move || reconciler.run(&raw_rx, &stop_rx))
            .map_err(|e| HostError::io(&dir, e))?;
        Ok(Self {
            stop,
            worker: Some(worker),
            looks,
            _watcher: watcher,
        })
    }

    /// How many times a folder has been looked at since the watcher started. A folder is looked
    /// at after changes under it settle, and again while it is incomplete; so on a directory
    /// where nothing changes, this number stays put.
    pub fn folders_examined(&self) -> u64 {
        self.looks.load(Ordering::Relaxed)
    }
}

/// Whether a file event can mean changed contents. Opening and reading a file change nothing
/// (and the watcher's own hashing and copying would otherwise wake it again and again); closing
/// a file opened for writing means it was written.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(access) => *access == AccessKind::Close(AccessMode::Write),
        _ => true,
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
    /// Complete: act on this manifest now.
    Ready(Box<Manifest>),
    /// Look again later (still changing or not yet complete), with the reason if it stays so.
    NotYet(String),
    /// The folder is gone.
    Gone,
    /// Refused as it is: not a plugin folder, or a file in it is not acceptable.
    Refused(String),
    /// Refused and reported before, and unchanged since.
    StillRefused,
}

/// What a folder held when it was looked at: for each entry under it, in sorted order, its
/// relative path, inode, permissions, size and modification time (symlinks are not followed).
///
/// Writing, renaming, replacing or re-permissioning a file changes the fingerprint; reading
/// does not. A refused folder is examined again only once its fingerprint changes, so it is
/// reported once per change of its contents and never reloaded in a loop.
#[derive(Debug, PartialEq, Eq)]
struct Fingerprint(Vec<EntryStamp>);

#[derive(Debug, PartialEq, Eq)]
struct EntryStamp {
    path: PathBuf,
    inode: u64,
    mode: u32,
    size: u64,
    modified: (i64, i64),
}

/// The most entries a fingerprint records, so that no folder makes the watcher walk or keep
/// an unbounded list. A folder with more is fingerprinted by the first ones read.
const FINGERPRINT_ENTRIES: usize = 4096;

impl Fingerprint {
    /// The fingerprint of the folder (or file) `root`; empty when it does not exist.
    fn of(root: &Path) -> Self {
        let mut stamps = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(relative) = stack.pop() {
            let path = root.join(&relative);
            let Ok(metadata) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if metadata.is_dir() {
                let room = FINGERPRINT_ENTRIES.saturating_sub(stamps.len() + stack.len() + 1);
                if let Ok(entries) = std::fs::read_dir(&path) {
                    let mut children: Vec<PathBuf> = entries
                        .flatten()
                        .take(room)
                        .map(|entry| relative.join(entry.file_name()))
                        .collect();
                    // Reversed, so the stack hands them out in sorted order.
                    children.sort_unstable_by(|a, b| b.cmp(a));
                    stack.extend(children);
                }
            }
            stamps.push(EntryStamp {
                path: relative,
                inode: metadata.ino(),
                mode: metadata.mode(),
                size: metadata.size(),
                modified: (metadata.mtime(), metadata.mtime_nsec()),
            });
        }
        Self(stamps)
    }
}

struct Reconciler {
    manager: Arc<PluginManager>,
    dir: PathBuf,
    options: WatchOptions,
    events: Sender<ReloadEvent>,
    pending: HashMap<PathBuf, Pending>,
    /// Refused folders, with what they held when they were refused.
    refused: HashMap<PathBuf, Fingerprint>,
    /// Folders not loaded because another folder serves the plugin they declare, with that
    /// folder.
    conflicts: HashMap<PathBuf, PathBuf>,
    /// Folders looked at so far ([`PluginWatcher::folders_examined`]).
    looks: Arc<AtomicU64>,
}

impl Reconciler {
    fn initial_scan(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        // Due at once: nothing is being changed that the scan knows of.
        let due = Instant::now() - self.options.debounce;
        for entry in entries.flatten() {
            self.schedule(entry.path(), due);
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
        self.schedule(self.dir.join(first), Instant::now());
    }

    /// Marks `folder` as changed at `at`: it is examined once quiet for the debounce interval.
    /// Hidden entries (`.staging…`) are left alone.
    fn schedule(&mut self, folder: PathBuf, at: Instant) {
        if is_hidden(&folder) {
            return;
        }
        self.pending
            .entry(folder)
            .or_insert(Pending {
                first_event: at,
                last_event: at,
                library_stamp: None,
            })
            .last_event = at;
    }

    /// Examines every folder that has been quiet for the debounce interval at `now`.
    fn examine_due(&mut self, now: Instant) {
        let mut due: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_event) >= self.options.debounce)
            .map(|(folder, _)| folder.clone())
            .collect();
        // In name order: of two folders complete at once that declare the same plugin, the
        // first name serves it, whatever the order of the map.
        due.sort();
        for folder in due {
            let fingerprint = Fingerprint::of(&folder);
            match self.examine(&folder, &fingerprint) {
                Verdict::NotYet(reason) => {
                    let pending = self
                        .pending
                        .get_mut(&folder)
                        .expect("due folders are pending");
                    if pending.first_event.elapsed() >= self.options.give_up_after {
                        self.pending.remove(&folder);
                        self.refuse(folder, fingerprint, reason);
                    } else {
                        // Look again after another settle interval.
                        pending.last_event =
                            Instant::now() - self.options.debounce + self.options.settle;
                    }
                }
                Verdict::Ready(manifest) => {
                    self.pending.remove(&folder);
                    self.apply(&folder, &manifest, fingerprint);
                }
                Verdict::Gone => {
                    self.pending.remove(&folder);
                    self.remove(&folder);
                }
                Verdict::Refused(reason) => {
                    self.pending.remove(&folder);
                    self.refuse(folder, fingerprint, reason);
                }
                Verdict::StillRefused => {
                    self.pending.remove(&folder);
                }
            }
        }
    }

    fn examine(&mut self, folder: &Path, fingerprint: &Fingerprint) -> Verdict {
        self.looks.fetch_add(1, Ordering::Relaxed);
        if !folder.exists() {
            return Verdict::Gone;
        }
        if self.refused.get(folder) == Some(fingerprint) {
            return Verdict::StillRefused;
        }
        if !folder.is_dir() {
            return Verdict::Refused(
                "not a plugin folder (plugins are folders with a plugin.json)".to_owned(),
            );
        }
        let manifest = match Manifest::read(folder) {
            Ok(manifest) => manifest,
            Err(e) => return not_ready(e),
        };
        let library = match manifest.library_path(folder) {
            Ok(library) => library,
            Err(e) => return not_ready(e),
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
            Ok(digest) if digest == manifest.sha256 => Verdict::Ready(Box::new(manifest)),
            Ok(digest) => Verdict::NotYet(format!(
                "plugin '{}': {}: sha256 is {digest}, the manifest says {}",
                manifest.name,
                library.display(),
                manifest.sha256
            )),
            Err(e) => not_ready(e),
        }
    }

    /// Loads a complete folder as a new plugin or a new generation of the one it holds, unless
    /// another folder serves the plugin it declares.
    fn apply(&mut self, folder: &Path, manifest: &Manifest, fingerprint: Fingerprint) {
        let plugin = format!("{}@{}", manifest.name, manifest.version);
        if let Some(serving) = self.served_elsewhere(&plugin, folder) {
            let reason = HostError::DuplicatePlugin {
                plugin,
                folder: folder.to_owned(),
                serving: serving.clone(),
            }
            .to_string();
            self.conflicts.insert(folder.to_owned(), serving);
            self.refuse(folder.to_owned(), fingerprint, reason);
            return;
        }
        self.conflicts.remove(folder);
        let current = self.manager.plugins_in_folder(folder);
        let unchanged = current
            .iter()
            .any(|p| p.manifest == *manifest && p.state == PluginState::Active);
        if unchanged {
            return;
        }
        let replacing = current.iter().any(|p| p.state == PluginState::Active);
        let started = Instant::now();
        match self
            .manager
            .replace_from_path(folder, &self.options.activate)
        {
            Ok(plugin) => {
                self.refused.remove(folder);
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
            Err(e) => self.refuse(folder.to_owned(), fingerprint, e.to_string()),
        }
    }

    /// The folder, other than `folder`, whose instance of `plugin` (`name@version`) is loaded
    /// and not on its way out.
    fn served_elsewhere(&self, plugin: &str, folder: &Path) -> Option<PathBuf> {
        self.manager
            .info(plugin)
            .ok()
            .filter(|p| p.dir != folder && !matches!(p.state, PluginState::Failed(_)))
            .map(|p| p.dir)
    }

    /// Schedules the folders that lost a conflict to `folder`, which is gone: one of them may
    /// serve the plugin now.
    fn release_conflicts(&mut self, folder: &Path) {
        let released: Vec<PathBuf> = self
            .conflicts
            .iter()
            .filter(|(_, serving)| *serving == folder)
            .map(|(loser, _)| loser.clone())
            .collect();
        let now = Instant::now();
        for loser in released {
            self.conflicts.remove(&loser);
            self.refused.remove(&loser);
            self.schedule(loser, now);
        }
    }

    /// Drains and unloads every plugin loaded from a folder that is gone.
    fn remove(&mut self, folder: &Path) {
        self.refused.remove(folder);
        self.conflicts.remove(folder);
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
        self.release_conflicts(folder);
    }

    /// Reports `folder` as failed and leaves it alone until it differs from `fingerprint`.
    fn refuse(&mut self, folder: PathBuf, fingerprint: Fingerprint, reason: String) {
        self.refused.insert(folder.clone(), fingerprint);
        self.emit(ReloadEvent::Failed { folder, reason });
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

/// The verdict on a folder whose check failed with `error`: refused at once when the error is
/// about what the folder holds, looked at again when it may be still being written.
fn not_ready(error: HostError) -> Verdict {
    match error {
        HostError::PathEscape { .. }
        | HostError::NotRegularFile { .. }
        | HostError::FileTooLarge { .. } => Verdict::Refused(error.to_string()),
        other => Verdict::NotYet(other.to_string()),
    }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}
