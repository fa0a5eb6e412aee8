//! [`PluginManager`]: the registry of plugins, their lifecycle, hot replacement, and every call
//! into them.

mod config;
mod entry;
mod instance;
mod memory;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
};

use pio_plugin_api as abi;
use semver::Version;

use crate::{
    error::{HostError, HostResult},
    isolation::{Isolation, IsolationConfig},
    manifest::Manifest,
    shadow::ShadowDir,
    state::{PluginState, Transition},
    types::{
        ActivateOptions, Capability, ChatRequest, CompressionReport, DecodeOptions, EmbedRequest,
        EmbedResponse, GenerateRequest, GenerateResponse, Health, MemoryReport, PluginError,
        PluginMetadata, PluginStats, PositionLogprobs, Prompt, SequenceOpened, SequenceRequest,
        SequenceStep, StreamControl, TokenEvent,
    },
};

use config::ConfigLayers;
use entry::{Cell, Entry, LoadContext};
use instance::{CallResult, Instance};

/// The version of this host, matched against each plugin's `host` requirement.
pub const HOST_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the manager reports about one plugin.
#[derive(Debug, Clone)]
pub struct PluginSummary {
    /// `name@version`.
    pub id: String,
    /// Reload generation: how many times a plugin of this name had been registered when this
    /// one was, from 1.
    pub generation: u64,
    /// The manifest.
    pub manifest: Manifest,
    /// The plugin folder.
    pub dir: PathBuf,
    /// Lifecycle state.
    pub state: PluginState,
    /// The library's metadata, once loaded.
    pub metadata: Option<PluginMetadata>,
    /// Replaced or being unloaded: it takes no new work and is torn down once its open
    /// batched sequences have closed.
    pub retiring: bool,
    /// Batched sequences open on this instance.
    pub open_sequences: usize,
    /// Its last memory report, while active (refreshed by [`PluginManager::memory_report`]).
    pub memory: Option<MemoryReport>,
    /// How its tensors are compressed, as it last said while active (`None` also for tensors
    /// as loaded, and for plugins without compression calls).
    pub compression: Option<CompressionReport>,
    /// Device bytes its `estimate_memory` announced before its last activation (asked only
    /// under a memory budget).
    pub estimate_bytes: Option<u64>,
    /// Deactivated by the memory manager; the next request activates it again.
    pub swapped_out: bool,
}

/// A response together with the plugin instance that produced it.
#[derive(Debug, Clone)]
pub struct Served<T> {
    /// The plugin's response.
    pub response: T,
    /// `name@version` of the instance that served the request.
    pub plugin: String,
    /// Its reload generation.
    pub generation: u64,
}

impl PluginSummary {
    /// Active, or swapped out by the memory manager: a request for it is served (after a swap
    /// in).
    pub fn is_available(&self) -> bool {
        self.state == PluginState::Active || self.swapped_out
    }
}

impl<T> Served<T> {
    /// The same instance's answer, converted.
    fn map<U>(self, convert: impl FnOnce(T) -> U) -> Served<U> {
        Served {
            response: convert(self.response),
            plugin: self.plugin,
            generation: self.generation,
        }
    }
}

/// What [`PluginManager::replace_stuck`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stuck {
    /// The plugin runs in a worker process, whose stall timeout ends the stuck call.
    InWorker,
    /// The instance serving the name was not stuck (any more): nothing was replaced.
    NotServing,
    /// The stuck instance was abandoned; this instance (`name@version`) serves the name now.
    Replaced(String),
}

/// The outcome of loading every plugin folder in a directory.
#[derive(Debug, Default)]
pub struct DirectoryReport {
    /// Ids of the plugins loaded.
    pub loaded: Vec<String>,
    /// Folders (or files) that failed, with the reason.
    pub failures: Vec<(PathBuf, HostError)>,
}

