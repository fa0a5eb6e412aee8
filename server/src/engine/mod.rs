//! The engine between the HTTP handlers and the [`PluginManager`]: one bounded, prioritised
//! request queue per plugin name ([`queue`]) feeding that plugin's scheduler thread
//! ([`scheduler`]), which owns every call the server makes into the plugin.
//!
//! A plugin with batched generation is served by continuous batching ([`batch`]): its
//! scheduler keeps up to an adaptive number of sequences ([`limit`]) open and decodes one token
//! for all of them per step; others run one sequence per call.
//!
//! A scheduler stuck in a plugin call (no sign of life for the stall timeout: a plugin in an
//! endless loop) is found by the engine's [`watchdog`]: it has the manager abandon the stuck
//! instance and starts a new scheduler on the same queue, so later requests are served.
//!
//! Handlers never call plugins themselves: they [`submit`](Engine::submit_sequence) a sequence
//! (a generation or a chat answer, streamed back token by token) or a one-off
//! [`call`](Engine::call) (tokenize, detokenize, embed), and await the answer. Admission is
//! immediate: a full queue is refused with [`EngineError::QueueFull`].

mod batch;
mod guard;
mod limit;
mod queue;
mod scheduler;
mod watchdog;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use pio_host::{
    DecodeOptions, FinishReason, GenerationParams, PluginStats, PositionLogprobs, SequenceRequest,
};
use tokio::sync::{mpsc, oneshot};

use pio_host::{HostError, HostResult, KeepAlive, Lease, PluginManager};

use super::{
    metrics::{GaugeSample, Metrics},
    BatchConfig,
};

pub use queue::Priority;

/// Why the engine could not answer a request.
#[derive(Debug)]
pub enum EngineError {
    /// No active plugin answers to this model name.
    NotServed(String),
    /// The plugin's queue for this priority is full.
    QueueFull {
        /// The plugin name.
        plugin: String,
        /// The queue's capacity.
        depth: usize,
    },
    /// The request ran past its deadline (waiting or generating).
    Timeout(Duration),
    /// The plugin's scheduler stopped (plugin removed) before answering.
    Stopped(String),
    /// The plugin or the manager refused the request.
    Host(HostError),
    /// A batched step failed: every sequence of the step gets the plugin's error.
    Step(Arc<HostError>),
}

/// A request that produces a sequence of tokens — a continuation or a chat answer — and what
/// it reports and obeys beyond its tokens (log-probabilities, a grammar).
#[derive(Debug, Clone)]
pub struct Sequence {
    /// The continuation or chat answer.
    pub request: SequenceRequest,
    /// Log-probabilities and grammar; plain options need nothing beyond generation.
    pub options: DecodeOptions,
}

impl Sequence {
    /// The generation parameters of the request.
    pub fn params(&self) -> &GenerationParams {
        match &self.request {
            SequenceRequest::Generate(request) => &request.params,
            SequenceRequest::Chat(request) => &request.params,
        }
    }
}

/// A finished sequence.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The whole generated text.
    pub text: String,
    /// Prompt tokens processed.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Why it ended.
    pub finish: FinishReason,
    /// `name@version` of the instance that generated it.
    pub plugin: String,
    /// The log-probabilities of every generated token, when the request asked for them.
    pub logprobs: Vec<PositionLogprobs>,
}

/// What a submitted sequence sends back, in order: text pieces (each after the
/// log-probabilities of the tokens that made it, when asked for), then exactly one `Finished`.
#[derive(Debug)]
pub enum SequenceEvent {
    /// The log-probabilities of the tokens of one step (their text may be held back for a
    /// while: it follows in a later `Text`).
    Logprobs(Vec<PositionLogprobs>),
    /// The next piece of generated text (never empty).
    Text(String),
    /// The end: the completion, or why there is none.
    Finished(Result<Completion, EngineError>),
}

