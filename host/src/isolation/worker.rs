//! The worker process (`pio worker`): one plugin instance behind the protocol.
//!
//! The worker reads calls from its socket and answers each before reading the next, so calls
//! into the instance never overlap, as in process. It runs the host's own checks before any
//! plugin code: the manifest is read and its versions checked again, and the library is loaded
//! from a shadow copy whose bytes must have the manifest's digest (model digests were checked by
//! the host when it registered the folder).

use std::{os::unix::net::UnixStream, path::Path};

use pio_plugin_api::{ErrorKind, FnSink, PluginError, StreamControl};
use semver::Version;

use crate::{
    error::HostError,
    loader::{new_instance, open_plugin, LoadedLibrary},
    manifest::Manifest,
    object::PluginObject,
    shadow::ShadowDir,
};

use super::protocol::{
    read_frame, write_frame, Call, FrameError, HostMessage, Outcome, WorkerMessage,
    PROTOCOL_VERSION,
};

/// Serves the host on `socket` until it closes the connection. Returns an error only when the
/// connection itself fails; every plugin failure is sent to the host as a value.
pub fn serve(socket: UnixStream) -> Result<(), FrameError> {
    let mut worker = Worker {
        socket,
        library: None,
        instance: None,
        _shadow: None,
    };
    match read_frame(&worker.socket)? {
        HostMessage::Hello { protocol } if protocol == PROTOCOL_VERSION => {}
        other => {
            return Err(FrameError::Malformed(format!(
                "expected hello with protocol {PROTOCOL_VERSION}, got {other:?}"
            )))
        }
    }
    write_frame(
        &worker.socket,
        &WorkerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            pid: std::process::id(),
        },
    )?;
    loop {
        let call = match read_frame(&worker.socket) {
            Ok(HostMessage::Call(call)) => call,
            Ok(other) => {
                return Err(FrameError::Malformed(format!(
                    "expected a call, got {other:?}"
                )))
            }
            Err(FrameError::Closed) => return Ok(()),
            Err(e) => return Err(e),
        };
        let outcome = worker.answer(call)?;
        write_frame(&worker.socket, &WorkerMessage::Outcome(outcome))?;
    }
}

struct Worker {
    socket: UnixStream,
    /// Kept for the life of the process: the instance's code lives in it.
    library: Option<LoadedLibrary>,
    instance: Option<PluginObject>,
    /// This worker's shadow directory (its copies are removed by the next process that finds
    /// this worker gone).
    _shadow: Option<ShadowDir>,
}

impl Worker {
    /// Runs one call. Only a broken connection to the host is an error.
    fn answer(&mut self, call: Call) -> Result<Outcome, FrameError> {
        match call {
            Call::Load {
                folder,
                config,
                shadow_root,
                host_version,
            } if self.instance.is_none() => Ok(
                match self.load(
                    Path::new(&folder),
                    &config,
                    Path::new(&shadow_root),
                    &host_version,
                ) {
                    Ok(metadata_json) => Outcome::Text(metadata_json),
                    Err(error) => Outcome::Failed(error),
                },
            ),
            call => self.call_instance(call),
        }
    }

    fn load(
        &mut self,
        folder: &Path,
        config: &str,
        shadow_root: &Path,
        host_version: &str,
    ) -> Result<String, PluginError> {
        let host_version = Version::parse(host_version)
            .map_err(|e| PluginError::internal(format!("host version: {e}")))?;
        let manifest = Manifest::read(folder).map_err(refusal)?;
        manifest
            .check_compatibility(&pio_plugin_api::api_version(), &host_version)
            .map_err(refusal)?;
        let shadow = ShadowDir::create(shadow_root).map_err(refusal)?;
        let library = open_plugin(&manifest, folder, &shadow).map_err(refusal)?;
        let metadata_json = serde_json::to_string(&library.metadata)
            .map_err(|e| PluginError::internal(format!("metadata: {e}")))?;
        self.instance = Some(new_instance(&manifest.name, &library, config).map_err(refusal)?);
        self.library = Some(library);
        self._shadow = Some(shadow);
        Ok(metadata_json)
    }

