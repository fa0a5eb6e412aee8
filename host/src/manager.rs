//! [`PluginManager`]: the registry of plugins, their lifecycle, and every call into them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use pio_plugin_api::{
    ActivateOptions, Capability, ChatRequest, EmbedRequest, EmbedResponse, ErrorKind, FnSink,
    GenerateRequest, GenerateResponse, Health, PluginError, PluginInstanceBox, PluginMetadata,
    PluginStats, StreamControl, TokenEvent,
};
use semver::Version;

use crate::{
    error::{HostError, HostResult},
    loader::{check_metadata, load_library, LoadedLibrary},
    manifest::{Manifest, MANIFEST_FILE},
    shadow::ShadowDir,
    state::{PluginState, Transition},
};

/// The version of this host, matched against each plugin's `host` requirement.
pub const HOST_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the manager reports about one plugin.
#[derive(Debug, Clone)]
pub struct PluginSummary {
    /// `name@version`, unique in the manager.
    pub id: String,
    /// The manifest.
    pub manifest: Manifest,
    /// The plugin folder.
    pub dir: PathBuf,
    /// Lifecycle state.
    pub state: PluginState,
    /// The library's metadata, once loaded.
    pub metadata: Option<PluginMetadata>,
}

/// The outcome of loading every plugin folder in a directory.
#[derive(Debug, Default)]
pub struct DirectoryReport {
    /// Ids of the plugins loaded.
    pub loaded: Vec<String>,
    /// Folders (or files) that failed, with the reason.
    pub failures: Vec<(PathBuf, HostError)>,
}

struct Entry {
    manifest: Manifest,
    dir: PathBuf,
    state: PluginState,
    library: Option<LoadedLibrary>,
    instance: Option<PluginInstanceBox>,
}

impl Entry {
    fn id(&self) -> String {
        format!("{}@{}", self.manifest.name, self.manifest.version)
    }

    fn require(&self, transition: Transition) -> HostResult<()> {
        if self.state.allows(transition) {
            Ok(())
        } else {
            Err(HostError::InvalidTransition {
                plugin: self.manifest.name.clone(),
                operation: transition.verb(),
                state: self.state.clone(),
            })
        }
    }

    fn require_capability(&self, capability: Capability) -> HostResult<()> {
        match &self.library {
            Some(library) if library.metadata.has(capability) => Ok(()),
            _ => Err(HostError::MissingCapability {
                plugin: self.manifest.name.clone(),
                capability: capability.as_str(),
            }),
        }
    }

    /// Runs `call` on the instance, turning its error into a [`HostError`]; a panic marks the
    /// plugin failed (the instance refuses further work after one).
    fn call<T>(
        &mut self,
        operation: &'static str,
        call: impl FnOnce(&mut PluginInstanceBox) -> Result<T, PluginError>,
    ) -> HostResult<T> {
        let instance = self
            .instance
            .as_mut()
            .ok_or_else(|| HostError::InvalidTransition {
                plugin: self.manifest.name.clone(),
                operation,
                state: self.state.clone(),
            })?;
        call(instance).map_err(|error| {
            if error.kind == ErrorKind::Panic {
                tracing::error!(plugin = %self.manifest.name, "{error}");
                self.state = PluginState::Failed(error.message.to_string());
            }
            HostError::Plugin {
                plugin: self.manifest.name.clone(),
                operation,
                error,
            }
        })
    }

    fn summary(&self) -> PluginSummary {
        PluginSummary {
            id: self.id(),
            manifest: self.manifest.clone(),
            dir: self.dir.clone(),
            state: self.state.clone(),
            metadata: self.library.as_ref().map(|l| l.metadata.clone()),
        }
    }
}

/// Loads, checks, activates and calls plugins.
///
/// Plugins are keyed by `name@version`, so two versions of one plugin can be loaded side by
/// side. Operations take a plugin *reference*: either `name@version`, or a bare `name`, which
/// means the highest version of that name, preferring active ones.
///
/// Lifecycle operations take `&mut self`; calls (`generate`, `embed`, ...) take `&self` and
/// lock only the plugin they use, so different plugins serve concurrently.
pub struct PluginManager {
    entries: BTreeMap<String, Mutex<Entry>>,
    shadow: ShadowDir,
    host_version: Version,
    api_version: Version,
    config_overrides: BTreeMap<String, serde_json::Value>,
    config_defaults: BTreeMap<String, serde_json::Value>,
}

