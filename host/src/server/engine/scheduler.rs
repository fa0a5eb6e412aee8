//! A plugin's scheduler: one thread that takes requests from the plugin's queue, highest
//! priority first, and makes every call into the plugin for the server.
//!
//! **Not batched yet.** The plugin ABI runs one sequence per `generate`/`chat` call, so the
//! scheduler runs one sequence at a time, to its end. This loop is the one place where
//! continuous batching belongs once the ABI offers a batched decode step: keep a set of
//! running sequences, admit waiting ones between steps, decode the set in one call, and retire
//! finished ones.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use pio_plugin_api::{StreamControl, TokenEvent};
use tokio::sync::mpsc;

use crate::PluginManager;

use super::{
    queue::QueueReceiver, Admission, Completion, EngineError, Job, LaneState, Sequence,
    SequenceEvent,
};
use crate::server::metrics::Metrics;

/// Why the scheduler stopped a generation early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cancel {
    /// The request's deadline passed.
    Timeout,
    /// The client went away (its event receiver is gone).
    Disconnected,
}

struct Scheduler {
    name: String,
    manager: Arc<PluginManager>,
    metrics: Arc<Metrics>,
    state: Arc<LaneState>,
}

/// Starts the scheduler thread of plugin `name`; it exits once the queue's senders are gone
/// and the queue is empty.
pub(super) fn spawn(
    name: String,
    queue: QueueReceiver<Job>,
    state: Arc<LaneState>,
    manager: Arc<PluginManager>,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let scheduler = Scheduler {
        name: name.clone(),
        manager,
        metrics,
        state,
    };
    std::thread::Builder::new()
        .name(format!("pio-sched-{name}"))
        .spawn(move || scheduler.run(&queue))
        .map(drop)
}

impl Scheduler {
    fn run(self, queue: &QueueReceiver<Job>) {
        self.refresh_stats();
        while let Some(job) = queue.next() {
            match job {
                Job::Sequence {
                    admission,
                    request,
                    events,
                } => self.run_sequence(&admission, &request, &events),
                Job::Call { admission, run } => {
                    self.metrics
                        .queue_wait(&self.name, admission.arrived.elapsed());
                    // A call whose deadline passed has been answered with a timeout already.
                    if Instant::now() < admission.deadline {
                        run(&self.manager, &admission.reference);
                    }
                }
            }
            self.refresh_stats();
        }
        tracing::info!(plugin = %self.name, "scheduler stopped");
    }

    fn refresh_stats(&self) {
        let stats = self.manager.stats(&self.name).ok();
        *self.state.stats.lock().unwrap_or_else(|p| p.into_inner()) = stats;
    }

    /// Runs one sequence to its end, streaming its text to `events`, stopping it early when
    /// the client leaves or the deadline passes.
    fn run_sequence(
        &self,
        admission: &Admission,
        request: &Sequence,
        events: &mpsc::UnboundedSender<SequenceEvent>,
    ) {
        self.metrics
            .queue_wait(&self.name, admission.arrived.elapsed());
        if events.is_closed() {
            self.metrics.generation(&self.name, "disconnected", 0);
            return;
        }
        let timeout = admission.deadline - admission.arrived;
        if Instant::now() >= admission.deadline {
            self.metrics.generation(&self.name, "timeout", 0);
            let _ = events.send(SequenceEvent::Finished(Err(EngineError::Timeout(timeout))));
            return;
        }

        self.state.active.fetch_add(1, Ordering::Relaxed);
        let mut cancel = None;
        let mut previous = admission.arrived;
        let mut first = true;
        let on_token = |event: &TokenEvent| {
            let now = Instant::now();
            self.metrics.token(&self.name, first, now - previous);
            (first, previous) = (false, now);
            let delivered = event.text.is_empty()
                || events
                    .send(SequenceEvent::Text(event.text.to_string()))
                    .is_ok();
            // Past the deadline the handler has answered 503 and dropped its receiver: that
            // is a timeout, not a client leaving.
            cancel = if now >= admission.deadline {
                Some(Cancel::Timeout)
            } else if !delivered || events.is_closed() {
                Some(Cancel::Disconnected)
            } else {
                None
            };
            match cancel {
                Some(_) => StreamControl::Stop,
                None => StreamControl::Continue,
            }
        };
        let reference = admission.reference.as_str();
        let result = match request {
            Sequence::Generate(request) => self.manager.generate(reference, request, on_token),
            Sequence::Chat(request) => self.manager.chat(reference, request, on_token),
        };
        self.state.active.fetch_sub(1, Ordering::Relaxed);

        let (outcome, prompt_tokens, answer) = match (result, cancel) {
            (Ok(served), None) => {
                let response = served.response;
                let completion = Completion {
                    text: response.text.into_string(),
                    prompt_tokens: response.prompt_tokens,
                    completion_tokens: response.tokens.len() as u32,
                    finish: response.finish_reason,
                    plugin: served.plugin,
                };
                (
                    response.finish_reason.as_str(),
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
