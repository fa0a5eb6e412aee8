//! Out-of-process plugins: each plugin instance may run in a worker process of its own, so a
//! plugin that crashes, aborts, runs out of memory or hangs takes down only its worker and the
//! requests running on it, never the host or another plugin.
//!
//! - [`protocol`]: the versioned binary messages between host and worker.
//! - [`worker`]: the worker's side, run by `pio worker` (the same binary as the host): the same
//!   manifest checks and loader as in process, one instance, one call at a time.
//! - [`client`]: the host's side, [`WorkerInstance`]: starts the worker with its OS resource
//!   limits, relays calls and streamed tokens, names a crash (`killed by signal 11 (SIGSEGV)`),
//!   kills a worker that stops answering, and restarts a crashed one with backoff until it
//!   crashes too often.

pub mod client;
mod config;
pub mod protocol;
pub mod worker;

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

pub use client::{WorkerError, WorkerInstance};
pub use config::{IsolationConfig, IsolationLayer};

/// Where a plugin's code runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// In the host process: the fastest calls, but a crash of the plugin is a crash of the host.
    #[default]
    InProcess,
    /// In a worker process of its own.
    Process,
}

impl Isolation {
    /// The configuration spelling: `in-process` or `process`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProcess => "in-process",
            Self::Process => "process",
        }
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "in-process" => Ok(Self::InProcess),
            "process" => Ok(Self::Process),
            other => Err(format!(
                "isolation must be 'in-process' or 'process', got '{other}'"
            )),
        }
    }
}

/// How worker processes are started, limited and supervised.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSettings {
    /// Address-space limit of each worker (`RLIMIT_AS`), enforced by the kernel: an allocation
    /// past it fails inside the worker.
    pub memory_limit_bytes: Option<u64>,
    /// CPU-time limit of each worker (`RLIMIT_CPU`), in seconds.
    pub cpu_limit_secs: Option<u64>,
    /// A call that sends nothing back (no token, no answer) for this long is taken for a hung
    /// plugin: its worker is killed and the call fails. The server applies the same limit to
    /// in-process plugins, whose stuck instance it replaces (see `server::engine::watchdog`).
    pub stall_timeout: Duration,
    /// Crashes within [`crash_window`](Self::crash_window) after which the plugin is marked
    /// failed instead of restarted.
    pub max_crashes: usize,
    /// The window over which crashes are counted.
    pub crash_window: Duration,
    /// The pause before the first restart; it doubles with every further crash in the window.
    pub restart_backoff: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            memory_limit_bytes: None,
            cpu_limit_secs: None,
            // A cold start on the software device compiles every shader (~10 s) and a long
            // prompt's prefill takes tens of seconds there: only a far longer silence is a hang.
            stall_timeout: Duration::from_secs(300),
            max_crashes: 3,
            crash_window: Duration::from_secs(60),
            restart_backoff: Duration::from_millis(250),
        }
    }
}

impl WorkerSettings {
    /// The `pio` executable to start workers from: `$PIO_WORKER_PROGRAM` if set, else this
    /// executable when it is `pio`, else a `pio` beside this executable or one directory up
    /// (where cargo puts it for the workspace's test binaries).
    pub fn locate_program() -> Option<PathBuf> {
        if let Some(program) = std::env::var_os("PIO_WORKER_PROGRAM") {
            return Some(PathBuf::from(program));
        }
        let current = std::env::current_exe().ok()?;
        let name = format!("pio{}", std::env::consts::EXE_SUFFIX);
        if current.file_name().is_some_and(|n| *n == *name) {
            return Some(current);
        }
        current
            .ancestors()
            .skip(1)
            .take(2)
            .map(|dir| dir.join(&name))
            .find(|candidate| candidate.is_file())
    }
}
