//! What a configuration (context length, batch size, block pool) costs in memory, checked
//! before anything is allocated.
//!
//! Every buffer and host vector whose size follows from a context length is listed here:
//! the KV cache (per layer, one K and one V buffer of `context × kv_dim` values — the layer's
//! own `kv_dim`, which differs between layers whose heads model surgery removed —, f32 or f16,
//! rounded up to whole blocks of 16 positions), the RoPE tables (one per distinct RoPE of the layers,
//! `context × head_dim` f32 each, computed on the host and then uploaded), the batched
//! sequences' block pool (`kv_blocks × 16` rows, like the KV cache) and the activations,
//! block tables and logits read-back (`max_batch` tokens). [`check`] compares a configuration with the model's trained
//! context, the device's largest storage buffer, the caller's budget and the host memory
//! available, so that an absurd `--ctx` is an error naming the numbers instead of an abort on
//! a terabyte allocation.

use pio_gpu::{KvShape, KvType};
use pio_plugin_kit::{CategoryMemory, MemoryCategory};

use crate::engine::ModelSummary;
use crate::error::{Error, Result};
use crate::kv_pool::{blocks_for, KV_BLOCK_ROWS};
use crate::partition::PartitionCosts;
use crate::runtime::RING_SLOTS;

/// The sizes that decide what is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Positions of the model's own KV cache (and RoPE tables).
    pub context: usize,
    /// Tokens one forward submission processes (activations, logits read-back).
    pub max_batch: usize,
    /// Blocks of 16 positions in the pool batched sequences share (0: none).
    pub kv_blocks: usize,
    /// How both KV caches store their values.
    pub kv_type: KvType,
    /// How many of the last layers stream from the file through a ring of
    /// [`RING_SLOTS`] layers (0: every layer resident; see [`ModelSummary::fit_budget`]).
    pub streamed_layers: usize,
    /// The devices the layers are split over (see [`crate::partition`]): each holds its own
    /// activations and RoPE tables, and the last a copy of a tied embedding table.
    pub devices: usize,
}

/// What a [`MemoryConfig`] needs, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryNeeds {
    /// Weights once repacked on the device: the resident ones and the ring the streamed layers
    /// go through.
    pub weights: u64,
    /// Of `weights`, the ring of streamed layers (0 when every layer is resident).
    pub ring: u64,
    /// The model's KV cache, all layers.
    pub kv_cache: u64,
    /// The batched sequences' block pool, all layers.
    pub batch_cache: u64,
    /// The RoPE tables (each also built on the host first).
    pub rope_table: u64,
    /// Activation buffers and logits.
    pub activations: u64,
    /// Everything on the device at once.
    pub device: u64,
    /// Host memory: the RoPE table computed before its upload and the largest logits
    /// read-back (device memory not included; see [`MemoryLimits::device_is_host`]).
    pub host: u64,
    /// The largest single device buffer and what it is.
    pub largest_buffer: (&'static str, u64),
}

/// What a configuration is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Largest storage buffer the device can create and bind (`u64::MAX`: unknown).
    pub max_buffer_bytes: u64,
    /// The caller's device memory budget (0: none).
    pub budget_bytes: u64,
    /// Device memory is host memory (a software adapter such as llvmpipe).
    pub device_is_host: bool,
}

impl MemoryLimits {
    /// The limits of `gpus` together (the smallest largest buffer; device memory counted as
    /// host memory if any of them is a software adapter), with the caller's `budget_bytes`.
    pub fn of(gpus: &[pio_gpu::Gpu], budget_bytes: u64) -> Self {
        MemoryLimits {
            max_buffer_bytes: gpus
                .iter()
                .map(pio_gpu::Gpu::max_storage_buffer_bytes)
                .min()
                .unwrap_or(u64::MAX),
            budget_bytes,
            device_is_host: gpus
                .iter()
                .any(|gpu| !gpu.adapter_info().device_type.is_hardware()),
        }
    }
}

/// `a × b × ...` in u64, saturating (sizes come from user input).
fn product(factors: &[usize]) -> u64 {
    factors
        .iter()
        .fold(1u64, |acc, &f| acc.saturating_mul(f as u64))
}

