//! Device buffers with byte accounting, uploads and readback.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytemuck::Pod;

use crate::device::Gpu;
use crate::error::{GpuError, Result};

/// Bytes currently allocated through one [`Gpu`], and the most ever allocated at once.
#[derive(Debug, Default)]
pub(crate) struct MemoryCounter {
    current: AtomicU64,
    peak: AtomicU64,
}

impl MemoryCounter {
    fn add(&self, bytes: u64) {
        let now = self.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn sub(&self, bytes: u64) {
        self.current.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// A device buffer created through a [`Gpu`]. Its bytes count towards
/// [`Gpu::allocated_bytes`] until it is dropped.
#[derive(Debug)]
pub struct GpuBuffer {
    buffer: wgpu::Buffer,
    /// Bytes asked for, rounded up to 4; the allocation may be larger (see [`MIN_BUFFER_BYTES`]).
    size: u64,
    label: String,
    memory: Arc<MemoryCounter>,
}

impl GpuBuffer {
    /// The wgpu buffer, e.g. for `copy_buffer_to_buffer`.
    pub fn raw(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Size in bytes that was asked for, rounded up to a multiple of 4.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The label given at creation, used in error messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Number of whole 32-bit elements the buffer holds.
    pub fn len_u32(&self) -> u64 {
        self.size() / 4
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        self.memory.sub(self.buffer.size());
        self.buffer.destroy();
    }
}

/// Usages of storage buffers: bound to kernels, written by the queue, copied from and to.
const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_DST)
    .union(wgpu::BufferUsages::COPY_SRC);

/// Smallest buffer created: wgpu rejects zero-sized bindings.
const MIN_BUFFER_BYTES: u64 = 16;

/// Bytes actually allocated for a request of `size` bytes (already a multiple of 4).
fn allocation(size: u64) -> u64 {
    size.max(MIN_BUFFER_BYTES)
}

/// `bytes` rounded up to whole 32-bit words.
fn words(bytes: u64) -> u64 {
    bytes.next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
}

impl Gpu {
    /// Bytes currently held by live buffers created through this device.
    pub fn allocated_bytes(&self) -> u64 {
        self.memory.current.load(Ordering::Relaxed)
    }

    /// The largest storage buffer this device can create and bind whole: the smaller of its
    /// maximum buffer size and maximum storage binding size. Callers sizing buffers from user
    /// input (a context length) check against it before allocating anything.
    pub fn max_storage_buffer_bytes(&self) -> u64 {
        let limits = self.device.limits();
        limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
    }

    /// The largest value [`Gpu::allocated_bytes`] has had.
    pub fn peak_allocated_bytes(&self) -> u64 {
        self.memory.peak.load(Ordering::Relaxed)
    }

    pub(crate) fn create_buffer(
        &self,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
        contents: Option<&[u8]>,
    ) -> Result<GpuBuffer> {
        let allocated = allocation(size);
        let limits = self.device.limits();
        let limit = if usage.contains(wgpu::BufferUsages::STORAGE) {
            self.max_storage_buffer_bytes()
        } else if usage.contains(wgpu::BufferUsages::UNIFORM) {
            limits.max_uniform_buffer_binding_size
        } else {
            limits.max_buffer_size
        };
        if allocated > limit {
            return Err(GpuError::BufferTooLarge {
                label: label.to_owned(),
                size,
                limit,
            });
        }
        let buffer = self.checked(
            || format!("creating buffer {label:?} of {size} bytes"),
            || {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: allocated,
                    usage,
                    mapped_at_creation: contents.is_some(),
                })
            },
        )?;
        if let Some(contents) = contents {
            let mut view =
                buffer
                    .slice(..)
                    .get_mapped_range_mut()
                    .map_err(|error| GpuError::Wgpu {
                        what: format!("mapping new buffer {label:?} to upload into it"),
                        message: error.to_string(),
                    })?;
            view.slice(..contents.len()).copy_from_slice(contents);
            drop(view);
            buffer.unmap();
        }
        self.memory.add(allocated);
        Ok(GpuBuffer {
            buffer,
            size,
            label: label.to_owned(),
            memory: Arc::clone(&self.memory),
        })
    }

    /// A zero-filled storage buffer of at least `bytes` bytes.
    pub fn storage_zeroed(&self, label: &str, bytes: u64) -> Result<GpuBuffer> {
        self.create_buffer(label, words(bytes), STORAGE, None)
    }

    /// A storage buffer holding `data`.
    pub fn storage_from<T: Pod>(&self, label: &str, data: &[T]) -> Result<GpuBuffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        self.create_buffer(label, words(bytes.len() as u64), STORAGE, Some(bytes))
    }

    /// A uniform buffer holding `value`.
    pub fn uniform_from<T: Pod>(&self, label: &str, value: &T) -> Result<GpuBuffer> {
        let bytes = bytemuck::bytes_of(value);
        let usage = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST;
        self.create_buffer(label, words(bytes.len() as u64), usage, Some(bytes))
    }

