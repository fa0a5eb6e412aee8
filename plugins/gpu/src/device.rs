//! Adapter discovery and selection, and [`Gpu`]: one wgpu device with its queue, byte accounting
//! and pipeline cache.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::buffer::MemoryCounter;
use crate::error::{GpuError, Result};
use crate::pipeline::PipelineCache;

/// Backends searched for adapters: the native compute-capable APIs (Vulkan, Metal, DX12).
/// OpenGL is left out: its compute support is too uneven for these kernels.
const BACKENDS: wgpu::Backends = wgpu::Backends::PRIMARY;

/// Optional features requested where the adapter offers them: device timestamps for
/// [`Gpu::profile`], subgroup operations for the subgroup-reduced matrix-vector kernels (see
/// [`crate::RowTile`]), 64-bit integers for [`LoadWidth::Bits64`] and f16 arithmetic for the f16
/// staged matrix-matrix kernels ([`crate::Staging::F16`]). Kernels that need one check
/// [`Gpu::features`] and fall back.
fn optional_features() -> wgpu::Features {
    wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::SUBGROUP
        | wgpu::Features::SHADER_INT64
        | wgpu::Features::SHADER_F16
}

/// How kernels load 16 bytes of a storage buffer (the WGSL type `Bytes16`, defined by the
/// prelude pio-gpu puts in front of every kernel: `shaders/common/bytes16_*.wgsl`). The matrix
/// kernels read their weights and activations this way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadWidth {
    /// [`LoadWidth::Bits64`] on software adapters that have 64-bit integers, else
    /// [`LoadWidth::Bits32`].
    #[default]
    Auto,
    /// Four 32-bit words (`vec4<u32>`): one 16-byte load on a GPU.
    Bits32,
    /// Two 64-bit words (`vec2<u64>`, needs [`wgpu::Features::SHADER_INT64`]): llvmpipe splits
    /// every storage load into one scalar load per lane and component, so this halves the
    /// loads of the memory-bound matrix kernels there.
    Bits64,
}

impl LoadWidth {
    /// The width a device of `kind` with `features` uses when asked for `self`, and why it
    /// differs from what was asked, if it does.
    fn resolve(self, kind: DeviceKind, features: wgpu::Features) -> (Self, Option<&'static str>) {
        let int64 = features.contains(wgpu::Features::SHADER_INT64);
        match self {
            Self::Auto if !kind.is_hardware() && int64 => (Self::Bits64, None),
            Self::Auto | Self::Bits32 => (Self::Bits32, None),
            Self::Bits64 if int64 => (Self::Bits64, None),
            Self::Bits64 => (
                Self::Bits32,
                Some("64-bit loads were asked for, but the adapter has no 64-bit integers"),
            ),
        }
    }

    /// The WGSL prelude defining `Bytes16` for this width.
    pub(crate) fn prelude(self) -> &'static str {
        match self {
            Self::Bits64 => include_str!("../../../shaders/common/bytes16_u64.wgsl"),
            Self::Auto | Self::Bits32 => include_str!("../../../shaders/common/bytes16_u32.wgsl"),
        }
    }
}

/// How the invocations of a row-group matrix kernel read the activations and a fused norm's
/// weight, which every invocation working on the same tokens reads alike (the WGSL of each:
/// `shaders/common/x_own.wgsl`, `x_shared.wgsl`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationReads {
    /// [`ActivationReads::Shared`] on software adapters with subgroups of at least 8 lanes,
    /// else [`ActivationReads::Own`].
    #[default]
    Auto,
    /// Every invocation loads what it multiplies: on a GPU the lanes that read one address are
    /// served by one load.
    Own,
    /// Each group of 8 lanes loads a block once, 16 bytes per lane, and passes it round through
    /// subgroup shuffles (needs [`wgpu::Features::SUBGROUP`] with subgroups of at least 8
    /// lanes): llvmpipe loads per lane, and shuffles with one vector permute, so this takes 8×
    /// fewer loads for the activations.
    Shared,
}