impl ModelSummary {
    /// The bytes `config` needs; see [`MemoryNeeds`].
    pub fn memory_needs(&self, config: &MemoryConfig) -> MemoryNeeds {
        let hp = &self.spec.hparams;
        let bytes = config.kv_type.bytes_per_value();
        // Each layer's rows are as wide as its own key/value heads (they differ once model
        // surgery removed heads); the largest buffers are the widest layer's.
        let widest_row = (0..hp.n_layer).map(|i| hp.kv_dim(i)).max().unwrap_or(0);
        let widest_row = product(&[widest_row]).saturating_mul(bytes);
        let all_rows =
            product(&[(0..hp.n_layer).map(|i| hp.kv_dim(i)).sum()]).saturating_mul(bytes);
        let block = KV_BLOCK_ROWS as usize;
        let context_blocks = blocks_for(config.context);
        let kv_layer = widest_row.saturating_mul(product(&[context_blocks, block]));
        // Each cache has a block-sized scratch buffer (of the widest layer) for copy-on-write.
        let scratch = widest_row.saturating_mul(block as u64);
        let kv_cache = all_rows
            .saturating_mul(product(&[2, context_blocks, block]))
            .saturating_add(scratch);
        let batch_layer = widest_row.saturating_mul(product(&[config.kv_blocks, block]));
        let batch_cache = match config.kv_blocks {
            0 => 0,
            _ => all_rows
                .saturating_mul(product(&[2, config.kv_blocks, block]))
                .saturating_add(scratch),
        };
        // One table per distinct RoPE of the layers (one for Llama).
        let one_rope_table = product(&[config.context, hp.head_dim, 4]);
        let rope_table = one_rope_table.saturating_mul(self.spec.ropes().len() as u64);
        // Activations per token of a batch, as `runtime::Activations` holds them: the residual
        // stream and a projection's output before its post-norm (n_embd each), the queries and
        // the attention output (the widest layer's q_dim each), the gated feed-forward (n_ff),
        // the logits, and the token id, position, cache row and table start with a block table
        // of the whole context.
        let per_token = 2 * hp.n_embd + 2 * hp.max_q_dim() + hp.n_ff + hp.vocab_size + 4;
        let per_token = per_token.saturating_add(context_blocks);
        // Plus the device sampler's buffers, and the 16-byte parameters of each dispatch of
        // the steps the model keeps built (the decode step and `KEPT_STEPS` others: at most 10
        // per layer and 4 for the embedding and head each).
        let steps = 1 + crate::runtime::KEPT_STEPS;
        let uniforms = product(&[steps, 10 * hp.n_layer + 4, 16]);
        let activations = product(&[config.max_batch, per_token, 4])
            .saturating_add(pio_gpu::DeviceSampler::DEVICE_BYTES)
            .saturating_add(uniforms);
        let logits = product(&[config.max_batch, hp.vocab_size, 4]);
        let (weights, ring) = self.streamed_weight_bytes(config.streamed_layers);
        let devices = config.devices.max(1) as u64;
        let tied_copy = match (self.head_bytes, devices) {
            (0, 2..) => self.embedding_bytes,
            _ => 0,
        };
        let weights = weights.saturating_add(tied_copy);
        let rope_table = rope_table.saturating_mul(devices);
        let activations = activations.saturating_mul(devices);
        let device = [weights, kv_cache, batch_cache, rope_table, activations]
            .iter()
            .fold(0u64, |acc, &b| acc.saturating_add(b));
        let largest_buffer = [
            ("each layer's K and V cache", kv_layer),
            ("each layer's K and V block pool", batch_layer),
            ("each RoPE table", one_rope_table),
            ("the logits", logits),
        ]
        .into_iter()
        .max_by_key(|&(_, bytes)| bytes)
        .expect("not empty");
        MemoryNeeds {
            weights,
            ring,
            kv_cache,
            batch_cache,
            rope_table,
            activations,
            device,
            host: one_rope_table.saturating_add(logits),
            largest_buffer,
        }
    }
}

impl ModelSummary {
    /// Device bytes of the weights with the last `streamed` layers streamed, and of those the
    /// ring's: each of the [`RING_SLOTS`] slots holds, per fused matrix, the largest of the
    /// streamed layers' (norm weights stay resident).
    fn streamed_weight_bytes(&self, streamed: usize) -> (u64, u64) {
        let layers =
            &self.layer_matrix_bytes[self.layer_matrix_bytes.len().saturating_sub(streamed)..];
        if layers.is_empty() {
            return (self.weight_bytes, 0);
        }
        let streamed_bytes: u64 = layers.iter().flatten().sum();
        let slot: u64 = (0..4)
            .map(|m| layers.iter().map(|l| l[m]).max().unwrap_or(0))
            .sum();
        let ring = slot * RING_SLOTS as u64;
        (self.weight_bytes - streamed_bytes + ring, ring)
    }

