//! Running a forward pass through the stages of a model, one device each, GPipe-style: the
//! tokens are cut into chunks (micro-batches), and at every tick each stage runs the chunk the
//! stage before it finished at the previous tick, so with `S` stages and `M` chunks the devices
//! work at the same time for all but `S - 1` of the `M + S - 1` ticks (the pipeline bubble).
//! Between stages a chunk's hidden states (`tokens × n_embd` f32) cross through the host: read
//! back from one device, written to the next.
//!
//! A tick submits every stage's chunk before waiting for any, and waits for the devices on
//! threads of their own, so each device's busy time is measured from its submission to its
//! completion. A model on one device is the one-stage case of the same loop: one chunk per
//! tick, no transfers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pio_gpu::{Gpu, PendingRead};

use super::graph::CacheKind;
use super::{GpuModel, Placement};
use crate::error::Result;

/// What the last stage reads back after each chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Readout {
    /// The logits of every token (`all`) or of the chunk's last one.
    Logits { all: bool },
    /// The token id the device sampler picked after the chunk's last token (raw, see
    /// [`pio_gpu::DeviceSampler::token`]).
    Token,
}

/// What a chunk produced at the last stage.
pub(super) enum ChunkOutput {
    Logits(Vec<f32>),
    Token(u32),
}

/// A stage's submitted chunk, waiting for its read-back.
enum Pending {
    /// Hidden states for the next stage.
    Hidden(PendingRead<f32>),
    Logits(PendingRead<f32>),
    Token(PendingRead<u32>),
}

/// A finished read-back.
enum Finished {
    Hidden(Vec<f32>),
    Output(ChunkOutput),
}

impl Pending {
    fn wait(self, gpu: &Gpu) -> Result<Finished> {
        Ok(match self {
            Pending::Hidden(read) => Finished::Hidden(read.wait(gpu)?),
            Pending::Logits(read) => Finished::Output(ChunkOutput::Logits(read.wait(gpu)?)),
            Pending::Token(read) => {
                let raw = read.wait(gpu)?;
                Finished::Output(ChunkOutput::Token(raw[0]))
            }
        })
    }
}

/// Running totals of the pipeline since the model was loaded.
#[derive(Debug, Default)]
pub(super) struct PipelineCounters {
    wall_nanos: AtomicU64,
    transferred_bytes: AtomicU64,
    tokens: AtomicU64,
}

/// One device of a model and what it did.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStats {
    /// The adapter, as `pio devices` names it.
    pub adapter: String,
    /// The model's layers on this device.
    pub layers: std::ops::Range<usize>,
    /// Device bytes allocated now (weights, KV caches, activations, pipelines' buffers).
    pub allocated_bytes: u64,
    /// The most device bytes allocated at once.
    pub peak_bytes: u64,
    /// Time the device spent on submitted work.
    pub busy: Duration,
}

/// How a model's forward passes used its devices.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineStats {
    /// Each device, in layer order.
    pub devices: Vec<DeviceStats>,
    /// Wall time of every forward pass.
    pub wall: Duration,
    /// Hidden-state bytes that crossed between devices (read back and written again).
    pub transferred_bytes: u64,
    /// Tokens the forward passes processed.
    pub tokens: u64,
}

impl PipelineStats {
    /// Bytes moved between devices per processed token.
    pub fn bytes_per_token(&self) -> f64 {
        self.transferred_bytes as f64 / self.tokens.max(1) as f64
    }

    /// The share of the devices' time they were idle during forward passes:
    /// `1 - Σ busy / (devices × wall)` (0 with one device whose host work is negligible).
    pub fn bubble(&self) -> f64 {
        let capacity = self.wall.as_secs_f64() * self.devices.len() as f64;
        if capacity == 0.0 {
            return 0.0;
        }
        let busy: f64 = self.devices.iter().map(|d| d.busy.as_secs_f64()).sum();
        (1.0 - busy / capacity).max(0.0)
    }
}

impl GpuModel {
    /// Tokens per chunk for a pass of `n_tokens`: `max_batch` on one device; over several,
    /// at most `max_batch` and small enough that there are at least as many chunks as
    /// devices, so they can work at the same time.
    pub(super) fn chunk_size(&self, n_tokens: usize) -> usize {
        match self.stages.len() {
            1 => self.max_batch,
            n => n_tokens.div_ceil(n).clamp(1, self.max_batch),
        }
    }

