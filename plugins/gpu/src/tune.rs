//! Autotuning by measurement ([`Tuner`]): for each distinct matrix kernel shape of a model
//! (kernel × dtype × rows × columns × fused norm × tokens per launch) a few candidate
//! [`RowTile`]s are timed on the device, on the model's own weights, and the fastest is kept.
//!
//! Choices are cached per adapter and driver in one JSON file each, under
//! `$XDG_CACHE_HOME/pio/tuning/` (else `~/.cache/pio/tuning/`, or [`TuneSettings::cache_dir`]),
//! so only the first activation of a model on an adapter pays for the search. A cache file
//! that cannot be read, does not parse, was written for another adapter, driver or candidate
//! set, or holds a tile the device cannot run is ignored (logged) and rewritten; tuning never
//! fails an activation — a candidate that fails to build or run is skipped (logged), and with
//! no candidate left the adapter class's default tile is kept.
//!
//! What is timed: the kernel as the model runs it for [`TunedKernel::Linear`] and
//! [`TunedKernel::Gated`]; for [`TunedKernel::QkvRope`] its matrix product (the same matrix
//! and fused norm through [`Linear`]), without the RoPE and cache writes that follow it per row
//! — those do not depend on how the row groups are divided.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::device::{AdapterInfo, Gpu};
use crate::error::Result;
use crate::kernels::linear::{
    Epilogue, Linear, LinearShape, Reduction, RowTile, Staging, TokenRange,
};
use crate::quant::{QuantMatrix, WeightDtype};

/// Version of the cache file's layout, of the candidate set and of the kernels they were timed
/// with: a file of another version is ignored and rewritten, so changing the candidates below or
/// how the kernels run retunes every adapter (2: shared activation reads on software adapters;
/// 3: staged tiles; 4: their f16 variant; 5: its weights scaled per block).
const CACHE_FORMAT: u32 = 5;

/// Timed launches per candidate after its first (which also compiles it on software drivers).
const REPEATS: usize = 4;

/// A candidate whose first timed launch is this many times slower than the best so far is
/// dropped without the repeats.
const PRUNE_FACTOR: f64 = 2.0;

/// How a model's matrix kernels get their tiles (the plugins' `tuning` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TuneMode {
    /// [`TuneMode::Auto`] on a hardware adapter, [`TuneMode::Off`] on a software one: there
    /// the first search costs tens of seconds of shader compilation and measured no gain
    /// (`docs/benchmarks.md`).
    #[default]
    Gpus,
    /// Cached choices where there are some; shapes without one are searched and cached.
    Auto,
    /// No search, no cache: the adapter class's tiles ([`RowTile::decode`],
    /// [`RowTile::prefill`]).
    Off,
    /// Every shape searched again, its cached choice overwritten.
    Retune,
}

impl TuneMode {
    /// Every mode, in the order [`TuneMode::name`] documents them.
    pub const ALL: [TuneMode; 4] = [
        TuneMode::Gpus,
        TuneMode::Auto,
        TuneMode::Off,
        TuneMode::Retune,
    ];

    /// `gpus`, `auto`, `off` or `retune`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gpus => "gpus",
            Self::Auto => "auto",
            Self::Off => "off",
            Self::Retune => "retune",
        }
    }

    /// The mode called `name` ([`TuneMode::name`]); the error lists the modes.
    pub fn from_name(name: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.name() == name)
            .ok_or_else(|| {
                format!("unknown tuning mode {name:?}: expected one of gpus, auto, off, retune")
            })
    }
}

/// How to tune, and where the choices are cached.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TuneSettings {
    /// Search, use the cache, or neither.
    pub mode: TuneMode,
    /// The folder of the cache files; `None`: the user's cache folder (see
    /// [`TuneSettings::cache_folder`]).
    pub cache_dir: Option<PathBuf>,
}