impl ActivationReads {
    /// The reads a device of `kind` with `features` and subgroups of at least `subgroup_min_size`
    /// lanes uses when asked for `self`, and why they differ from what was asked, if they do.
    fn resolve(
        self,
        kind: DeviceKind,
        features: wgpu::Features,
        subgroup_min_size: u32,
    ) -> (Self, Option<&'static str>) {
        let shuffles = features.contains(wgpu::Features::SUBGROUP) && subgroup_min_size >= 8;
        match self {
            Self::Auto if !kind.is_hardware() && shuffles => (Self::Shared, None),
            Self::Auto | Self::Own => (Self::Own, None),
            Self::Shared if shuffles => (Self::Shared, None),
            Self::Shared => (
                Self::Own,
                Some("shared activation reads were asked for, but the adapter has no subgroups of 8 lanes or more"),
            ),
        }
    }
}

/// What kind of device an adapter drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// A GPU with its own memory.
    Discrete,
    /// A GPU sharing memory with the CPU.
    Integrated,
    /// A GPU exposed through virtualisation.
    Virtual,
    /// A software implementation running on the CPU (e.g. Mesa's lavapipe).
    Cpu,
    /// Anything the driver did not classify.
    Other,
}

impl DeviceKind {
    /// Whether this is real GPU hardware (discrete, integrated or virtual) rather than software.
    pub fn is_hardware(self) -> bool {
        matches!(self, Self::Discrete | Self::Integrated | Self::Virtual)
    }

    /// Rank for automatic selection of a real GPU: lower is better.
    fn hardware_rank(self) -> u8 {
        match self {
            Self::Discrete => 0,
            Self::Integrated => 1,
            Self::Virtual => 2,
            Self::Other => 3,
            Self::Cpu => 4,
        }
    }
}

impl From<wgpu::DeviceType> for DeviceKind {
    fn from(kind: wgpu::DeviceType) -> Self {
        match kind {
            wgpu::DeviceType::DiscreteGpu => Self::Discrete,
            wgpu::DeviceType::IntegratedGpu => Self::Integrated,
            wgpu::DeviceType::VirtualGpu => Self::Virtual,
            wgpu::DeviceType::Cpu => Self::Cpu,
            wgpu::DeviceType::Other => Self::Other,
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Discrete => "discrete GPU",
            Self::Integrated => "integrated GPU",
            Self::Virtual => "virtual GPU",
            Self::Cpu => "software (CPU)",
            Self::Other => "other",
        })
    }
}

/// Description of one adapter, as reported by its driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdapterInfo {
    /// Adapter name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// Graphics API backend, e.g. `vulkan`.
    pub backend: String,
    /// Kind of device.
    pub device_type: DeviceKind,
    /// Driver name, e.g. `llvmpipe`.
    pub driver: String,
    /// Driver version details.
    pub driver_info: String,
    /// PCI vendor id (0 when not applicable).
    pub vendor: u32,
    /// PCI device id (0 when not applicable).
    pub device: u32,
    /// Device-local memory in bytes, where the backend tells (Vulkan: the sum of its
    /// device-local heaps; software adapters report host memory).
    pub memory_bytes: Option<u64>,
}

impl AdapterInfo {
    /// What `adapter`'s driver reports, with its device memory.
    fn of(adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        Self {
            name: info.name,
            backend: info.backend.to_str().to_owned(),
            device_type: info.device_type.into(),
            driver: info.driver,
            driver_info: info.driver_info,
            vendor: info.vendor,
            device: info.device,
            memory_bytes: device_memory(adapter),
        }
    }
}

