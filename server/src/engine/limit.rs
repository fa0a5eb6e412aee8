//! The adaptive batch limit: how many sequences a plugin's scheduler keeps open at once.
//!
//! It aims at a per-step latency target. A step at the limit that was faster than the target
//! raises the limit by one (additive increase: there was room, and the load wanted more); a
//! step slower than the target lowers it to the size that would have met the target if a
//! step's cost grew linearly with its sequences, and by at least one (a quick retreat). It
//! never leaves `1..=max`. Lowering the limit evicts nothing: open sequences run to their end,
//! and no new one is admitted until fewer are open than the limit.

use std::time::Duration;

use crate::BatchConfig;

/// The current limit and what it adapts to.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    current: usize,
    config: BatchConfig,
}

impl AdaptiveLimit {
    /// Starts at one sequence: the limit grows only as steps show there is room.
    pub fn new(config: BatchConfig) -> Self {
        Self { current: 1, config }
    }

    /// Sequences that may be open at once now.
    pub fn current(&self) -> usize {
        self.current
    }

    /// Adapts to a step of `sequences` that took `took`.
    pub fn observe(&mut self, sequences: usize, took: Duration) {
        let target = self.config.target_step;
        if took > target {
            let fitting = (sequences as f64 * target.as_secs_f64() / took.as_secs_f64()) as usize;
            self.current = fitting.min(self.current.saturating_sub(1)).max(1);
        } else if sequences >= self.current {
            self.current = (self.current + 1).min(self.config.max_sequences);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max_sequences: usize) -> AdaptiveLimit {
        AdaptiveLimit::new(BatchConfig {
            max_sequences,
            target_step: Duration::from_millis(100),
        })
    }

    const FAST: Duration = Duration::from_millis(10);

    #[test]
    fn grows_by_one_per_full_fast_step_up_to_the_maximum() {
        let mut limit = limit(3);
        assert_eq!(limit.current(), 1);
        limit.observe(1, FAST);
        assert_eq!(limit.current(), 2);
        limit.observe(1, FAST);
        assert_eq!(limit.current(), 2, "a step below the limit shows no demand");
        limit.observe(2, FAST);
        limit.observe(3, FAST);
        limit.observe(3, FAST);
        assert_eq!(limit.current(), 3);
    }

    #[test]
    fn shrinks_to_what_meets_the_target_never_below_one() {
        let mut limit = limit(64);
        for n in 1..40 {
            limit.observe(n, FAST);
        }
        assert_eq!(limit.current(), 40);
        limit.observe(40, Duration::from_millis(200));
        assert_eq!(
            limit.current(),
            20,
            "half the time per step at half the batch"
        );
        limit.observe(20, Duration::from_millis(101));
        assert_eq!(limit.current(), 19, "at least one less");
        limit.observe(1, Duration::from_secs(5));
        assert_eq!(limit.current(), 1);
        limit.observe(1, Duration::from_secs(5));
        assert_eq!(limit.current(), 1);
    }
}
