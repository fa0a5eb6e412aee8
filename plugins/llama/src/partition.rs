//! Which layers run on which device when a model is split over several (pipeline
//! partitioning): contiguous ranges, one per device, in order.
//!
//! The planner balances the *cost* of the stages — the weight bytes each reads per token, which
//! bounds a memory-bound decode step: a layer's fused matrices, and for the last device the
//! head (the output projection, or the embedding table it is tied to), often as large as many
//! layers — under each device's *memory*: its layers' weights and KV caches, the embedding
//! table on the first device, the head on the last (with a copy of the embedding table when
//! the head is tied to it and the embedding is elsewhere), and activations and RoPE tables on
//! every device. It minimises the largest stage cost by dynamic programming over the split
//! points (`devices × layers²` steps), so the slowest device, which sets a pipeline's pace,
//! is as fast as a contiguous split allows.

use crate::error::{Error, Result};
use crate::memory::bytes_text;

/// What a partition is planned from, in bytes (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCosts {
    /// Per layer, the weight bytes it reads per token.
    pub layer_cost: Vec<u64>,
    /// Per layer, the device bytes it holds: weights and KV caches.
    pub layer_bytes: Vec<u64>,
    /// The embedding table's device bytes.
    pub embedding_bytes: u64,
    /// The output projection's device bytes (0 when the head is tied to the embedding table).
    pub head_bytes: u64,
    /// Device bytes every device holds whatever its layers: activations, RoPE tables.
    pub per_device_bytes: u64,
}

impl PartitionCosts {
    /// The cost of running `layers` on a device, the head included on the last one.
    fn stage_cost(&self, layers: std::ops::Range<usize>, last: bool) -> u64 {
        let head = match (last, self.head_bytes) {
            (false, _) => 0,
            (true, 0) => self.embedding_bytes,
            (true, own) => own,
        };
        sum(&self.layer_cost[layers]).saturating_add(head)
    }

    /// The device bytes of holding `layers` as stage `index` of `n_stages`.
    pub fn stage_bytes(
        &self,
        layers: std::ops::Range<usize>,
        index: usize,
        n_stages: usize,
    ) -> u64 {
        let (first, last) = (index == 0, index + 1 == n_stages);
        let mut bytes = self
            .per_device_bytes
            .saturating_add(sum(&self.layer_bytes[layers]));
        if first {
            bytes = bytes.saturating_add(self.embedding_bytes);
        }
        if last {
            bytes = bytes.saturating_add(match (self.head_bytes, first) {
                (0, true) => 0,
                (0, false) => self.embedding_bytes,
                (own, _) => own,
            });
        }
        bytes
    }

    /// The device bytes of the whole model over `n_devices` devices.
    pub fn total_bytes(&self, n_devices: usize) -> u64 {
        let tied_copy = match (self.head_bytes, n_devices) {
            (0, 2..) => self.embedding_bytes,
            _ => 0,
        };
        [
            sum(&self.layer_bytes),
            self.per_device_bytes.saturating_mul(n_devices as u64),
            self.embedding_bytes,
            self.head_bytes,
            tied_copy,
        ]
        .iter()
        .fold(0, |total, &bytes| total.saturating_add(bytes))
    }

    fn n_layers(&self) -> usize {
        self.layer_cost.len()
    }
}

/// Checks that `split` gives each of `devices` devices at least one layer and adds up to
/// `n_layers`.
pub fn check_split(split: &[usize], devices: usize, n_layers: usize) -> Result<()> {
    if split.len() != devices {
        return Err(Error::InvalidParams(format!(
            "a split of {} parts ({}) for {devices} devices: give one layer count per device",
            split.len(),
            join(split)
        )));
    }
    if let Some(device) = split.iter().position(|&n| n == 0) {
        return Err(Error::InvalidParams(format!(
            "the split {} gives device {device} no layers; every device needs at least one",
            join(split)
        )));
    }
    let total: usize = split.iter().sum();
    if total != n_layers {
        return Err(Error::InvalidParams(format!(
            "the split {} adds up to {total} layers, but the model has {n_layers}",
            join(split)
        )));
    }
    Ok(())
}

/// Checks that the stages of `split` fit their devices' `capacities` (bytes; `None`: unknown),
/// naming the first that does not.
pub fn check_fits(
    costs: &PartitionCosts,
    split: &[usize],
    capacities: &[Option<u64>],
) -> Result<()> {
    check_split(split, capacities.len(), costs.n_layers())?;
    let mut start = 0;
    for (index, (&n, capacity)) in split.iter().zip(capacities).enumerate() {
        let range = start..start + n;
        let needed = costs.stage_bytes(range.clone(), index, split.len());
        if let Some(capacity) = *capacity {
            if needed > capacity {
                return Err(Error::OutOfMemory(format!(
                    "the split {} puts layers {range:?} on device {index}, which needs {} there, \
                     over its {}",
                    join(split),
                    bytes_text(needed),
                    bytes_text(capacity)
                )));
            }
        }
        start += n;
    }
    Ok(())
}