/// Loads, checks, activates, replaces and calls plugins.
///
/// A plugin *reference* is `name@version` or a bare `name`. A name resolves to the instance
/// that serves it — the one activated or swapped in last — or, when none is active, to the
/// highest version (newest generation). Two versions of one plugin can be loaded side by side.
///
/// Every method takes `&self`: the manager is shared (`Arc`) between request threads and the
/// directory watcher. Calls lock only the plugin they use; lifecycle steps on one plugin wait
/// for its call in flight to finish. Listings ([`info`](Self::info),
/// [`list_plugins`](Self::list_plugins)) never wait: they report each plugin as of the end of
/// its last lifecycle step or call.
pub struct PluginManager {
    /// Shared with retirement threads, which forget an entry once its last call returned.
    entries: Arc<RwLock<BTreeMap<u64, Arc<Entry>>>>,
    /// Name → number of the entry that serves it.
    serving: RwLock<BTreeMap<String, u64>>,
    next_number: AtomicU64,
    shadow: ShadowDir,
    shadow_root: PathBuf,
    isolation: IsolationConfig,
    host_version: Version,
    api_version: Version,
    config_overrides: BTreeMap<String, serde_json::Value>,
    config_defaults: BTreeMap<String, serde_json::Value>,
    /// The memory manager's budget, leases and counters.
    residency: Arc<crate::memory::Residency>,
}

impl PluginManager {
    /// A manager whose shadow copies live under `shadow_root/<pid>/`.
    pub fn new(shadow_root: &Path) -> HostResult<Self> {
        Ok(Self {
            entries: Arc::default(),
            serving: RwLock::default(),
            next_number: AtomicU64::new(1),
            shadow: ShadowDir::create(shadow_root)?,
            shadow_root: shadow_root.to_owned(),
            isolation: IsolationConfig::default(),
            host_version: Version::parse(HOST_VERSION).expect("crate version is semver"),
            api_version: pio_plugin_api::api_version(),
            config_overrides: BTreeMap::new(),
            config_defaults: BTreeMap::new(),
            residency: Arc::default(),
        })
    }

    /// This manager's shadow-copy directory (also used to load libraries for packing).
    pub fn shadow(&self) -> &ShadowDir {
        &self.shadow
    }

    /// Overrides the host version the plugins' `host` ranges are checked against (for tests
    /// and for embedding hosts that version themselves).
    pub fn with_host_version(mut self, version: Version) -> Self {
        self.host_version = version;
        self
    }

    /// Where plugins run, and how worker processes are started and supervised. Applies to
    /// plugins loaded afterwards.
    pub fn set_isolation(&mut self, isolation: IsolationConfig) {
        self.isolation = isolation;
    }

    /// Where the plugin `name` runs when it is next loaded.
    pub fn isolation_of(&self, name: &str) -> Isolation {
        self.isolation.of(name)
    }

    /// Configuration merged over the manifest's `config` (its top-level keys replace the
    /// manifest's) when the plugin `name` is initialized.
    pub fn set_config_override(&mut self, name: &str, config: serde_json::Value) {
        self.config_overrides.insert(name.to_owned(), config);
    }

    /// Configuration used where the manifest's `config` (and any override) has no such
    /// top-level key, when the plugin `name` is initialized.
    pub fn set_config_default(&mut self, name: &str, config: serde_json::Value) {
        self.config_defaults.insert(name.to_owned(), config);
    }

    /// Reads and checks the plugin folder `dir` without running any plugin code: manifest
    /// syntax, API and host versions, paths, digests. Returns the plugin id.
    ///
    /// A folder whose manifest parses but fails a later check is still listed, as failed.
    pub fn register(&self, dir: &Path) -> HostResult<String> {
        self.register_entry(dir, false).map(|entry| entry.id())
    }

