//! [`Instance`]: a plugin instance as the manager calls it — in this process through the ABI,
//! or in a worker process through the protocol. Both answer the same typed calls, so nothing
//! above this module knows where a plugin runs.

use pio_plugin_api::{
    abi_stable::std_types::RVec, ActivateOptions, ChatRequest, CompressionReport,
    CompressionRequest, DecodeOptions, EmbedRequest, EmbedResponse, FnSink, GenerateRequest,
    GenerateResponse, Health, HealthStatus, MemoryFreed, MemoryReport, PluginError, PluginStats,
    PositionLogprobs, Prompt, SequenceOpened, SequenceRequest, SequenceStep, StreamControl,
    TokenEvent,
};

use crate::object::PluginObject;

use crate::isolation::{
    client::CallError,
    protocol::{Call, Outcome},
    WorkerError, WorkerInstance,
};

/// A plugin instance and where it runs.
pub(crate) enum Instance {
    /// In this process.
    InProcess(PluginObject),
    /// In a worker process.
    Worker(Box<WorkerInstance>),
}

/// The outcome of one call.
pub(crate) type CallResult<T> = Result<T, CallError>;

/// A token callback.
pub(crate) type OnToken<'a> = &'a mut dyn FnMut(&TokenEvent) -> StreamControl;

impl Instance {
    pub fn activate(&mut self, options: &ActivateOptions) -> CallResult<()> {
        match self {
            Self::InProcess(i) => local(i.activate(options).into_result()),
            Self::Worker(w) => done(w, Call::Activate(options.clone())),
        }
    }

    pub fn deactivate(&mut self) -> CallResult<()> {
        match self {
            Self::InProcess(i) => local(i.deactivate().into_result()),
            Self::Worker(w) => done(w, Call::Deactivate),
        }
    }

    pub fn cleanup(&mut self) -> CallResult<()> {
        match self {
            Self::InProcess(i) => local(i.cleanup().into_result()),
            Self::Worker(w) => {
                let result = done(w, Call::Cleanup);
                w.stop();
                result
            }
        }
    }

    pub fn infer(&mut self, request_json: &str) -> CallResult<String> {
        match self {
            Self::InProcess(i) => {
                local(i.infer(request_json.into()).into_result()).map(|text| text.into_string())
            }
            Self::Worker(w) => remote(w, Call::Infer(request_json.to_owned()), None, |o| match o {
                Outcome::Text(text) => Ok(text),
                other => Err(other),
            }),
        }
    }

    pub fn tokenize(&mut self, text: &str, add_special: bool) -> CallResult<Vec<u32>> {
        match self {
            Self::InProcess(i) => {
                local(i.tokenize(text.into(), add_special).into_result()).map(|t| t.into_vec())
            }
            Self::Worker(w) => {
                let call = Call::Tokenize {
                    text: text.to_owned(),
                    add_special,
                };
                remote(w, call, None, |o| match o {
                    Outcome::Tokens(tokens) => Ok(tokens),
                    other => Err(other),
                })
            }
        }
    }

    pub fn detokenize(&mut self, tokens: &[u32]) -> CallResult<String> {
        match self {
            Self::InProcess(i) => {
                local(i.detokenize(tokens.to_vec().into()).into_result()).map(|t| t.into_string())
            }
            Self::Worker(w) => remote(w, Call::Detokenize(tokens.to_vec()), None, |o| match o {
                Outcome::Text(text) => Ok(text),
                other => Err(other),
            }),
        }
    }

    pub fn generate(
        &mut self,
        request: &GenerateRequest,
        on_token: OnToken<'_>,
    ) -> CallResult<GenerateResponse> {
        match self {
            Self::InProcess(i) => {
                let mut sink = FnSink(on_token);
                local(i.generate(request, sink.as_sink()).into_result())
            }
            Self::Worker(w) => remote(
                w,
                Call::Generate(request.clone()),
                Some(on_token),
                generated,
            ),
        }
    }