/// The contiguous split of the layers over devices of `capacities` (bytes; `None`: unknown)
/// with the smallest largest stage cost among those that fit, as layer counts per device.
/// Fails, naming the sizes, when no split fits or there are more devices than layers.
pub fn plan(costs: &PartitionCosts, capacities: &[Option<u64>]) -> Result<Vec<usize>> {
    let (n_layers, n_devices) = (costs.n_layers(), capacities.len());
    if n_devices == 0 || n_devices > n_layers {
        return Err(Error::InvalidParams(format!(
            "{n_devices} devices for {n_layers} layers: every device needs at least one layer"
        )));
    }
    let fits = |range: std::ops::Range<usize>, device: usize| {
        capacities[device]
            .is_none_or(|capacity| costs.stage_bytes(range, device, n_devices) <= capacity)
    };
    // best[d][j]: the smallest largest cost of putting layers 0..j on devices 0..=d, and the
    // start of device d's range in that plan.
    let mut best = vec![vec![None::<(u64, usize)>; n_layers + 1]; n_devices];
    for (j, plan) in best[0].iter_mut().enumerate().skip(1) {
        if fits(0..j, 0) {
            *plan = Some((costs.stage_cost(0..j, n_devices == 1), 0));
        }
    }
    for d in 1..n_devices {
        let last = d + 1 == n_devices;
        for j in d + 1..=n_layers {
            best[d][j] = (d..j)
                .filter_map(|i| {
                    let (before, _) = best[d - 1][i]?;
                    fits(i..j, d).then(|| (before.max(costs.stage_cost(i..j, last)), i))
                })
                .min_by_key(|&(cost, _)| cost);
        }
    }
    if best[n_devices - 1][n_layers].is_none() {
        let total = costs.total_bytes(n_devices);
        let capacity = capacities
            .iter()
            .map(|c| c.map_or("unknown".to_owned(), bytes_text))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Error::OutOfMemory(format!(
            "no split of the {n_layers} layers over {n_devices} devices fits their memory \
             ({capacity}): the model needs {} across them, at least {} on the first device \
             and {} on the last",
            bytes_text(total),
            bytes_text(costs.stage_bytes(0..1, 0, n_devices)),
            bytes_text(costs.stage_bytes(n_layers - 1..n_layers, n_devices - 1, n_devices)),
        )));
    }
    let mut split = vec![0; n_devices];
    let mut end = n_layers;
    for d in (0..n_devices).rev() {
        let (_, start) = best[d][end].expect("a plan reaches every device's end");
        split[d] = end - start;
        end = start;
    }
    Ok(split)
}

/// The sum of `bytes`, saturating (sizes come from user input).
fn sum(bytes: &[u64]) -> u64 {
    bytes.iter().fold(0, |total, &b| total.saturating_add(b))
}

/// `15,15`.
fn join(split: &[usize]) -> String {
    split
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten layers of cost 10 and 100 bytes each, a 50-byte embedding table, a 200-byte head
    /// (`tied`: none) and 20 bytes per device.
    fn costs(tied: bool) -> PartitionCosts {
        PartitionCosts {
            layer_cost: vec![10; 10],
            layer_bytes: vec![100; 10],
            embedding_bytes: 50,
            head_bytes: if tied { 0 } else { 200 },
            per_device_bytes: 20,
        }
    }

    #[test]
    fn the_head_weighs_on_the_last_device() {
        // Costs: layers 10 each, the head 200 — the last device gets no layer it can avoid
        // beyond one, the rest balance.
        assert_eq!(plan(&costs(false), &[None, None]).unwrap(), vec![9, 1]);
        // Three devices: the first two share 9 layers as evenly as possible.
        let split = plan(&costs(false), &[None, None, None]).unwrap();
        assert_eq!(split.iter().sum::<usize>(), 10);
        assert_eq!(split[2], 1);
        // Without a head weighing more than the layers, an even split.
        let light = PartitionCosts {
            head_bytes: 10,
            ..costs(false)
        };
        assert_eq!(plan(&light, &[None, None]).unwrap(), vec![5, 5]);
    }

    #[test]
    fn memory_bounds_the_plan() {
        // Device 0 holds 20 + 50 + 3 × 100: no more than three layers fit it.
        let split = plan(&costs(false), &[Some(370), None]).unwrap();
        assert_eq!(split, vec![3, 7]);
        // Nothing fits two devices of 300 bytes: the error names the sizes.
        let err = plan(&costs(false), &[Some(300), Some(300)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no split of the 10 layers over 2 devices"),
            "{err}"
        );
        assert!(err.contains("300 bytes"), "{err}");
    }

    #[test]
    fn a_tied_head_is_copied_to_the_last_device() {
        let c = costs(true);
        // Alone, the one table serves both ends.
        assert_eq!(c.stage_bytes(0..10, 0, 1), 20 + 1000 + 50);
        // Split, the last device holds its own copy.
        assert_eq!(c.stage_bytes(5..10, 1, 2), 20 + 500 + 50);
    }

    #[test]
    fn splits_are_checked() {
        let c = costs(false);
        let err = check_split(&[4, 4], 2, 10).unwrap_err().to_string();
        assert!(
            err.contains("adds up to 8 layers, but the model has 10"),
            "{err}"
        );
        let err = check_split(&[10], 2, 10).unwrap_err().to_string();
        assert!(err.contains("for 2 devices"), "{err}");
        let err = check_split(&[0, 10], 2, 10).unwrap_err().to_string();
        assert!(err.contains("device 0 no layers"), "{err}");
        let err = check_fits(&c, &[5, 5], &[Some(10_000), Some(600)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("layers 5..10 on device 1"), "{err}");
        check_fits(&c, &[5, 5], &[Some(10_000), Some(10_000)]).unwrap();
        let err = plan(&c, &[None; 11]).unwrap_err().to_string();
        assert!(err.contains("11 devices for 10 layers"), "{err}");
    }
}
