//! The host's side of a worker: [`WorkerInstance`] starts `pio worker`, relays calls to it and
//! supervises it.

use std::{
    collections::VecDeque,
    os::{
        fd::{AsFd, AsRawFd},
        unix::{net::UnixStream, process::CommandExt, process::ExitStatusExt},
    },
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use pio_plugin_api::{
    ActivateOptions, Health, HealthStatus, PluginError, PluginStats, StreamControl, TokenEvent,
};

use super::{
    protocol::{
        read_frame, write_frame, Call, FrameError, HostMessage, Outcome, WorkerMessage,
        PROTOCOL_VERSION,
    },
    WorkerSettings,
};

/// The descriptor number of the worker's end of the socket.
const WORKER_FD: i32 = 3;

/// Why a call to a worker failed without an answer from its plugin.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WorkerError {
    /// The worker process ended during the call (the plugin crashed, aborted, called `exit`,
    /// or was killed by the OS for a resource limit).
    #[error("crashed: {0}")]
    Crashed(String),
    /// The worker sent nothing for the stall timeout; it was killed.
    #[error("stopped answering for {0:?}: its worker process was killed")]
    Stalled(Duration),
    /// The plugin crashed too often; it is not restarted again.
    #[error("crashed {crashes} times within {window:?}, not restarted again; last: {last}")]
    GaveUp {
        /// Crashes within the window.
        crashes: usize,
        /// The window.
        window: Duration,
        /// The last crash.
        last: String,
    },
    /// The worker could not be started, or spoke out of protocol.
    #[error("worker process: {0}")]
    Worker(String),
}

/// A failed call: the plugin's own error, or the worker's.
#[derive(Debug, Clone)]
pub enum CallError {
    /// The plugin answered with an error.
    Plugin(PluginError),
    /// The worker failed to answer.
    Worker(WorkerError),
}

impl From<WorkerError> for CallError {
    fn from(error: WorkerError) -> Self {
        Self::Worker(error)
    }
}

/// What a worker needs to load its plugin; kept to restart it after a crash.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The plugin's name, for messages.
    pub plugin: String,
    /// The plugin folder.
    pub folder: PathBuf,
    /// The merged configuration passed to `initialize`, as JSON.
    pub config: String,
    /// Where the worker makes its shadow copies.
    pub shadow_root: PathBuf,
    /// The host version the manifest's `host` range is checked against.
    pub host_version: String,
    /// Limits and supervision.
    pub settings: WorkerSettings,
}

/// A running worker process and the host's end of its socket.
struct Process {
    child: Child,
    socket: UnixStream,
}

impl Process {
    /// Starts `pio worker` with the settings' limits and exchanges hellos.
    fn start(spec: &WorkerSpec) -> Result<Self, WorkerError> {
        let settings = &spec.settings;
        let program = WorkerSettings::locate_program().ok_or_else(|| {
            WorkerError::Worker(
                "cannot find the `pio` executable to run workers (set PIO_WORKER_PROGRAM)"
                    .to_owned(),
            )
        })?;
        let failed = |what: &str, e: std::io::Error| WorkerError::Worker(format!("{what}: {e}"));
        let (host_end, worker_end) =
            UnixStream::pair().map_err(|e| failed("cannot create a socket pair", e))?;
        // The worker's standard output goes to the host's standard error: a plugin that prints
        // must not mix into the host's output.
        let stdout = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| failed("cannot duplicate stderr", e))?;
        let mut command = Command::new(&program);
        command
            .args(["worker", "--fd", &WORKER_FD.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::inherit());
        let socket_fd = worker_end.as_raw_fd();
        let limits = Limits::from(settings);
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (dup2, fcntl, prctl, setrlimit).
        unsafe {
            command.pre_exec(move || limits.apply_in_child(socket_fd));
        }
        let child = command
            .spawn()
            .map_err(|e| failed(&format!("cannot start {}", program.display()), e))?;
        drop(worker_end);
        let mut process = Self {
            child,
            socket: host_end,
        };
        process.set_timeout(settings.stall_timeout)?;
        write_frame(
            &process.socket,
            &HostMessage::Hello {
                protocol: PROTOCOL_VERSION,
            },
        )
        .map_err(|e| process.failure(e, settings.stall_timeout))?;
        match read_frame(&process.socket) {
            Ok(WorkerMessage::Hello { protocol, .. }) if protocol == PROTOCOL_VERSION => {
                Ok(process)
            }
            Ok(other) => {
                process.kill();
                Err(WorkerError::Worker(format!(
                    "{} speaks another protocol (expected version {PROTOCOL_VERSION}): {other:?}",
                    program.display()
                )))
            }
            Err(e) => Err(process.failure(e, settings.stall_timeout)),
        }
    }

    fn set_timeout(&self, timeout: Duration) -> Result<(), WorkerError> {
        self.socket
            .set_read_timeout(Some(timeout))
            .map_err(|e| WorkerError::Worker(format!("socket: {e}")))
    }