    pub fn chat(
        &mut self,
        request: &ChatRequest,
        on_token: OnToken<'_>,
    ) -> CallResult<GenerateResponse> {
        match self {
            Self::InProcess(i) => {
                let mut sink = FnSink(on_token);
                local(i.chat(request, sink.as_sink()).into_result())
            }
            Self::Worker(w) => remote(w, Call::Chat(request.clone()), Some(on_token), generated),
        }
    }

    pub fn embed(&mut self, request: &EmbedRequest) -> CallResult<EmbedResponse> {
        match self {
            Self::InProcess(i) => local(i.embed(request).into_result()),
            Self::Worker(w) => remote(w, Call::Embed(request.clone()), None, |o| match o {
                Outcome::Embedded(response) => Ok(response),
                other => Err(other),
            }),
        }
    }

    /// Memory use and counters; a worker that cannot answer reports nothing.
    pub fn stats(&mut self) -> PluginStats {
        match self {
            Self::InProcess(i) => i.stats(),
            Self::Worker(w) => remote(w, Call::Stats, None, |o| match o {
                Outcome::Stats(stats) => Ok(stats),
                other => Err(other),
            })
            .unwrap_or_default(),
        }
    }

    /// Readiness; a worker that cannot answer is unavailable, with the reason.
    pub fn health(&mut self) -> Health {
        match self {
            Self::InProcess(i) => i.health(),
            Self::Worker(w) => remote(w, Call::Health, None, |o| match o {
                Outcome::Health(health) => Ok(health),
                other => Err(other),
            })
            .unwrap_or_else(|e| Health::new(HealthStatus::Unavailable, describe(&e))),
        }
    }

    pub fn open_sequence(&mut self, request: &SequenceRequest) -> CallResult<SequenceOpened> {
        match self {
            Self::InProcess(i) => local(i.open_sequence(request).into_result()),
            Self::Worker(w) => remote(w, Call::OpenSequence(request.clone()), None, |o| match o {
                Outcome::Opened(opened) => Ok(opened),
                other => Err(other),
            }),
        }
    }

    pub fn step_sequences(&mut self, ids: &[u64]) -> CallResult<Vec<SequenceStep>> {
        match self {
            Self::InProcess(i) => {
                local(i.step_sequences(ids.into()).into_result()).map(|s| s.into_vec())
            }
            Self::Worker(w) => remote(w, Call::StepSequences(ids.to_vec()), None, |o| match o {
                Outcome::Steps(steps) => Ok(steps),
                other => Err(other),
            }),
        }
    }

    /// Opens a sequence with `options`; plain options take the original call, which every
    /// plugin has.
    pub fn open_sequence_with(
        &mut self,
        request: &SequenceRequest,
        options: &DecodeOptions,
    ) -> CallResult<SequenceOpened> {
        if options.is_plain() {
            return self.open_sequence(request);
        }
        match self {
            Self::InProcess(i) => local(i.open_sequence_with(request, options).into_result()),
            Self::Worker(w) => remote(
                w,
                Call::OpenSequenceWith(request.clone(), options.clone()),
                None,
                |o| match o {
                    Outcome::Opened(opened) => Ok(opened),
                    other => Err(other),
                },
            ),
        }
    }

    pub fn sequence_logprobs(&mut self, id: u64) -> CallResult<Vec<PositionLogprobs>> {
        match self {
            Self::InProcess(i) => local(i.sequence_logprobs(id).into_result()).map(RVec::into_vec),
            Self::Worker(w) => remote(w, Call::SequenceLogprobs(id), None, logprobs),
        }
    }

    pub fn score(&mut self, prompt: &Prompt, top: u32) -> CallResult<Vec<PositionLogprobs>> {
        match self {
            Self::InProcess(i) => local(i.score(prompt, top).into_result()).map(RVec::into_vec),
            Self::Worker(w) => remote(
                w,
                Call::Score {
                    prompt: prompt.clone(),
                    top,
                },
                None,
                logprobs,
            ),
        }
    }

