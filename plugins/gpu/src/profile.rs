//! Per-dispatch timing ([`Gpu::profile`]): where a step's time goes, kernel by kernel.
//!
//! With [`wgpu::Features::TIMESTAMP_QUERY`] every dispatch is recorded into a compute pass of its
//! own whose beginning and end write timestamps, all in one submission: the device's own clock,
//! without host round trips in between. Without it each dispatch is submitted alone and waited
//! for, timed by the host clock: that adds a submission and a wait to each dispatch (~0.2 ms on
//! lavapipe), so such figures are upper bounds, comparable with each other but not with a
//! step's wall time.
//!
//! Either way the dispatches run one after the other exactly as in a step (same order, same
//! buffers), so a step profiled this way also *computes* what the step computes.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use crate::device::Gpu;
use crate::dispatch::Dispatch;
use crate::error::{GpuError, Result};

/// How [`Gpu::profile`] timed the dispatches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimingMethod {
    /// Device timestamps at the beginning and end of each dispatch's pass.
    Timestamps,
    /// Host clock around a submission and wait per dispatch (no `TIMESTAMP_QUERY`).
    SubmitAndWait,
}

impl TimingMethod {
    /// `timestamps` or `submit_and_wait`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timestamps => "timestamps",
            Self::SubmitAndWait => "submit_and_wait",
        }
    }
}

/// The time of one dispatch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DispatchTime {
    /// What ran: the dispatch's [`Dispatch::name`].
    pub kernel: String,
    /// Milliseconds.
    pub ms: f64,
}

/// Per-dispatch times of a sequence of dispatches, in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    /// How they were timed.
    pub method: TimingMethod,
    /// One entry per dispatch, in the order they ran.
    pub dispatches: Vec<DispatchTime>,
}

/// The dispatches of one kernel (same [`Dispatch::name`]) in a [`Profile`], summed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelTime {
    /// The kernel's name.
    pub kernel: String,
    /// Dispatches of it.
    pub calls: usize,
    /// Their total time in milliseconds.
    pub total_ms: f64,
    /// `total_ms` over the profile's total (0..=1).
    pub share: f64,
}

impl Profile {
    /// The sum of every dispatch's time, in milliseconds.
    pub fn total_ms(&self) -> f64 {
        self.dispatches.iter().map(|d| d.ms).sum()
    }

    /// Appends the dispatches of `other`, timed the same way (e.g. the next part of a step).
    pub fn extend(&mut self, other: Profile) {
        debug_assert_eq!(self.method, other.method);
        self.dispatches.extend(other.dispatches);
    }

    /// The per-dispatch medians of `runs`, profiles of the same dispatches (same names in the
    /// same order); `None` when `runs` is empty or they differ.
    pub fn median(runs: &[Profile]) -> Option<Profile> {
        let first = runs.first()?;
        let same = runs.iter().all(|r| {
            r.method == first.method
                && r.dispatches.len() == first.dispatches.len()
                && r.dispatches
                    .iter()
                    .zip(&first.dispatches)
                    .all(|(a, b)| a.kernel == b.kernel)
        });
        if !same {
            return None;
        }
        let dispatches = first
            .dispatches
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut times: Vec<f64> = runs.iter().map(|r| r.dispatches[i].ms).collect();
                times.sort_by(f64::total_cmp);
                let mid = times.len() / 2;
                let ms = if times.len() % 2 == 0 {
                    (times[mid - 1] + times[mid]) / 2.0
                } else {
                    times[mid]
                };
                DispatchTime {
                    kernel: d.kernel.clone(),
                    ms,
                }
            })
            .collect();
        Some(Profile {
            method: first.method,
            dispatches,
        })
    }

    /// The dispatches grouped by kernel name, the most expensive kernel first.
    pub fn by_kernel(&self) -> Vec<KernelTime> {
        let total = self.total_ms();
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut kernels: Vec<KernelTime> = Vec::new();
        for d in &self.dispatches {
            let i = *index.entry(&d.kernel).or_insert_with(|| {
                kernels.push(KernelTime {
                    kernel: d.kernel.clone(),
                    calls: 0,
                    total_ms: 0.0,
                    share: 0.0,
                });
                kernels.len() - 1
            });
            kernels[i].calls += 1;
            kernels[i].total_ms += d.ms;
        }
        for k in &mut kernels {
            k.share = if total > 0.0 { k.total_ms / total } else { 0.0 };
        }
        kernels.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        kernels
    }
}

/// Most dispatches timed in one submission (two timestamps each; wgpu allows 4096 queries per
/// set).
const DISPATCHES_PER_QUERY_SET: usize = 2048;

