//! The manager's side of the memory manager (`crate::memory`): the budget check and swap-outs
//! before every activation, swap-in on demand, idle expiry, and the memory and compression
//! calls.

use std::{
    sync::{Arc, MutexGuard},
    time::{Duration, Instant},
};

use pio_plugin_api as abi;

use super::{entry::Cell, instance::Instance, read, Entry, PluginManager};
use crate::{
    error::{HostError, HostResult},
    memory::{
        plan::{plan, Plan, Resident},
        KeepAlive, Lease, MemoryPolicy, SwapStats,
    },
    state::PluginState,
    types::{
        ActivateOptions, CompressionReport, CompressionRequest, ErrorKind, MemoryFreed,
        MemoryReport,
    },
};

/// How often a plugin waiting for room re-checks when no lease ended meanwhile.
const RECHECK: Duration = Duration::from_millis(100);

impl PluginManager {
    /// Sets the memory budget and the keep-alive rules; applies to later activations.
    pub fn set_memory_policy(&self, policy: MemoryPolicy) {
        self.residency.set_policy(policy);
    }

    /// The memory budget and keep-alive rules.
    pub fn memory_policy(&self) -> MemoryPolicy {
        self.residency.policy()
    }

    /// Marks plugin `name` busy while the lease lives (a request running or waiting for it):
    /// the memory manager never swaps out a plugin with a lease. `keep_alive`, if given,
    /// becomes how long the plugin stays resident once idle (Ollama's `keep_alive`).
    pub fn lease(&self, name: &str, keep_alive: Option<KeepAlive>) -> Lease {
        Lease::new(self.residency.clone(), name, keep_alive)
    }

    /// Swap counters, by plugin name.
    pub fn swap_stats(&self) -> std::collections::BTreeMap<String, SwapStats> {
        self.residency.swap_stats()
    }

    /// The device bytes the active plugins are counted for together: each one's larger of
    /// estimate and last report. Under a budget, never more than it.
    pub fn resident_bytes(&self) -> u64 {
        read(&self.entries)
            .values()
            .map(|e| e.memory().reserved())
            .sum()
    }

    /// The plugin's memory now, by category (also kept for listings and the budget).
    pub fn memory_report(&self, reference: &str) -> HostResult<MemoryReport> {
        let entry = self.resolve_entry(reference)?;
        let mut cell = entry.lock();
        let report: MemoryReport = entry
            .call(&mut cell, "memory_report", Instance::memory_report)?
            .into();
        if cell.state == PluginState::Active {
            entry.update_memory(|m| m.report = Some(report.clone()));
        }
        Ok(report)
    }

    /// What activating the plugin with `options` would allocate, by category, computed
    /// without allocating.
    pub fn estimate_memory(
        &self,
        reference: &str,
        options: &ActivateOptions,
    ) -> HostResult<MemoryReport> {
        let entry = self.resolve_entry(reference)?;
        let mut cell = entry.lock();
        let options = abi::ActivateOptions::from(options);
        entry
            .call(&mut cell, "estimate_memory", |i| {
                i.estimate_memory(&options)
            })
            .map(Into::into)
    }

    /// Has the plugin drop what it can rebuild; reports what was freed.
    pub fn force_memory_cleanup(&self, reference: &str) -> HostResult<MemoryFreed> {
        let entry = self.resolve_entry(reference)?;
        let mut cell = entry.lock();
        let freed = entry.call(
            &mut cell,
            "force_memory_cleanup",
            Instance::force_memory_cleanup,
        )?;
        self.refresh_memory(&entry, &mut cell);
        Ok(freed.into())
    }

    /// Stores the plugin's tensors of `request.scope` in `request.format`.
    pub fn compress(
        &self,
        reference: &str,
        request: &CompressionRequest,
    ) -> HostResult<CompressionReport> {
        let entry = self.resolve_entry(reference)?;
        let mut cell = entry.lock();
        let request = abi::CompressionRequest::from(request);
        let report = entry.call(&mut cell, "compress", |i| i.compress(&request))?;
        self.refresh_memory(&entry, &mut cell);
        Ok(report.into())
    }