impl PluginManager {
    /// A manager whose shadow copies live under `shadow_root/<pid>/`.
    pub fn new(shadow_root: &Path) -> HostResult<Self> {
        Ok(Self {
            entries: BTreeMap::new(),
            shadow: ShadowDir::create(shadow_root)?,
            host_version: Version::parse(HOST_VERSION).expect("crate version is semver"),
            api_version: pio_plugin_api::api_version(),
            config_overrides: BTreeMap::new(),
            config_defaults: BTreeMap::new(),
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
    pub fn register(&mut self, dir: &Path) -> HostResult<String> {
        let manifest = Manifest::read(dir)?;
        let checks = self.preflight(&manifest, dir);
        let id = format!("{}@{}", manifest.name, manifest.version);
        if let Some(existing) = self.entries.get(&id) {
            if !matches!(lock(existing).state, PluginState::Failed(_)) {
                return Err(HostError::AlreadyRegistered(id));
            }
        }
        let state = match &checks {
            Ok(()) => PluginState::Discovered,
            Err(e) => PluginState::Failed(e.to_string()),
        };
        let entry = Entry {
            manifest,
            dir: dir.to_owned(),
            state,
            library: None,
            instance: None,
        };
        self.entries.insert(id.clone(), Mutex::new(entry));
        checks.map(|()| id)
    }

    /// Loads a registered plugin: shadow copy, ABI checks, metadata checks, a new instance,
    /// `initialize`. Any failure leaves the plugin failed with the reason.
    pub fn load(&mut self, reference: &str) -> HostResult<()> {
        let id = self.resolve(reference)?;
        let name = id_name(&id);
        let config_layers = ConfigLayers {
            defaults: self.config_defaults.get(&name).cloned(),
            overrides: self.config_overrides.get(&name).cloned(),
        };
        let entry = lock(&self.entries[&id]);
        entry.require(Transition::Load)?;
        // A failed plugin is checked again from scratch: its files may have been fixed.
        let preflight = match entry.state {
            PluginState::Failed(_) => self.preflight(&entry.manifest, &entry.dir),
            _ => Ok(()),
        };
        drop(entry);
        let entry = self
            .entries
            .get_mut(&id)
            .expect("resolved ids exist")
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        let result = preflight.and_then(|()| load_entry(entry, &self.shadow, config_layers));
        entry.state = match &result {
            Ok(()) => PluginState::Loaded,
            Err(e) => PluginState::Failed(e.to_string()),
        };
        result
    }

    /// [`register`](Self::register) then [`load`](Self::load).
    pub fn load_plugin_from_path(&mut self, dir: &Path) -> HostResult<String> {
        let id = self.register(dir)?;
        self.load(&id)?;
        Ok(id)
    }

    /// Loads every plugin folder (a directory with a `plugin.json`) in `dir`. Failures are
    /// reported and do not stop the others; entries that are not folders are reported as junk.
    pub fn load_plugins_from_directory(&mut self, dir: &Path) -> HostResult<DirectoryReport> {
        let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| HostError::io(dir, e))?
            .flatten()
            .map(|e| e.path())
            .collect();
        folders.sort();
        let mut report = DirectoryReport::default();
        for path in folders {
            if !path.is_dir() {
                report.failures.push((
                    path.clone(),
                    HostError::Manifest {
                        path: path.clone(),
                        reason: "not a plugin folder (plugins are folders with a plugin.json)"
                            .to_owned(),
                    },
                ));
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

    /// Activates a loaded or inactive plugin: device, model, kernels.
    pub fn activate(&mut self, reference: &str, options: &ActivateOptions) -> HostResult<()> {
        let entry = self.entry_mut(reference)?;
        entry.require(Transition::Activate)?;
        entry.call("activate", |i| i.activate(options).into_result())?;
        entry.state = PluginState::Active;
        tracing::info!(plugin = %entry.id(), "activated");
        Ok(())
    }

    /// Deactivates an active plugin, releasing its device.
    pub fn deactivate(&mut self, reference: &str) -> HostResult<()> {
        let entry = self.entry_mut(reference)?;
        entry.require(Transition::Deactivate)?;
        entry.call("deactivate", |i| i.deactivate().into_result())?;
        entry.state = PluginState::Inactive;
        Ok(())
    }

    /// Removes a plugin from the manager, deactivating and cleaning up its instance first.
    /// The library itself stays mapped (libraries are never unloaded).
    pub fn unload(&mut self, reference: &str) -> HostResult<()> {
        let id = self.resolve(reference)?;
        let mut entry = self
            .entries
            .remove(&id)
            .expect("resolved ids exist")
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        let mut teardown = Ok(());
        if entry.state == PluginState::Active {
            teardown = entry.call("deactivate", |i| i.deactivate().into_result());
        }
        if entry.instance.is_some() && !matches!(entry.state, PluginState::Failed(_)) {
            teardown = teardown.and(entry.call("cleanup", |i| i.cleanup().into_result()));
        }
        teardown
    }

    /// A free-form JSON request to an active plugin.
    pub fn execute(
        &self,
        reference: &str,
        request: &serde_json::Value,
    ) -> HostResult<serde_json::Value> {
        let mut entry = self.serving(reference)?;
        let text = entry.call("infer", |i| {
            i.infer(request.to_string().as_str().into()).into_result()
        })?;
        serde_json::from_str(&text).map_err(|e| HostError::Plugin {
            plugin: entry.manifest.name.clone(),
            operation: "infer",
            error: PluginError::internal(format!("response is not valid JSON: {e}")),
        })
    }

    /// Continues a prompt; `on_token` sees every token and may stop the generation.
    pub fn generate(
        &self,
        reference: &str,
        request: &GenerateRequest,
        on_token: impl FnMut(&TokenEvent) -> StreamControl,
    ) -> HostResult<GenerateResponse> {
        let mut entry = self.serving(reference)?;
        entry.require_capability(Capability::TextGeneration)?;
        let mut sink = FnSink(on_token);
        entry.call("generate", |i| {
            i.generate(request, sink.as_sink()).into_result()
        })
    }

    /// Answers a conversation; `on_token` sees every token and may stop the generation.
    pub fn chat(
        &self,
        reference: &str,
        request: &ChatRequest,
        on_token: impl FnMut(&TokenEvent) -> StreamControl,
    ) -> HostResult<GenerateResponse> {
        let mut entry = self.serving(reference)?;
        entry.require_capability(Capability::Chat)?;
        let mut sink = FnSink(on_token);
        entry.call("chat", |i| i.chat(request, sink.as_sink()).into_result())
    }

    /// Embeds a batch of texts.
    pub fn embed(&self, reference: &str, request: &EmbedRequest) -> HostResult<EmbedResponse> {
        let mut entry = self.serving(reference)?;
        entry.require_capability(Capability::Embeddings)?;
        entry.call("embed", |i| i.embed(request).into_result())
    }

    /// Text to token ids.
    pub fn tokenize(&self, reference: &str, text: &str, add_special: bool) -> HostResult<Vec<u32>> {
        let mut entry = self.serving(reference)?;
        entry
            .call("tokenize", |i| {
                i.tokenize(text.into(), add_special).into_result()
            })
            .map(|ids| ids.into_vec())
    }

    /// Token ids to text.
    pub fn detokenize(&self, reference: &str, tokens: &[u32]) -> HostResult<String> {
        let mut entry = self.serving(reference)?;
        entry
            .call("detokenize", |i| {
                i.detokenize(tokens.to_vec().into()).into_result()
            })
            .map(|text| text.into_string())
    }

    /// Resource use and counters of a plugin with an instance.
    pub fn stats(&self, reference: &str) -> HostResult<PluginStats> {
        let entry = self.entry(reference)?;
        let instance = entry
            .instance
            .as_ref()
            .ok_or_else(|| HostError::InvalidTransition {
                plugin: entry.manifest.name.clone(),
                operation: "report stats",
                state: entry.state.clone(),
            })?;
        Ok(instance.stats())
    }

    /// Health of a plugin with an instance.
    pub fn health(&self, reference: &str) -> HostResult<Health> {
        let entry = self.entry(reference)?;
        let instance = entry
            .instance
            .as_ref()
            .ok_or_else(|| HostError::InvalidTransition {
                plugin: entry.manifest.name.clone(),
                operation: "report health",
                state: entry.state.clone(),
            })?;
        Ok(instance.health())
    }

    /// Every plugin, ordered by id.
    pub fn list_plugins(&self) -> Vec<PluginSummary> {
        self.entries.values().map(|e| lock(e).summary()).collect()
    }

    /// The active plugins, ordered by id.
    pub fn list_active_plugins(&self) -> Vec<PluginSummary> {
        self.list_plugins()
            .into_iter()
            .filter(|p| p.state == PluginState::Active)
            .collect()
    }

    /// One plugin.
    pub fn info(&self, reference: &str) -> HostResult<PluginSummary> {
        Ok(self.entry(reference)?.summary())
    }

    /// The id a reference (`name@version` or `name`) stands for.
    pub fn resolve(&self, reference: &str) -> HostResult<String> {
        if self.entries.contains_key(reference) {
            return Ok(reference.to_owned());
        }
        self.entries
            .iter()
            .map(|(id, entry)| (id, lock(entry)))
            .filter(|(_, e)| e.manifest.name == reference)
            .max_by(|(_, a), (_, b)| {
                let active = |e: &Entry| e.state == PluginState::Active;
                (active(a), &a.manifest.version).cmp(&(active(b), &b.manifest.version))
            })
            .map(|(id, _)| id.clone())
            .ok_or_else(|| HostError::NotFound(reference.to_owned()))
    }

    /// Every check that needs no plugin code: versions, paths, digests.
    fn preflight(&self, manifest: &Manifest, dir: &Path) -> HostResult<()> {
        manifest.check_compatibility(&self.api_version, &self.host_version)?;
        manifest.verify_files(dir)
    }

    fn entry(&self, reference: &str) -> HostResult<MutexGuard<'_, Entry>> {
        let id = self.resolve(reference)?;
        Ok(lock(&self.entries[&id]))
    }

    fn entry_mut(&mut self, reference: &str) -> HostResult<&mut Entry> {
        let id = self.resolve(reference)?;
        Ok(self
            .entries
            .get_mut(&id)
            .expect("resolved ids exist")
            .get_mut()
            .unwrap_or_else(|p| p.into_inner()))
    }

    /// The entry of an active plugin, locked for one call.
    fn serving(&self, reference: &str) -> HostResult<MutexGuard<'_, Entry>> {
        let entry = self.entry(reference)?;
        entry.require(Transition::Execute)?;
        Ok(entry)
    }
}

/// Locks an entry; a poisoned lock (a host-side panic while holding it) is still usable
/// because every state change is written after the fallible work.
fn lock(entry: &Mutex<Entry>) -> MutexGuard<'_, Entry> {
    entry.lock().unwrap_or_else(|p| p.into_inner())
}

fn id_name(id: &str) -> String {
    id.split_once('@').map_or(id, |(name, _)| name).to_owned()
}

/// Loads the library (once per entry), checks its metadata and creates an initialized instance.
fn load_entry(entry: &mut Entry, shadow: &ShadowDir, config: ConfigLayers) -> HostResult<()> {
    let name = entry.manifest.name.clone();
    if entry.library.is_none() {
        let library_path = entry.manifest.library_path(&entry.dir)?;
        let library = load_library(&name, &library_path, shadow)?;
        check_metadata(&entry.manifest, &library_path, &library.metadata)?;
        entry.library = Some(library);
    }
    let module = entry.library.as_ref().expect("just loaded").module;
    entry.instance = None;
    let mut instance =
        (module.new_instance())()
            .into_result()
            .map_err(|error| HostError::Plugin {
                plugin: name.clone(),
                operation: "new",
                error,
            })?;
    let config = config.merge(&entry.manifest.config, &entry.dir);
    instance
        .initialize(config.to_string().as_str().into())
        .into_result()
        .map_err(|error| HostError::Plugin {
            plugin: name.clone(),
            operation: "initialize",
            error,
        })?;
    entry.instance = Some(instance);
    tracing::info!(plugin = %entry.id(), dir = %entry.dir.join(MANIFEST_FILE).display(), "loaded");
    Ok(())
}

/// Host-side configuration around a manifest's `config`.
struct ConfigLayers {
    defaults: Option<serde_json::Value>,
    overrides: Option<serde_json::Value>,
}

impl ConfigLayers {
    /// The configuration passed to `initialize`: defaults, then the manifest's `config`, then
    /// the overrides (later top-level keys win), plus `plugin_dir`, the absolute plugin folder,
    /// so a plugin can resolve the relative model paths of its manifest.
    fn merge(self, manifest: &serde_json::Value, dir: &Path) -> serde_json::Value {
        let mut merged = serde_json::Map::new();
        let layers = [self.defaults, Some(manifest.clone()), self.overrides];
        for layer in layers.into_iter().flatten() {
            if let serde_json::Value::Object(object) = layer {
                merged.extend(object);
            }
        }
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
        merged.insert("plugin_dir".to_owned(), dir.display().to_string().into());
        serde_json::Value::Object(merged)
    }
}