    pub fn memory_report(&mut self) -> CallResult<MemoryReport> {
        match self {
            Self::InProcess(i) => local(i.memory_report().into_result()),
            Self::Worker(w) => remote(w, Call::MemoryReport, None, memory),
        }
    }

    pub fn estimate_memory(&mut self, options: &ActivateOptions) -> CallResult<MemoryReport> {
        match self {
            Self::InProcess(i) => local(i.estimate_memory(options).into_result()),
            Self::Worker(w) => remote(w, Call::EstimateMemory(options.clone()), None, memory),
        }
    }

    pub fn force_memory_cleanup(&mut self) -> CallResult<MemoryFreed> {
        match self {
            Self::InProcess(i) => local(i.force_memory_cleanup().into_result()),
            Self::Worker(w) => remote(w, Call::ForceMemoryCleanup, None, |o| match o {
                Outcome::Freed(freed) => Ok(freed),
                other => Err(other),
            }),
        }
    }

    pub fn compress(&mut self, request: &CompressionRequest) -> CallResult<CompressionReport> {
        match self {
            Self::InProcess(i) => local(i.compress(request).into_result()),
            Self::Worker(w) => remote(w, Call::Compress(request.clone()), None, |o| match o {
                Outcome::Compressed(report) => Ok(report),
                other => Err(other),
            }),
        }
    }

    pub fn compression_stats(&mut self) -> CallResult<Option<CompressionReport>> {
        match self {
            Self::InProcess(i) => {
                local(i.compression_stats().into_result()).map(|stats| stats.into_option())
            }
            Self::Worker(w) => remote(w, Call::CompressionStats, None, |o| match o {
                Outcome::CompressionStats(stats) => Ok(stats),
                other => Err(other),
            }),
        }
    }

    pub fn close_sequence(&mut self, id: u64) -> CallResult<()> {
        match self {
            Self::InProcess(i) => local(i.close_sequence(id).into_result()),
            Self::Worker(w) => done(w, Call::CloseSequence(id)),
        }
    }
}

fn local<T>(result: Result<T, PluginError>) -> CallResult<T> {
    result.map_err(CallError::Plugin)
}

/// Runs `call` on the worker and picks the expected answer out of its outcome.
fn remote<T>(
    worker: &mut WorkerInstance,
    call: Call,
    on_token: Option<OnToken<'_>>,
    pick: impl FnOnce(Outcome) -> Result<T, Outcome>,
) -> CallResult<T> {
    // A call that streams nothing has no use for a token: stop any.
    let mut no_tokens = |_: &TokenEvent| StreamControl::Stop;
    let outcome = worker.call(call, on_token.unwrap_or(&mut no_tokens))?;
    pick(outcome).map_err(|other| {
        let described = format!("{other:?}");
        CallError::Worker(WorkerError::Worker(format!(
            "unexpected answer: {described:.200}"
        )))
    })
}

fn logprobs(outcome: Outcome) -> Result<Vec<PositionLogprobs>, Outcome> {
    match outcome {
        Outcome::Logprobs(logprobs) => Ok(logprobs),
        other => Err(other),
    }
}

fn memory(outcome: Outcome) -> Result<MemoryReport, Outcome> {
    match outcome {
        Outcome::Memory(report) => Ok(report),
        other => Err(other),
    }
}

fn done(worker: &mut WorkerInstance, call: Call) -> CallResult<()> {
    remote(worker, call, None, |o| match o {
        Outcome::Done => Ok(()),
        other => Err(other),
    })
}

fn generated(outcome: Outcome) -> Result<GenerateResponse, Outcome> {
    match outcome {
        Outcome::Generated(response) => Ok(response),
        other => Err(other),
    }
}

fn describe(error: &CallError) -> String {
    match error {
        CallError::Plugin(error) => error.to_string(),
        CallError::Worker(error) => error.to_string(),
    }
}