impl TuneSettings {
    /// Where the cache files are: [`TuneSettings::cache_dir`], else
    /// `$XDG_CACHE_HOME/pio/tuning`, else `$HOME/.cache/pio/tuning`; `None` when neither
    /// variable is set (the choices are then kept for this activation only).
    pub fn cache_folder(&self) -> Option<PathBuf> {
        let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        self.cache_dir.clone().or_else(|| {
            non_empty("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| non_empty("HOME").map(|home| PathBuf::from(home).join(".cache")))
                .map(|cache| cache.join("pio").join("tuning"))
        })
    }
}

/// Which fused kernel a shape belongs to, and so how it is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunedKernel {
    /// [`Linear`] with [`Epilogue::Store`] or [`Epilogue::Accumulate`] (timed storing).
    Linear,
    /// [`Linear`] with [`Epilogue::SwiGlu`] or [`Epilogue::GeGlu`] (timed with SwiGLU).
    Gated,
    /// [`crate::QkvRope`] (its product timed, see the module documentation).
    QkvRope,
}

impl TunedKernel {
    fn name(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::Gated => "gated",
            Self::QkvRope => "qkv_rope",
        }
    }

    fn epilogue(self) -> Epilogue {
        match self {
            Self::Linear | Self::QkvRope => Epilogue::Store,
            Self::Gated => Epilogue::SwiGlu,
        }
    }
}

/// One matrix kernel shape the tuner chooses a tile for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TuneKey {
    /// The kernel.
    pub kernel: TunedKernel,
    /// Its weights' device dtype.
    pub dtype: WeightDtype,
    /// Rows of the matrix.
    pub rows: u32,
    /// Columns of the matrix.
    pub cols: u32,
    /// Whether an RMSNorm is fused in front.
    pub norm: bool,
    /// Tokens per launch it is tuned for: 1 (decode) or a prefill chunk.
    pub tokens: u32,
}

impl fmt::Display for TuneKey {
    /// E.g. `linear q4_1 576x1536, 1 token` or `gated q4_1 3072x576 +norm, 64 tokens`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let norm = if self.norm { " +norm" } else { "" };
        let plural = if self.tokens == 1 { "" } else { "s" };
        write!(
            f,
            "{} {} {}x{}{norm}, {} token{plural}",
            self.kernel.name(),
            self.dtype.name(),
            self.rows,
            self.cols,
            self.tokens
        )
    }
}

impl fmt::Display for RowTile {
    /// E.g. `4 tok/inv, wg 8`, `8 tok/inv, wg 64, staged f16` or `1 tok/inv, wg 64, subgroup/8`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} tok/inv, wg {}", self.tokens, self.workgroup_size)?;
        match self.reduction {
            Reduction::None if self.staging.is_staged() => {
                write!(f, ", {}", self.staging.describe())
            }
            Reduction::None => Ok(()),
            Reduction::Workgroup { lanes } => write!(f, ", workgroup/{lanes}"),
            Reduction::Subgroup { lanes } => write!(f, ", subgroup/{lanes}"),
        }
    }
}

/// Where a kernel's tile came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TileSource {
    /// The adapter class's default ([`TuneMode::Off`], or every candidate failed).
    Default,
    /// The cache file.
    Cached,
    /// Searched in this activation.
    Searched,
}

/// The tile chosen for one shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TuneChoice {
    /// The shape, as [`TuneKey`]'s `Display` writes it.
    pub shape: String,
    /// The tile, as [`RowTile`]'s `Display` writes it.
    pub variant: String,
    /// Median milliseconds of one launch with this tile, when it was measured (now or when
    /// cached).
    pub ms: Option<f64>,
    /// Where it came from.
    pub source: TileSource,
    /// The shape.
    #[serde(skip)]
    pub key: TuneKey,
    /// The tile.
    #[serde(skip)]
    pub tile: RowTile,
}

/// What a [`Tuner`] did: its mode, its searches and each shape's choice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TuneReport {
    /// The mode's name ([`TuneMode::name`]).
    pub mode: &'static str,
    /// Shapes searched (0 when every choice came from the cache).
    pub searches: usize,
    /// Wall time of those searches, in seconds (pipeline compilation included).
    pub search_seconds: f64,
    /// The cache file, if the choices are cached.
    pub cache_file: Option<PathBuf>,
    /// One entry per shape, in the order they were asked for.
    pub choices: Vec<TuneChoice>,
}