/// The device-local memory of `adapter`: the sum of its Vulkan memory heaps flagged
/// `DEVICE_LOCAL` (`vkGetPhysicalDeviceMemoryProperties`), read through wgpu's Vulkan backend,
/// since wgpu reports no memory size. `None` on other backends. A software adapter reports
/// host memory here (its heaps are the host's RAM).
#[cfg(any(target_os = "linux", target_os = "android", target_os = "windows"))]
fn device_memory(adapter: &wgpu::Adapter) -> Option<u64> {
    /// `VK_MEMORY_HEAP_DEVICE_LOCAL_BIT`.
    const DEVICE_LOCAL: u32 = 0x1;
    // SAFETY: the Vulkan adapter is only read, and the guard is dropped before `adapter`.
    let hal = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }?;
    let instance = hal.shared_instance().raw_instance();
    // SAFETY: the physical device was enumerated from this instance, which outlives the call.
    let memory =
        unsafe { instance.get_physical_device_memory_properties(hal.raw_physical_device()) };
    let heaps = memory
        .memory_heaps
        .get(..memory.memory_heap_count as usize)?;
    let bytes: u64 = heaps
        .iter()
        .filter(|heap| heap.flags.as_raw() & DEVICE_LOCAL != 0)
        .map(|heap| heap.size)
        .sum();
    (bytes > 0).then_some(bytes)
}

/// Device memory is read only through Vulkan (see the other platforms' version).
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "windows")))]
fn device_memory(_adapter: &wgpu::Adapter) -> Option<u64> {
    None
}

impl fmt::Display for AdapterInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {}", self.name, self.backend, self.device_type)?;
        if !self.driver.is_empty() {
            write!(f, ", driver {}", self.driver)?;
            if !self.driver_info.is_empty() {
                write!(f, " {}", self.driver_info)?;
            }
        }
        f.write_str(")")
    }
}

/// Which adapter to use when none is named.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AdapterPreference {
    /// A real GPU if there is one (discrete, then integrated, then virtual, then other),
    /// else the software adapter.
    #[default]
    Hardware,
    /// The software (CPU) adapter if there is one, else the best real GPU.
    Software,
}

/// How [`Gpu::new`] picks its adapter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceOptions {
    /// An adapter index into [`list_adapters`], or a case-insensitive fragment of its name.
    /// `None` picks by `preference`.
    pub adapter: Option<String>,
    /// Which kind of adapter to prefer when `adapter` is `None` (or matches several).
    pub preference: AdapterPreference,
    /// How kernels load storage data ([`LoadWidth::Auto`]: the best for the adapter).
    pub load_width: LoadWidth,
    /// How the matrix kernels read activations ([`ActivationReads::Auto`]: the best for the
    /// adapter).
    pub activation_reads: ActivationReads,
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: BACKENDS,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    })
}

fn enumerate(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance.enumerate_adapters(BACKENDS))
}

/// All adapters wgpu can see on the compute-capable backends, in enumeration order (the order
/// that [`DeviceOptions::adapter`] indices refer to).
pub fn list_adapters() -> Vec<AdapterInfo> {
    enumerate(&instance()).iter().map(AdapterInfo::of).collect()
}

/// The index in [`list_adapters`] of the adapter [`Gpu::new`] picks with `options`.
pub fn chosen_adapter(infos: &[AdapterInfo], options: &DeviceOptions) -> Result<usize> {
    choose(infos, options)
}

/// Chooses an adapter index among `infos` according to `options`.
fn choose(infos: &[AdapterInfo], options: &DeviceOptions) -> Result<usize> {
    if infos.is_empty() {
        return Err(GpuError::NoAdapter);
    }
    let candidates: Vec<usize> = match &options.adapter {
        None => (0..infos.len()).collect(),
        Some(wanted) => {
            let matches: Vec<usize> = match wanted.trim().parse::<usize>() {
                Ok(index) => (index < infos.len()).then_some(index).into_iter().collect(),
                Err(_) => {
                    let needle = wanted.to_lowercase();
                    (0..infos.len())
                        .filter(|&i| infos[i].name.to_lowercase().contains(&needle))
                        .collect()
                }
            };
            if matches.is_empty() {
                let available = infos
                    .iter()
                    .enumerate()
                    .map(|(i, info)| format!("[{i}] {info}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(GpuError::AdapterNotFound {
                    wanted: wanted.clone(),
                    available,
                });
            }
            matches
        }
    };
    let rank = |i: &usize| {
        let kind = infos[*i].device_type;
        match options.preference {
            AdapterPreference::Hardware => kind.hardware_rank(),
            AdapterPreference::Software if kind == DeviceKind::Cpu => 0,
            AdapterPreference::Software => 1 + kind.hardware_rank(),
        }
    };
    Ok(candidates
        .into_iter()
        .min_by_key(rank)
        .expect("candidates is never empty"))
}

