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
use super::stage::Stage;
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

/// A read-back waited for: its result and when it arrived.
type WaitResult = (Result<Finished>, Instant);

/// A read-back being waited for, on this thread (done) or another.
enum Waited<'scope> {
    Done(WaitResult),
    Thread(std::thread::ScopedJoinHandle<'scope, WaitResult>),
}

impl Waited<'_> {
    fn join(self) -> WaitResult {
        match self {
            Waited::Done(result) => result,
            Waited::Thread(thread) => thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        }
    }
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
        let started = Instant::now();
        let mut hidden: Vec<Option<Vec<f32>>> = vec![None; chunks.len()];
        let mut transferred = 0u64;
        // The devices alone cross to the waiting threads (a stage holds a loader's channel,
        // which is not `Sync`).
        let gpus: Vec<&Gpu> = self.stages.iter().map(|stage| &stage.gpu).collect();
        for tick in 0..chunks.len() + n_stages - 1 {
            // Each stage's chunk is submitted, then waited for on a thread of its own (inline
            // with one device), so its completion time is its own.
            let (waits, failed) = std::thread::scope(|scope| {
                let mut waits = Vec::with_capacity(n_stages);
                let mut failed = None;
                for (s, stage) in self.stages.iter().enumerate() {
                    let Some(c) = tick.checked_sub(s).filter(|&c| c < chunks.len()) else {
                        continue;
                    };
                    let input = hidden[c].take();
                    transferred += input.as_ref().map_or(0, |h| 4 * h.len() as u64);
                    let (read, submitted) = match self.submit_chunk(
                        stage,
                        chunks[c],
                        input.as_deref(),
                        kind,
                        readout,
                    ) {
                        Ok(submitted) => submitted,
                        Err(error) => {
                            failed = Some(error);
                            break;
                        }
                    };
                    let gpu = gpus[s];
                    let wait = move || (read.wait(gpu), Instant::now());
                    let waited = match n_stages {
                        1 => Waited::Done(wait()),
                        _ => Waited::Thread(scope.spawn(wait)),
                    };
                    waits.push((s, c, submitted, waited));
                }
                let waits: Vec<_> = waits
                    .into_iter()
                    .map(|(s, c, submitted, waited)| (s, c, submitted, waited.join()))
                    .collect();
                (waits, failed)
            });
            // Every submitted chunk is accounted for before an error is returned.
            let mut first_error = failed;
            for (s, c, submitted, (finished, done_at)) in waits {
                let stage = &self.stages[s];
                stage.add_busy(done_at - submitted);
                stage.step_done();
                match finished {
                    Ok(Finished::Hidden(states)) => {
                        transferred += 4 * states.len() as u64;
                        hidden[c] = Some(states);
                    }
                    Ok(Finished::Output(output)) if first_error.is_none() => {
                        if let Err(error) = done(c, output) {
                            first_error = Some(error);
                        }
                    }
                    Ok(Finished::Output(_)) => {}
                    Err(error) => {
                        first_error.get_or_insert(error);
                    }
                }
            }
            if let Some(error) = first_error {
                return Err(error);
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

    /// Encodes and submits `stage`'s step over `at` (after the previous stage's `hidden`
    /// states, if it is not the first), with the read-back the next stage or `readout` needs;
    /// returns it with the time of its submission.
    fn submit_chunk(
        &self,
        stage: &Stage,
        at: Placement<'_>,
        hidden: Option<&[f32]>,
        kind: CacheKind,
        readout: Readout,
    ) -> Result<(Pending, Instant)> {
        let n = at.tokens.len() as u64;
        let all = readout == Readout::Logits { all: true };
        let sample = stage.output.is_some() && readout == Readout::Token;
        stage.with_step(at.tokens.len(), all, kind, |step| {
            let encoder = stage.encode_step(step, at, hidden, sample)?;
            let (gpu, acts) = (&stage.gpu, &stage.acts);
            let submitted = Instant::now();
            let read = match &stage.output {
                None => {
                    let embd = self.spec.hparams.n_embd as u64;
                    Pending::Hidden(gpu.submit_read(encoder, &acts.x, 0, n * embd)?)
                }
                Some(output) if sample => {
                    Pending::Token(gpu.submit_read(encoder, output.sampler.result(), 0, 1)?)
                }
                Some(_) => {
                    let rows = if all { n } else { 1 };
                    let vocab = self.spec.hparams.vocab_size as u64;
                    Pending::Logits(gpu.submit_read(encoder, &acts.logits, 0, rows * vocab)?)
                }
            };
            Ok((read, submitted))
        })
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