    /// Runs `chunks` (in order: a sequence's later chunk attends to its earlier ones) through
    /// every stage against the caches of `kind`, and hands `done` each chunk's index and
    /// output as the last stage produces them, in order.
    pub(super) fn run_pipeline(
        &self,
        chunks: &[Placement<'_>],
        kind: CacheKind,
        readout: Readout,
        mut done: impl FnMut(usize, ChunkOutput) -> Result<()>,
    ) -> Result<()> {
        let n_stages = self.stages.len();
        let embd = self.spec.hparams.n_embd as u64;
        let vocab = self.spec.hparams.vocab_size as u64;
        let started = Instant::now();
        let mut hidden: Vec<Option<Vec<f32>>> = vec![None; chunks.len()];
        let mut transferred = 0u64;
        for tick in 0..chunks.len() + n_stages - 1 {
            let mut pending = Vec::with_capacity(n_stages);
            for (s, stage) in self.stages.iter().enumerate() {
                let Some(c) = tick.checked_sub(s).filter(|&c| c < chunks.len()) else {
                    continue;
                };
                let at = chunks[c];
                let n = at.tokens.len() as u64;
                let last = s + 1 == n_stages;
                let input = hidden[c].take();
                transferred += input.as_ref().map_or(0, |h| 4 * h.len() as u64);
                let all = readout == Readout::Logits { all: true };
                let submitted = Instant::now();
                let read = stage.with_step(at.tokens.len(), all, kind, |step| {
                    let sample = last && readout == Readout::Token;
                    let encoder = stage.encode_step(step, at, input.as_deref(), sample)?;
                    let (gpu, acts) = (&stage.gpu, &stage.acts);
                    Ok(match (last, &stage.output) {
                        (false, _) => {
                            Pending::Hidden(gpu.submit_read(encoder, &acts.x, 0, n * embd)?)
                        }
                        (true, Some(output)) if sample => Pending::Token(gpu.submit_read(
                            encoder,
                            output.sampler.result(),
                            0,
                            1,
                        )?),
                        (true, _) => {
                            let rows = if all { n } else { 1 };
                            Pending::Logits(gpu.submit_read(
                                encoder,
                                &acts.logits,
                                0,
                                rows * vocab,
                            )?)
                        }
                    })
                })?;
                pending.push((s, c, read, submitted));
            }
            for (c, finished) in self.wait_all(pending)? {
                match finished {
                    Finished::Hidden(states) => {
                        transferred += 4 * states.len() as u64;
                        hidden[c] = Some(states);
                    }
                    Finished::Output(output) => done(c, output)?,
                }
            }
        }
        let tokens: u64 = chunks.iter().map(|c| c.tokens.len() as u64).sum();
        let counters = &self.counters;
        let wall = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        counters.wall_nanos.fetch_add(wall, Ordering::Relaxed);
        counters
            .transferred_bytes
            .fetch_add(transferred, Ordering::Relaxed);
        counters.tokens.fetch_add(tokens, Ordering::Relaxed);
        Ok(())
    }

    /// Waits for the read-backs of one tick — on a thread per device when there are several,
    /// so each device's completion time is its own — and charges each stage the time from
    /// its submission to its completion. Returns each chunk's result.
    fn wait_all(
        &self,
        pending: Vec<(usize, usize, Pending, Instant)>,
    ) -> Result<Vec<(usize, Finished)>> {
        // The devices alone cross to the waiting threads (a stage holds a loader's channel,
        // which is not `Sync`).
        let gpus: Vec<&Gpu> = self.stages.iter().map(|stage| &stage.gpu).collect();
        let gpus = &gpus;
        let wait = move |s: usize, read: Pending| {
            let finished = read.wait(gpus[s]);
            (finished, Instant::now())
        };
        let results: Vec<_> = if pending.len() == 1 {
            pending
                .into_iter()
                .map(|(s, c, read, submitted)| (s, c, submitted, wait(s, read)))
                .collect()
        } else {
            std::thread::scope(|scope| {
                let threads: Vec<_> = pending
                    .into_iter()
                    .map(|(s, c, read, submitted)| {
                        (s, c, submitted, scope.spawn(move || wait(s, read)))
                    })
                    .collect();
                threads
                    .into_iter()
                    .map(|(s, c, submitted, thread)| {
                        let result = thread
                            .join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                        (s, c, submitted, result)
                    })
                    .collect()
            })
        };
        results
            .into_iter()
            .map(|(s, c, submitted, (finished, at))| {
                let stage = &self.stages[s];
                stage.add_busy(at - submitted);
                stage.step_done();
                finished.map(|f| (c, f))
            })
            .collect()
    }

    /// How the forward passes so far used the devices.
    pub fn pipeline_stats(&self) -> PipelineStats {
        let counters = &self.counters;
        PipelineStats {
            devices: self
                .stages
                .iter()
                .map(|stage| DeviceStats {
                    adapter: stage.gpu.adapter_info().to_string(),
                    layers: stage.layer_range.clone(),
                    allocated_bytes: stage.gpu.allocated_bytes(),
                    peak_bytes: stage.gpu.peak_allocated_bytes(),
                    busy: stage.busy(),
                })
                .collect(),
            wall: Duration::from_nanos(counters.wall_nanos.load(Ordering::Relaxed)),
            transferred_bytes: counters.transferred_bytes.load(Ordering::Relaxed),
            tokens: counters.tokens.load(Ordering::Relaxed),
        }
    }
}