    /// Sends `call` and waits for its outcome, relaying tokens to `on_token`.
    fn call(
        &mut self,
        call: Call,
        on_token: &mut dyn FnMut(&TokenEvent) -> StreamControl,
        stall_timeout: Duration,
    ) -> Result<Outcome, WorkerError> {
        write_frame(&self.socket, &HostMessage::Call(call))
            .map_err(|e| self.failure(e, stall_timeout))?;
        loop {
            match read_frame(&self.socket).map_err(|e| self.failure(e, stall_timeout))? {
                WorkerMessage::Outcome(outcome) => return Ok(outcome),
                WorkerMessage::Token(event) => {
                    let control = on_token(&event);
                    write_frame(&self.socket, &HostMessage::Control(control))
                        .map_err(|e| self.failure(e, stall_timeout))?;
                }
                WorkerMessage::Hello { .. } => {
                    self.kill();
                    return Err(WorkerError::Worker("unexpected hello".to_owned()));
                }
            }
        }
    }

    /// Turns a broken exchange into the reason: how the process ended, or that it hung.
    fn failure(&mut self, error: FrameError, stall_timeout: Duration) -> WorkerError {
        match error {
            FrameError::TimedOut => {
                self.kill();
                WorkerError::Stalled(stall_timeout)
            }
            FrameError::Closed | FrameError::Io(_) => {
                WorkerError::Crashed(describe_exit(self.wait_for_exit()))
            }
            FrameError::Malformed(reason) => {
                self.kill();
                WorkerError::Worker(format!("malformed message: {reason}"))
            }
        }
    }

    /// The exit status of a worker whose connection closed: it is ending or has ended.
    fn wait_for_exit(&mut self) -> Option<ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => {
                    self.kill();
                    return self.child.try_wait().ok().flatten();
                }
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Ends the worker: closing the socket makes it exit; one that does not is killed.
    fn stop(mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        if self.wait_for_exit().is_none() {
            self.kill();
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A plugin instance in a worker process.
///
/// A crash fails the call in flight with [`WorkerError::Crashed`]; the next call restarts the
/// worker (after a backoff that doubles with each recent crash), loads and initializes the
/// plugin again and re-activates it if it was active. After
/// [`max_crashes`](WorkerSettings::max_crashes) within the crash window every call answers
/// [`WorkerError::GaveUp`].
pub struct WorkerInstance {
    spec: WorkerSpec,
    process: Option<Process>,
    /// The options of the last successful `activate`, while active: a restart re-activates.
    activated: Option<ActivateOptions>,
    crashes: VecDeque<(Instant, String)>,
}

impl WorkerInstance {
    /// Starts a worker and loads the plugin in it; returns the instance and the library's
    /// metadata JSON.
    pub fn start(spec: WorkerSpec) -> Result<(Self, String), CallError> {
        let mut instance = Self {
            spec,
            process: None,
            activated: None,
            crashes: VecDeque::new(),
        };
        let metadata = instance.spawn_and_load()?;
        Ok((instance, metadata))
    }

    /// The worker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// Runs `call`, relaying streamed tokens to `on_token`.
    pub fn call(
        &mut self,
        call: Call,
        on_token: &mut dyn FnMut(&TokenEvent) -> StreamControl,
    ) -> Result<Outcome, CallError> {
        if self.process.is_none() {
            // A worker that is down is restarted only for work: tearing it down, closing a
            // sequence (it ended with the worker) or asking how it is needs no plugin.
            match &call {
                Call::Deactivate | Call::Cleanup => {
                    self.activated = None;
                    return Ok(Outcome::Done);
                }
                Call::CloseSequence(_) => return Ok(Outcome::Done),
                Call::Stats => return Ok(Outcome::Stats(PluginStats::default())),
                Call::Health => {
                    let last = self.crashes.back().map_or("", |(_, why)| why.as_str());
                    return Ok(Outcome::Health(Health::new(
                        HealthStatus::Unavailable,
                        format!("worker down ({last}); restarts at the next request"),
                    )));
                }
                _ => self.restart()?,
            }
        }
        let activating = match &call {
            Call::Activate(options) => Some(Some(options.clone())),
            Call::Deactivate => Some(None),
            _ => None,
        };
        let stall_timeout = self.spec.settings.stall_timeout;
        let process = self.process.as_mut().expect("started above");
        match process.call(call, on_token, stall_timeout) {
            Ok(Outcome::Failed(error)) => Err(CallError::Plugin(error)),
            Ok(outcome) => {
                if let Some(activated) = activating {
                    self.activated = activated;
                }
                Ok(outcome)
            }
            Err(error) => {
                self.process = None;
                self.record_crash(&error);
                Err(CallError::Worker(error))
            }
        }
    }

    /// Ends the worker (after `deactivate` and `cleanup`, or after a failure).
    pub fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process.stop();
        }
    }

    fn record_crash(&mut self, error: &WorkerError) {
        let now = Instant::now();
        self.crashes.push_back((now, error.to_string()));
        let window = self.spec.settings.crash_window;
        while self
            .crashes
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > window)
        {
            self.crashes.pop_front();
        }
        tracing::warn!(plugin = %self.spec.plugin, "worker {error}");
    }