    fn call_instance(&mut self, call: Call) -> Result<Outcome, FrameError> {
        let Some(instance) = self.instance.as_mut() else {
            return Ok(Outcome::Failed(PluginError::internal(
                "the worker has no plugin loaded",
            )));
        };
        let socket = &self.socket;
        // Relays each token to the host and returns its answer; a host that is gone stops the
        // generation.
        let mut relay_failure = None;
        let mut relay = |event: &pio_plugin_api::TokenEvent| {
            let answer = write_frame(socket, &WorkerMessage::Token(event.clone()))
                .and_then(|()| read_frame::<HostMessage>(socket));
            match answer {
                Ok(HostMessage::Control(control)) => control,
                Ok(other) => {
                    relay_failure = Some(FrameError::Malformed(format!(
                        "expected a stream control, got {other:?}"
                    )));
                    StreamControl::Stop
                }
                Err(e) => {
                    relay_failure = Some(e);
                    StreamControl::Stop
                }
            }
        };
        let outcome = match call {
            Call::Load { .. } => {
                Outcome::Failed(PluginError::internal("this worker already holds a plugin"))
            }
            Call::Activate(options) => done(instance.activate(&options).into_result()),
            Call::Deactivate => done(instance.deactivate().into_result()),
            Call::Cleanup => done(instance.cleanup().into_result()),
            Call::Infer(json) => {
                outcome(instance.infer(json.as_str().into()).into_result(), |text| {
                    Outcome::Text(text.into_string())
                })
            }
            Call::Tokenize { text, add_special } => outcome(
                instance
                    .tokenize(text.as_str().into(), add_special)
                    .into_result(),
                |tokens| Outcome::Tokens(tokens.into_vec()),
            ),
            Call::Detokenize(tokens) => {
                outcome(instance.detokenize(tokens.into()).into_result(), |text| {
                    Outcome::Text(text.into_string())
                })
            }
            Call::Generate(request) => {
                let mut sink = FnSink(&mut relay);
                outcome(
                    instance.generate(&request, sink.as_sink()).into_result(),
                    Outcome::Generated,
                )
            }
            Call::Chat(request) => {
                let mut sink = FnSink(&mut relay);
                outcome(
                    instance.chat(&request, sink.as_sink()).into_result(),
                    Outcome::Generated,
                )
            }
            Call::Embed(request) => {
                outcome(instance.embed(&request).into_result(), Outcome::Embedded)
            }
            Call::Stats => Outcome::Stats(instance.stats()),
            Call::Health => Outcome::Health(instance.health()),
            Call::OpenSequence(request) => outcome(
                instance.open_sequence(&request).into_result(),
                Outcome::Opened,
            ),
            Call::StepSequences(ids) => outcome(
                instance.step_sequences(ids.as_slice().into()).into_result(),
                |steps| Outcome::Steps(steps.into_vec()),
            ),
            Call::CloseSequence(id) => done(instance.close_sequence(id).into_result()),
            Call::OpenSequenceWith(request, options) => outcome(
                instance
                    .open_sequence_with(&request, &options)
                    .into_result(),
                Outcome::Opened,
            ),
            Call::SequenceLogprobs(id) => {
                outcome(instance.sequence_logprobs(id).into_result(), |logprobs| {
                    Outcome::Logprobs(logprobs.into_vec())
                })
            }
            Call::Score { prompt, top } => {
                outcome(instance.score(&prompt, top).into_result(), |logprobs| {
                    Outcome::Logprobs(logprobs.into_vec())
                })
            }
            Call::MemoryReport => outcome(instance.memory_report().into_result(), Outcome::Memory),
            Call::EstimateMemory(options) => outcome(
                instance.estimate_memory(&options).into_result(),
                Outcome::Memory,
            ),
            Call::ForceMemoryCleanup => outcome(
                instance.force_memory_cleanup().into_result(),
                Outcome::Freed,
            ),
            Call::Compress(request) => outcome(
                instance.compress(&request).into_result(),
                Outcome::Compressed,
            ),
            Call::CompressionStats => {
                outcome(instance.compression_stats().into_result(), |stats| {
                    Outcome::CompressionStats(stats.into_option())
                })
            }
        };
        match relay_failure {
            Some(e) => Err(e),
            None => Ok(outcome),
        }
    }
}

fn outcome<T>(result: Result<T, PluginError>, wrap: impl FnOnce(T) -> Outcome) -> Outcome {
    result.map_or_else(Outcome::Failed, wrap)
}

fn done(result: Result<(), PluginError>) -> Outcome {
    outcome(result, |()| Outcome::Done)
}

/// A refusal to load (manifest, versions, digest, library, or the plugin's own `new` and
/// `initialize`) as sent to the host, with the whole message naming plugin and file.
fn refusal(error: HostError) -> PluginError {
    let kind = match &error {
        HostError::Plugin { error, .. } => error.kind,
        _ => ErrorKind::Incompatible,
    };
    PluginError::new(kind, error.to_string())
}