/// The adapter and driver a cache file belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    adapter: String,
    backend: String,
    driver: String,
    driver_info: String,
    vendor: u32,
    device: u32,
}

impl Identity {
    fn of(info: &AdapterInfo) -> Self {
        Self {
            adapter: info.name.clone(),
            backend: info.backend.clone(),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            vendor: info.vendor,
            device: info.device,
        }
    }

    /// `<adapter name>-<hash of the whole identity>.json`, the name reduced to `[A-Za-z0-9._-]`.
    fn file_name(&self) -> String {
        let name: String = self
            .adapter
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' => c,
                _ => '_',
            })
            .take(64)
            .collect();
        // FNV-1a over every field: stable across builds, unlike `DefaultHasher`.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let text = format!(
            "{}\0{}\0{}\0{}\0{}\0{}",
            self.adapter, self.backend, self.driver, self.driver_info, self.vendor, self.device
        );
        for byte in text.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
        format!("{name}-{hash:016x}.json")
    }
}

/// The cache file's layout.
#[derive(Debug, Serialize, Deserialize)]
struct CacheFile {
    format: u32,
    #[serde(flatten)]
    identity: Identity,
    entries: Vec<CacheEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    kernel: TunedKernel,
    dtype: String,
    rows: u32,
    cols: u32,
    norm: bool,
    tokens: u32,
    tile: CacheTile,
    ms: f64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct CacheTile {
    tokens: u32,
    workgroup_size: u32,
    /// `none`, `workgroup` or `subgroup`.
    reduction: ReductionName,
    lanes: u32,
    staging: StagingName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ReductionName {
    None,
    Workgroup,
    Subgroup,
}

/// [`Staging`] in the cache file: `none`, `f32` or `f16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StagingName {
    None,
    F32,
    F16,
}

impl CacheTile {
    fn of(tile: RowTile) -> Self {
        let (reduction, lanes) = match tile.reduction {
            Reduction::None => (ReductionName::None, 1),
            Reduction::Workgroup { lanes } => (ReductionName::Workgroup, lanes),
            Reduction::Subgroup { lanes } => (ReductionName::Subgroup, lanes),
        };
        Self {
            tokens: tile.tokens,
            workgroup_size: tile.workgroup_size,
            reduction,
            lanes,
            staging: match tile.staging {
                Staging::None => StagingName::None,
                Staging::F32 => StagingName::F32,
                Staging::F16 => StagingName::F16,
            },
        }
    }