/// One wgpu device and queue owned by a plugin instance, with byte accounting of every buffer
/// created through it and a cache of compiled pipelines.
pub struct Gpu {
    info: AdapterInfo,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) memory: Arc<MemoryCounter>,
    pub(crate) pipelines: PipelineCache,
    /// The smallest and largest subgroup sizes the adapter may run a kernel with.
    subgroup_sizes: (u32, u32),
    /// How kernels load storage data (resolved: never [`LoadWidth::Auto`]).
    load_width: LoadWidth,
    /// How the matrix kernels read activations (resolved: never [`ActivationReads::Auto`]).
    activation_reads: ActivationReads,
    /// Messages [`Gpu::log_once`] has logged.
    logged: Mutex<HashSet<String>>,
}

impl Gpu {
    /// Opens a device on the adapter chosen by `options` (see [`DeviceOptions`]), requesting the
    /// adapter's full limits (notably its maximum storage-buffer binding size) and the optional
    /// features this crate uses where the adapter has them (see [`Gpu::features`]). Logs the
    /// chosen adapter at `info` level.
    pub fn new(options: &DeviceOptions) -> Result<Self> {
        let instance = instance();
        let adapters = enumerate(&instance);
        let infos: Vec<AdapterInfo> = adapters.iter().map(AdapterInfo::of).collect();
        let index = choose(&infos, options)?;
        let adapter = &adapters[index];
        let info = infos[index].clone();
        tracing::info!(adapter = %info, index, "selected GPU adapter");
        if !info.device_type.is_hardware() {
            tracing::info!("running GPU kernels on a software adapter; expect CPU-bound speed");
        }

        let descriptor = wgpu::DeviceDescriptor {
            label: Some("pio-gpu"),
            required_features: adapter.features() & optional_features(),
            required_limits: adapter.limits(),
            memory_hints: wgpu::MemoryHints::Performance,
            ..Default::default()
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&descriptor)).map_err(|source| {
                GpuError::RequestDevice {
                    adapter: info.name.clone(),
                    source,
                }
            })?;
        let (load_width, width_fallback) = options
            .load_width
            .resolve(info.device_type, device.features());
        let adapter_info = adapter.get_info();
        let (activation_reads, reads_fallback) = options.activation_reads.resolve(
            info.device_type,
            device.features(),
            adapter_info.subgroup_min_size,
        );
        let gpu = Self {
            info,
            device,
            queue,
            memory: Arc::default(),
            pipelines: PipelineCache::default(),
            subgroup_sizes: (
                adapter_info.subgroup_min_size,
                adapter_info.subgroup_max_size,
            ),
            load_width,
            activation_reads,
            logged: Mutex::default(),
        };
        if let Some(reason) = width_fallback {
            gpu.log_once(format!("kernels load 32-bit words: {reason}"));
        }
        if let Some(reason) = reads_fallback {
            gpu.log_once(format!(
                "each invocation reads its own activations: {reason}"
            ));
        }
        Ok(gpu)
    }

    /// How this device's kernels load storage data (never [`LoadWidth::Auto`]).
    pub fn load_width(&self) -> LoadWidth {
        self.load_width
    }

    /// The optional features the device was created with.
    pub fn features(&self) -> wgpu::Features {
        self.device.features()
    }

    /// How this device's matrix kernels read activations (never [`ActivationReads::Auto`]).
    pub fn activation_reads(&self) -> ActivationReads {
        self.activation_reads
    }

    /// The smallest subgroup size the adapter may run a kernel with (meaningful with
    /// [`wgpu::Features::SUBGROUP`]).
    pub fn subgroup_min_size(&self) -> u32 {
        self.subgroup_sizes.0
    }

    /// The largest subgroup size the adapter may run a kernel with (meaningful with
    /// [`wgpu::Features::SUBGROUP`]).
    pub fn subgroup_max_size(&self) -> u32 {
        self.subgroup_sizes.1
    }

    /// Logs `message` at `info` level, once per device: a kernel variant's fallback, which
    /// every layer's kernels would otherwise repeat.
    pub(crate) fn log_once(&self, message: String) {
        let mut logged = self.logged.lock().expect("log set lock");
        if !logged.contains(&message) {
            tracing::info!(adapter = %self.info, "{message}");
            logged.insert(message);
        }
    }

    /// The adapter this device runs on.
    pub fn adapter_info(&self) -> &AdapterInfo {
        &self.info
    }

    /// The limits the device was created with.
    pub fn limits(&self) -> wgpu::Limits {
        self.device.limits()
    }

    /// The underlying wgpu device, for creating command encoders.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The device's queue, for submitting command buffers and writing buffers.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Blocks until all work submitted so far has finished.
    pub fn wait(&self) -> Result<()> {
        self.device.poll(wgpu::PollType::wait_indefinitely())?;
        Ok(())
    }

    /// Submits the work recorded in `encoder` without waiting for it.
    pub fn submit(&self, encoder: wgpu::CommandEncoder) -> wgpu::SubmissionIndex {
        self.queue.submit([encoder.finish()])
    }

    /// Blocks until the submission `index` has finished.
    pub fn wait_for(&self, index: wgpu::SubmissionIndex) -> Result<()> {
        self.device.poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: None,
        })?;
        Ok(())
    }

    /// Runs `f` inside wgpu error scopes catching validation and out-of-memory errors, turning
    /// them into [`GpuError::Wgpu`] or [`GpuError::DeviceOutOfMemory`] naming `what`.
    pub(crate) fn checked<T>(
        &self,
        what: impl FnOnce() -> String,
        f: impl FnOnce() -> T,
    ) -> Result<T> {
        let memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        let validation = pollster::block_on(validation.pop());
        let memory = pollster::block_on(memory.pop());
        match (validation, memory) {
            (None, None) => Ok(value),
            (None, Some(error)) => Err(GpuError::DeviceOutOfMemory {
                what: what(),
                message: error.to_string(),
            }),
            (Some(error), _) => Err(GpuError::Wgpu {
                what: what(),
                message: error.to_string(),
            }),
        }
    }
}

