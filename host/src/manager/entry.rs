//! One loaded (or failed) plugin: its manifest, lifecycle state, library and instance.

use std::{
    ops::{Deref, DerefMut},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Mutex, MutexGuard,
    },
};

use pio_plugin_api::{Capability, ErrorKind, PluginError, PluginInstanceBox, PluginMetadata};

use crate::{
    error::{HostError, HostResult},
    loader::{check_metadata, load_library, LoadedLibrary},
    manifest::{Manifest, MANIFEST_FILE},
    shadow::ShadowDir,
    state::{PluginState, Transition},
};

use super::{config::ConfigLayers, PluginSummary};

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
    open_sequences: AtomicUsize,
    cell: Mutex<Cell>,
    /// State and metadata as of the last release of `cell`, readable while a call holds it,
    /// so listings and health checks never wait for a generation.
    published: Mutex<Published>,
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
        if published.metadata.is_some() != self.cell.library.is_some() {
            published.metadata = self.cell.library.as_ref().map(|l| l.metadata.clone());
        }
    }
}

/// The mutable part of an entry, locked for every lifecycle step and every call, so calls into
/// one instance never overlap.
pub(super) struct Cell {
    pub state: PluginState,
    pub library: Option<LoadedLibrary>,
    pub instance: Option<PluginInstanceBox>,
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
            open_sequences: AtomicUsize::new(0),
            published: Mutex::new(Published {
                state: state.clone(),
                metadata: None,
            }),
            cell: Mutex::new(Cell {
                state,
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

    pub fn is_retiring(&self) -> bool {
        self.retiring.load(Ordering::SeqCst)
    }

    pub fn retire(&self) {
        self.retiring.store(true, Ordering::SeqCst);
    }

    /// Counts a batched sequence opened on this instance.
    pub fn sequence_opened(&self) {
        self.open_sequences.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts a batched sequence closed; returns how many stay open.
    pub fn sequence_closed(&self) -> usize {
        self.open_sequences.fetch_sub(1, Ordering::SeqCst) - 1
    }

    /// Batched sequences open on this instance.
    pub fn open_sequences(&self) -> usize {
        self.open_sequences.load(Ordering::SeqCst)
    }

    /// The entry as of the last release of its lock: never waits for a call in flight.
    pub fn summary(&self) -> PluginSummary {
        let published = self
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        PluginSummary {
            id: self.id(),
            generation: self.generation,
            manifest: self.manifest.clone(),
            dir: self.dir.clone(),
            state: published.state,
            metadata: published.metadata,
            retiring: self.is_retiring(),
            open_sequences: self.open_sequences(),
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
        match &cell.library {
            Some(library) if library.metadata.has(capability) => Ok(()),
            _ => Err(HostError::MissingCapability {
                plugin: self.manifest.name.clone(),
                capability: capability.as_str(),
            }),
        }
    }

    /// Runs `call` on the instance, turning its error into a [`HostError`]; a panic marks the
    /// plugin failed (the instance refuses further work after one).
    pub fn call<T>(
        &self,
        cell: &mut Cell,
        operation: &'static str,
        call: impl FnOnce(&mut PluginInstanceBox) -> Result<T, PluginError>,
    ) -> HostResult<T> {
        let Some(instance) = cell.instance.as_mut() else {
            return Err(self.invalid(operation, &cell.state));
        };
        call(instance).map_err(|error| {
            if error.kind == ErrorKind::Panic {
                tracing::error!(plugin = %self.id(), "{error}");
                cell.state = PluginState::Failed(error.message.to_string());
            }
            HostError::Plugin {
                plugin: self.manifest.name.clone(),
                operation,
                error,
            }
        })
    }

    /// Loads the library (once per entry), checks its metadata and creates an initialized
    /// instance.
    pub fn load(
        &self,
        cell: &mut Cell,
        shadow: &ShadowDir,
        config: &ConfigLayers,
    ) -> HostResult<()> {
        let name = self.name();
        if cell.library.is_none() {
            let library_path = self.manifest.library_path(&self.dir)?;
            let library = load_library(name, &library_path, shadow)?;
            check_metadata(&self.manifest, &library_path, &library.metadata)?;
            cell.library = Some(library);
        }
        let module = cell.library.as_ref().expect("just loaded").module;
        cell.instance = None;
        let plugin_error = |operation, error| HostError::Plugin {
            plugin: name.to_owned(),
            operation,
            error,
        };
        let mut instance = (module.new_instance())()
            .into_result()
            .map_err(|e| plugin_error("new", e))?;
        let config = config.merge(&self.manifest.config, &self.dir);
        instance
            .initialize(config.to_string().as_str().into())
            .into_result()
            .map_err(|e| plugin_error("initialize", e))?;
        cell.instance = Some(instance);
        tracing::info!(
            plugin = %self.id(),
            generation = self.generation,
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
            result = self.call(cell, "deactivate", |i| i.deactivate().into_result());
        }
        if cell.instance.is_some() && !matches!(cell.state, PluginState::Failed(_)) {
            result = result.and(self.call(cell, "cleanup", |i| i.cleanup().into_result()));
        }
        if cell.instance.take().is_some() {
            crate::heap::release_freed_memory();
        }
        if !matches!(cell.state, PluginState::Failed(_)) {
            cell.state = PluginState::Inactive;
        }
        result
    }
}
