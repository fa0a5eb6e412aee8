//! The budget decision, without plugins: given what is resident, what must go so that a plugin
//! needing `need` bytes fits. Pure, so the LRU and budget rules are tested without models.

use std::time::Instant;

/// A resident (active) plugin as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resident<K> {
    /// Which plugin.
    pub key: K,
    /// The device bytes it holds: the larger of its estimate and its last report.
    pub bytes: u64,
    /// No running or queued request, no open sequence, no call in flight: it may be swapped
    /// out.
    pub idle: bool,
    /// When its last request ended (or it was activated).
    pub last_used: Instant,
}

/// What to do before activating a plugin that needs `need` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan<K> {
    /// It fits now.
    Fits,
    /// Swap these out first, least recently used first; then it fits.
    Evict(Vec<K>),
    /// Even swapping out every idle plugin would not make room: wait until busy ones are idle.
    Wait,
    /// It needs more than the whole budget: it can never fit.
    TooLarge,
}

/// Decides how a plugin needing `need` bytes fits in `budget` beside `resident`: swap out the
/// least recently used idle plugins, the fewest that make room.
pub fn plan<K: Clone>(need: u64, budget: u64, resident: &[Resident<K>]) -> Plan<K> {
    if need > budget {
        return Plan::TooLarge;
    }
    let used: u64 = resident.iter().map(|r| r.bytes).sum();
    if used.saturating_add(need) <= budget {
        return Plan::Fits;
    }
    let mut idle: Vec<&Resident<K>> = resident.iter().filter(|r| r.idle).collect();
    idle.sort_by_key(|r| r.last_used);
    let mut remaining = used;
    let mut evict = Vec::new();
    for candidate in idle {
        remaining -= candidate.bytes;
        evict.push(candidate.key.clone());
        if remaining.saturating_add(need) <= budget {
            return Plan::Evict(evict);
        }
    }
    Plan::Wait
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn resident(key: &'static str, bytes: u64, idle: bool, age_s: u64) -> Resident<&'static str> {
        let now = Instant::now() + Duration::from_secs(1000);
        Resident {
            key,
            bytes,
            idle,
            last_used: now - Duration::from_secs(age_s),
        }
    }

    #[test]
    fn fits_without_evicting_when_there_is_room() {
        let resident = [resident("a", 100, true, 5)];
        assert_eq!(plan(150, 300, &resident), Plan::Fits);
        assert_eq!(plan(200, 300, &resident), Plan::Fits);
    }

    #[test]
    fn evicts_the_least_recently_used_idle_plugins_first_and_no_more_than_needed() {
        let resident = [
            resident("recent", 100, true, 1),
            resident("old", 100, true, 50),
            resident("oldest", 50, true, 90),
            resident("busy", 100, false, 99),
        ];
        // 350 used of 400: 120 more needs 70 freed: the oldest (50) is not enough, then old.
        assert_eq!(
            plan(120, 400, &resident),
            Plan::Evict(vec!["oldest", "old"])
        );
        // 40 more needs nothing freed... 390 <= 400.
        assert_eq!(plan(40, 400, &resident), Plan::Fits);
        // 60 more: the oldest alone suffices.
        assert_eq!(plan(60, 400, &resident), Plan::Evict(vec!["oldest"]));
    }

    #[test]
    fn busy_plugins_are_never_evicted_and_make_the_caller_wait() {
        let resident = [
            resident("busy", 250, false, 99),
            resident("idle", 40, true, 1),
        ];
        assert_eq!(plan(100, 300, &resident), Plan::Wait);
    }

    #[test]
    fn a_plugin_larger_than_the_budget_can_never_fit() {
        assert_eq!(plan::<&str>(301, 300, &[]), Plan::TooLarge);
        assert_eq!(plan::<&str>(300, 300, &[]), Plan::Fits);
    }
}