    /// Restarts a crashed worker, unless it crashed too often.
    fn restart(&mut self) -> Result<(), CallError> {
        let settings = &self.spec.settings;
        let recent = self.crashes.len();
        if recent >= settings.max_crashes {
            let last = self.crashes.back().map(|(_, why)| why.clone());
            return Err(CallError::Worker(WorkerError::GaveUp {
                crashes: recent,
                window: settings.crash_window,
                last: last.unwrap_or_default(),
            }));
        }
        let doublings = u32::try_from(recent.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(5);
        std::thread::sleep(settings.restart_backoff * 2u32.pow(doublings));
        tracing::info!(plugin = %self.spec.plugin, crashes = recent, "restarting the worker");
        self.spawn_and_load()?;
        if let Some(options) = self.activated.clone() {
            self.call(Call::Activate(options), &mut |_| StreamControl::Continue)?;
        }
        Ok(())
    }

    fn spawn_and_load(&mut self) -> Result<String, CallError> {
        let process = Process::start(&self.spec).inspect_err(|e| self.record_crash(e))?;
        self.process = Some(process);
        let load = Call::Load {
            folder: self.spec.folder.to_string_lossy().into_owned(),
            config: self.spec.config.clone(),
            shadow_root: self.spec.shadow_root.to_string_lossy().into_owned(),
            host_version: self.spec.host_version.clone(),
        };
        match self.call(load, &mut |_| StreamControl::Continue)? {
            Outcome::Text(metadata) => Ok(metadata),
            other => {
                self.stop();
                Err(CallError::Worker(WorkerError::Worker(format!(
                    "unexpected answer to load: {other:?}"
                ))))
            }
        }
    }
}

impl Drop for WorkerInstance {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The OS limits of a worker, copied into the child before `exec`.
#[derive(Debug, Clone, Copy)]
struct Limits {
    memory_bytes: Option<u64>,
    cpu_secs: Option<u64>,
}

impl From<&WorkerSettings> for Limits {
    fn from(settings: &WorkerSettings) -> Self {
        Self {
            memory_bytes: settings.memory_limit_bytes,
            cpu_secs: settings.cpu_limit_secs,
        }
    }
}

impl Limits {
    /// Runs in the forked child: puts the socket on [`WORKER_FD`], asks for SIGKILL when the
    /// host dies, and sets the resource limits. Only async-signal-safe calls.
    fn apply_in_child(self, socket_fd: i32) -> std::io::Result<()> {
        let check = |result: libc::c_int| {
            if result == -1 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: plain system calls on descriptors and limits of this (child) process.
        unsafe {
            if socket_fd == WORKER_FD {
                // dup2 onto itself keeps close-on-exec set: clear it instead.
                check(libc::fcntl(WORKER_FD, libc::F_SETFD, 0))?;
            } else {
                check(libc::dup2(socket_fd, WORKER_FD))?;
            }
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
            if let Some(bytes) = self.memory_bytes {
                let limit = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                check(libc::setrlimit(libc::RLIMIT_AS, &limit))?;
            }
            if let Some(secs) = self.cpu_secs {
                // The soft limit sends SIGXCPU, the hard one a second later SIGKILL.
                let limit = libc::rlimit {
                    rlim_cur: secs,
                    rlim_max: secs + 1,
                };
                check(libc::setrlimit(libc::RLIMIT_CPU, &limit))?;
            }
        }
        Ok(())
    }
}

/// How a worker ended, as people read it: `killed by signal 11 (SIGSEGV)`, `exited with
/// status 3`.
fn describe_exit(status: Option<ExitStatus>) -> String {
    let Some(status) = status else {
        return "its worker process ended (status unknown)".to_owned();
    };
    if let Some(signal) = status.signal() {
        let name = signal_name(signal);
        let hint = match signal {
            libc::SIGKILL => " — killed by the OS (out of memory?) or by hand",
            libc::SIGXCPU => " — past its CPU-time limit",
            libc::SIGABRT => " — aborted (a failed allocation aborts too)",
            _ => "",
        };
        return format!("killed by signal {signal} ({name}){hint}");
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => format!("ended: {status}"),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGTERM => "SIGTERM",
        libc::SIGTRAP => "SIGTRAP",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_described_by_signal_and_status() {
        let signalled = ExitStatus::from_raw(libc::SIGSEGV);
        assert_eq!(
            describe_exit(Some(signalled)),
            "killed by signal 11 (SIGSEGV)"
        );
        let exited = ExitStatus::from_raw(3 << 8);
        assert_eq!(describe_exit(Some(exited)), "exited with status 3");
        assert!(describe_exit(Some(ExitStatus::from_raw(libc::SIGKILL))).contains("out of memory"));
    }
}