    fn tile(self) -> RowTile {
        RowTile {
            tokens: self.tokens,
            workgroup_size: self.workgroup_size,
            reduction: match self.reduction {
                ReductionName::None => Reduction::None,
                ReductionName::Workgroup => Reduction::Workgroup { lanes: self.lanes },
                ReductionName::Subgroup => Reduction::Subgroup { lanes: self.lanes },
            },
            staging: match self.staging {
                StagingName::None => Staging::None,
                StagingName::F32 => Staging::F32,
                StagingName::F16 => Staging::F16,
            },
        }
    }
}

impl CacheEntry {
    fn key(&self) -> Option<TuneKey> {
        Some(TuneKey {
            kernel: self.kernel,
            dtype: WeightDtype::from_name(&self.dtype)?,
            rows: self.rows,
            cols: self.cols,
            norm: self.norm,
            tokens: self.tokens,
        })
    }
}

#[derive(Debug, Default)]
struct State {
    /// Measured choices: the cache file's (kept unless replaced) and this activation's.
    known: HashMap<TuneKey, (RowTile, f64)>,
    /// Keys searched in this activation (a retune searches a cached key once).
    searched: HashSet<TuneKey>,
    choices: Vec<TuneChoice>,
    search_time: Duration,
    /// Something new to write.
    dirty: bool,
}

/// Chooses the tile of each matrix kernel shape on one device: see the module documentation.
/// Build one per device at activation ([`Tuner::new`]), ask it for every kernel's tile
/// ([`Tuner::tile`]), then [`Tuner::save`] the choices.
#[derive(Debug)]
pub struct Tuner {
    mode: TuneMode,
    identity: Identity,
    default_decode: RowTile,
    default_prefill: RowTile,
    /// The cache file; `None` when there is no cache folder or the mode is `Off`.
    path: Option<PathBuf>,
    state: Mutex<State>,
}

impl Tuner {
    /// A tuner for `gpu`, with the choices cached for its adapter and driver loaded (unless
    /// the mode is [`TuneMode::Off`]); an unreadable or mismatched cache file is logged and
    /// ignored.
    pub fn new(gpu: &Gpu, settings: &TuneSettings) -> Self {
        let info = gpu.adapter_info();
        let identity = Identity::of(info);
        let mode = match settings.mode {
            TuneMode::Gpus if info.device_type.is_hardware() => TuneMode::Auto,
            TuneMode::Gpus => TuneMode::Off,
            mode => mode,
        };
        let path = match mode {
            TuneMode::Gpus | TuneMode::Off => None,
            TuneMode::Auto | TuneMode::Retune => settings
                .cache_folder()
                .map(|dir| dir.join(identity.file_name())),
        };
        if path.is_none() && mode != TuneMode::Off {
            tracing::warn!(
                "no cache folder (neither XDG_CACHE_HOME nor HOME is set): tuned kernel tiles \
                 are not kept for later activations"
            );
        }
        let mut state = State::default();
        if let Some(path) = &path {
            match load(path, &identity) {
                Ok(known) => state.known = known,
                Err(reason) => {
                    // A missing file is the first activation on this adapter, not a problem.
                    if path.exists() {
                        tracing::warn!(
                            file = %path.display(),
                            "ignoring the kernel tuning cache, it will be rebuilt: {reason}"
                        );
                    }
                }
            }
        }
        Self {
            mode,
            identity,
            default_decode: RowTile::decode(info.device_type),
            default_prefill: RowTile::prefill(info.device_type),
            path,
            state: Mutex::new(state),
        }
    }

    /// The tile for launches of `tokens` tokens (1: decode) of `kernel` over `weights`, with a
    /// fused RMSNorm when `norm`: cached, searched now (timing the candidates on `weights`), or
    /// the adapter class's default, as the mode says. A shape asked for again gets the same
    /// answer without another search.
    pub fn tile(
        &self,
        gpu: &Gpu,
        kernel: TunedKernel,
        weights: &QuantMatrix,
        norm: bool,
        tokens: u32,
    ) -> RowTile {
        let key = TuneKey {
            kernel,
            dtype: weights.dtype(),
            rows: weights.rows(),
            cols: weights.cols(),
            norm,
            tokens,
        };
        let default = self.default_tile(tokens).for_weights(key.dtype);
        let mut state = self.state.lock().expect("tuner lock");
        if let Some(choice) = state.choices.iter().find(|c| c.key == key) {
            return choice.tile;
        }
        // `Gpus` was resolved to `Auto` or `Off` by `Tuner::new`.
        let cached = match self.mode {
            TuneMode::Gpus | TuneMode::Off => None,
            TuneMode::Auto => state.known.get(&key).copied(),
            TuneMode::Retune => None,
        }
        .filter(|&(tile, _)| usable(gpu, tile, tokens));
        let (tile, ms, source) = match (self.mode, cached) {
            (TuneMode::Gpus | TuneMode::Off, _) => (default, None, TileSource::Default),
            (_, Some((tile, ms))) => (tile, Some(ms), TileSource::Cached),
            (_, None) => {
                let start = Instant::now();
                let found = search(gpu, key, weights, default);
                state.search_time += start.elapsed();
                state.searched.insert(key);
                match found {
                    Some((tile, ms)) => {
                        state.known.insert(key, (tile, ms));
                        state.dirty = true;
                        (tile, Some(ms), TileSource::Searched)
                    }
                    None => (default, None, TileSource::Default),
                }
            }
        };
        tracing::debug!(shape = %key, variant = %tile, ?source, "kernel tile");
        state.choices.push(TuneChoice {
            shape: key.to_string(),
            variant: tile.to_string(),
            ms,
            source,
            key,
            tile,
        });
        tile
    }

