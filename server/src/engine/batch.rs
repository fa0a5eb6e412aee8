//! Continuous batching for a plugin with batched generation: the open sequences of one
//! plugin name, and the scheduler's two moves on them — [`open`](Scheduler::open) a waiting
//! request (the plugin processes its prompt) and [`step`](Scheduler::step) every open sequence
//! by one token.
//!
//! Each sequence stays on the instance that opened it (`name@version` and reload generation:
//! its KV cache lives there); a step groups the sequences by instance. At every step boundary,
//! before decoding, sequences whose client left or whose deadline passed are closed. A sequence
//! leaves the batch when its token says it finished, and is closed then. A failed step fails
//! exactly the sequences it carried, each with the plugin's error; a sequence whose instance
//! was retired by a reload fails with `InstanceGone` (503), while new sequences open on the
//! instance that now serves the name.

use std::{collections::HashMap, sync::atomic::Ordering, sync::Arc, time::Instant};

use pio_host::{ErrorKind, PluginError, PositionLogprobs, SequenceStep};
use tokio::sync::mpsc;

use pio_host::{HostError, HostResult};

use super::{
    guard::OutputGuard, limit::AdaptiveLimit, scheduler::Scheduler, Admission, Completion,
    EngineError, Sequence, SequenceEvent,
};
use crate::BatchConfig;

/// The instance a sequence lives on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Owner {
    /// `name@version`.
    plugin: String,
    generation: u64,
}

/// One open sequence.
struct Running {
    owner: Owner,
    /// The plugin's id of the sequence.
    id: u64,
    admission: Admission,
    events: mpsc::UnboundedSender<SequenceEvent>,
    prompt_tokens: u32,
    /// What the client gets: at most max_tokens tokens, cut at a stop string.
    guard: OutputGuard,
    /// When its previous token (or, before the first, its request) arrived.
    previous: Instant,
    /// The log-probabilities of its tokens so far: `Some` when the request asked for them.
    logprobs: Option<Vec<PositionLogprobs>>,
}

/// A request the plugin could not open for lack of memory while other sequences ran: it is
/// opened again after the next step, when finished sequences may have returned theirs.
struct Deferred {
    admission: Admission,
    request: Sequence,
    events: mpsc::UnboundedSender<SequenceEvent>,
}

/// The open sequences of one plugin name, the adaptive limit on their number, and the request
/// waiting for memory, if any.
pub(super) struct Batch {
    running: Vec<Running>,
    limit: AdaptiveLimit,
    deferred: Option<Deferred>,
}

impl Batch {
    /// An empty batch whose limit adapts as `config` says.
    pub fn new(config: BatchConfig) -> Self {
        Self {
            running: Vec::new(),
            limit: AdaptiveLimit::new(config),
            deferred: None,
        }
    }

    /// Whether no sequence is open.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Whether another sequence may be opened now: below the limit, and no request waits for
    /// memory (it goes first).
    pub fn has_room(&self) -> bool {
        self.running.len() < self.limit.current() && self.deferred.is_none()
    }
}

impl Scheduler {
    /// Opens `request` on the instance serving its model and adds it to `batch`; a refusal
    /// (bad input, plugin error) answers that request only.
    ///
    /// A sequence the plugin cannot hold now (`out_of_memory` from `open_sequence`: the Llama
    /// plugin's KV block pool is taken by the open sequences) waits while other sequences are
    /// open: it is opened again after the next step ([`Scheduler::retry_deferred`]), and no
    /// other request joins before it. With nothing else open, memory will not come back: it
    /// runs on the single-sequence path instead, which needs no batch cache.
    pub(super) fn open(
        &self,
        batch: &mut Batch,
        admission: Admission,
        request: Sequence,
        events: mpsc::UnboundedSender<SequenceEvent>,
    ) {
        let opened = self.manager.open_sequence_with(
            &admission.reference,
            &request.request,
            &request.options,
        );
        match opened {
            Ok(served) => {
                self.metrics
                    .sequence_opened(&self.name, served.response.cached_tokens);
                batch.running.push(Running {
                    owner: Owner {
                        plugin: served.plugin,
                        generation: served.generation,
                    },
                    id: served.response.id,
                    previous: admission.arrived,
                    admission,
                    events,
                    prompt_tokens: served.response.prompt_tokens,
                    guard: OutputGuard::new(request.params()),
                    logprobs: request.options.logprobs.map(|_| Vec::new()),
                });
                self.publish(batch);
            }
            Err(HostError::Plugin { error, .. })
                if error.kind == ErrorKind::OutOfMemory && !batch.running.is_empty() =>
            {
                tracing::info!(plugin = %self.name, "{error}; waiting for open sequences");
                batch.deferred = Some(Deferred {
                    admission,
                    request,
                    events,
                });
            }
            Err(HostError::Plugin { error, .. })
                if error.kind == ErrorKind::OutOfMemory && request.options.is_plain() =>
            {
                tracing::info!(plugin = %self.name, "{error}; running it alone");
                self.run_sequence(&admission, &request, &events);
            }
            Err(error) => {
                self.metrics.generation(&self.name, "error", 0);
                let _ = events.send(SequenceEvent::Finished(Err(EngineError::Host(error))));
            }
        }
    }

