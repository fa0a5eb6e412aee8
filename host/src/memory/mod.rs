//! The host's memory manager: a device-memory budget shared by every plugin, leases that mark
//! a plugin busy while requests for it run or wait, swap counters, and idle expiry
//! (`keep_alive`).
//!
//! The manager ([`PluginManager`](crate::PluginManager)) asks a plugin for its
//! `estimate_memory` before activating it and, when the budget is short, swaps out (deactivates)
//! the least recently used *idle* plugins first ([`plan`]); a swapped-out plugin is activated
//! again by the next call that needs it. Activations and the swap-outs that make room for them
//! are serialised by one gate, so the sum of the resident plugins' reservations (the larger of
//! each one's estimate and its last report) never exceeds the budget.

mod keep_alive;
pub mod plan;
mod size;

use std::{
    collections::BTreeMap,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

pub use keep_alive::KeepAlive;
pub use size::{format_size, parse_size};

/// The memory settings of a host.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPolicy {
    /// Device bytes every active plugin together may hold; `None`: no budget.
    pub budget: Option<u64>,
    /// How long a plugin stays resident after its last request, unless a request or
    /// `plugin_keep_alive` says otherwise.
    pub keep_alive: KeepAlive,
    /// Per-plugin keep-alive, by plugin name.
    pub plugin_keep_alive: BTreeMap<String, KeepAlive>,
}

impl Default for MemoryPolicy {
    /// No budget; plugins stay loaded.
    fn default() -> Self {
        Self {
            budget: None,
            keep_alive: KeepAlive::Forever,
            plugin_keep_alive: BTreeMap::new(),
        }
    }
}

/// Swap counters of one plugin name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SwapStats {
    /// Activations of a swapped-out plugin by a request.
    pub swaps_in: u64,
    /// Deactivations to make room or after the keep-alive expired.
    pub swaps_out: u64,
    /// Total time the swap-ins took (activation included).
    pub swap_in_time: Duration,
}

/// Use of one plugin name.
#[derive(Debug, Default)]
struct Usage {
    /// Requests running or waiting.
    leases: usize,
    /// When the last request ended, or the plugin was activated.
    last_used: Option<Instant>,
    /// The keep-alive the latest request asked for (`None`: the configured one).
    keep_alive: Option<KeepAlive>,
    swaps: SwapStats,
}

/// The shared state of the memory manager.
#[derive(Debug, Default)]
pub(crate) struct Residency {
    policy: Mutex<MemoryPolicy>,
    /// Held while room is made for an activation and the activation runs.
    gate: Mutex<()>,
    usage: Mutex<BTreeMap<String, Usage>>,
    /// Signalled when a lease ends (a plugin may have become idle).
    released: Condvar,
}

impl Residency {
    pub fn policy(&self) -> MemoryPolicy {
        lock(&self.policy).clone()
    }

    pub fn set_policy(&self, policy: MemoryPolicy) {
        *lock(&self.policy) = policy;
    }

    pub fn budget(&self) -> Option<u64> {
        lock(&self.policy).budget
    }

    /// Serialises activations (and the swap-outs before them).
    pub fn gate(&self) -> MutexGuard<'_, ()> {
        lock(&self.gate)
    }

    /// Whether plugin `name` has no request running or waiting.
    pub fn is_idle(&self, name: &str) -> bool {
        lock(&self.usage).get(name).is_none_or(|u| u.leases == 0)
    }

    pub fn last_used(&self, name: &str) -> Option<Instant> {
        lock(&self.usage).get(name).and_then(|u| u.last_used)
    }

    /// Marks `name` used now (an activation).
    pub fn touch(&self, name: &str) {
        lock(&self.usage)
            .entry(name.to_owned())
            .or_default()
            .last_used = Some(Instant::now());
    }

    /// How long `name` stays resident once idle.
    pub fn keep_alive(&self, name: &str) -> KeepAlive {
        let asked = lock(&self.usage).get(name).and_then(|u| u.keep_alive);
        let policy = lock(&self.policy);
        asked
            .or_else(|| policy.plugin_keep_alive.get(name).copied())
            .unwrap_or(policy.keep_alive)
    }

    /// Waits until a lease ends or `timeout` passes.
    pub fn wait_for_release(&self, timeout: Duration) {
        let usage = lock(&self.usage);
        let _ = self.released.wait_timeout(usage, timeout);
    }

    pub fn swapped_in(&self, name: &str, took: Duration) {
        let mut usage = lock(&self.usage);
        let swaps = &mut usage.entry(name.to_owned()).or_default().swaps;
        swaps.swaps_in += 1;
        swaps.swap_in_time += took;
    }

    pub fn swapped_out(&self, name: &str) {
        lock(&self.usage)
            .entry(name.to_owned())
            .or_default()
            .swaps
            .swaps_out += 1;
    }

    pub fn swap_stats(&self) -> BTreeMap<String, SwapStats> {
        lock(&self.usage)
            .iter()
            .map(|(name, usage)| (name.clone(), usage.swaps.clone()))
            .collect()
    }
}

/// A request for a plugin name, running or waiting: while any lease on a name is held, the
/// memory manager never swaps that plugin out. Dropping it marks the plugin used now.
#[derive(Debug)]
pub struct Lease {
    residency: Arc<Residency>,
    name: String,
}

impl Lease {
    /// A lease on `name`. As in Ollama, the latest request decides how long the plugin stays
    /// resident: its `keep_alive`, or the configured one when it gives none.
    pub(crate) fn new(
        residency: Arc<Residency>,
        name: &str,
        keep_alive: Option<KeepAlive>,
    ) -> Self {
        {
            let mut usage = lock(&residency.usage);
            let usage = usage.entry(name.to_owned()).or_default();
            usage.leases += 1;
            usage.keep_alive = keep_alive;
        }
        Self {
            residency,
            name: name.to_owned(),
        }
    }

    /// The plugin name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut usage = lock(&self.residency.usage);
        if let Some(usage) = usage.get_mut(&self.name) {
            usage.leases = usage.leases.saturating_sub(1);
            usage.last_used = Some(Instant::now());
        }
        self.residency.released.notify_all();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_mark_a_plugin_busy_and_the_latest_keep_alive_decides() {
        let residency = Arc::new(Residency::default());
        assert!(residency.is_idle("llama"));
        assert_eq!(residency.keep_alive("llama"), KeepAlive::Forever);
        let zero = Some(KeepAlive::For(Duration::ZERO));
        let first = Lease::new(residency.clone(), "llama", zero);
        assert_eq!(
            residency.keep_alive("llama"),
            KeepAlive::For(Duration::ZERO)
        );
        let second = Lease::new(residency.clone(), "llama", None);
        assert_eq!(residency.keep_alive("llama"), KeepAlive::Forever);
        assert!(!residency.is_idle("llama"));
        assert!(residency.is_idle("bert"));
        drop(first);
        assert!(!residency.is_idle("llama"));
        assert!(residency.last_used("llama").is_some());
        drop(second);
        assert!(residency.is_idle("llama"));
    }

    #[test]
    fn per_plugin_keep_alive_overrides_the_default() {
        let residency = Residency::default();
        let mut policy = MemoryPolicy {
            keep_alive: KeepAlive::For(Duration::from_secs(300)),
            ..MemoryPolicy::default()
        };
        policy
            .plugin_keep_alive
            .insert("bert".into(), KeepAlive::Forever);
        residency.set_policy(policy);
        assert_eq!(residency.keep_alive("bert"), KeepAlive::Forever);
        assert_eq!(
            residency.keep_alive("llama"),
            KeepAlive::For(Duration::from_secs(300))
        );
    }
}