/// A submitted sequence: its events, and the deadline after which it is abandoned.
#[derive(Debug)]
pub struct SequenceHandle {
    /// The events; dropping the receiver cancels the generation at its next token.
    pub events: mpsc::UnboundedReceiver<SequenceEvent>,
    /// When the request times out.
    pub deadline: Instant,
}

/// How a request enters its plugin's queue: its priority class, and how long the plugin
/// should stay resident after it (Ollama's `keep_alive`; `None`: as configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admit {
    /// The priority class.
    pub priority: Priority,
    /// The plugin's keep-alive from this request on.
    pub keep_alive: Option<KeepAlive>,
}

impl From<Priority> for Admit {
    fn from(priority: Priority) -> Self {
        Self {
            priority,
            keep_alive: None,
        }
    }
}

/// When and for what a request entered a queue.
#[derive(Debug)]
struct Admission {
    /// The model reference the client gave (`name` or `name@version`).
    reference: String,
    arrived: Instant,
    deadline: Instant,
    /// Marks the plugin busy for the memory manager (never swapped out) until the request is
    /// done and this admission dropped.
    _lease: Lease,
}

/// A one-off call run by a scheduler; it answers through the channel it captured.
type CallFn = Box<dyn FnOnce(&PluginManager, &str) + Send>;

/// Work waiting in a plugin's queue.
enum Job {
    Sequence {
        admission: Admission,
        request: Sequence,
        events: mpsc::UnboundedSender<SequenceEvent>,
    },
    Call {
        admission: Admission,
        run: CallFn,
    },
}

/// What a plugin's scheduler shares with the engine.
#[derive(Debug, Default)]
struct LaneState {
    /// Sequences being generated now.
    active: AtomicU64,
    /// The current adaptive batch limit (0 until the plugin has run a batched step).
    batch_limit: AtomicU64,
    /// The plugin's resource use, read by the scheduler after every job.
    stats: Mutex<Option<PluginStats>>,
    /// While the scheduler is inside a plugin call: when the call last showed progress (its
    /// start, or its last streamed token).
    progress: Mutex<Option<Instant>>,
    /// Set when the watchdog gave up on this scheduler and started another on the same queue:
    /// if its call ever returns, it fails its open sequences and exits.
    abandoned: AtomicBool,
}

impl LaneState {
    /// Runs `call`, a job that calls into the plugin, marked busy for the watchdog.
    fn working<T>(&self, call: impl FnOnce() -> T) -> T {
        self.progressed();
        let result = call();
        *lock(&self.progress) = None;
        result
    }

    /// The call in flight showed progress now.
    fn progressed(&self) {
        *lock(&self.progress) = Some(Instant::now());
    }

    /// How long the call in flight has gone without progress; zero when no call runs.
    fn silent_for(&self) -> Duration {
        lock(&self.progress).map_or(Duration::ZERO, |since| since.elapsed())
    }

    fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::SeqCst)
    }
}

struct Lane {
    queue: queue::QueueSender<Job>,
    /// The scheduler's end, kept so a replacement scheduler can take over the queue.
    receiver: queue::QueueReceiver<Job>,
    state: Arc<LaneState>,
}

/// Queue length and sequences in flight of one plugin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneStatus {
    /// Requests waiting.
    pub queued: usize,
    /// Sequences being generated.
    pub active: u64,
}

/// The queues and schedulers of every served plugin.
pub struct Engine {
    manager: Arc<PluginManager>,
    metrics: Arc<Metrics>,
    depth: usize,
    timeout: Duration,
    /// A plugin call silent this long is stuck (the workers' stall timeout).
    stall_timeout: Duration,
    batch: BatchConfig,
    lanes: Mutex<BTreeMap<String, Lane>>,
}