    /// Opens the request that waited for memory, if its client is still there and its deadline
    /// has not passed (it may wait again).
    pub(super) fn retry_deferred(&self, batch: &mut Batch) {
        if let Some(Deferred {
            admission,
            request,
            events,
        }) = batch.deferred.take()
        {
            if self.wanted(&admission, &events) {
                self.open(batch, admission, request, events);
            }
        }
    }

    /// One step boundary: closes the sequences nobody waits for any more, then decodes one
    /// token for every other open sequence, one plugin call per instance.
    pub(super) fn step(&self, batch: &mut Batch) {
        let now = Instant::now();
        let (abandoned, mut running): (Vec<_>, Vec<_>) = std::mem::take(&mut batch.running)
            .into_iter()
            .partition(|r| r.events.is_closed() || now >= r.admission.deadline);
        for sequence in abandoned {
            self.abandon(sequence, now);
        }
        while let Some(owner) = running.first().map(|r| r.owner.clone()) {
            let (carried, rest): (Vec<_>, Vec<_>) =
                running.into_iter().partition(|r| r.owner == owner);
            running = rest;
            let ids: Vec<u64> = carried.iter().map(|r| r.id).collect();
            let started = Instant::now();
            let result = self
                .manager
                .step_sequences(&owner.plugin, owner.generation, &ids);
            let took = started.elapsed();
            match result {
                Ok(steps) => {
                    self.metrics.step(&self.name, ids.len(), took);
                    batch.limit.observe(ids.len(), took);
                    batch.running.extend(self.deliver(carried, steps));
                }
                Err(error) => self.fail(carried, error),
            }
        }
        self.publish(batch);
    }

    /// Hands each sequence its token; returns those that go on.
    fn deliver(&self, carried: Vec<Running>, steps: Vec<SequenceStep>) -> Vec<Running> {
        let mut steps: HashMap<u64, SequenceStep> = steps.into_iter().map(|s| (s.id, s)).collect();
        let mut going_on = Vec::new();
        let mut missing = Vec::new();
        for mut sequence in carried {
            let Some(step) = steps.remove(&sequence.id) else {
                missing.push(sequence);
                continue;
            };
            if let Err(error) = self.collect_logprobs(&mut sequence) {
                self.fail(vec![sequence], error);
                continue;
            }
            let now = Instant::now();
            let first = sequence.guard.tokens() == 0;
            self.metrics
                .token(&self.name, first, now - sequence.previous);
            sequence.previous = now;
            // The sequence is closed as soon as the guard ends it, so it always takes the token.
            let text = sequence.guard.accept(&step.event.text).unwrap_or_default();
            if !text.is_empty() {
                // A client that left is noticed at the next step boundary.
                let _ = sequence.events.send(SequenceEvent::Text(text));
            }
            let plugin_finish = step.finish;
            if plugin_finish.is_none() && sequence.guard.ended().is_none() {
                going_on.push(sequence);
                continue;
            }
            let (tail, finish) = sequence.guard.finish(plugin_finish);
            if !tail.is_empty() {
                let _ = sequence.events.send(SequenceEvent::Text(tail));
            }
            if plugin_finish.is_some() {
                self.close(&sequence, "finished");
            } else {
                // The plugin would have gone on past max_tokens or a stop string.
                tracing::warn!(plugin = %sequence.owner.plugin, "the plugin went on past max_tokens or a stop string; the host closed the sequence");
                self.close(&sequence, "limit");
            }
            self.metrics.generation(
                &self.name,
                finish.as_str(),
                u64::from(sequence.prompt_tokens),
            );
            let completion = Completion {
                completion_tokens: sequence.guard.tokens(),
                prompt_tokens: sequence.prompt_tokens,
                finish,
                plugin: sequence.owner.plugin.clone(),
                text: sequence.guard.text().to_owned(),
                logprobs: sequence.logprobs.take().unwrap_or_default(),
            };
            let _ = sequence
                .events
                .send(SequenceEvent::Finished(Ok(completion)));
        }
        if let Some(sequence) = missing.first() {
            let error = HostError::Plugin {
                plugin: sequence.owner.plugin.clone(),
                operation: "step_sequences",
                error: PluginError::internal("the step returned no token for this sequence"),
            };
            self.fail(missing, error);
        }
        going_on
    }