impl fmt::Debug for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.info)
            .field("allocated_bytes", &self.allocated_bytes())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, device_type: DeviceKind) -> AdapterInfo {
        AdapterInfo {
            name: name.to_owned(),
            backend: "vulkan".to_owned(),
            device_type,
            driver: String::new(),
            driver_info: String::new(),
            vendor: 0,
            device: 0,
            memory_bytes: None,
        }
    }

    fn pick(
        infos: &[AdapterInfo],
        adapter: Option<&str>,
        preference: AdapterPreference,
    ) -> Result<usize> {
        let options = DeviceOptions {
            adapter: adapter.map(str::to_owned),
            preference,
            ..DeviceOptions::default()
        };
        choose(infos, &options)
    }

    #[test]
    fn activations_are_shared_on_software_adapters_with_subgroups_of_8_lanes_only() {
        let subgroups = wgpu::Features::SUBGROUP;
        let none = wgpu::Features::empty();
        let resolved = |asked: ActivationReads, kind, features, min_size| {
            asked.resolve(kind, features, min_size)
        };
        let shared = (ActivationReads::Shared, None);
        let own = (ActivationReads::Own, None);
        assert_eq!(
            resolved(ActivationReads::Auto, DeviceKind::Cpu, subgroups, 8),
            shared
        );
        assert_eq!(
            resolved(ActivationReads::Auto, DeviceKind::Cpu, subgroups, 16),
            shared
        );
        assert_eq!(
            resolved(ActivationReads::Auto, DeviceKind::Cpu, subgroups, 4),
            own
        );
        assert_eq!(
            resolved(ActivationReads::Auto, DeviceKind::Cpu, none, 8),
            own
        );
        assert_eq!(
            resolved(ActivationReads::Auto, DeviceKind::Discrete, subgroups, 32),
            own
        );
        assert_eq!(
            resolved(ActivationReads::Shared, DeviceKind::Discrete, subgroups, 32),
            shared
        );
        assert_eq!(
            resolved(ActivationReads::Own, DeviceKind::Cpu, subgroups, 8),
            own
        );
        let (reads, reason) = resolved(ActivationReads::Shared, DeviceKind::Integrated, none, 0);
        assert_eq!(reads, ActivationReads::Own);
        assert!(
            reason.is_some_and(|r| r.contains("subgroups")),
            "{reason:?}"
        );
    }

    #[test]
    fn load_width_is_64_bits_on_software_adapters_with_64_bit_integers_only() {
        let int64 = wgpu::Features::SHADER_INT64;
        let none = wgpu::Features::empty();
        let resolved = |asked: LoadWidth, kind, features| asked.resolve(kind, features);
        assert_eq!(
            resolved(LoadWidth::Auto, DeviceKind::Cpu, int64),
            (LoadWidth::Bits64, None)
        );
        assert_eq!(
            resolved(LoadWidth::Auto, DeviceKind::Cpu, none),
            (LoadWidth::Bits32, None)
        );
        assert_eq!(
            resolved(LoadWidth::Auto, DeviceKind::Discrete, int64),
            (LoadWidth::Bits32, None)
        );
        assert_eq!(
            resolved(LoadWidth::Bits64, DeviceKind::Discrete, int64),
            (LoadWidth::Bits64, None)
        );
        assert_eq!(
            resolved(LoadWidth::Bits32, DeviceKind::Cpu, int64),
            (LoadWidth::Bits32, None)
        );
        let (width, reason) = resolved(LoadWidth::Bits64, DeviceKind::Integrated, none);
        assert_eq!(width, LoadWidth::Bits32);
        assert!(reason.is_some_and(|r| r.contains("64-bit integers")));
    }

    #[test]
    fn prefers_discrete_then_integrated_then_software() {
        let infos = [
            info("llvmpipe", DeviceKind::Cpu),
            info("Intel UHD", DeviceKind::Integrated),
            info("NVIDIA RTX", DeviceKind::Discrete),
        ];
        assert_eq!(pick(&infos, None, AdapterPreference::Hardware).unwrap(), 2);
        assert_eq!(
            pick(&infos[..2], None, AdapterPreference::Hardware).unwrap(),
            1
        );
        assert_eq!(
            pick(&infos[..1], None, AdapterPreference::Hardware).unwrap(),
            0
        );
        assert_eq!(pick(&infos, None, AdapterPreference::Software).unwrap(), 0);
        assert_eq!(
            pick(&infos[1..], None, AdapterPreference::Software).unwrap(),
            1
        );
    }

    #[test]
    fn selects_by_name_fragment_or_index() {
        let infos = [
            info("llvmpipe (LLVM 15)", DeviceKind::Cpu),
            info("NVIDIA RTX", DeviceKind::Discrete),
        ];
        assert_eq!(
            pick(&infos, Some("LLVMPIPE"), AdapterPreference::Hardware).unwrap(),
            0
        );
        assert_eq!(
            pick(&infos, Some("rtx"), AdapterPreference::Software).unwrap(),
            1
        );
        assert_eq!(
            pick(&infos, Some("0"), AdapterPreference::Hardware).unwrap(),
            0
        );
        let error = pick(&infos, Some("radeon"), AdapterPreference::Hardware).unwrap_err();
        assert!(error.to_string().contains("[1] NVIDIA RTX"), "{error}");
        assert!(pick(&infos, Some("2"), AdapterPreference::Hardware).is_err());
    }

    #[test]
    fn no_adapter_is_an_error() {
        let error = pick(&[], None, AdapterPreference::Hardware).unwrap_err();
        assert!(matches!(error, GpuError::NoAdapter));
    }
}