    /// Queues a write of `data` into `buffer` starting at element `offset` (in units of `T`);
    /// it takes effect before the next submission runs.
    pub fn write<T: Pod>(&self, buffer: &GpuBuffer, offset: u64, data: &[T]) -> Result<()> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let start = offset * std::mem::size_of::<T>() as u64;
        let end = start + bytes.len() as u64;
        if end > buffer.size() {
            return Err(GpuError::shape(
                "buffer write",
                format!(
                    "bytes {start}..{end} do not fit in buffer {:?} of {} bytes",
                    buffer.label,
                    buffer.size()
                ),
            ));
        }
        self.queue.write_buffer(&buffer.buffer, start, bytes);
        Ok(())
    }

    /// Copies `len` elements of `T` starting at element `offset` of `buffer` back to the host,
    /// waiting for all submitted work first.
    pub fn read_range<T: Pod>(&self, buffer: &GpuBuffer, offset: u64, len: u64) -> Result<Vec<T>> {
        let encoder = self.device.create_command_encoder(&Default::default());
        self.submit_and_read(encoder, buffer, offset, len)
    }

    /// Appends to `encoder` a copy of `len` elements of `T` starting at element `offset` of
    /// `buffer`, submits the encoder (the caller's work and the copy in one submission), and
    /// returns the values once it has run.
    pub fn submit_and_read<T: Pod>(
        &self,
        encoder: wgpu::CommandEncoder,
        buffer: &GpuBuffer,
        offset: u64,
        len: u64,
    ) -> Result<Vec<T>> {
        self.submit_read(encoder, buffer, offset, len)?.wait(self)
    }

    /// As [`Gpu::submit_and_read`], without waiting: the submission runs while the caller goes
    /// on (other devices' work, say), and [`PendingRead::wait`] returns the values.
    pub fn submit_read<T: Pod>(
        &self,
        mut encoder: wgpu::CommandEncoder,
        buffer: &GpuBuffer,
        offset: u64,
        len: u64,
    ) -> Result<PendingRead<T>> {
        let elem = std::mem::size_of::<T>() as u64;
        let (start, bytes) = (offset * elem, len * elem);
        if start + bytes > buffer.size() {
            return Err(GpuError::shape(
                "buffer read",
                format!(
                    "elements {offset}..{} of {elem} bytes do not fit in buffer {:?} of {} bytes",
                    offset + len,
                    buffer.label,
                    buffer.size()
                ),
            ));
        }
        if start % wgpu::COPY_BUFFER_ALIGNMENT != 0 {
            return Err(GpuError::shape(
                "buffer read",
                format!(
                    "byte offset {start} into {:?} is not a multiple of 4",
                    buffer.label
                ),
            ));
        }
        if bytes == 0 {
            self.queue.submit([encoder.finish()]);
            return Ok(PendingRead {
                read: None,
                label: buffer.label.clone(),
                _values: std::marker::PhantomData,
            });
        }
        let copy_bytes = words(bytes);
        let staging = self.create_buffer(
            &format!("{} readback", buffer.label),
            copy_bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            None,
        )?;
        encoder.copy_buffer_to_buffer(&buffer.buffer, start, &staging.buffer, 0, copy_bytes);
        self.queue.submit([encoder.finish()]);

        let (sender, receiver) = std::sync::mpsc::channel();
        staging
            .buffer
            .slice(..copy_bytes)
            .map_async(wgpu::MapMode::Read, move |result| {
                // The receiver lives in the `PendingRead` until its wait, so this send cannot
                // fail while anyone listens.
                let _ = sender.send(result);
            });
        Ok(PendingRead {
            read: Some((staging, receiver, bytes)),
            label: buffer.label.clone(),
            _values: std::marker::PhantomData,
        })
    }

    /// All whole f32 values of `buffer`, after all submitted work.
    pub fn read_f32(&self, buffer: &GpuBuffer) -> Result<Vec<f32>> {
        self.read_range(buffer, 0, buffer.len_u32())
    }

    /// All whole u32 values of `buffer`, after all submitted work.
    pub fn read_u32(&self, buffer: &GpuBuffer) -> Result<Vec<u32>> {
        self.read_range(buffer, 0, buffer.len_u32())
    }
}

/// Where a staging buffer's `map_async` reports.
type MapReceiver = std::sync::mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>;

/// A submitted copy of a buffer's range to the host (see [`Gpu::submit_read`]).
#[must_use = "the values arrive only through `wait`"]
pub struct PendingRead<T> {
    /// The staging buffer, the channel its mapping reports on, and the bytes to read; `None`
    /// for an empty read.
    read: Option<(GpuBuffer, MapReceiver, u64)>,
    label: String,
    _values: std::marker::PhantomData<T>,
}

impl<T: Pod> PendingRead<T> {
    /// Blocks until the submission has run on `gpu` (the device that made this read) and
    /// returns the values.
    pub fn wait(self, gpu: &Gpu) -> Result<Vec<T>> {
        let Some((staging, receiver, bytes)) = self.read else {
            return Ok(Vec::new());
        };
        gpu.wait()?;
        let mapped = receiver
            .recv()
            .expect("map_async callback runs during poll");
        mapped.map_err(|source| GpuError::Map {
            label: self.label.clone(),
            source,
        })?;
        let slice = staging.buffer.slice(..words(bytes));
        let view = slice.get_mapped_range().map_err(|error| GpuError::Wgpu {
            what: format!("viewing the readback of buffer {:?}", self.label),
            message: error.to_string(),
        })?;
        let values = bytemuck::pod_collect_to_vec(&view[..bytes as usize]);
        drop(view);
        staging.buffer.unmap();
        Ok(values)
    }
}