    /// `config` with as few layers streamed as make it fit `budget` bytes of device memory (0:
    /// no budget, every layer resident): the disk pipeline's plan. The layers that stream are
    /// the last ones, so the loader has the resident layers' time to read the first streamed
    /// one. Fails with [`Error::BudgetTooSmallToStream`], naming the smallest plan's needs,
    /// when no plan fits. (The smallest need not stream every layer: the ring is sized for
    /// the largest streamed layer, and a model's first layers are sometimes stored wider.)
    pub fn fit_budget(&self, config: MemoryConfig, budget: u64) -> Result<MemoryConfig> {
        let plans = (0..=self.layer_matrix_bytes.len()).map(|streamed_layers| MemoryConfig {
            streamed_layers,
            ..config
        });
        let fits = |c: &MemoryConfig| budget == 0 || self.memory_needs(c).device <= budget;
        plans.clone().find(fits).ok_or_else(|| {
            let smallest = plans
                .map(|plan| self.memory_needs(&plan))
                .min_by_key(|needs| needs.device)
                .expect("at least the resident plan");
            Error::BudgetTooSmallToStream {
                budget,
                needed: smallest.device,
                ring: smallest.ring,
            }
        })
    }
}

impl ModelSummary {
    /// What [`crate::partition`] plans a split of this model under `config` from: per layer
    /// its matrices' bytes (what a token reads) and those plus its norms and KV caches (what
    /// the device holds), the embedding and head, and what every device holds besides.
    pub fn partition_costs(&self, config: &MemoryConfig) -> PartitionCosts {
        let one = self.memory_needs(&MemoryConfig {
            devices: 1,
            streamed_layers: 0,
            ..*config
        });
        let n_layers = self.layer_matrix_bytes.len().max(1) as u64;
        let layer_matrices: Vec<u64> = self
            .layer_matrix_bytes
            .iter()
            .map(|l| l.iter().sum())
            .collect();
        let matrices: u64 = layer_matrices.iter().sum();
        // Norm weights and the final norm, spread over the layers.
        let norms = self
            .weight_bytes
            .saturating_sub(self.embedding_bytes + self.head_bytes + matrices)
            / n_layers;
        // Both KV caches, each layer's share as wide as its key/value heads.
        let kv = one.kv_cache.saturating_add(one.batch_cache);
        let kv_heads = self.spec.hparams.kv_shape(config.kv_type).kv_heads;
        let all_heads = kv_heads.iter().map(|&h| u64::from(h)).sum::<u64>().max(1);
        let kv_of = |layer: usize| {
            let share = u64::from(kv_heads.get(layer).copied().unwrap_or(0));
            (kv / all_heads).saturating_mul(share)
        };
        PartitionCosts {
            layer_bytes: layer_matrices
                .iter()
                .enumerate()
                .map(|(layer, m)| m.saturating_add(norms).saturating_add(kv_of(layer)))
                .collect(),
            layer_cost: layer_matrices,
            embedding_bytes: self.embedding_bytes,
            head_bytes: self.head_bytes,
            per_device_bytes: one.activations.saturating_add(one.rope_table),
        }
    }
}

impl MemoryNeeds {
    /// The needs by category, as the host's memory calls report them: weights; the KV cache
    /// (the model's own single-sequence cache, and the block pool when `pool_allocated` — it
    /// is allocated at the first batched sequence —, the pool's size as the capacity and
    /// `pool_used` bytes held or reserved by open sequences as the use); activations and
    /// scratch (with the RoPE tables, which are rebuilt with them); and `other_device` /
    /// `other_host` bytes outside these (pipelines, staging, the tokenizer).
    pub fn categories(
        &self,
        pool_allocated: bool,
        pool_used: u64,
        other_device: u64,
        other_host: u64,
    ) -> Vec<CategoryMemory> {
        let pool = if pool_allocated { self.batch_cache } else { 0 };
        vec![
            CategoryMemory::new(MemoryCategory::Weights, self.weights, 0),
            CategoryMemory {
                capacity_bytes: self.batch_cache,
                used_bytes: pool_used.min(self.batch_cache),
                ..CategoryMemory::new(
                    MemoryCategory::KvCache,
                    self.kv_cache.saturating_add(pool),
                    0,
                )
            },
            CategoryMemory::new(
                MemoryCategory::Activations,
                self.activations.saturating_add(self.rope_table),
                self.host,
            ),
            CategoryMemory::new(MemoryCategory::Other, other_device, other_host),
        ]
    }
}

impl ModelSummary {
    /// The shape of this model's KV caches with values of `kv_type`.
    pub fn kv_shape(&self, kv_type: KvType) -> KvShape {
        self.spec.hparams.kv_shape(kv_type)
    }
}

