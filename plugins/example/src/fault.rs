//! Fault injection, for the host's tests: configuration `fail_in` names a plugin call and
//! `fault` says how that call fails, so the tests can prove the host survives each way a plugin
//! can go wrong. [`TestFixtures`](crate::fixture::TestFixtures) triggers it. Authors copying
//! this template can delete this module.

use pio_plugin_kit::{
    api::serde_json::{Map, Value},
    PluginError, PluginResult,
};

/// How an injected fault fails its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Panics (the glue turns it into an error).
    Panic,
    /// Returns an `internal` error.
    Error,
    /// Returns an `out_of_memory` error.
    OutOfMemory,
    /// Never returns.
    Hang,
    /// Reads an unmapped address: SIGSEGV.
    Segfault,
    /// `std::process::abort`: SIGABRT.
    Abort,
    /// `std::process::exit(3)`.
    Exit,
    /// Recurses until the stack overflows.
    StackOverflow,
    /// Allocates and fills 30 GiB: the allocation fails (or the OOM killer ends the process).
    Allocation,
}

impl Fault {
    fn parse(name: &str) -> PluginResult<Self> {
        Ok(match name {
            "panic" => Self::Panic,
            "error" => Self::Error,
            "out_of_memory" => Self::OutOfMemory,
            "hang" => Self::Hang,
            "segfault" => Self::Segfault,
            "abort" => Self::Abort,
            "exit" => Self::Exit,
            "stack_overflow" => Self::StackOverflow,
            "allocation" => Self::Allocation,
            other => {
                return Err(PluginError::invalid_input(format!(
                    "configuration 'fault' must be one of panic, error, out_of_memory, hang, segfault, abort, \
                     exit, stack_overflow, allocation; got '{other}'"
                )))
            }
        })
    }
}

/// The configured fault: which call fails and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultPlan {
    call: String,
    fault: Fault,
}

impl FaultPlan {
    /// Takes `fail_in` (a call name) and `fault` (default `panic`) out of the configuration.
    pub fn take(object: &mut Map<String, Value>) -> PluginResult<Option<Self>> {
        let fault = object.remove("fault");
        let Some(call) = object.remove("fail_in") else {
            return Ok(None);
        };
        let call = call.as_str().ok_or_else(|| {
            PluginError::invalid_input("configuration 'fail_in' must be a call name")
        })?;
        let fault = match fault {
            None => Fault::Panic,
            Some(Value::String(name)) => Fault::parse(&name)?,
            Some(other) => {
                return Err(PluginError::invalid_input(format!(
                    "configuration 'fault' must be a string, got {other}"
                )))
            }
        };
        Ok(Some(Self {
            call: call.to_owned(),
            fault,
        }))
    }

    /// Fails as planned if `call` is the planned call.
    pub fn trigger(&self, call: &str) -> PluginResult<()> {
        if self.call != call {
            return Ok(());
        }
        match self.fault {
            Fault::Panic => panic!("fault injected in {call}"),
            Fault::Error => Err(PluginError::internal(format!("fault injected in {call}"))),
            Fault::OutOfMemory => Err(PluginError::out_of_memory(format!(
                "fault injected in {call}"
            ))),
            Fault::Hang => loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            },
            Fault::Segfault => {
                // SAFETY: none — reading the never-mapped lowest page (a dangling pointer is
                // address 8) is meant to crash the process.
                let value = unsafe { std::ptr::read_volatile(std::ptr::dangling::<u64>()) };
                Err(PluginError::internal(format!(
                    "read {value} from address 8"
                )))
            }
            Fault::Abort => std::process::abort(),
            Fault::Exit => std::process::exit(3),
            Fault::StackOverflow => Err(PluginError::internal(format!(
                "recursion returned {}",
                recurse(u64::MAX)
            ))),
            Fault::Allocation => {
                let filled = vec![1u8; 30 << 30];
                Err(PluginError::internal(format!(
                    "allocated {} bytes",
                    std::hint::black_box(filled).len()
                )))
            }
        }
    }
}

/// Recursion the optimizer cannot remove: each frame keeps a page of stack alive.
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 512]);
    if depth == 0 {
        return frame[0];
    }
    frame[1].wrapping_add(recurse(depth - 1))
}
