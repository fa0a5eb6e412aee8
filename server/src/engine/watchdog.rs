//! The engine's watchdog: finds schedulers stuck in a plugin call and gets their plugin served
//! again.
//!
//! A scheduler marks every job that calls into its plugin, and each streamed token as progress
//! ([`LaneState::working`]). A call silent for the stall timeout (the same setting that makes a
//! worker process count as stalled) is stuck — a plugin in an endless loop or a deadlock:
//!
//! - in a worker process, the worker's own stall timeout kills it and the scheduler goes on by
//!   itself, so the watchdog leaves it alone;
//! - in this process, the thread cannot be stopped. The manager abandons the instance
//!   ([`PluginManager::replace_stuck`]: a fresh instance of the same folder serves the name)
//!   and the watchdog starts a new scheduler on the same queue; the old one, should its call
//!   ever return, fails its open sequences and exits.
//!
//! Requests caught in the stuck call time out as usual; the ones queued behind it are served by
//! the new scheduler.

use std::{sync::Arc, time::Duration};

use pio_host::{PluginManager, Stuck};

use super::{Engine, LaneState};

impl Engine {
    /// Starts the watchdog thread of `engine`; it ends when the engine is dropped.
    pub fn start_watchdog(engine: &Arc<Self>) -> std::io::Result<()> {
        // Often enough that a stuck call is found within a quarter of the stall timeout.
        let period =
            (engine.stall_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let engine = Arc::downgrade(engine);
        std::thread::Builder::new()
            .name("pio-watchdog".to_owned())
            .spawn(move || loop {
                std::thread::sleep(period);
                match engine.upgrade() {
                    Some(engine) => engine.recover_stuck_schedulers(),
                    None => break,
                }
            })
            .map(drop)
    }

    /// One look at every scheduler; each stuck one is dealt with.
    fn recover_stuck_schedulers(&self) {
        let stuck: Vec<(String, Arc<LaneState>)> = self
            .lock_lanes()
            .iter()
            .filter(|(_, lane)| lane.state.silent_for() >= self.stall_timeout)
            .map(|(name, lane)| (name.clone(), lane.state.clone()))
            .collect();
        for (name, state) in stuck {
            if restarts_scheduler(&self.manager, &name, self.stall_timeout) {
                self.metrics.stuck_call(&name);
                self.replace_scheduler(&name, &state);
            }
        }
    }

    /// Starts a new scheduler on the queue of plugin `name` in place of the stuck one whose
    /// shared state is `stuck` (unless the lane has changed meanwhile).
    fn replace_scheduler(&self, name: &str, stuck: &Arc<LaneState>) {
        let mut lanes = self.lock_lanes();
        let Some(lane) = lanes
            .get_mut(name)
            .filter(|lane| Arc::ptr_eq(&lane.state, stuck))
        else {
            return;
        };
        match self.spawn_scheduler(name, &lane.receiver) {
            Ok(state) => {
                stuck
                    .abandoned
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                lane.state = state;
                tracing::warn!(plugin = %name, "a new scheduler serves the queue of the stuck one");
            }
            Err(e) => tracing::error!(plugin = %name, "cannot replace the stuck scheduler: {e}"),
        }
    }
}

/// Has the manager deal with the stuck instance of `name`; answers whether the scheduler must
/// be replaced (always, unless the plugin runs in a worker, whose stall timeout frees it).
fn restarts_scheduler(manager: &PluginManager, name: &str, silent: Duration) -> bool {
    let silent = silent.as_secs();
    match manager.replace_stuck(name) {
        Ok(Stuck::InWorker) => false,
        Ok(Stuck::Replaced(id)) => {
            tracing::warn!(plugin = %name, "a call was silent for {silent} s: {id} now serves in place of the stuck instance");
            true
        }
        Ok(Stuck::NotServing) => {
            tracing::warn!(plugin = %name, "a call was silent for {silent} s on an instance that no longer serves");
            true
        }
        Err(e) => {
            // Queued requests then get the manager's answer (say, the plugin is gone) rather
            // than wait behind the stuck call.
            tracing::error!(plugin = %name, "a call was silent for {silent} s and no new instance could be started: {e}");
            true
        }
    }
}