impl Gpu {
    /// How [`Gpu::profile`] times dispatches on this device.
    pub fn timing_method(&self) -> TimingMethod {
        if self
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            TimingMethod::Timestamps
        } else {
            TimingMethod::SubmitAndWait
        }
    }

    /// Runs `dispatches` in order, after waiting for everything submitted before, and times each
    /// one (see [`TimingMethod`]). Their buffers must hold what the step that owns them expects
    /// (the dispatches compute exactly what they compute in that step).
    pub fn profile(&self, dispatches: &[&Dispatch]) -> Result<Profile> {
        self.wait()?;
        let method = self.timing_method();
        let mut times = Vec::with_capacity(dispatches.len());
        match method {
            TimingMethod::Timestamps => {
                for chunk in dispatches.chunks(DISPATCHES_PER_QUERY_SET) {
                    times.extend(self.timestamps(chunk)?);
                }
            }
            TimingMethod::SubmitAndWait => {
                for dispatch in dispatches {
                    let start = Instant::now();
                    self.run(&[dispatch])?;
                    times.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        Ok(Profile {
            method,
            dispatches: dispatches
                .iter()
                .zip(times)
                .map(|(d, ms)| DispatchTime {
                    kernel: d.name(),
                    ms,
                })
                .collect(),
        })
    }

    /// Milliseconds of each of `dispatches` (at most [`DISPATCHES_PER_QUERY_SET`]) by device
    /// timestamps around each one's own compute pass.
    fn timestamps(&self, dispatches: &[&Dispatch]) -> Result<Vec<f64>> {
        let queries = 2 * dispatches.len() as u32;
        let set = self.checked(
            || format!("creating a query set of {queries} timestamps"),
            || {
                self.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("pio-gpu profile"),
                    ty: wgpu::QueryType::Timestamp,
                    count: queries,
                })
            },
        )?;
        let resolved = self.create_buffer(
            "profile timestamps",
            u64::from(queries) * 8,
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            None,
        )?;
        let mut encoder = self.device.create_command_encoder(&Default::default());
        for (i, dispatch) in dispatches.iter().enumerate() {
            let first = 2 * i as u32;
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(dispatch.label()),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &set,
                    beginning_of_pass_write_index: Some(first),
                    end_of_pass_write_index: Some(first + 1),
                }),
            });
            dispatch.record(&mut pass);
        }
        encoder.resolve_query_set(&set, 0..queries, resolved.raw(), 0);
        let ticks = self.submit_and_read::<u64>(encoder, &resolved, 0, u64::from(queries))?;
        let ns_per_tick = f64::from(self.queue.get_timestamp_period());
        ticks
            .chunks_exact(2)
            .map(|pair| {
                let (start, end) = (pair[0], pair[1]);
                if end < start {
                    return Err(GpuError::Wgpu {
                        what: "reading dispatch timestamps".to_owned(),
                        message: format!("end timestamp {end} before start {start}"),
                    });
                }
                Ok((end - start) as f64 * ns_per_tick * 1e-6)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(times: &[(&str, f64)]) -> Profile {
        Profile {
            method: TimingMethod::Timestamps,
            dispatches: times
                .iter()
                .map(|&(kernel, ms)| DispatchTime {
                    kernel: kernel.to_owned(),
                    ms,
                })
                .collect(),
        }
    }

    #[test]
    fn groups_by_kernel_with_shares_most_expensive_first() {
        let p = profile(&[("a", 1.0), ("b", 5.0), ("a", 3.0), ("c", 2.0)]);
        let k = p.by_kernel();
        let names: Vec<&str> = k.iter().map(|k| k.kernel.as_str()).collect();
        assert_eq!(names, ["b", "a", "c"]);
        assert_eq!((k[1].calls, k[1].total_ms), (2, 4.0));
        assert!((k.iter().map(|k| k.share).sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(k[0].share, 5.0 / 11.0);
    }

    #[test]
    fn median_is_per_dispatch_and_needs_the_same_dispatches() {
        let runs = [
            profile(&[("a", 1.0), ("b", 9.0)]),
            profile(&[("a", 3.0), ("b", 1.0)]),
            profile(&[("a", 2.0), ("b", 5.0)]),
        ];
        let m = Profile::median(&runs).unwrap();
        assert_eq!(m.dispatches[0].ms, 2.0);
        assert_eq!(m.dispatches[1].ms, 5.0);
        assert!(Profile::median(&[profile(&[("a", 1.0)]), profile(&[("b", 1.0)])]).is_none());
        assert!(Profile::median(&[]).is_none());
    }
}