impl Engine {
    /// An engine whose queues hold `depth` requests per priority class, whose requests time
    /// out after `timeout`, whose plugin calls count as stuck when silent for `stall_timeout`
    /// (see [`watchdog`]) and whose batched plugins are batched as `batch` says.
    pub fn new(
        manager: Arc<PluginManager>,
        metrics: Arc<Metrics>,
        depth: usize,
        timeout: Duration,
        stall_timeout: Duration,
        batch: BatchConfig,
    ) -> Self {
        Self {
            manager,
            metrics,
            depth,
            timeout,
            stall_timeout,
            batch,
            lanes: Mutex::new(BTreeMap::new()),
        }
    }

    /// Starts the queue and scheduler of plugin `name` unless they run already.
    pub fn open(&self, name: &str) -> HostResult<()> {
        let mut lanes = self.lock_lanes();
        if lanes.contains_key(name) {
            return Ok(());
        }
        let (sender, receiver) = queue::bounded(self.depth);
        let state = self.spawn_scheduler(name, &receiver)?;
        lanes.insert(
            name.to_owned(),
            Lane {
                queue: sender,
                receiver,
                state,
            },
        );
        Ok(())
    }

    /// Starts a scheduler for plugin `name` taking from `queue`; returns what it shares.
    fn spawn_scheduler(
        &self,
        name: &str,
        queue: &queue::QueueReceiver<Job>,
    ) -> HostResult<Arc<LaneState>> {
        let state = Arc::new(LaneState::default());
        scheduler::spawn(
            name.to_owned(),
            queue.clone(),
            state.clone(),
            self.manager.clone(),
            self.metrics.clone(),
            self.batch,
        )
        .map_err(|e| HostError::io("scheduler thread", e))?;
        Ok(state)
    }

    /// Stops the queue of plugin `name` if no plugin of that name is left. Its scheduler
    /// finishes what is queued (those requests fail: the plugin is gone), then exits.
    pub fn close_if_unserved(&self, name: &str) {
        if self.manager.resolve(name).is_err() {
            self.lock_lanes().remove(name);
        }
    }

    /// Queues a sequence for the plugin `model` names.
    pub fn submit_sequence(
        &self,
        model: &str,
        admit: impl Into<Admit>,
        request: Sequence,
    ) -> Result<SequenceHandle, EngineError> {
        let (events, receiver) = mpsc::unbounded_channel();
        let deadline = self.admit(model, admit.into(), |admission| Job::Sequence {
            admission,
            request,
            events,
        })?;
        Ok(SequenceHandle {
            events: receiver,
            deadline,
        })
    }

