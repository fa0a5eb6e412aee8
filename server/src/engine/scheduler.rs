//! A plugin's scheduler: one thread that takes requests from the plugin's queue, highest
//! priority first, and makes every call into the plugin for the server.
//!
//! Sequences for an instance with batched generation join the continuous batch
//! ([`batch`](super::batch)): while sequences are open, the loop admits waiting requests up to
//! the adaptive limit, then runs one step, and repeats; with none open it blocks on the queue.
//! Sequences for other plugins run one at a time, to their end, through `generate` / `chat`
//! (while one runs, an open batch of the same plugin name waits: that mix exists only between
//! a reload that changes the capability and the end of the old instance's sequences).
//! One-off calls run between steps; while the batch is full, nothing leaves the queue (calls
//! included), so the priority classes decide which request joins when a sequence leaves.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use pio_host::{
    Capability, ErrorKind, HostError, PluginError, SequenceRequest, StreamControl, TokenEvent,
};
use tokio::sync::mpsc;

use pio_host::PluginManager;

use super::{
    batch::Batch,
    guard::OutputGuard,
    queue::{QueueReceiver, Waiting},
    Admission, Completion, EngineError, Job, LaneState, Sequence, SequenceEvent,
};
use crate::{metrics::Metrics, BatchConfig};

/// Why the scheduler stopped a generation early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cancel {
    /// The request's deadline passed.
    Timeout,
    /// The client went away (its event receiver is gone).
    Disconnected,
}

pub(super) struct Scheduler {
    pub(super) name: String,
    pub(super) manager: Arc<PluginManager>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) state: Arc<LaneState>,
}

/// Starts the scheduler thread of plugin `name`; it exits once the queue's senders are gone,
/// the queue is empty and no sequence is open.
pub(super) fn spawn(
    name: String,
    queue: QueueReceiver<Job>,
    state: Arc<LaneState>,
    manager: Arc<PluginManager>,
    metrics: Arc<Metrics>,
    batch: BatchConfig,
) -> std::io::Result<()> {
    let scheduler = Scheduler {
        name: name.clone(),
        manager,
        metrics,
        state,
    };
    std::thread::Builder::new()
        .name(format!("pio-sched-{name}"))
        .spawn(move || scheduler.run(&queue, Batch::new(batch)))
        .map(drop)
}

impl Scheduler {
    fn run(self, queue: &QueueReceiver<Job>, mut batch: Batch) {
        self.refresh_stats();
        loop {
            if self.state.is_abandoned() {
                // The watchdog found this scheduler stuck and another took over its queue.
                self.give_up(&mut batch);
                break;
            }
            // With a full batch nothing leaves the queue, so priorities decide who joins next.
            let waiting = if batch.is_empty() {
                match queue.next() {
                    Some(job) => Waiting::Ready(job),
                    None => break,
                }
            } else if batch.has_room() {
                queue.try_next()
            } else {
                Waiting::Empty
            };
            self.state.working(|| match waiting {
                Waiting::Ready(job) => self.take(job, &mut batch),
                Waiting::Empty | Waiting::Closed => {
                    self.step(&mut batch);
                    self.retry_deferred(&mut batch);
                }
            });
            self.state.working(|| self.refresh_stats());
        }
        tracing::info!(plugin = %self.name, "scheduler stopped");
    }

    /// Runs a call, runs a sequence of an unbatched plugin to its end, or opens a sequence in
    /// `batch`.
    fn take(&self, job: Job, batch: &mut Batch) {
        match job {
            Job::Sequence {
                admission,
                request,
                events,
            } => {
                if !self.still_wanted(&admission, &events) {
                    return;
                }
                if self.batches(&admission.reference) {
                    self.open(batch, admission, request, events);
                } else if !request.options.is_plain() {
                    self.refuse_options(&admission, &events);
                } else {
                    self.run_sequence(&admission, &request, &events);
                }
            }
            Job::Call { admission, run } => {
                self.metrics
                    .queue_wait(&self.name, admission.arrived.elapsed());
                // A call whose deadline passed has been answered with a timeout already.
                if Instant::now() < admission.deadline {
                    run(&self.manager, &admission.reference);
                }
            }
        }
    }

    /// Whether the instance `reference` resolves to offers batched generation.
    fn batches(&self, reference: &str) -> bool {
        self.manager
            .info(reference)
            .ok()
            .and_then(|summary| summary.metadata)
            .is_some_and(|metadata| metadata.has(Capability::BatchedGeneration))
    }

    /// Records the queue wait of a sequence leaving the queue; answers whether it is still
    /// worth starting (its client is there and its deadline has not passed).
    fn still_wanted(
        &self,
        admission: &Admission,
        events: &mpsc::UnboundedSender<SequenceEvent>,
    ) -> bool {
        self.metrics
            .queue_wait(&self.name, admission.arrived.elapsed());
        self.wanted(admission, events)
    }

