//! The memory and compression calls of every kit plugin: the kit's plain types an author
//! returns from [`Model`]'s memory hooks, and their routing (the lifecycle answers "not
//! initialized" / "not active"; an inactive model holds nothing).

use pio_plugin_api::{
    self as api, abi_stable::std_types::RVec, ActivateOptions, CategoryCompression, CategoryMemory,
    CompressionScope, FreedMemory, PluginError, PluginResult,
};

use crate::{lifecycle::Lifecycle, Activation, Model};

/// A model's memory by category (each category at most once): what it holds, or what an
/// activation would allocate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// One entry per category.
    pub categories: Vec<CategoryMemory>,
}

impl MemoryUse {
    /// Device bytes of every category together.
    pub fn device_bytes(&self) -> u64 {
        self.categories.iter().map(|c| c.device_bytes).sum()
    }
}

/// What a cleanup freed, by category.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Freed {
    /// One entry per category something was freed in.
    pub categories: Vec<FreedMemory>,
}

/// A quality measure before and after a compression.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityChange {
    /// What was measured (`perplexity`, `cosine`, ...).
    pub metric: String,
    /// The value before.
    pub before: f64,
    /// The value after.
    pub after: f64,
}

/// How a model's tensors are compressed: what [`Model::compress`] did, or
/// [`Model::compression_stats`] reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Compression {
    /// The method (`q8_0 weights`, ...).
    pub method: String,
    /// Bytes before and after, per category.
    pub categories: Vec<CategoryCompression>,
    /// The measured quality change, if measured.
    pub quality: Option<QualityChange>,
}

impl From<MemoryUse> for api::MemoryReport {
    fn from(memory: MemoryUse) -> Self {
        Self {
            categories: RVec::from(memory.categories),
        }
    }
}

impl From<Compression> for api::CompressionReport {
    fn from(compression: Compression) -> Self {
        Self {
            method: compression.method.into(),
            categories: RVec::from(compression.categories),
            quality: compression
                .quality
                .map(|q| api::QualityChange {
                    metric: q.metric.into(),
                    before: q.before,
                    after: q.after,
                })
                .into(),
        }
    }
}

impl<M: Model, S: Default> Lifecycle<M, S> {
    /// The active model's memory; an inactive one holds none.
    pub(crate) fn memory_report(&mut self) -> PluginResult<api::MemoryReport> {
        Ok(match self.active() {
            Ok(active) => active.model.memory_report().into(),
            Err(_) => api::MemoryReport::default(),
        })
    }

    /// What activating with `options` would allocate ([`Model::estimate_memory`]).
    pub(crate) fn estimate_memory(
        &mut self,
        options: &ActivateOptions,
    ) -> PluginResult<api::MemoryReport> {
        let (config, plugin_dir) = self.configured()?;
        let activation = Activation::new(options, plugin_dir.cloned());
        M::estimate_memory(config, &activation).map(Into::into)
    }

    /// Drops what the active model can rebuild; an inactive one frees nothing.
    pub(crate) fn force_memory_cleanup(&mut self) -> PluginResult<api::MemoryFreed> {
        let freed = match self.active() {
            Ok(active) => active.model.force_memory_cleanup(),
            Err(_) => Freed::default(),
        };
        Ok(api::MemoryFreed {
            categories: RVec::from(freed.categories),
        })
    }

    /// Compresses the active model's tensors, refusing a format the model does not list for
    /// the scope with the ones it does.
    pub(crate) fn compress(
        &mut self,
        request: &api::CompressionRequest,
    ) -> PluginResult<api::CompressionReport> {
        let model = &mut self.active()?.model;
        let format = request.format.as_str();
        let formats = model.compression_formats(request.scope);
        if !formats.contains(&format) {
            return Err(unsupported_format(request.scope, format, formats));
        }
        model.compress(format, request.scope).map(Into::into)
    }

    /// How the active model's tensors are compressed; nothing while inactive.
    pub(crate) fn compression_stats(&mut self) -> PluginResult<Option<api::CompressionReport>> {
        Ok(self
            .active()
            .ok()
            .and_then(|active| active.model.compression_stats())
            .map(Into::into))
    }
}

/// The refusal of a compression format, listing those the model supports for the scope.
fn unsupported_format(scope: CompressionScope, format: &str, formats: &[&str]) -> PluginError {
    let supported = if formats.is_empty() {
        "this plugin supports no compression of it".to_owned()
    } else {
        format!("supported formats: {}", formats.join(", "))
    };
    PluginError::invalid_input(format!(
        "cannot compress {} to '{format}': {supported}",
        scope.as_str()
    ))
}