/// The bytes of host memory the system can still give (`MemAvailable` of `/proc/meminfo`), or
/// `None` where that is unknown.
pub fn host_available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// A byte count for messages: exact, with a readable unit.
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    if unit == "B" {
        format!("{bytes} bytes")
    } else {
        format!("{bytes} bytes ({value:.1} {unit})")
    }
}

/// Computes what `config` needs for the model `summary` and checks it, before anything is
/// allocated:
/// - `config.context` must be positive and at most the model's trained context (this plugin
///   implements no RoPE scaling, so later positions are outside what the model was trained
///   on): else [`Error::ContextTooLong`] (`invalid_input`);
/// - the largest buffer must fit the device's largest storage buffer, and the device bytes the
///   caller's budget: else [`Error::OutOfMemory`] / [`Error::OverBudget`] (`out_of_memory`);
/// - the host bytes (plus, on a software adapter, the device bytes not yet allocated) must fit
///   `host_available` when it is known: else [`Error::OutOfMemory`].
///
/// `held_device_bytes` are device bytes of `config` already allocated (they took their host
/// memory already). Every error names the requested context, the bytes and the limit.
pub fn check(
    summary: &ModelSummary,
    config: &MemoryConfig,
    limits: &MemoryLimits,
    held_device_bytes: u64,
    host_available: Option<u64>,
) -> Result<MemoryNeeds> {
    let trained = summary.spec.hparams.context_length;
    if config.context == 0 || config.max_batch == 0 {
        return Err(Error::InvalidParams(
            "context length and batch size must be positive".into(),
        ));
    }
    let needs = summary.memory_needs(config);
    let what = || {
        let mut text = format!("a context of {} positions", config.context);
        if config.kv_blocks > 0 {
            text.push_str(&format!(
                " with a KV cache pool of {} blocks of {KV_BLOCK_ROWS} positions",
                config.kv_blocks
            ));
        }
        text
    };
    if config.context > trained {
        return Err(Error::ContextTooLong {
            requested: config.context,
            trained,
            bytes: needs.device,
        });
    }
    let (buffer, buffer_bytes) = needs.largest_buffer;
    if buffer_bytes > limits.max_buffer_bytes {
        return Err(Error::OutOfMemory(format!(
            "{} needs {} for {buffer}, over the device's largest storage buffer of {} \
             ({} of device memory in all)",
            what(),
            bytes_text(buffer_bytes),
            bytes_text(limits.max_buffer_bytes),
            bytes_text(needs.device),
        )));
    }
    if limits.budget_bytes > 0 && needs.device > limits.budget_bytes {
        return Err(Error::OverBudget {
            needed: needs.device,
            budget: limits.budget_bytes,
        });
    }
    if let Some(available) = host_available {
        let on_host = if limits.device_is_host {
            needs.device.saturating_sub(held_device_bytes)
        } else {
            0
        };
        let host = needs.host.saturating_add(on_host);
        if host > available {
            return Err(Error::OutOfMemory(format!(
                "{} needs {} of host memory{}, over the {} available",
                what(),
                bytes_text(host),
                if limits.device_is_host {
                    " (the software adapter's device memory included)"
                } else {
                    ""
                },
                bytes_text(available),
            )));
        }
    }
    Ok(needs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_model::{tiny_llama, TinyConfig};

    fn summary(trained: usize) -> ModelSummary {
        let file = tiny_llama(&TinyConfig {
            context_length: trained,
            ..TinyConfig::default()
        });
        ModelSummary::read(&file, crate::storage::WeightStorage::AsStored).unwrap()
    }

    const UNLIMITED: MemoryLimits = MemoryLimits {
        max_buffer_bytes: u64::MAX,
        budget_bytes: 0,
        device_is_host: false,
    };

    fn config(context: usize) -> MemoryConfig {
        MemoryConfig {
            context,
            max_batch: 8,
            kv_blocks: 0,
            kv_type: KvType::F32,
            streamed_layers: 0,
            devices: 1,
        }
    }

    #[test]
    fn needs_follow_the_configuration() {
        let s = summary(4096);
        // Tiny model: 2 layers, kv_dim 32, head_dim 16.
        let a = s.memory_needs(&config(1000));
        // 1000 positions take 63 blocks of 16, plus a block of scratch.
        assert_eq!(a.kv_cache, 2 * 2 * 1008 * 32 * 4 + 16 * 32 * 4);
        assert_eq!(a.rope_table, 1000 * 16 * 4);
        assert_eq!(a.batch_cache, 0);
        assert_eq!(a.device, s.memory_needs(&config(1000)).device);
        // An f16 cache halves both caches and nothing else.
        let half = s.memory_needs(&MemoryConfig {
            kv_type: KvType::F16,
            ..config(1000)
        });
        assert_eq!(half.kv_cache * 2, a.kv_cache);
        assert_eq!(half.device, a.device - a.kv_cache / 2);
        let b = s.memory_needs(&MemoryConfig {
            kv_blocks: 25,
            ..config(1000)
        });
        assert_eq!(b.batch_cache, 2 * 2 * 400 * 32 * 4 + 16 * 32 * 4);
        assert_eq!(b.device, a.device + b.batch_cache);
        // Absurd sizes saturate instead of overflowing.
        let c = s.memory_needs(&MemoryConfig {
            kv_blocks: usize::MAX,
            ..config(usize::MAX)
        });
        assert_eq!(c.device, u64::MAX);
    }

    #[test]
    fn every_limit_is_named_in_its_error() {
        let s = summary(1 << 20);
        let e = check(&s, &config(1 << 21), &UNLIMITED, 0, None).unwrap_err();
        assert!(matches!(e, Error::ContextTooLong { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("2097152") && text.contains("1048576"),
            "{text}"
        );

        let small_buffers = MemoryLimits {
            max_buffer_bytes: 1 << 20,
            ..UNLIMITED
        };
        let e = check(&s, &config(1 << 20), &small_buffers, 0, None).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::OutOfMemory(_)), "{text}");
        // 2^20 positions × 32 values × 4 bytes per layer's K cache, over a 1 MiB buffer.
        assert!(text.contains("1048576 positions"), "{text}");
        assert!(text.contains(&(1u64 << 27).to_string()), "{text}");
        assert!(text.contains(&(1u64 << 20).to_string()), "{text}");

        let budget = MemoryLimits {
            budget_bytes: 1000,
            ..UNLIMITED
        };
        let e = check(&s, &config(64), &budget, 0, None).unwrap_err();
        assert!(matches!(e, Error::OverBudget { budget: 1000, .. }), "{e}");

        // Host memory: a hardware adapter needs only the RoPE table and logits on the host, a
        // software one its device memory too (less what it already holds).
        let needs = check(&s, &config(64), &UNLIMITED, 0, None).unwrap();
        assert!(check(&s, &config(64), &UNLIMITED, 0, Some(needs.host)).is_ok());
        let software = MemoryLimits {
            device_is_host: true,
            ..UNLIMITED
        };
        let e = check(&s, &config(64), &software, 0, Some(needs.host)).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::OutOfMemory(_)), "{text}");
        assert!(
            text.contains(&(needs.host + needs.device).to_string()),
            "{text}"
        );
        assert!(text.contains(&needs.host.to_string()), "{text}");
        assert!(check(&s, &config(64), &software, needs.device, Some(needs.host)).is_ok());
    }

    /// The plan streams the fewest layers that fit; one or two streamed layers never fit
    /// where none does (the ring holds two layers), and a ring is as large as its largest
    /// streamed layers.
    #[test]
    fn a_budget_streams_the_fewest_layers_that_fit() {
        let file = tiny_llama(&TinyConfig {
            n_layer: 6,
            ..TinyConfig::default()
        });
        let s = ModelSummary::read(&file, crate::storage::WeightStorage::AsStored).unwrap();
        let resident = s.memory_needs(&config(64));
        assert_eq!(resident.ring, 0);
        for budget in [0, resident.device] {
            assert_eq!(s.fit_budget(config(64), budget).unwrap(), config(64));
        }
        let streaming = |n| MemoryConfig {
            streamed_layers: n,
            ..config(64)
        };
        for n in [1, 2] {
            assert!(s.memory_needs(&streaming(n)).device >= resident.device);
        }
        let budget = resident.device - resident.weights / 4;
        let plan = s.fit_budget(config(64), budget).unwrap();
        let n = plan.streamed_layers;
        assert!(s.memory_needs(&plan).device <= budget);
        assert!(s.memory_needs(&streaming(n - 1)).device > budget);
        let largest: u64 = (0..4)
            .map(|m| {
                s.layer_matrix_bytes[6 - n..]
                    .iter()
                    .map(|l| l[m])
                    .max()
                    .unwrap()
            })
            .sum();
        assert_eq!(s.memory_needs(&plan).ring, 2 * largest);
    }

    #[test]
    fn byte_counts_read_well() {
        assert_eq!(bytes_text(512), "512 bytes");
        assert_eq!(bytes_text(3 << 30), "3221225472 bytes (3.0 GiB)");
    }
}
