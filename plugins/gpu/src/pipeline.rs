//! WGSL kernel sources and the per-device cache of compiled compute pipelines.
//!
//! A pipeline is identified by its kernel (name *and* source: a plugin's own kernel may share a
//! name with one of this crate's, or another plugin kernel's, and still get its own module),
//! entry point and the values of its pipeline-overridable constants (the shapes). Creating one
//! is expensive on software drivers (llvmpipe compiles the shader at its first dispatch,
//! ~150 ms), so pipelines are created once, when a model is activated, and looked up from this
//! cache afterwards.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::device::Gpu;
use crate::error::Result;

/// A WGSL kernel embedded from the top-level `shaders/` directory (see
/// [`kernel!`](crate::kernel)).
///
/// Two kernels are the same kernel only when both name and source are equal: the pipeline
/// cache is keyed by both, so kernels that share a name keep their own compiled modules.
///
/// Every loop of a kernel must end. Kernels are compiled without the counter that naga would
/// otherwise add to every loop to break out of endless ones (`force_loop_bounding`): that
/// counter keeps the driver's compiler from unrolling loops of known trip count, and unrolled,
/// llvmpipe runs the matrix kernels 1.2–1.5× faster (`shaders/README.md`). A kernel is code of
/// the plugin that ships it, trusted as its Rust code is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kernel {
    /// Short name used in labels and logs, e.g. `matmul`.
    pub name: &'static str,
    /// Complete WGSL source (shared helpers already prepended).
    pub source: &'static str,
}

/// Embeds `shaders/<path>` as a [`Kernel`], prepending the listed shared helper files (paths
/// relative to `shaders/`). For crates in `plugins/` of this repository, e.g.
/// `kernel!("bert_pool", "bert/pool.wgsl", "bert/common.wgsl")`.
#[macro_export]
macro_rules! kernel {
    ($name:expr, $path:literal $(, $helper:literal)*) => {
        $crate::Kernel {
            name: $name,
            source: concat!(
                $(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shaders/", $helper)), "\n",)*
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shaders/", $path))
            ),
        }
    };
}

/// Identity of one compiled pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PipelineKey {
    /// Name and full source: equal names with different sources are different kernels.
    kernel: Kernel,
    entry: &'static str,
    /// Override constants as (name, bits of the f64 value), sorted by name.
    constants: Vec<(&'static str, u64)>,
}

/// Shader modules and compute pipelines created so far on one device.
#[derive(Debug, Default)]
pub(crate) struct PipelineCache {
    /// Keyed by the whole [`Kernel`] (name and source), never by the name alone.
    modules: Mutex<HashMap<Kernel, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
}

impl Gpu {
    /// The pipeline for `entry` of `kernel` with the given override constants, compiled on first
    /// use and cached afterwards.
    pub fn pipeline(
        &self,
        kernel: Kernel,
        entry: &'static str,
        constants: &[(&'static str, f64)],
    ) -> Result<wgpu::ComputePipeline> {
        let mut sorted: Vec<(&'static str, u64)> = constants
            .iter()
            .map(|&(name, value)| (name, value.to_bits()))
            .collect();
        sorted.sort_unstable();
        let key = PipelineKey {
            kernel,
            entry,
            constants: sorted,
        };
        let mut pipelines = self
            .pipelines
            .pipelines
            .lock()
            .expect("pipeline cache lock");
        if let Some(pipeline) = pipelines.get(&key) {
            return Ok(pipeline.clone());
        }

        let module = self.shader_module(kernel)?;
        let label = format!("{}::{entry}", kernel.name);
        let pipeline = self.checked(
            || format!("creating pipeline {label} with constants {constants:?}"),
            || {
                self.device
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(&label),
                        layout: None,
                        module: &module,
                        entry_point: Some(entry),
                        compilation_options: wgpu::PipelineCompilationOptions {
                            constants,
                            // Kernels initialise what they read; skip the zeroing pass.
                            zero_initialize_workgroup_memory: false,
                        },
                        cache: None,
                    })
            },
        )?;
        tracing::debug!(pipeline = %label, ?constants, "created compute pipeline");
        pipelines.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    fn shader_module(&self, kernel: Kernel) -> Result<wgpu::ShaderModule> {
        let mut modules = self
            .pipelines
            .modules
            .lock()
            .expect("shader module cache lock");
        if let Some(module) = modules.get(&kernel) {
            return Ok(module.clone());
        }
        let module = self.checked(
            || format!("compiling WGSL kernel {}", kernel.name),
            || {
                let descriptor = wgpu::ShaderModuleDescriptor {
                    label: Some(kernel.name),
                    source: wgpu::ShaderSource::Wgsl(
                        module_source(self.load_width().prelude(), kernel.source).into(),
                    ),
                };
                // SAFETY: `create_shader_module_trusted` with `force_loop_bounding` off requires
                // that no loop of the shader runs forever, which `Kernel`'s contract makes its
                // author promise: this crate's kernels loop up to pipeline constants, ranges the
                // host validated (positions, token counts) or, in the flash attention kernel,
                // until every one of its query tokens is served (one more per pass). Bounds
                // checks stay on (`checked()`).
                unsafe {
                    self.device.create_shader_module_trusted(
                        descriptor,
                        wgpu::ShaderRuntimeChecks {
                            force_loop_bounding: false,
                            ..wgpu::ShaderRuntimeChecks::checked()
                        },
                    )
                }
            },
        )?;
        modules.insert(kernel, module.clone());
        Ok(module)
    }

    /// Number of distinct compute pipelines compiled on this device so far.
    pub fn pipeline_count(&self) -> usize {
        self.pipelines
            .pipelines
            .lock()
            .expect("pipeline cache lock")
            .len()
    }
}

/// The WGSL module of a kernel's `source` behind the device's `prelude`, with the `enable`
/// directives of any of the kernel's files (`enable f16;` in `staged_f16.wgsl`) moved to the
/// front: WGSL wants directives before every declaration, and a helper file states what it
/// needs where it is included.
fn module_source(prelude: &str, source: &str) -> String {
    let (directives, body): (Vec<&str>, Vec<&str>) = source
        .lines()
        .partition(|line| line.trim_start().starts_with("enable "));
    let mut module = directives.join("\n");
    for part in [prelude, &body.join("\n")] {
        module.push('\n');
        module.push_str(part);
    }
    module
}

#[cfg(test)]
mod tests {
    use super::module_source;

    #[test]
    fn directives_move_in_front_of_the_prelude() {
        let source = "fn a() {}\nenable f16;\n  // enable in a comment stays\nfn b() {}";
        assert_eq!(
            module_source("alias P = u32;", source),
            "enable f16;\nalias P = u32;\nfn a() {}\n  // enable in a comment stays\nfn b() {}"
        );
    }
}