    fn register_entry(&self, dir: &Path, replacing: bool) -> HostResult<Arc<Entry>> {
        let manifest = Manifest::read(dir)?;
        let checks = self.preflight(&manifest, dir);
        let id = format!("{}@{}", manifest.name, manifest.version);
        let mut entries = write(&self.entries);
        if !replacing {
            let taken = entries
                .values()
                .any(|e| e.id() == id && !matches!(e.summary().state, PluginState::Failed(_)));
            if taken {
                return Err(HostError::AlreadyRegistered(id));
            }
        }
        // Earlier failed attempts of this name and version are superseded.
        // Published states: a call in flight on a same-id entry must not hold up the registry.
        entries
            .retain(|_, e| !(e.id() == id && matches!(e.summary().state, PluginState::Failed(_))));
        let generation = 1 + entries
            .values()
            .filter(|e| e.name() == manifest.name)
            .map(|e| e.generation)
            .max()
            .unwrap_or(0);
        let state = match &checks {
            Ok(()) => PluginState::Discovered,
            Err(e) => PluginState::Failed(e.to_string()),
        };
        let number = self.next_number.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry::new(
            number,
            generation,
            manifest,
            dir.to_owned(),
            state,
        ));
        entries.insert(number, entry.clone());
        checks.map(|()| entry)
    }

    /// Loads a registered plugin: shadow copy, ABI checks, metadata checks, a new instance,
    /// `initialize`. Any failure leaves the plugin failed with the reason.
    pub fn load(&self, reference: &str) -> HostResult<()> {
        let entry = self.resolve_entry(reference)?;
        self.load_entry(&entry)
    }

    fn load_entry(&self, entry: &Entry) -> HostResult<()> {
        let mut cell = entry.lock();
        entry.require(&cell, Transition::Load)?;
        // A failed plugin is checked again from scratch: its files may have been fixed.
        let preflight = match cell.state {
            PluginState::Failed(_) => self.preflight(&entry.manifest, &entry.dir),
            _ => Ok(()),
        };
        let config = ConfigLayers {
            defaults: self.config_defaults.get(entry.name()).cloned(),
            overrides: self.config_overrides.get(entry.name()).cloned(),
        };
        let host_version = self.host_version.to_string();
        let context = LoadContext {
            shadow: &self.shadow,
            shadow_root: &self.shadow_root,
            host_version: &host_version,
            config: &config,
            isolation: self.isolation.of(entry.name()),
            worker: &self.isolation.worker,
        };
        let result = preflight.and_then(|()| entry.load(&mut cell, &context));
        cell.state = match &result {
            Ok(()) => PluginState::Loaded,
            Err(e) => PluginState::Failed(e.to_string()),
        };
        result
    }

    /// [`register`](Self::register) then [`load`](Self::load).
    pub fn load_plugin_from_path(&self, dir: &Path) -> HostResult<String> {
        let entry = self.register_entry(dir, false)?;
        self.load_entry(&entry)?;
        Ok(entry.id())
    }

    /// Loads every plugin folder (a directory with a `plugin.json`) in `dir`. Failures are
    /// reported and do not stop the others; entries that are not folders are reported as junk.
    pub fn load_plugins_from_directory(&self, dir: &Path) -> HostResult<DirectoryReport> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| HostError::io(dir, e))?
            .flatten()
            .map(|e| e.path())
            .collect();
        paths.sort();
        let mut report = DirectoryReport::default();
        for path in paths {
            if !path.is_dir() {
                report
                    .failures
                    .push((path.clone(), not_a_plugin_folder(&path)));
                continue;
            }
            match self.load_plugin_from_path(&path) {
                Ok(id) => report.loaded.push(id),
                Err(e) => {
                    tracing::warn!(folder = %path.display(), "{e}");
                    report.failures.push((path, e));
                }
            }
        }
        Ok(report)
    }

    /// Activates a loaded or inactive plugin (device, model, kernels); it then serves its name.
    pub fn activate(&self, reference: &str, options: &ActivateOptions) -> HostResult<()> {
        let entry = self.resolve_entry(reference)?;
        self.activate_entry(&entry, options)?;
        write(&self.serving).insert(entry.name().to_owned(), entry.number);
        Ok(())
    }

    fn activate_entry(&self, entry: &Entry, options: &ActivateOptions) -> HostResult<()> {
        let mut cell = entry.lock();
        self.activate_locked(entry, &mut cell, options)
    }

    /// Activates `entry` (whose lock the caller holds) within the memory budget: its estimate
    /// is checked and room made (idle plugins swapped out) before the plugin allocates.
    fn activate_locked(
        &self,
        entry: &Entry,
        cell: &mut Cell,
        options: &ActivateOptions,
    ) -> HostResult<()> {
        entry.require(cell, Transition::Activate)?;
        let _room = self.make_room(entry, cell, options)?;
        let abi_options = abi::ActivateOptions::from(options);
        entry.call(cell, "activate", |i| i.activate(&abi_options))?;
        entry.activated(options);
        cell.state = PluginState::Active;
        // `swapped_out` stays set: listings read it with the published state, which says
        // `active` only once the lock is released (until then the plugin must still look
        // available to admission).
        entry.update_memory(|m| m.resident = true);
        self.residency.touch(entry.name());
        self.refresh_memory(entry, cell);
        tracing::info!(plugin = %entry.id(), generation = entry.generation, "activated");
        Ok(())
    }

    /// Deactivates an active plugin, releasing its device.
    pub fn deactivate(&self, reference: &str) -> HostResult<()> {
        let entry = self.resolve_entry(reference)?;
        let mut cell = entry.lock();
        entry.require(&cell, Transition::Deactivate)?;
        entry.call(&mut cell, "deactivate", Instance::deactivate)?;
        cell.state = PluginState::Inactive;
        entry.update_memory(|m| {
            m.report = None;
            m.compression = None;
            m.swapped_out = false;
            m.resident = false;
        });
        Ok(())
    }

    /// Removes a plugin from the manager. Requests already running on it finish first; then it
    /// is deactivated and cleaned up. The library itself stays mapped (libraries are never
    /// unloaded).
    pub fn unload(&self, reference: &str) -> HostResult<()> {
        let entry = self.resolve_entry(reference)?;
        self.retire(&entry)
    }

    /// Loads the plugin folder `dir` as a new generation beside whatever serves its name,
    /// activates it with `options`, then swaps it in atomically: new requests go to it, requests
    /// already running finish on the old instance, which is then torn down.
    ///
    /// If anything fails, the old instance keeps serving and the error is returned; the failed
    /// attempt stays listed with its reason.
    pub fn replace_from_path(&self, dir: &Path, options: &ActivateOptions) -> HostResult<String> {
        let entry = self.register_entry(dir, true)?;
        self.load_entry(&entry)?;
        if let Err(e) = self.activate_entry(&entry, options) {
            let mut cell = entry.lock();
            let _ = entry.tear_down(&mut cell);
            cell.state = PluginState::Failed(e.to_string());
            return Err(e);
        }
        let previous = write(&self.serving).insert(entry.name().to_owned(), entry.number);
        tracing::info!(plugin = %entry.id(), generation = entry.generation, "now serving");
        if let Some(old) = previous.and_then(|n| read(&self.entries).get(&n).cloned()) {
            if old.number != entry.number {
                if let Err(e) = self.retire(&old) {
                    tracing::warn!(plugin = %old.id(), generation = old.generation, "tear-down of the replaced instance failed: {e}");
                }
            }
        }
        Ok(entry.id())
    }

    /// Deals with a call into the plugin `name` that has given no sign of life for too long (a
    /// plugin stuck in an endless loop or a deadlock), so later requests are served again:
    ///
    /// - in a worker process, nothing is needed here: the worker's own stall timeout kills it
    ///   and the next call starts a new one ([`Stuck::InWorker`]);
    /// - in this process, the stuck thread cannot be stopped: the instance serving `name` is
    ///   abandoned — replaced by a fresh instance of the same folder, activated as it was,
    ///   while the old one is retired (torn down if its call ever returns, else left behind;
    ///   its thread keeps whatever CPU it spins on, which only process isolation prevents).
    ///
    /// An instance that is not busy any more (the call returned meanwhile, or the stuck call
    /// was on an older generation already replaced) is left serving ([`Stuck::NotServing`]).
    pub fn replace_stuck(&self, name: &str) -> HostResult<Stuck> {
        if self.isolation_of(name) == Isolation::Process {
            return Ok(Stuck::InWorker);
        }
        let entry = self.resolve_entry(name)?;
        if entry.try_lock().is_some() {
            return Ok(Stuck::NotServing);
        }
        let options = entry.activated_with().unwrap_or_default();
        tracing::warn!(plugin = %entry.id(), generation = entry.generation, "stuck in a call: abandoning the instance and starting a new one");
        self.replace_from_path(&entry.dir, &options)
            .map(Stuck::Replaced)
    }

    /// Takes `entry` out of service: marks it retiring and stops it serving its name; then,
    /// once its call in flight and its open batched sequences are done, tears it down and
    /// forgets it. With sequences open, the last [`close_sequence`](Self::close_sequence) on
    /// it completes the retirement.
    fn retire(&self, entry: &Arc<Entry>) -> HostResult<()> {
        entry.retire();
        {
            let mut serving = write(&self.serving);
            if serving.get(entry.name()) == Some(&entry.number) {
                serving.remove(entry.name());
            }
        }
        let open = entry.open_sequence_count();
        if open > 0 {
            tracing::info!(plugin = %entry.id(), generation = entry.generation, open, "retires once its open sequences close");
            return Ok(());
        }
        self.finish_retirement(entry)
    }

    /// Tears a retiring `entry` down and forgets it (once, whoever calls first), unless it
    /// still holds open sequences — then the last [`close_sequence`](Self::close_sequence)
    /// does. The decision is taken under the entry's lock, after any call in flight: a call
    /// that opened a sequence just as the entry was retired is counted first.
    ///
    /// With a call in flight — a long generation, or a plugin stuck in an endless loop — that
    /// waiting happens on a thread of its own, so the caller (a reload, the watcher) never waits
    /// for a plugin; a call that never returns leaves its instance abandoned (listed as
    /// retiring), not the host blocked.
    fn finish_retirement(&self, entry: &Arc<Entry>) -> HostResult<()> {
        if let Some(mut cell) = entry.try_lock() {
            return retire_locked(&self.entries, entry, &mut cell);
        }
        tracing::info!(plugin = %entry.id(), generation = entry.generation, "busy: retires when its call in flight returns");
        let (entries, retired) = (self.entries.clone(), entry.clone());
        std::thread::Builder::new()
            .name(format!("pio-retire-{}", entry.name()))
            .spawn(move || {
                let mut cell = retired.lock();
                if let Err(e) = retire_locked(&entries, &retired, &mut cell) {
                    tracing::warn!(plugin = %retired.id(), generation = retired.generation, "tear-down of the retired instance failed: {e}");
                }
            })
            .map_err(|e| HostError::io(&entry.dir, e))?;
        Ok(())
    }

    /// Unloads every plugin loaded from the folder `dir` (as in [`unload`](Self::unload)),
    /// returning each one's id and outcome.
    pub fn unload_folder(&self, dir: &Path) -> Vec<(String, HostResult<()>)> {
        let in_folder: Vec<Arc<Entry>> = read(&self.entries)
            .values()
            .filter(|e| e.dir == dir)
            .cloned()
            .collect();
        in_folder
            .into_iter()
            .map(|entry| (entry.id(), self.retire(&entry)))
            .collect()
    }

    /// Every plugin loaded from the folder `dir` (compared as given).
    pub fn plugins_in_folder(&self, dir: &Path) -> Vec<PluginSummary> {
        read(&self.entries)
            .values()
            .filter(|e| e.dir == dir)
            .map(|e| e.summary())
            .collect()
    }

    /// A free-form JSON request to an active plugin.
    pub fn execute(
        &self,
        reference: &str,
        request: &serde_json::Value,
    ) -> HostResult<Served<serde_json::Value>> {
        let text = request.to_string();
        self.serve(reference, None, "infer", |entry, cell| {
            let response = entry.call(cell, "infer", |i| i.infer(&text))?;
            serde_json::from_str(&response).map_err(|e| HostError::Plugin {
                plugin: entry.name().to_owned(),
                operation: "infer",
                error: PluginError::internal(format!("response is not valid JSON: {e}")),
            })
        })
    }

    /// Continues a prompt; `on_token` sees every token and may stop the generation.
    pub fn generate(
        &self,
        reference: &str,
        request: &GenerateRequest,
        mut on_token: impl FnMut(&TokenEvent) -> StreamControl,
    ) -> HostResult<Served<GenerateResponse>> {
        self.serve(
            reference,
            Some(Capability::TextGeneration),
            "generate",
            |entry, cell| {
                entry.call(cell, "generate", |i| {
                    i.generate(
                        &abi::GenerateRequest::from(request),
                        &mut plain_tokens(&mut on_token),
                    )
                })
            },
        )
        .map(|served| served.map(GenerateResponse::from))
    }

    /// Answers a conversation; `on_token` sees every token and may stop the generation.
    pub fn chat(
        &self,
        reference: &str,
        request: &ChatRequest,
        mut on_token: impl FnMut(&TokenEvent) -> StreamControl,
    ) -> HostResult<Served<GenerateResponse>> {
        self.serve(reference, Some(Capability::Chat), "chat", |entry, cell| {
            entry.call(cell, "chat", |i| {
                i.chat(
                    &abi::ChatRequest::from(request),
                    &mut plain_tokens(&mut on_token),
                )
            })
        })
        .map(|served| served.map(GenerateResponse::from))
    }

    /// Opens a sequence for batched generation and processes its prompt. Later calls for the
    /// sequence must name the instance that opened it (`Served::plugin`, `name@version`): its
    /// KV cache lives there.
    pub fn open_sequence(
        &self,
        reference: &str,
        request: &SequenceRequest,
    ) -> HostResult<Served<SequenceOpened>> {
        self.open_sequence_with(reference, request, &DecodeOptions::default())
    }

    /// Opens a sequence as [`open_sequence`](Self::open_sequence) does, reporting
    /// log-probabilities (drained with [`sequence_logprobs`](Self::sequence_logprobs)) and
    /// obeying a grammar as `options` ask. A plugin built before API 0.1.1, or one without
    /// these features, answers [`ErrorKind::Unsupported`].
    pub fn open_sequence_with(
        &self,
        reference: &str,
        request: &SequenceRequest,
        options: &DecodeOptions,
    ) -> HostResult<Served<SequenceOpened>> {
        self.serve(
            reference,
            Some(Capability::BatchedGeneration),
            "open_sequence",
            |entry, cell| {
                let request = abi::SequenceRequest::from(request);
                let options = abi::DecodeOptions::from(options);
                let opened = entry.call(cell, "open_sequence", |i| {
                    i.open_sequence_with(&request, &options)
                })?;
                entry.sequence_opened(opened.id);
                Ok(opened)
            },
        )
    }

    /// The log-probabilities of the tokens sequence `id` generated since the last call, of
    /// the instance that opened it (as for [`step_sequences`](Self::step_sequences)).
    pub fn sequence_logprobs(
        &self,
        plugin: &str,
        generation: u64,
        id: u64,
    ) -> HostResult<Vec<PositionLogprobs>> {
        self.on_instance(plugin, generation, "sequence_logprobs", |i| {
            i.sequence_logprobs(id)
        })
        .map(|positions| positions.into_iter().map(Into::into).collect())
    }

    /// Scores `prompt`: each token after the first with its log-probability given those
    /// before it, and the `top` most likely tokens at its position (what `echo` with
    /// `logprobs` needs).
    pub fn score(
        &self,
        reference: &str,
        prompt: &Prompt,
        top: u32,
    ) -> HostResult<Served<Vec<PositionLogprobs>>> {
        self.serve(
            reference,
            Some(Capability::TextGeneration),
            "score",
            |entry, cell| {
                let prompt = abi::Prompt::from(prompt);
                entry.call(cell, "score", |i| i.score(&prompt, top))
            },
        )
        .map(|served| served.map(|positions| positions.into_iter().map(Into::into).collect()))
    }

    /// Decodes one token for each of the sequences `ids` of the instance that opened them:
    /// `plugin` (`name@version`) of reload `generation`, as [`open_sequence`](Self::open_sequence)
    /// answered. Never re-routed: a replaced or unloaded instance keeps serving its open
    /// sequences until they close; an instance that is gone answers
    /// [`HostError::InstanceGone`].
    pub fn step_sequences(
        &self,
        plugin: &str,
        generation: u64,
        ids: &[u64],
    ) -> HostResult<Vec<SequenceStep>> {
        self.on_instance(plugin, generation, "step_sequences", |i| {
            i.step_sequences(ids)
        })
        .map(|steps| steps.into_iter().map(SequenceStep::from).collect())
    }

    /// Closes sequence `id` of the instance that opened it (as for
    /// [`step_sequences`](Self::step_sequences)).
    ///
    /// The host counts the sequence closed whatever the plugin answers — an error, or an
    /// instance that failed in an earlier step — so a retiring instance is always torn down once
    /// its last sequence is closed.
    pub fn close_sequence(&self, plugin: &str, generation: u64, id: u64) -> HostResult<()> {
        let entry = self.instance(plugin, generation)?;
        let closed = self.on_instance(plugin, generation, "close_sequence", |i| {
            i.close_sequence(id)
        });
        if entry.sequence_closed(id) == 0 && entry.is_retiring() {
            self.finish_retirement(&entry)?;
        }
        closed
    }

    /// The entry of instance `plugin` of `generation`, retiring or not.
    fn instance(&self, plugin: &str, generation: u64) -> HostResult<Arc<Entry>> {
        read(&self.entries)
            .values()
            .find(|e| e.generation == generation && e.id() == plugin)
            .cloned()
            .ok_or_else(|| HostError::InstanceGone {
                plugin: plugin.to_owned(),
                generation,
            })
    }

    /// Runs `call` on exactly the instance `plugin` of `generation`, if it still serves.
    fn on_instance<T>(
        &self,
        plugin: &str,
        generation: u64,
        operation: &'static str,
        call: impl FnOnce(&mut Instance) -> CallResult<T>,
    ) -> HostResult<T> {
        let entry = self.instance(plugin, generation)?;
        let mut cell = entry.lock();
        if cell.state != PluginState::Active {
            return Err(HostError::InstanceGone {
                plugin: plugin.to_owned(),
                generation,
            });
        }
        entry.require_capability(&cell, Capability::BatchedGeneration)?;
        entry.call(&mut cell, operation, call)
    }

    /// Embeds a batch of texts.
    pub fn embed(
        &self,
        reference: &str,
        request: &EmbedRequest,
    ) -> HostResult<Served<EmbedResponse>> {
        self.serve(
            reference,
            Some(Capability::Embeddings),
            "embed",
            |entry, cell| {
                entry.call(cell, "embed", |i| {
                    i.embed(&abi::EmbedRequest::from(request))
                })
            },
        )
        .map(|served| served.map(EmbedResponse::from))
    }

    /// Text to token ids.
    pub fn tokenize(&self, reference: &str, text: &str, add_special: bool) -> HostResult<Vec<u32>> {
        self.serve(reference, None, "tokenize", |entry, cell| {
            entry.call(cell, "tokenize", |i| i.tokenize(text, add_special))
        })
        .map(|served| served.response)
    }

    /// Token ids to text.
    pub fn detokenize(&self, reference: &str, tokens: &[u32]) -> HostResult<String> {
        self.serve(reference, None, "detokenize", |entry, cell| {
            entry.call(cell, "detokenize", |i| i.detokenize(tokens))
        })
        .map(|served| served.response)
    }

    /// Resource use and counters of a plugin with an instance.
    pub fn stats(&self, reference: &str) -> HostResult<PluginStats> {
        let entry = self.resolve_entry(reference)?;
        let mut cell = entry.lock();
        match &mut cell.instance {
            Some(instance) => Ok(instance.stats().into()),
            None => Err(entry.invalid("report stats", &cell.state)),
        }
    }

    /// Health of a plugin with an instance.
    pub fn health(&self, reference: &str) -> HostResult<Health> {
        let entry = self.resolve_entry(reference)?;
        let mut cell = entry.lock();
        match &mut cell.instance {
            Some(instance) => Ok(instance.health().into()),
            None => Err(entry.invalid("report health", &cell.state)),
        }
    }

    /// Every plugin, ordered by name, version and generation.
    pub fn list_plugins(&self) -> Vec<PluginSummary> {
        let mut list: Vec<PluginSummary> =
            read(&self.entries).values().map(|e| e.summary()).collect();
        list.sort_by(|a, b| {
            (&a.manifest.name, &a.manifest.version, a.generation).cmp(&(
                &b.manifest.name,
                &b.manifest.version,
                b.generation,
            ))
        });
        list
    }

    /// The plugins that serve requests: the active ones, and those the memory manager swapped
    /// out (activated again by their next request).
    pub fn list_active_plugins(&self) -> Vec<PluginSummary> {
        self.list_plugins()
            .into_iter()
            .filter(PluginSummary::is_available)
            .collect()
    }

    /// One plugin.
    pub fn info(&self, reference: &str) -> HostResult<PluginSummary> {
        Ok(self.resolve_entry(reference)?.summary())
    }

    /// The id (`name@version`) a reference stands for.
    pub fn resolve(&self, reference: &str) -> HostResult<String> {
        Ok(self.resolve_entry(reference)?.id())
    }

    fn resolve_entry(&self, reference: &str) -> HostResult<Arc<Entry>> {
        let (name, version) = match reference.split_once('@') {
            Some((name, version)) => (name, Some(version)),
            None => (reference, None),
        };
        let entries = read(&self.entries);
        let serving = read(&self.serving)
            .get(name)
            .and_then(|n| entries.get(n))
            .cloned();
        if let Some(entry) =
            serving.filter(|e| version.is_none_or(|v| e.manifest.version.to_string() == v))
        {
            return Ok(entry);
        }
        entries
            .values()
            .filter(|e| {
                e.name() == name && version.is_none_or(|v| e.manifest.version.to_string() == v)
            })
            .filter(|e| !e.is_retiring())
            .max_by(|a, b| {
                (&a.manifest.version, a.generation).cmp(&(&b.manifest.version, b.generation))
            })
            .cloned()
            .ok_or_else(|| HostError::NotFound(reference.to_owned()))
    }

    /// Runs one request on the instance serving `reference`. A request that was waiting for an
    /// instance that got replaced meanwhile follows the name to the new instance, so a reload
    /// drops no request.
    fn serve<T>(
        &self,
        reference: &str,
        capability: Option<Capability>,
        operation: &'static str,
        mut call: impl FnMut(&Entry, &mut Cell) -> HostResult<T>,
    ) -> HostResult<Served<T>> {
        // Each retry means a swap happened while this request waited; a few suffice.
        const ATTEMPTS: usize = 16;
        for _ in 0..ATTEMPTS {
            let entry = self.resolve_entry(reference)?;
            let mut cell = entry.lock();
            if entry.is_retiring() {
                // Replaced while this request waited: follow the name to what serves it now.
                continue;
            }
            if cell.state == PluginState::Inactive && entry.memory().swapped_out {
                match self.swap_in(&entry, &mut cell) {
                    // Replaced while it waited for room: follow the name.
                    Err(HostError::InstanceGone { .. }) if entry.is_retiring() => continue,
                    result => result?,
                }
            }
            entry.require(&cell, Transition::Execute)?;
            if let Some(capability) = capability {
                entry.require_capability(&cell, capability)?;
            }
            let response = call(&entry, &mut cell)?;
            return Ok(Served {
                response,
                plugin: entry.id(),
                generation: entry.generation,
            });
        }
        Err(HostError::Plugin {
            plugin: reference.to_owned(),
            operation,
            error: PluginError::internal(
                "the plugin was replaced too many times during the request",
            ),
        })
    }

    /// Every check that needs no plugin code: versions, paths, digests.
    fn preflight(&self, manifest: &Manifest, dir: &Path) -> HostResult<()> {
        manifest.check_compatibility(&self.api_version, &self.host_version)?;
        manifest.verify_files(dir)
    }
}

/// The end of [`PluginManager::finish_retirement`], with the entry's lock held.
fn retire_locked(
    entries: &RwLock<BTreeMap<u64, Arc<Entry>>>,
    entry: &Entry,
    cell: &mut Cell,
) -> HostResult<()> {
    if entry.open_sequence_count() > 0 {
        return Ok(());
    }
    if write(entries).remove(&entry.number).is_none() {
        return Ok(());
    }
    let result = entry.tear_down(cell);
    tracing::info!(plugin = %entry.id(), generation = entry.generation, "retired");
    result
}

fn not_a_plugin_folder(path: &Path) -> HostError {
    HostError::Manifest {
        path: path.to_owned(),
        reason: "not a plugin folder (plugins are folders with a plugin.json)".to_owned(),
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// The plugin's token callback for a caller's `on_token`, which sees plain [`TokenEvent`]s.
fn plain_tokens(
    on_token: &mut impl FnMut(&TokenEvent) -> StreamControl,
) -> impl FnMut(&abi::TokenEvent) -> StreamControl + '_ {
    move |event| on_token(&TokenEvent::from(event))
}
