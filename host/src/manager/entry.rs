//! One loaded (or failed) plugin: its manifest, lifecycle state, library and instance.

use std::{
    collections::HashSet,
    ops::{Deref, DerefMut},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, MutexGuard,
    },
};

use pio_plugin_api::ErrorKind;

use crate::{
    error::{HostError, HostResult},
    isolation::{
        client::{CallError, WorkerSpec},
        Isolation, WorkerError, WorkerInstance, WorkerSettings,
    },
    loader::{new_instance, open_plugin, LoadedLibrary},
    manifest::{Manifest, MANIFEST_FILE},
    shadow::ShadowDir,
    state::{PluginState, Transition},
    types::{ActivateOptions, Capability, CompressionReport, MemoryReport, PluginMetadata},
};

use super::{
    config::ConfigLayers,
    instance::{CallResult, Instance},
    PluginSummary,
};

/// A plugin known to the manager. Several entries may share a name (two versions side by side,
/// or the old and new generation during a reload).
pub(super) struct Entry {
    /// Unique number in the manager.
    pub number: u64,
    /// How many times a plugin of this name had been registered when this one was (from 1).
    pub generation: u64,
    pub manifest: Manifest,
    pub dir: PathBuf,
    /// Set once a newer generation has replaced this one or it is being unloaded: requests
    /// that reach it afterwards go to whatever now serves its name.
    pub retiring: AtomicBool,
    /// Batched sequences open on this instance: a retiring instance is torn down only when
    /// the last one closes, so they finish where their keys and values are.
    open_sequences: Mutex<HashSet<u64>>,
    /// The options of the last successful `activate`, readable while a call holds `cell`: a
    /// stuck instance's replacement is activated the same way.
    activated_with: Mutex<Option<ActivateOptions>>,
    cell: Mutex<Cell>,
    /// State and metadata as of the last release of `cell`, readable while a call holds it,
    /// so listings and health checks never wait for a generation.
    published: Mutex<Published>,
    /// What the memory manager knows of this instance, readable while a call holds `cell`.
    memory: Mutex<EntryMemory>,
}

/// The memory manager's view of one instance.
#[derive(Debug, Clone, Default)]
pub(super) struct EntryMemory {
    /// Device bytes `estimate_memory` announced before the last activation.
    pub estimate: Option<u64>,
    /// The last `memory_report` (while active).
    pub report: Option<MemoryReport>,
    /// The last `compression_stats` (while active; `None` also for tensors as loaded).
    pub compression: Option<CompressionReport>,
    /// Deactivated by the memory manager (to make room, or idle past its keep-alive): the next
    /// call that needs it activates it again. Cleared only by a deactivation or tear-down that
    /// is not the memory manager's; listings report it while the state is `inactive`.
    pub swapped_out: bool,
    /// Counted against the budget: set when an activation succeeds, while the memory manager's
    /// gate is still held, and cleared when the instance is deactivated or torn down. (The
    /// published state changes only when the entry's lock is released, after the gate: another
    /// activation reading it could miss an instance just activated.)
    pub resident: bool,
}

impl EntryMemory {
    /// The device bytes the instance is counted for while active: the larger of its estimate
    /// and its last report.
    pub fn reserved(&self) -> u64 {
        if !self.resident {
            return 0;
        }
        let reported = self.report.as_ref().map_or(0, MemoryReport::device_bytes);
        self.estimate.unwrap_or(0).max(reported)
    }
}

/// What [`Entry::summary`] reports, copied out of the cell whenever its lock is released.
#[derive(Debug, Clone)]
struct Published {
    state: PluginState,
    metadata: Option<PluginMetadata>,
}

/// The locked cell of an entry; releasing it publishes the state and metadata.
pub(super) struct CellGuard<'a> {
    cell: MutexGuard<'a, Cell>,
    published: &'a Mutex<Published>,
}

impl Deref for CellGuard<'_> {
    type Target = Cell;

    fn deref(&self) -> &Cell {
        &self.cell
    }
}

impl DerefMut for CellGuard<'_> {
    fn deref_mut(&mut self) -> &mut Cell {
        &mut self.cell
    }
}

impl Drop for CellGuard<'_> {
    fn drop(&mut self) {
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        if published.state != self.cell.state {
            published.state = self.cell.state.clone();
        }
        if published.metadata.is_some() != self.cell.metadata.is_some() {
            published.metadata = self.cell.metadata.clone();
        }
    }
}

/// The mutable part of an entry, locked for every lifecycle step and every call, so calls into
/// one instance never overlap.
pub(super) struct Cell {
    pub state: PluginState,
    /// What the library says about itself, once loaded (in this process or in a worker).
    pub metadata: Option<PluginMetadata>,
    /// The library, when loaded in this process (kept: libraries are never unloaded, and a
    /// failed plugin's next instance comes from it).
    pub library: Option<LoadedLibrary>,
    pub instance: Option<Instance>,
}