    /// Runs `call` on the plugin `model` names, in its queue, and awaits its answer until the
    /// request's deadline.
    pub async fn call<T: Send + 'static>(
        &self,
        model: &str,
        admit: impl Into<Admit>,
        call: impl FnOnce(&PluginManager, &str) -> HostResult<T> + Send + 'static,
    ) -> Result<T, EngineError> {
        let (answer, answered) = oneshot::channel();
        let run: CallFn = Box::new(move |manager, reference| {
            let _ = answer.send(call(manager, reference));
        });
        let deadline = self.admit(model, admit.into(), |admission| Job::Call {
            admission,
            run,
        })?;
        match tokio::time::timeout_at(deadline.into(), answered).await {
            Ok(Ok(result)) => result.map_err(EngineError::Host),
            Ok(Err(_)) => Err(EngineError::Stopped(model.to_owned())),
            Err(_) => Err(EngineError::Timeout(self.timeout)),
        }
    }

    /// Queue length and sequences in flight of plugin `name`, if it has a queue.
    pub fn status(&self, name: &str) -> Option<LaneStatus> {
        self.lock_lanes().get(name).map(|lane| LaneStatus {
            queued: lane.queue.len(),
            active: lane.state.active.load(Ordering::Relaxed),
        })
    }

    /// The stats plugin `name` last reported to its scheduler (refreshed between its calls, so
    /// reading them never waits for a busy plugin), if it has a queue.
    pub fn last_stats(&self, name: &str) -> Option<PluginStats> {
        let lanes = self.lock_lanes();
        let lane = lanes.get(name)?;
        let stats = lock(&lane.state.stats).clone();
        stats
    }

    /// Queue depth, sequences in flight and memory of every plugin with a queue.
    pub fn gauges(&self) -> Vec<GaugeSample> {
        let lanes = self.lock_lanes();
        let mut gauges = Vec::new();
        let mut add = |name, help, plugin: &str, value: f64| {
            gauges.push(GaugeSample {
                name,
                help,
                labels: vec![("plugin", plugin.to_owned())],
                value,
            })
        };
        for (plugin, lane) in lanes.iter() {
            add(
                "pio_queue_depth",
                "Requests waiting in the plugin's queue.",
                plugin,
                lane.queue.len() as f64,
            );
        }
        for (plugin, lane) in lanes.iter() {
            add(
                "pio_queue_capacity",
                "Requests each priority class of the plugin's queue holds.",
                plugin,
                lane.queue.depth() as f64,
            );
        }
        for (plugin, lane) in lanes.iter() {
            add(
                "pio_active_sequences",
                "Sequences being generated.",
                plugin,
                lane.state.active.load(Ordering::Relaxed) as f64,
            );
        }
        for (plugin, lane) in lanes.iter() {
            add(
                "pio_batch_limit",
                "Sequences the adaptive batch limit lets the plugin's steps carry now (0: not batched).",
                plugin,
                lane.state.batch_limit.load(Ordering::Relaxed) as f64,
            );
        }
        let stats: Vec<(&String, PluginStats)> = lanes
            .iter()
            .filter_map(|(plugin, lane)| lock(&lane.state.stats).clone().map(|s| (plugin, s)))
            .collect();
        for (plugin, s) in &stats {
            add(
                "pio_plugin_device_memory_bytes",
                "Device memory the plugin holds (its last reported stats).",
                plugin,
                s.device_memory_bytes as f64,
            );
        }
        for (plugin, s) in &stats {
            add(
                "pio_plugin_host_memory_bytes",
                "Host memory the plugin holds (its last reported stats).",
                plugin,
                s.host_memory_bytes as f64,
            );
        }
        gauges
    }

    /// Checks that `model` names an active plugin (or one the memory manager swapped out,
    /// which its scheduler swaps in) and queues the job `make` builds; returns the request's
    /// deadline.
    fn admit(
        &self,
        model: &str,
        admit: Admit,
        make: impl FnOnce(Admission) -> Job,
    ) -> Result<Instant, EngineError> {
        let summary = match self.manager.info(model) {
            Ok(summary) if summary.is_available() => summary,
            Ok(_) | Err(HostError::NotFound(_)) => {
                return Err(EngineError::NotServed(model.to_owned()))
            }
            Err(e) => return Err(EngineError::Host(e)),
        };
        let name = summary.manifest.name;
        self.open(&name).map_err(EngineError::Host)?;
        let arrived = Instant::now();
        let deadline = arrived + self.timeout;
        let job = make(Admission {
            reference: model.to_owned(),
            arrived,
            deadline,
            _lease: self.manager.lease(&name, admit.keep_alive),
        });
        let lanes = self.lock_lanes();
        let lane = lanes
            .get(&name)
            .ok_or_else(|| EngineError::Stopped(name.clone()))?;
        match lane.queue.admit(admit.priority, job) {
            Ok(()) => Ok(deadline),
            Err(queue::Refused::Full) => Err(EngineError::QueueFull {
                plugin: name,
                depth: self.depth,
            }),
            Err(queue::Refused::Closed) => Err(EngineError::Stopped(name)),
        }
    }

    fn lock_lanes(&self) -> MutexGuard<'_, BTreeMap<String, Lane>> {
        lock(&self.lanes)
    }
}

/// Locks `mutex`; a poisoned one still holds a consistent value (each is written whole).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