    /// How the plugin's tensors are compressed (`None`: as loaded).
    pub fn compression_stats(&self, reference: &str) -> HostResult<Option<CompressionReport>> {
        let entry = self.resolve_entry(reference)?;
        let mut cell = entry.lock();
        entry
            .call(&mut cell, "compression_stats", Instance::compression_stats)
            .map(|stats| stats.map(Into::into))
    }

    /// Swaps out every idle plugin whose keep-alive has run out since its last request; returns
    /// their ids. The server calls this periodically.
    pub fn expire_idle(&self) -> Vec<String> {
        let now = Instant::now();
        let candidates: Vec<Arc<Entry>> = read(&self.entries)
            .values()
            .filter(|e| !e.is_retiring() && e.summary().state == PluginState::Active)
            .cloned()
            .collect();
        let mut expired = Vec::new();
        for entry in candidates {
            let KeepAlive::For(keep_alive) = self.residency.keep_alive(entry.name()) else {
                continue;
            };
            let last_used = self.residency.last_used(entry.name()).unwrap_or(now);
            if now.duration_since(last_used) < keep_alive || !self.is_idle(&entry) {
                continue;
            }
            // Activations happen under the gate: never swap out what one is counting on.
            let _gate = self.residency.gate();
            if let Some(mut cell) = entry.try_lock() {
                if cell.state == PluginState::Active && self.is_idle(&entry) {
                    match self.swap_out(&entry, &mut cell, "its keep-alive expired") {
                        Ok(()) => expired.push(entry.id()),
                        Err(e) => tracing::warn!(plugin = %entry.id(), "swap-out failed: {e}"),
                    }
                }
            }
        }
        expired
    }

    /// Activates a swapped-out `entry` again (its lock held by the caller), as it was
    /// activated before; the request that needs it waits meanwhile.
    pub(super) fn swap_in(&self, entry: &Entry, cell: &mut Cell) -> HostResult<()> {
        let started = Instant::now();
        let options = entry.activated_with().unwrap_or_default();
        self.activate_locked(entry, cell, &options)?;
        let took = started.elapsed();
        self.residency.swapped_in(entry.name(), took);
        tracing::info!(plugin = %entry.id(), seconds = took.as_secs_f64(), "swapped in");
        Ok(())
    }