    /// The adapter class's tile for launches of `tokens` tokens ([`RowTile::decode`] for one,
    /// else [`RowTile::prefill`]): what [`TuneMode::Off`] uses, and what a kernel left untuned
    /// runs.
    pub fn default_tile(&self, tokens: u32) -> RowTile {
        if tokens == 1 {
            self.default_decode
        } else {
            self.default_prefill
        }
    }

    /// Writes the cache file when this activation searched something (atomically: a
    /// temporary file renamed over it). A failure is logged, never returned: the tiles are
    /// chosen either way.
    pub fn save(&self) {
        let Some(path) = &self.path else { return };
        let mut state = self.state.lock().expect("tuner lock");
        if !state.dirty {
            return;
        }
        let mut entries: Vec<CacheEntry> = state
            .known
            .iter()
            .map(|(key, &(tile, ms))| CacheEntry {
                kernel: key.kernel,
                dtype: key.dtype.name().to_owned(),
                rows: key.rows,
                cols: key.cols,
                norm: key.norm,
                tokens: key.tokens,
                tile: CacheTile::of(tile),
                ms,
            })
            .collect();
        entries.sort_by_key(|e| (e.kernel.name(), e.dtype.clone(), e.rows, e.cols, e.tokens));
        let file = CacheFile {
            format: CACHE_FORMAT,
            identity: self.identity.clone(),
            entries,
        };
        match store(path, &file) {
            Ok(()) => {
                state.dirty = false;
                tracing::info!(file = %path.display(), "kernel tuning cache written");
            }
            Err(reason) => tracing::warn!(
                file = %path.display(),
                "could not write the kernel tuning cache (tiles are kept for this activation \
                 only): {reason}"
            ),
        }
    }