impl Entry {
    pub fn new(
        number: u64,
        generation: u64,
        manifest: Manifest,
        dir: PathBuf,
        state: PluginState,
    ) -> Self {
        Self {
            number,
            generation,
            manifest,
            dir,
            retiring: AtomicBool::new(false),
            open_sequences: Mutex::default(),
            activated_with: Mutex::default(),
            memory: Mutex::default(),
            published: Mutex::new(Published {
                state: state.clone(),
                metadata: None,
            }),
            cell: Mutex::new(Cell {
                state,
                metadata: None,
                library: None,
                instance: None,
            }),
        }
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.manifest.name, self.manifest.version)
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn lock(&self) -> CellGuard<'_> {
        // A poisoned lock is still consistent: every state change is written after the
        // fallible work it records.
        CellGuard {
            cell: self.cell.lock().unwrap_or_else(|p| p.into_inner()),
            published: &self.published,
        }
    }

    /// The cell if no call holds it now.
    pub fn try_lock(&self) -> Option<CellGuard<'_>> {
        let cell = match self.cell.try_lock() {
            Ok(cell) => cell,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(CellGuard {
            cell,
            published: &self.published,
        })
    }

    pub fn is_retiring(&self) -> bool {
        self.retiring.load(Ordering::SeqCst)
    }

    pub fn retire(&self) {
        self.retiring.store(true, Ordering::SeqCst);
    }

    /// Records the options this instance was activated with.
    pub fn activated(&self, options: &ActivateOptions) {
        *lock_unpoisoned(&self.activated_with) = Some(options.clone());
    }

    /// The options of the last successful activation, if any.
    pub fn activated_with(&self) -> Option<ActivateOptions> {
        lock_unpoisoned(&self.activated_with).clone()
    }

    /// The memory manager's view of this instance.
    pub fn memory(&self) -> EntryMemory {
        lock_unpoisoned(&self.memory).clone()
    }

    /// Changes the memory manager's view of this instance.
    pub fn update_memory(&self, change: impl FnOnce(&mut EntryMemory)) {
        change(&mut lock_unpoisoned(&self.memory));
    }

    /// Records batched sequence `id` opened on this instance.
    pub fn sequence_opened(&self, id: u64) {
        self.open_ids().insert(id);
    }

    /// Records sequence `id` closed — also when the plugin refused the close or had failed, as
    /// the host will not use it again — and returns how many stay open.
    pub fn sequence_closed(&self, id: u64) -> usize {
        let mut open = self.open_ids();
        open.remove(&id);
        open.len()
    }

    /// Batched sequences open on this instance.
    pub fn open_sequence_count(&self) -> usize {
        self.open_ids().len()
    }

    fn open_ids(&self) -> MutexGuard<'_, HashSet<u64>> {
        lock_unpoisoned(&self.open_sequences)
    }

    /// The entry as of the last release of its lock: never waits for a call in flight.
    pub fn summary(&self) -> PluginSummary {
        let published = self
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let memory = self.memory();
        let swapped_out = memory.swapped_out && published.state == PluginState::Inactive;
        PluginSummary {
            id: self.id(),
            generation: self.generation,
            manifest: self.manifest.clone(),
            dir: self.dir.clone(),
            state: published.state,
            metadata: published.metadata,
            retiring: self.is_retiring(),
            open_sequences: self.open_sequence_count(),
            swapped_out,
            compression: memory.compression,
            memory: memory.report,
            estimate_bytes: memory.estimate,
        }
    }

    /// The error for `transition` refused in `state`.
    pub fn invalid(&self, operation: &'static str, state: &PluginState) -> HostError {
        HostError::InvalidTransition {
            plugin: self.manifest.name.clone(),
            operation,
            state: state.clone(),
        }
    }

    pub fn require(&self, cell: &Cell, transition: Transition) -> HostResult<()> {
        if cell.state.allows(transition) {
            Ok(())
        } else {
            Err(self.invalid(transition.verb(), &cell.state))
        }
    }

    pub fn require_capability(&self, cell: &Cell, capability: Capability) -> HostResult<()> {
        match &cell.metadata {
            Some(metadata) if metadata.has(capability) => Ok(()),
            _ => Err(HostError::MissingCapability {
                plugin: self.manifest.name.clone(),
                capability: capability.as_str(),
            }),
        }
    }

    /// Runs `call` on the instance, turning its error into a [`HostError`]. A panic marks the
    /// plugin failed (the instance refuses further work after one), and so does a worker that
    /// crashed too often; a worker's single crash fails only this call (the next one restarts
    /// it).
    pub fn call<T>(
        &self,
        cell: &mut Cell,
        operation: &'static str,
        call: impl FnOnce(&mut Instance) -> CallResult<T>,
    ) -> HostResult<T> {
        let Some(instance) = cell.instance.as_mut() else {
            return Err(self.invalid(operation, &cell.state));
        };
        call(instance).map_err(|error| match error {
            CallError::Plugin(error) => {
                if error.kind == ErrorKind::Panic {
                    tracing::error!(plugin = %self.id(), "{error}");
                    cell.state = PluginState::Failed(error.message.to_string());
                }
                HostError::Plugin {
                    plugin: self.manifest.name.clone(),
                    operation,
                    error: error.into(),
                }
            }
            CallError::Worker(error) => {
                tracing::error!(plugin = %self.id(), operation, "{error}");
                if matches!(error, WorkerError::GaveUp { .. }) {
                    cell.state = PluginState::Failed(error.to_string());
                }
                HostError::Worker {
                    plugin: self.manifest.name.clone(),
                    operation,
                    error,
                }
            }
        })
    }

    /// Loads the library (once per entry) in this process, or starts a worker that loads it,
    /// and creates an initialized instance.
    pub fn load(&self, cell: &mut Cell, host: &LoadContext<'_>) -> HostResult<()> {
        cell.instance = None;
        let config = host
            .config
            .merge(&self.manifest.config, &self.dir)
            .to_string();
        match host.isolation {
            Isolation::InProcess => {
                if cell.library.is_none() {
                    cell.library = Some(open_plugin(&self.manifest, &self.dir, host.shadow)?);
                }
                let library = cell.library.as_ref().expect("just loaded");
                cell.metadata = Some(library.metadata.clone());
                let instance = new_instance(self.name(), library, &config)?;
                cell.instance = Some(Instance::InProcess(instance));
            }
            Isolation::Process => {
                let spec = WorkerSpec {
                    plugin: self.name().to_owned(),
                    folder: self.dir.clone(),
                    config,
                    shadow_root: host.shadow_root.to_owned(),
                    host_version: host.host_version.to_owned(),
                    settings: host.worker.clone(),
                };
                let (worker, metadata_json) =
                    WorkerInstance::start(spec).map_err(|error| match error {
                        CallError::Plugin(error) => HostError::WorkerRefused {
                            plugin: self.name().to_owned(),
                            reason: error.message.into_string(),
                        },
                        CallError::Worker(error) => HostError::Worker {
                            plugin: self.name().to_owned(),
                            operation: "load",
                            error,
                        },
                    })?;
                let metadata: PluginMetadata =
                    serde_json::from_str(&metadata_json).map_err(|e| HostError::Library {
                        plugin: self.name().to_owned(),
                        file: self.dir.clone(),
                        reason: format!("the worker sent invalid metadata: {e}"),
                    })?;
                cell.metadata = Some(metadata);
                cell.instance = Some(Instance::Worker(Box::new(worker)));
            }
        }
        tracing::info!(
            plugin = %self.id(),
            generation = self.generation,
            isolation = host.isolation.as_str(),
            manifest = %self.dir.join(MANIFEST_FILE).display(),
            "loaded"
        );
        Ok(())
    }

    /// Deactivates (if active) and cleans up the instance, then drops it, releasing its device
    /// memory. The caller holds the lock, so any call in flight has finished.
    pub fn tear_down(&self, cell: &mut Cell) -> HostResult<()> {
        let mut result = Ok(());
        if cell.state == PluginState::Active {
            result = self.call(cell, "deactivate", Instance::deactivate);
        }
        if cell.instance.is_some() && !matches!(cell.state, PluginState::Failed(_)) {
            result = result.and(self.call(cell, "cleanup", Instance::cleanup));
        }
        if cell.instance.take().is_some() {
            crate::heap::release_freed_memory();
        }
        self.update_memory(|m| {
            m.resident = false;
            m.swapped_out = false;
            m.report = None;
            m.compression = None;
        });
        if !matches!(cell.state, PluginState::Failed(_)) {
            cell.state = PluginState::Inactive;
        }
        result
    }
}

/// What loading an entry needs from the manager.
pub(super) struct LoadContext<'a> {
    pub shadow: &'a ShadowDir,
    pub shadow_root: &'a std::path::Path,
    pub host_version: &'a str,
    pub config: &'a ConfigLayers,
    pub isolation: Isolation,
    pub worker: &'a WorkerSettings,
}

/// Locks `mutex`; a poisoned one still holds a consistent value (each is written whole).
fn lock_unpoisoned<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
