//! [`Dispatch`]: one kernel launch with its buffers bound, recorded into a caller's compute pass.

use bytemuck::{Pod, Zeroable};

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::error::{GpuError, Result};

/// A kernel launch ready to record: pipeline, bound buffers and workgroup counts.
///
/// Building one is cheap (a bind group and, for some kernels, a 16-byte uniform); recording it
/// is cheaper still. A model can build the dispatches of a decode step once and record the same
/// list every token, changing only the contents of its token-id and position buffers.
#[derive(Debug)]
pub struct Dispatch {
    label: &'static str,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
    /// What tells this launch from others of the same kernel in a profile (e.g. the matrix's
    /// dtype and shape), if anything.
    detail: Option<String>,
    /// Runtime parameters bound as a uniform by this crate's kernels, owned here so their bytes
    /// stay accounted (`None` for [`Gpu::bind`], whose caller owns every buffer).
    _params: Option<GpuBuffer>,
}

impl Dispatch {
    /// Records this launch into `pass`. wgpu orders it after every dispatch recorded before it
    /// (storage writes of earlier dispatches are visible to later ones).
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }

    /// The kernel name, for logs and profiles.
    pub fn label(&self) -> &'static str {
        self.label
    }

    /// The kernel name followed by the launch's detail where it has one (e.g.
    /// `linear q4_1 576x1536`): how [`Gpu::profile`] names it.
    pub fn name(&self) -> String {
        match &self.detail {
            Some(detail) => format!("{} {detail}", self.label),
            None => self.label.to_owned(),
        }
    }

    /// This launch, named in profiles with `detail` after its kernel name.
    pub(crate) fn with_detail(mut self, detail: String) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Workgroup counts in x, y and z.
    pub fn workgroups(&self) -> [u32; 3] {
        self.workgroups
    }
}

/// Runtime parameters shared by all kernels (16 bytes, the smallest uniform block).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub(crate) struct Params {
    /// Number of token rows (or, for flat kernels, elements) to process.
    pub count: u32,
    /// First input row (kernels that take a row range).
    pub first: u32,
    pad: [u32; 2],
}

impl Params {
    /// Rows (or elements) `0..count`.
    pub(crate) fn count(count: u32) -> Self {
        Self::range(0, count)
    }

    /// Rows `first..first + count`.
    pub(crate) fn range(first: u32, count: u32) -> Self {
        Self {
            count,
            first,
            pad: [0; 2],
        }
    }
}

/// `n / size` rounded up.
pub(crate) fn groups(n: u32, size: u32) -> u32 {
    n.div_ceil(size)
}

impl Gpu {
    /// Binds `buffers` to bindings 0, 1, ... of group 0 of `pipeline` (see [`Gpu::pipeline`])
    /// for a launch of `workgroups`, checking the counts against the device limit: how a plugin
    /// launches a kernel of its own.
    pub fn bind(
        &self,
        label: &'static str,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[&GpuBuffer],
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        let max = self.device.limits().max_compute_workgroups_per_dimension;
        if workgroups.iter().any(|&n| n > max) {
            return Err(GpuError::shape(
                label,
                format!("workgroup counts {workgroups:?} exceed the device limit of {max} per dimension"),
            ));
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
        let bind_group = self.checked(
            || format!("binding buffers of {label}"),
            || {
                self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(label),
                    layout: &layout,
                    entries: &entries,
                })
            },
        )?;
        Ok(Dispatch {
            label,
            pipeline: pipeline.clone(),
            bind_group,
            workgroups,
            detail: None,
            _params: None,
        })
    }

    /// [`Gpu::bind`] with a uniform holding `params` bound after `buffers`, as this crate's
    /// kernels expect.
    pub(crate) fn dispatch(
        &self,
        label: &'static str,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[&GpuBuffer],
        params: Params,
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        let params = self.uniform_from(label, &params)?;
        let mut all = buffers.to_vec();
        all.push(&params);
        let mut dispatch = self.bind(label, pipeline, &all, workgroups)?;
        dispatch._params = Some(params);
        Ok(dispatch)
    }

    /// A command encoder with `dispatches` recorded in order into one compute pass, ready to
    /// submit (e.g. with [`Gpu::submit_and_read`]).
    pub fn encode<'a>(
        &self,
        dispatches: impl IntoIterator<Item = &'a Dispatch>,
    ) -> wgpu::CommandEncoder {
        let mut encoder = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            for dispatch in dispatches {
                dispatch.record(&mut pass);
            }
        }
        encoder
    }

    /// Records `dispatches` in order into one compute pass, submits it and waits for it to
    /// finish. Convenient for tests and for warming pipelines up at activation; a decode step
    /// submits its own encoder instead (see [`Gpu::encode`]).
    pub fn run(&self, dispatches: &[&Dispatch]) -> Result<()> {
        let encoder = self.encode(dispatches.iter().copied());
        self.checked(
            || "submitting dispatches".to_owned(),
            || self.queue.submit([encoder.finish()]),
        )?;
        self.wait()
    }
}

/// Checks that `buffer` holds at least `needed` 32-bit elements, naming `context` (the kernel)
/// and `what` otherwise.
pub fn require_len(
    context: &'static str,
    what: &str,
    buffer: &GpuBuffer,
    needed: u64,
) -> Result<()> {
    if buffer.len_u32() < needed {
        return Err(GpuError::shape(
            context,
            format!(
                "{what} buffer {:?} holds {} values, needs {needed}",
                buffer.label(),
                buffer.len_u32()
            ),
        ));
    }
    Ok(())
}
