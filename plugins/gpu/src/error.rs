//! The one error type of this crate.

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
    /// wgpu reported an error (validation or out-of-memory) while doing `what`.
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

/// Shorthand for results of this crate.
pub type Result<T, E = GpuError> = std::result::Result<T, E>;