    /// What this tuner did so far.
    pub fn report(&self) -> TuneReport {
        let state = self.state.lock().expect("tuner lock");
        TuneReport {
            mode: self.mode.name(),
            searches: state.searched.len(),
            search_seconds: state.search_time.as_secs_f64(),
            cache_file: self.path.clone(),
            choices: state.choices.clone(),
        }
    }
}

/// Whether `tile` can run launches of `tokens` tokens on `gpu` as it is (a cached tile from
/// another candidate set or a hand-edited file may not).
fn usable(gpu: &Gpu, tile: RowTile, tokens: u32) -> bool {
    tile.check("tuning").is_ok()
        && tile.reduction.runs_on(gpu)
        && tile.staging.runs_on(gpu)
        && tile.workgroup_size <= gpu.limits().max_compute_invocations_per_workgroup
        && (tokens == 1 || tile.reduction == Reduction::None)
}

/// The tiles tried for launches of `tokens` tokens, `default` first. Decode: one row group
/// per invocation in small and larger workgroups, and the split variants (8 lanes; 32 where
/// subgroups are that wide). Prefill: 4 and 8 tokens per invocation in workgroups of 8 and 64,
/// and on hardware adapters staged, in f16 and in f32: 8 tokens per invocation in workgroups of
/// 32 and 64 (32 and 64 tokens), 4 in workgroups of 128 (64 tokens) — on llvmpipe, whose
/// workgroup memory is no cheaper than storage and whose barriers switch coroutines, the staged
/// 64-token Q4_1 1536x576 product took twice the row-group kernel's time, and each candidate
/// costs the search a pipeline compilation. Those `gpu` cannot run as they are are left out
/// (a fallback would only repeat another), and each is taken with the staging it runs over
/// `dtype` weights ([`RowTile::for_weights`]: F32 weights are not staged in f16).
fn candidates(gpu: &Gpu, dtype: WeightDtype, tokens: u32, default: RowTile) -> Vec<RowTile> {
    let tile = |tokens, workgroup_size, reduction| RowTile {
        tokens,
        workgroup_size,
        reduction,
        staging: Staging::None,
    };
    let staged = |tokens, workgroup_size, staging| RowTile {
        staging,
        ..tile(tokens, workgroup_size, Reduction::None)
    };
    let others = if tokens == 1 {
        vec![
            tile(1, 8, Reduction::None),
            tile(1, 32, Reduction::None),
            tile(1, 64, Reduction::Subgroup { lanes: 8 }),
            tile(1, 64, Reduction::Workgroup { lanes: 8 }),
            tile(1, 128, Reduction::Subgroup { lanes: 32 }),
        ]
    } else {
        let mut prefill = vec![
            tile(4, 8, Reduction::None),
            tile(8, 8, Reduction::None),
            tile(4, 64, Reduction::None),
            tile(8, 64, Reduction::None),
        ];
        if gpu.adapter_info().device_type.is_hardware() {
            for staging in [Staging::F16, Staging::F32] {
                prefill.extend([
                    staged(8, 32, staging),
                    staged(8, 64, staging),
                    staged(4, 128, staging),
                ]);
            }
        }
        prefill
    };
    let mut list = vec![default];
    for candidate in others.into_iter().map(|tile| tile.for_weights(dtype)) {
        if !list.contains(&candidate) && usable(gpu, candidate, tokens) {
            list.push(candidate);
        }
    }
    list
}

/// Times every candidate of `key` on `weights` and returns the fastest with its median
/// milliseconds; `None` when none could run (each failure logged).
fn search(
    gpu: &Gpu,
    key: TuneKey,
    weights: &QuantMatrix,
    default: RowTile,
) -> Option<(RowTile, f64)> {
    let buffers = match Inputs::new(gpu, key) {
        Ok(buffers) => buffers,
        Err(e) => {
            tracing::warn!(shape = %key, "kernel tuning skipped, cannot allocate inputs: {e}");
            return None;
        }
    };
    let mut best: Option<(RowTile, f64)> = None;
    for tile in candidates(gpu, key.dtype, key.tokens, default) {
        match time(gpu, key, weights, &buffers, tile, best.map(|b| b.1)) {
            Ok(Some(ms)) => {
                tracing::debug!(shape = %key, variant = %tile, ms, "tuning candidate");
                if best.is_none_or(|(_, b)| ms < b) {
                    best = Some((tile, ms));
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(shape = %key, variant = %tile, "tuning candidate skipped: {e}")
            }
        }
    }
    if let Some((tile, ms)) = best {
        tracing::info!(shape = %key, variant = %tile, ms, "kernel tile tuned");
    }
    best
}

/// The buffers a candidate is launched on: seeded random input rows, a norm weight of ones and
/// an output.
struct Inputs {
    x: crate::GpuBuffer,
    norm: crate::GpuBuffer,
    out: crate::GpuBuffer,
}

impl Inputs {
    fn new(gpu: &Gpu, key: TuneKey) -> Result<Self> {
        let len = key.tokens as usize * key.cols as usize;
        let mut state: u32 = 0x9E37_79B9;
        let x: Vec<f32> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 8) as f32 / (1 << 23) as f32 - 1.0
            })
            .collect();
        let out_rows = match key.kernel {
            TunedKernel::Gated => key.rows / 2,
            TunedKernel::Linear | TunedKernel::QkvRope => key.rows,
        };
        Ok(Self {
            x: gpu.storage_from("tuning input", &x)?,
            norm: gpu.storage_from("tuning norm weight", &vec![1f32; key.cols as usize])?,
            out: gpu.storage_zeroed(
                "tuning output",
                u64::from(key.tokens) * u64::from(out_rows) * 4,
            )?,
        })
    }
}