    /// Whether a request is still worth starting: its client is there and its deadline has not
    /// passed (else it is counted, and a timeout answered).
    pub(super) fn wanted(
        &self,
        admission: &Admission,
        events: &mpsc::UnboundedSender<SequenceEvent>,
    ) -> bool {
        if events.is_closed() {
            self.metrics.generation(&self.name, "disconnected", 0);
            return false;
        }
        if Instant::now() >= admission.deadline {
            self.metrics.generation(&self.name, "timeout", 0);
            let timeout = admission.deadline - admission.arrived;
            let _ = events.send(SequenceEvent::Finished(Err(EngineError::Timeout(timeout))));
            return false;
        }
        true
    }

    /// Answers a request for log-probabilities or a grammar from a plugin without batched
    /// generation: those come only through sequences.
    pub(super) fn refuse_options(
        &self,
        admission: &Admission,
        events: &mpsc::UnboundedSender<SequenceEvent>,
    ) {
        self.metrics.generation(&self.name, "error", 0);
        let error = HostError::Plugin {
            plugin: admission.reference.clone(),
            operation: "open_sequence",
            error: PluginError::new(
                ErrorKind::Unsupported,
                "log-probabilities and constrained decoding need a plugin with batched generation",
            ),
        };
        let _ = events.send(SequenceEvent::Finished(Err(EngineError::Host(error))));
    }

    /// Re-reads the plugin's stats and memory report (which the manager keeps for the memory
    /// budget, listings and `/metrics`). This thread is the only one calling the plugin, so
    /// neither waits.
    pub(super) fn refresh_stats(&self) {
        let stats = self.manager.stats(&self.name).ok();
        *super::lock(&self.state.stats) = stats;
        self.manager.refresh_memory_report(&self.name);
    }

    /// Runs one sequence of an unbatched plugin to its end, streaming its text to `events`,
    /// stopping it early when the client leaves or the deadline passes.
    pub(super) fn run_sequence(
        &self,
        admission: &Admission,
        request: &Sequence,
        events: &mpsc::UnboundedSender<SequenceEvent>,
    ) {
        let timeout = admission.deadline - admission.arrived;
        self.state.active.fetch_add(1, Ordering::Relaxed);
        let mut cancel = None;
        let mut previous = admission.arrived;
        let mut first = true;
        let mut guard = OutputGuard::new(request.params());
        let on_token = |event: &TokenEvent| {
            self.state.progressed();
            let now = Instant::now();
            self.metrics.token(&self.name, first, now - previous);
            (first, previous) = (false, now);
            // Past max_tokens or a stop string the host relays nothing more, whatever the
            // plugin sends.
            let Some(text) = guard.accept(&event.text) else {
                return StreamControl::Stop;
            };
            let delivered = text.is_empty() || events.send(SequenceEvent::Text(text)).is_ok();
            // Past the deadline the handler has answered 503 and dropped its receiver: that
            // is a timeout, not a client leaving.
            cancel = if now >= admission.deadline {
                Some(Cancel::Timeout)
            } else if !delivered || events.is_closed() {
                Some(Cancel::Disconnected)
            } else {
                None
            };
            if cancel.is_some() || guard.ended().is_some() {
                StreamControl::Stop
            } else {
                StreamControl::Continue
            }
        };
        let reference = admission.reference.as_str();
        let result = match &request.request {
            SequenceRequest::Generate(request) => {
                self.manager.generate(reference, request, on_token)
            }
            SequenceRequest::Chat(request) => self.manager.chat(reference, request, on_token),
        };
        self.state.active.fetch_sub(1, Ordering::Relaxed);

        let (outcome, prompt_tokens, answer) = match (result, cancel) {
            (Ok(served), None) => {
                let response = served.response;
                let (tail, finish) = guard.finish(Some(response.finish_reason));
                if guard.overrun() > 0 {
                    tracing::warn!(
                        plugin = %served.plugin,
                        dropped = guard.overrun(),
                        "the plugin went on past max_tokens or a stop string; the host cut it"
                    );
                }
                if !tail.is_empty() {
                    let _ = events.send(SequenceEvent::Text(tail));
                }
                // The text and count the client got, not what the plugin says it made.
                let completion = Completion {
                    text: guard.text().to_owned(),
                    prompt_tokens: response.prompt_tokens,
                    completion_tokens: guard.tokens(),
                    finish,
                    plugin: served.plugin,
                    logprobs: Vec::new(),
                };
                (
                    finish.as_str(),
                    completion.prompt_tokens,
                    Some(Ok(completion)),
                )
            }
            (Ok(served), Some(Cancel::Timeout)) => (
                "timeout",
                served.response.prompt_tokens,
                Some(Err(EngineError::Timeout(timeout))),
            ),
            (Ok(served), Some(Cancel::Disconnected)) => {
                tracing::info!(plugin = %self.name, "client disconnected; generation cancelled");
                ("disconnected", served.response.prompt_tokens, None)
            }
            (Err(error), _) => ("error", 0, Some(Err(EngineError::Host(error)))),
        };
        self.metrics
            .generation(&self.name, outcome, u64::from(prompt_tokens));
        if let Some(answer) = answer {
            let _ = events.send(SequenceEvent::Finished(answer));
        }
    }
}
