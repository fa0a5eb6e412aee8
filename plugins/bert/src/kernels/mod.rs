//! Launchers of the BERT kernels (WGSL in `shaders/bert/`, embedded at compile time).
//!
//! Each kernel is a struct created once per model (`new` compiles its pipeline with the model's
//! shapes as override constants) whose `bind` checks buffer sizes and returns a [`Launch`] for
//! one batch shape. pio-gpu provides the device, the accounted buffers and the readback; the
//! pipelines and bind groups are made here because pio-gpu keeps its pipeline and dispatch
//! helpers crate-private.
//!
//! Activations are f32, row-major, one row per token; a batch is `batch` sequences padded to
//! `seq_len` tokens (token `t` is position `t % seq_len` of sequence `t / seq_len`), described
//! to the kernels by one [`Params`] uniform per forward pass.

pub mod attention;
pub mod embed_norm;
pub mod linear;
pub mod linear_norm;
pub mod pool;

use bytemuck::{Pod, Zeroable};
use pio_gpu::{Gpu, GpuBuffer, GpuError};
use pio_plugin_api::{PluginError, PluginResult};

/// A WGSL kernel with `shaders/bert/common.wgsl` prepended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shader {
    /// Name for labels and errors.
    pub name: &'static str,
    /// Complete source.
    pub source: &'static str,
}

/// Embeds `shaders/bert/<file>` as a [`Shader`].
macro_rules! shader {
    ($name:literal, $file:literal) => {
        $crate::kernels::Shader {
            name: $name,
            source: concat!(
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../shaders/bert/common.wgsl"
                )),
                "\n",
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../shaders/bert/",
                    $file
                ))
            ),
        }
    };
}
pub(crate) use shader;

/// The shape of one batch, as the kernels see it (`struct Params` in `common.wgsl`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct Params {
    /// `batch * seq_len`.
    pub tokens: u32,
    /// Tokens per (padded) sequence.
    pub seq_len: u32,
    /// Sequences.
    pub batch: u32,
    unused: u32,
}

impl Params {
    /// `batch` sequences padded to `seq_len` tokens.
    pub fn new(batch: u32, seq_len: u32) -> Self {
        Self {
            tokens: batch * seq_len,
            seq_len,
            batch,
            unused: 0,
        }
    }
}

/// A kernel launch with its buffers bound, ready to record.
#[derive(Debug)]
pub struct Launch {
    label: &'static str,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
}

impl Launch {
    /// Records this launch into `pass` (ordered after every launch recorded before it).
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }

    /// The kernel's name.
    pub fn label(&self) -> &'static str {
        self.label
    }
}

/// Records `launches` into one compute pass and submits it (without waiting).
pub fn submit(gpu: &Gpu, launches: &[Launch]) -> PluginResult<()> {
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        for launch in launches {
            launch.record(&mut pass);
        }
    }
    checked(
        gpu,
        || "submitting kernels".to_owned(),
        || {
            gpu.queue().submit([encoder.finish()]);
        },
    )
}

/// Turns a pio-gpu error into a plugin error, naming `context`.
pub(crate) fn gpu_error(context: &str, error: GpuError) -> PluginError {
    let message = format!("{context}: {error}");
    match error {
        GpuError::BufferTooLarge { .. } => PluginError::out_of_memory(message),
        GpuError::AdapterNotFound { .. } => PluginError::invalid_input(message),
        _ => PluginError::internal(message),
    }
}

/// Runs `f` inside wgpu error scopes, turning a validation or out-of-memory error into a plugin
/// error naming `what`.
fn checked<T>(gpu: &Gpu, what: impl FnOnce() -> String, f: impl FnOnce() -> T) -> PluginResult<T> {
    let device = gpu.device();
    let memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let value = f();
    let validation = pollster::block_on(validation.pop());
    let memory = pollster::block_on(memory.pop());
    match (validation, memory) {
        (None, None) => Ok(value),
        (_, Some(error)) => Err(PluginError::out_of_memory(format!("{}: {error}", what()))),
        (Some(error), None) => Err(PluginError::internal(format!("{}: {error}", what()))),
    }
}

/// Compiles `shader`'s `main` with the given override constants.
pub(crate) fn pipeline(
    gpu: &Gpu,
    shader: Shader,
    constants: &[(&str, f64)],
) -> PluginResult<wgpu::ComputePipeline> {
    let device = gpu.device();
    let module = checked(
        gpu,
        || format!("compiling WGSL kernel {}", shader.name),
        || {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(shader.name),
                source: wgpu::ShaderSource::Wgsl(shader.source.into()),
            })
        },
    )?;
    checked(
        gpu,
        || {
            format!(
                "creating pipeline {} with constants {constants:?}",
                shader.name
            )
        },
        || {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(shader.name),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
        },
    )
}

/// Binds `buffers` to bindings 0, 1, ... of `pipeline` for a launch of `workgroups`.
pub(crate) fn launch(
    gpu: &Gpu,
    label: &'static str,
    pipeline: &wgpu::ComputePipeline,
    buffers: &[&GpuBuffer],
    workgroups: [u32; 3],
) -> PluginResult<Launch> {
    let max = gpu.limits().max_compute_workgroups_per_dimension;
    if workgroups.iter().any(|&n| n > max) {
        return Err(PluginError::invalid_input(format!(
            "{label}: workgroup counts {workgroups:?} exceed the device limit of {max}; \
             use a smaller batch"
        )));
    }
    let layout = pipeline.get_bind_group_layout(0);
    let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
        .iter()
        .enumerate()
        .map(|(binding, buffer)| wgpu::BindGroupEntry {
            binding: binding as u32,
            resource: buffer.raw().as_entire_binding(),
        })
        .collect();
    let bind_group = checked(
        gpu,
        || format!("binding the buffers of {label}"),
        || {
            gpu.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(label),
                layout: &layout,
                entries: &entries,
            })
        },
    )?;
    Ok(Launch {
        label,
        pipeline: pipeline.clone(),
        bind_group,
        workgroups,
    })
}

/// Checks that `buffer` holds at least `needed` 32-bit values.
pub(crate) fn require(
    kernel: &str,
    what: &str,
    buffer: &GpuBuffer,
    needed: u64,
) -> PluginResult<()> {
    if buffer.len_u32() < needed {
        return Err(PluginError::internal(format!(
            "{kernel}: {what} buffer {:?} holds {} values, needs {needed}",
            buffer.label(),
            buffer.len_u32()
        )));
    }
    Ok(())
}