    /// Under a budget: asks `entry` (locked by the caller, not active) for its estimate (of an
    /// activation with `options`) and
    /// swaps out least recently used idle plugins until it fits, waiting for busy ones to
    /// become idle when that is not enough. Returns the gate, held until the activation is
    /// done, so nothing else is activated meanwhile. Without a budget, does nothing.
    pub(super) fn make_room(
        &self,
        entry: &Entry,
        cell: &mut Cell,
        options: &ActivateOptions,
    ) -> HostResult<Option<MutexGuard<'_, ()>>> {
        let Some(budget) = self.residency.budget() else {
            return Ok(None);
        };
        let abi_options = abi::ActivateOptions::from(options);
        let need = match entry.call(cell, "estimate_memory", |i| i.estimate_memory(&abi_options)) {
            Ok(report) => Some(MemoryReport::from(report).device_bytes()),
            Err(HostError::Plugin { error, .. }) if error.kind == ErrorKind::Unsupported => {
                tracing::warn!(plugin = %entry.id(), "estimates no memory ({error}); counted from its reports once active");
                None
            }
            Err(e) => return Err(e),
        };
        entry.update_memory(|m| {
            m.estimate = need;
            m.report = None;
            m.resident = false;
        });
        let need = need.unwrap_or(0);
        let too_large = || HostError::OverBudget {
            plugin: entry.name().to_owned(),
            need,
            budget,
        };
        loop {
            if entry.is_retiring() {
                // Replaced while it waited for room: its request follows the name instead.
                return Err(HostError::InstanceGone {
                    plugin: entry.id(),
                    generation: entry.generation,
                });
            }
            let gate = self.residency.gate();
            let resident = self.resident_except(entry);
            match plan(need, budget, &resident) {
                Plan::Fits => return Ok(Some(gate)),
                Plan::Evict(victims) => {
                    let mut evicted = 0;
                    for victim in victims {
                        // A victim that took a call meanwhile is busy after all: re-plan.
                        let Some(mut victim_cell) = victim.try_lock() else {
                            continue;
                        };
                        if victim_cell.state == PluginState::Active
                            && self.is_idle_beside(&victim, entry)
                        {
                            let reason = format!("making room for {}", entry.id());
                            self.swap_out(&victim, &mut victim_cell, &reason)?;
                            evicted += 1;
                        }
                    }
                    if evicted == 0 {
                        drop(gate);
                        self.residency.wait_for_release(RECHECK);
                    }
                }
                Plan::Wait => {
                    drop(gate);
                    tracing::debug!(plugin = %entry.id(), need, budget, "waiting for busy plugins to become idle");
                    self.residency.wait_for_release(RECHECK);
                }
                Plan::TooLarge => return Err(too_large()),
            }
        }
    }

    /// The resident plugins but `activating`, as the planner sees them.
    fn resident_except(&self, activating: &Entry) -> Vec<Resident<Arc<Entry>>> {
        read(&self.entries)
            .values()
            .filter(|e| e.number != activating.number && e.memory().resident)
            .map(|e| Resident {
                key: e.clone(),
                bytes: e.memory().reserved(),
                idle: self.is_idle_beside(e, activating),
                last_used: self
                    .residency
                    .last_used(e.name())
                    .unwrap_or_else(Instant::now),
            })
            .collect()
    }

    /// No request running or waiting, no open sequence.
    fn is_idle(&self, entry: &Entry) -> bool {
        entry.open_sequence_count() == 0 && self.residency.is_idle(entry.name())
    }

    /// Whether `entry` may be swapped out to make room for `activating`. Leases are by name:
    /// another instance of the name being activated (an older generation during a reload)
    /// counts as idle without open sequences, since the requests holding the name's leases
    /// wait for `activating`, not for it — else they would wait for themselves.
    fn is_idle_beside(&self, entry: &Entry, activating: &Entry) -> bool {
        match entry.name() == activating.name() {
            true => entry.open_sequence_count() == 0,
            false => self.is_idle(entry),
        }
    }

    /// Deactivates an idle `entry` (locked by the caller) for the memory manager; the next call
    /// that needs it activates it again.
    fn swap_out(&self, entry: &Entry, cell: &mut Cell, reason: &str) -> HostResult<()> {
        entry.call(cell, "deactivate", Instance::deactivate)?;
        cell.state = PluginState::Inactive;
        entry.update_memory(|m| {
            m.report = None;
            m.compression = None;
            m.swapped_out = true;
            m.resident = false;
        });
        crate::heap::release_freed_memory();
        self.residency.swapped_out(entry.name());
        tracing::info!(plugin = %entry.id(), reason, "swapped out");
        Ok(())
    }

    /// Asks an active `entry` for its memory report and compression stats and keeps them; a
    /// plugin that reports nothing keeps none. Like [`stats`](Self::stats), a failure here
    /// changes nothing else: a worker that is down is not counted as a crashed call.
    pub(super) fn refresh_memory(&self, entry: &Entry, cell: &mut Cell) {
        if cell.state != PluginState::Active {
            return;
        }
        let Some(instance) = cell.instance.as_mut() else {
            return;
        };
        let report = instance.memory_report().ok().map(MemoryReport::from);
        let compression = instance
            .compression_stats()
            .ok()
            .flatten()
            .map(CompressionReport::from);
        entry.update_memory(|m| {
            m.report = report;
            m.compression = compression;
        });
    }

    /// Re-reads the memory report of the plugin `reference` names, for listings, `/metrics`
    /// and the budget (see `refresh_memory`); the server's scheduler calls it after every job.
    pub fn refresh_memory_report(&self, reference: &str) {
        if let Ok(entry) = self.resolve_entry(reference) {
            let mut cell = entry.lock();
            self.refresh_memory(&entry, &mut cell);
        }
    }
}
