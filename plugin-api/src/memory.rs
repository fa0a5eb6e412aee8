//! ABI-stable types of the memory and compression calls (API 0.1.2): what a plugin holds, what
//! it would hold once active, what a cleanup freed, and how its tensors are compressed.

use abi_stable::{
    std_types::{ROption, RString, RVec},
    StableAbi,
};
use serde::{Deserialize, Serialize};

/// What a block of memory is used for.
#[repr(u8)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemoryCategory {
    /// Model weights.
    Weights,
    /// Keys and values of the attention cache.
    KvCache,
    /// Activations and scratch buffers of a forward pass.
    Activations,
    /// Everything else (tokenizer, pipelines, staging buffers).
    Other,
}

impl MemoryCategory {
    /// Every category, in report order.
    pub const ALL: [MemoryCategory; 4] = [
        MemoryCategory::Weights,
        MemoryCategory::KvCache,
        MemoryCategory::Activations,
        MemoryCategory::Other,
    ];

    /// The lower-case name used in listings and metrics (`weights`, `kv_cache`, `activations`,
    /// `other`).
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryCategory::Weights => "weights",
            MemoryCategory::KvCache => "kv_cache",
            MemoryCategory::Activations => "activations",
            MemoryCategory::Other => "other",
        }
    }
}

/// The memory of one category.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct CategoryMemory {
    /// The category.
    pub category: MemoryCategory,
    /// Device (GPU) bytes allocated.
    pub device_bytes: u64,
    /// Host bytes held.
    pub host_bytes: u64,
    /// For a pool (the KV cache): the bytes it can hand out; 0 when the category has no pool.
    pub capacity_bytes: u64,
    /// For a pool: the bytes in use now (at most `capacity_bytes`); 0 when it has no pool.
    pub used_bytes: u64,
}

impl CategoryMemory {
    /// A category holding `device_bytes` and `host_bytes`, with no pool.
    pub fn new(category: MemoryCategory, device_bytes: u64, host_bytes: u64) -> Self {
        Self {
            category,
            device_bytes,
            host_bytes,
            capacity_bytes: 0,
            used_bytes: 0,
        }
    }
}

/// A plugin's memory, by category. Also the answer of `estimate_memory`: what activating would
/// allocate.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// One entry per category the plugin holds memory in (each category at most once).
    pub categories: RVec<CategoryMemory>,
}

impl MemoryReport {
    /// Device bytes of every category together.
    pub fn device_bytes(&self) -> u64 {
        self.categories.iter().map(|c| c.device_bytes).sum()
    }

    /// Host bytes of every category together.
    pub fn host_bytes(&self) -> u64 {
        self.categories.iter().map(|c| c.host_bytes).sum()
    }
}

/// Bytes a cleanup freed in one category.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreedMemory {
    /// The category.
    pub category: MemoryCategory,
    /// Device bytes freed.
    pub device_bytes: u64,
    /// Host bytes freed.
    pub host_bytes: u64,
}

/// What `force_memory_cleanup` freed, by category.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryFreed {
    /// One entry per category something was freed in.
    pub categories: RVec<FreedMemory>,
}

impl MemoryFreed {
    /// Device bytes freed in every category together.
    pub fn device_bytes(&self) -> u64 {
        self.categories.iter().map(|c| c.device_bytes).sum()
    }
}

/// Which tensors a compression applies to.
#[repr(u8)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompressionScope {
    /// The model weights.
    Weights,
    /// The attention key/value cache.
    KvCache,
}

impl CompressionScope {
    /// The lower-case name (`weights`, `kv_cache`).
    pub fn as_str(self) -> &'static str {
        match self {
            CompressionScope::Weights => "weights",
            CompressionScope::KvCache => "kv_cache",
        }
    }
}

/// A request to store some tensors in another format.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CompressionRequest {
    /// What to compress.
    pub scope: CompressionScope,
    /// The target format by name (`f16`, `q8_0`, `q4_1`, ...). A plugin that cannot store the
    /// scope in it refuses with `invalid_input`, listing the formats it supports.
    pub format: RString,
}

/// Bytes of one category before and after a compression.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct CategoryCompression {
    /// The category.
    pub category: MemoryCategory,
    /// Bytes before.
    pub bytes_before: u64,
    /// Bytes after.
    pub bytes_after: u64,
}

/// A quality measure before and after a compression.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct QualityChange {
    /// What was measured (`perplexity`, `cosine`, ...).
    pub metric: RString,
    /// The value before.
    pub before: f64,
    /// The value after.
    pub after: f64,
}

/// How a plugin's tensors are compressed: the answer of `compress` and `compression_stats`.
#[repr(C)]
#[derive(StableAbi, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CompressionReport {
    /// The method (`q8_0 weights`, ...).
    pub method: RString,
    /// Bytes before and after, per category.
    pub categories: RVec<CategoryCompression>,
    /// The measured quality change, if the plugin measured one.
    pub quality: ROption<QualityChange>,
}