/// Median milliseconds of `tile`'s launches over `key`, or `None` when its first timed launch
/// is more than [`PRUNE_FACTOR`] times `best`.
fn time(
    gpu: &Gpu,
    key: TuneKey,
    weights: &QuantMatrix,
    inputs: &Inputs,
    tile: RowTile,
    best: Option<f64>,
) -> Result<Option<f64>> {
    let shape = LinearShape {
        dtype: key.dtype,
        rows: key.rows,
        cols: key.cols,
        norm_eps: key.norm.then_some(1e-5),
        tile,
    };
    let kernel = Linear::new(gpu, shape, key.kernel.epilogue())?;
    let norm = key.norm.then_some(&inputs.norm);
    let dispatch = kernel.bind(
        gpu,
        weights,
        &inputs.x,
        norm,
        &inputs.out,
        TokenRange::all(key.tokens),
    )?;
    // The first launch compiles the pipeline on software drivers: not timed.
    gpu.run(&[&dispatch])?;
    let first = gpu.profile(&[&dispatch])?.total_ms();
    if best.is_some_and(|best| first > PRUNE_FACTOR * best) {
        return Ok(None);
    }
    let profile = gpu.profile(&[&dispatch; REPEATS])?;
    let mut times: Vec<f64> = profile.dispatches.iter().map(|d| d.ms).collect();
    times.push(first);
    times.sort_by(f64::total_cmp);
    Ok(Some(times[times.len() / 2]))
}

/// The measured choices of the cache file at `path`, if it is this adapter's and of this
/// candidate set; entries the reader does not know are dropped.
fn load(
    path: &Path,
    identity: &Identity,
) -> std::result::Result<HashMap<TuneKey, (RowTile, f64)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let file: CacheFile =
        serde_json::from_str(&text).map_err(|e| format!("not a tuning cache file: {e}"))?;
    if file.format != CACHE_FORMAT {
        return Err(format!(
            "written in format {}, this build reads format {CACHE_FORMAT}",
            file.format
        ));
    }
    if file.identity != *identity {
        return Err(format!(
            "written for {:?}, this adapter and driver are {:?}",
            file.identity, identity
        ));
    }
    Ok(file
        .entries
        .iter()
        .filter_map(|e| Some((e.key()?, (e.tile.tile(), e.ms))))
        .collect())
}

/// Writes `file` to `path` through a temporary file in the same folder.
fn store(path: &Path, file: &CacheFile) -> std::result::Result<(), String> {
    let dir = path.parent().ok_or("the cache file has no folder")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let text = serde_json::to_string_pretty(file).map_err(|e| e.to_string())?;
    let temporary = path.with_extension(format!("json.{}.tmp", std::process::id()));
    std::fs::write(&temporary, text)
        .map_err(|e| format!("cannot write {}: {e}", temporary.display()))?;
    std::fs::rename(&temporary, path).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        format!("cannot rename {} into place: {e}", temporary.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_by_name_and_name_the_choices_otherwise() {
        for mode in TuneMode::ALL {
            assert_eq!(TuneMode::from_name(mode.name()), Ok(mode));
        }
        let error = TuneMode::from_name("fast").unwrap_err();
        assert!(error.contains("\"fast\"") && error.contains("gpus, auto, off, retune"));
    }

    #[test]
    fn cache_file_names_are_safe_and_differ_by_driver() {
        let identity = Identity {
            adapter: "llvmpipe (LLVM 15.0.6, 256 bits)".into(),
            backend: "vulkan".into(),
            driver: "llvmpipe".into(),
            driver_info: "Mesa 25.0.7".into(),
            vendor: 0x10005,
            device: 0,
        };
        let name = identity.file_name();
        assert!(
            name.starts_with("llvmpipe__LLVM_15.0.6__256_bits_-"),
            "{name}"
        );
        assert!(name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
        let other = Identity {
            driver_info: "Mesa 25.1.0".into(),
            ..identity
        };
        assert_ne!(other.file_name(), name);
    }

    #[test]
    fn tiles_round_trip_through_the_cache_layout() {
        for (reduction, staging) in [
            (Reduction::None, Staging::None),
            (Reduction::None, Staging::F32),
            (Reduction::None, Staging::F16),
            (Reduction::Workgroup { lanes: 16 }, Staging::None),
            (Reduction::Subgroup { lanes: 8 }, Staging::None),
        ] {
            let tile = RowTile {
                tokens: 1,
                workgroup_size: 64,
                reduction,
                staging,
            };
            assert_eq!(CacheTile::of(tile).tile(), tile);
        }
    }
}