    /// Fetches the log-probabilities of the step's token of a sequence that asked for them,
    /// and sends them ahead of its text.
    fn collect_logprobs(&self, sequence: &mut Running) -> HostResult<()> {
        let Some(collected) = &mut sequence.logprobs else {
            return Ok(());
        };
        let owner = &sequence.owner;
        let new = self
            .manager
            .sequence_logprobs(&owner.plugin, owner.generation, sequence.id)?;
        collected.extend_from_slice(&new);
        let _ = sequence.events.send(SequenceEvent::Logprobs(new));
        Ok(())
    }

    /// Fails every open sequence: this scheduler was found stuck in a call and replaced.
    pub(super) fn give_up(&self, batch: &mut Batch) {
        let Some(first) = batch.running.first() else {
            return;
        };
        let error = HostError::Plugin {
            plugin: first.owner.plugin.clone(),
            operation: "step_sequences",
            error: PluginError::internal(
                "the plugin was stuck in a call; its instance was abandoned with these sequences",
            ),
        };
        self.fail(std::mem::take(&mut batch.running), error);
        self.publish(batch);
    }

    /// Ends `sequences` with `error` and closes them where their instance still serves.
    fn fail(&self, sequences: Vec<Running>, error: HostError) {
        tracing::warn!(plugin = %self.name, sequences = sequences.len(), "batched step failed: {error}");
        let gone = matches!(error, HostError::InstanceGone { .. });
        let error = Arc::new(error);
        for sequence in sequences {
            if !gone {
                self.close(&sequence, "failed");
            }
            self.metrics
                .generation(&self.name, "error", u64::from(sequence.prompt_tokens));
            let _ = sequence
                .events
                .send(SequenceEvent::Finished(Err(EngineError::Step(
                    error.clone(),
                ))));
        }
    }

    /// Closes a sequence whose client left or whose deadline passed.
    fn abandon(&self, sequence: Running, now: Instant) {
        let prompt_tokens = u64::from(sequence.prompt_tokens);
        if sequence.events.is_closed() && now < sequence.admission.deadline {
            tracing::info!(plugin = %self.name, "client disconnected; sequence closed");
            self.close(&sequence, "disconnected");
            self.metrics
                .generation(&self.name, "disconnected", prompt_tokens);
        } else {
            self.close(&sequence, "timeout");
            self.metrics
                .generation(&self.name, "timeout", prompt_tokens);
            let timeout = sequence.admission.deadline - sequence.admission.arrived;
            let _ = sequence
                .events
                .send(SequenceEvent::Finished(Err(EngineError::Timeout(timeout))));
        }
    }

    /// Closes `sequence` in its plugin, counting it under `reason`.
    fn close(&self, sequence: &Running, reason: &str) {
        let closed: HostResult<()> = self.manager.close_sequence(
            &sequence.owner.plugin,
            sequence.owner.generation,
            sequence.id,
        );
        match closed {
            Ok(()) => self.metrics.sequence_closed(&self.name, reason),
            Err(error) => tracing::warn!(plugin = %self.name, "closing a sequence failed: {error}"),
        }
    }

    /// Publishes the open sequences and the batch limit for `/metrics`.
    fn publish(&self, batch: &Batch) {
        let state = &self.state;
        state
            .active
            .store(batch.running.len() as u64, Ordering::Relaxed);
        state
            .batch_limit
            .store(batch.limit.current() as u64, Ordering::Relaxed);
    }
}
