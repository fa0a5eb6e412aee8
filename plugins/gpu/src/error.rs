//! The one error type of this crate, and how plugins report it through the plugin API.

use pio_plugin_api::{ErrorKind, PluginError};

/// Everything that can fail in the GPU runtime, each variant naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// wgpu found no adapter at all on any backend.
    #[error(
        "no GPU adapter found on any wgpu backend; install a Vulkan driver \
         (e.g. Mesa's lavapipe: `apt-get install mesa-vulkan-drivers`)"
    )]
    NoAdapter,
    /// `DeviceOptions::adapter` matched none of the adapters present.
    #[error("no GPU adapter matches {wanted:?}; available adapters: {available}")]
    AdapterNotFound {
        /// The name fragment or index that was asked for.
        wanted: String,
        /// A readable list of the adapters that do exist.
        available: String,
    },
    /// The adapter refused to create a device.
    #[error("requesting a device from adapter {adapter:?}: {source}")]
    RequestDevice {
        /// Name of the adapter.
        adapter: String,
        /// wgpu's reason.
        #[source]
        source: wgpu::RequestDeviceError,
    },
    /// A buffer is larger than the device can bind or allocate.
    #[error("buffer {label:?} needs {size} bytes, but the device allows at most {limit}")]
    BufferTooLarge {
        /// Label of the buffer.
        label: String,
        /// Requested size in bytes.
        size: u64,
        /// The device limit that was exceeded.
        limit: u64,
    },
    /// A host-side allocation (e.g. a table computed before its upload) failed.
    #[error("{what} needs {bytes} bytes of host memory, which could not be allocated")]
    HostOutOfMemory {
        /// What was being allocated.
        what: String,
        /// Bytes asked for.
        bytes: u64,
    },
    /// The device ran out of memory while doing `what` (wgpu's out-of-memory error).
    #[error("{what}: the device is out of memory ({message})")]
    DeviceOutOfMemory {
        /// The operation that failed, e.g. `creating buffer "kv cache"`.
        what: String,
        /// wgpu's description of the error.
        message: String,
    },
    /// wgpu reported a validation or internal error while doing `what`.
    #[error("{what}: {message}")]
    Wgpu {
        /// The operation that failed, e.g. `creating pipeline matmul::main`.
        what: String,
        /// wgpu's description of the error.
        message: String,
    },
    /// Mapping a buffer for readback failed.
    #[error("mapping buffer {label:?} for readback: {source}")]
    Map {
        /// Label of the buffer being read.
        label: String,
        /// wgpu's reason.
        #[source]
        source: wgpu::BufferAsyncError,
    },
    /// Waiting for submitted GPU work failed.
    #[error("waiting for the GPU to finish: {0}")]
    Poll(#[from] wgpu::PollError),
    /// Arguments to a kernel or to an upload do not fit together.
    #[error("{context}: {message}")]
    Shape {
        /// The kernel or upload whose arguments were wrong.
        context: &'static str,
        /// What was wrong, with the numbers involved.
        message: String,
    },
}

impl GpuError {
    /// A [`GpuError::Shape`] for `context` with a formatted message (also for plugins' own
    /// kernels).
    pub fn shape(context: &'static str, message: impl Into<String>) -> Self {
        Self::Shape {
            context,
            message: message.into(),
        }
    }
}

impl GpuError {
    /// How a plugin reports this error through the plugin API: every failed allocation — host,
    /// device, or a buffer past the device's limits — is [`ErrorKind::OutOfMemory`] (the host
    /// may retry with less, e.g. a smaller batch); a missing device or one that refuses the
    /// limits the kernels need is [`ErrorKind::Incompatible`]; an adapter the configuration
    /// names but the machine lacks is [`ErrorKind::InvalidInput`]; anything else (wrong
    /// shapes, validation errors) is the plugin's own bug, [`ErrorKind::Internal`].
    pub fn plugin_error_kind(&self) -> ErrorKind {
        match self {
            Self::BufferTooLarge { .. }
            | Self::HostOutOfMemory { .. }
            | Self::DeviceOutOfMemory { .. } => ErrorKind::OutOfMemory,
            Self::NoAdapter | Self::RequestDevice { .. } => ErrorKind::Incompatible,
            Self::AdapterNotFound { .. } => ErrorKind::InvalidInput,
            Self::Wgpu { .. } | Self::Map { .. } | Self::Poll(_) | Self::Shape { .. } => {
                ErrorKind::Internal
            }
        }
    }

    /// This error as a plugin error of [`GpuError::plugin_error_kind`], its message prefixed
    /// with what the plugin was doing (`context`, e.g. `uploading layer3.qkv`).
    pub fn into_plugin_error(self, context: &str) -> PluginError {
        PluginError::new(self.plugin_error_kind(), format!("{context}: {self}"))
    }
}

impl From<GpuError> for PluginError {
    fn from(error: GpuError) -> Self {
        PluginError::new(error.plugin_error_kind(), error.to_string())
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = GpuError> = std::result::Result<T, E>;
