//! The memory manager as the server shows it: each plugin's memory in `/admin/plugins`, the
//! memory and swap series of `/metrics`, and the thread that swaps out plugins idle past their
//! keep-alive.

use std::{sync::Arc, time::Duration};

use pio_host::{CompressionReport, MemoryReport, PluginManager, PluginSummary};
use serde_json::{json, Value};

use crate::metrics::GaugeSample;

/// How often idle plugins are checked against their keep-alive.
const EXPIRY_TICK: Duration = Duration::from_millis(250);

/// A plugin's memory for `/admin/plugins`: its estimate, its last report by category (active
/// only), whether the memory manager swapped it out, and how its tensors are compressed.
pub fn plugin_json(plugin: &PluginSummary) -> Value {
    json!({
        "estimate_bytes": plugin.estimate_bytes,
        "swapped_out": plugin.swapped_out,
        "report": plugin.memory.as_ref().map(report_json),
        "compression": plugin.compression.as_ref().map(compression_json),
    })
}

/// A compression report as JSON: method, bytes before and after per category, the ratio over
/// all of them, and the quality change if measured.
pub fn compression_json(report: &CompressionReport) -> Value {
    let categories: Vec<Value> = report
        .categories
        .iter()
        .map(|c| {
            json!({
                "category": c.category.as_str(),
                "bytes_before": c.bytes_before,
                "bytes_after": c.bytes_after,
            })
        })
        .collect();
    json!({
        "method": report.method,
        "categories": categories,
        "ratio": report.ratio(),
        "quality": report.quality.as_ref().map(|q| json!({
            "metric": q.metric,
            "before": q.before,
            "after": q.after,
        })),
    })
}

/// A memory report as JSON: device and host totals, and each category.
pub fn report_json(report: &MemoryReport) -> Value {
    let categories: Vec<Value> = report
        .categories
        .iter()
        .map(|c| {
            json!({
                "category": c.category.as_str(),
                "device_bytes": c.device_bytes,
                "host_bytes": c.host_bytes,
                "capacity_bytes": c.capacity_bytes,
                "used_bytes": c.used_bytes,
            })
        })
        .collect();
    json!({
        "device_bytes": report.device_bytes(),
        "host_bytes": report.host_bytes(),
        "categories": categories,
    })
}

/// The budget, the resident plugins and their memory by category, sampled now.
pub fn gauges(manager: &PluginManager) -> Vec<GaugeSample> {
    let plugins = manager.list_plugins();
    let mut gauges = vec![
        GaugeSample {
            name: "pio_resident_plugins",
            help: "Active plugin instances (resident on their device).",
            labels: Vec::new(),
            value: plugins
                .iter()
                .filter(|p| p.state == pio_host::PluginState::Active)
                .count() as f64,
        },
        GaugeSample {
            name: "pio_resident_device_bytes",
            help: "Device bytes the resident plugins are counted for (each one's larger of estimate and last report); never above the budget.",
            labels: Vec::new(),
            value: manager.resident_bytes() as f64,
        },
    ];
    if let Some(budget) = manager.memory_policy().budget {
        gauges.push(GaugeSample {
            name: "pio_memory_budget_bytes",
            help: "The device-memory budget of all plugins together.",
            labels: Vec::new(),
            value: budget as f64,
        });
    }
    for plugin in &plugins {
        let Some(report) = &plugin.memory else {
            continue;
        };
        for category in &report.categories {
            for (location, bytes) in [
                ("device", category.device_bytes),
                ("host", category.host_bytes),
            ] {
                gauges.push(GaugeSample {
                    name: "pio_plugin_memory_bytes",
                    help: "Memory a plugin reports holding, by category and location (its last report).",
                    labels: vec![
                        ("plugin", plugin.manifest.name.clone()),
                        ("category", category.category.as_str().to_owned()),
                        ("location", location.to_owned()),
                    ],
                    value: bytes as f64,
                });
            }
        }
    }
    gauges
}

/// The swap counters, sampled now (they only grow).
pub fn counters(manager: &PluginManager) -> Vec<GaugeSample> {
    let swaps = manager.swap_stats();
    let mut counters = Vec::new();
    for (plugin, stats) in &swaps {
        for (direction, count) in [("in", stats.swaps_in), ("out", stats.swaps_out)] {
            counters.push(GaugeSample {
                name: "pio_plugin_swaps_total",
                help: "Plugins activated again by a request (in) or deactivated by the memory manager to make room or after their keep-alive (out).",
                labels: vec![
                    ("plugin", plugin.clone()),
                    ("direction", direction.to_owned()),
                ],
                value: count as f64,
            });
        }
    }
    for (plugin, stats) in &swaps {
        counters.push(GaugeSample {
            name: "pio_plugin_swap_in_seconds_total",
            help: "Time swap-ins took (activation included); divided by pio_plugin_swaps_total{direction=\"in\"}, the mean swap-in latency.",
            labels: vec![("plugin", plugin.clone())],
            value: stats.swap_in_time.as_secs_f64(),
        });
    }
    counters
}

/// Starts the thread that swaps out plugins idle past their keep-alive; it stops when `stop`'s
/// sender is dropped.
pub fn start_expiry(
    manager: Arc<PluginManager>,
    stop: crossbeam_channel::Receiver<()>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("pio-keep-alive".to_owned())
        .spawn(move || {
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                stop.recv_timeout(EXPIRY_TICK)
            {
                for id in manager.expire_idle() {
                    tracing::info!(plugin = %id, "keep-alive expired: swapped out");
                }
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use pio_host::{CategoryCompression, CategoryMemory, MemoryCategory, QualityChange};

    use super::*;

    #[test]
    fn reports_and_compression_become_json_with_totals_and_ratio() {
        let report = MemoryReport {
            categories: vec![
                CategoryMemory::new(MemoryCategory::Weights, 100, 0),
                CategoryMemory {
                    capacity_bytes: 64,
                    used_bytes: 16,
                    ..CategoryMemory::new(MemoryCategory::KvCache, 64, 8)
                },
            ],
        };
        let json = report_json(&report);
        assert_eq!(json["device_bytes"], 164);
        assert_eq!(json["host_bytes"], 8);
        assert_eq!(json["categories"][1]["category"], "kv_cache");
        assert_eq!(json["categories"][1]["used_bytes"], 16);
        let compression = CompressionReport {
            method: "q8_0 weights".into(),
            categories: vec![CategoryCompression {
                category: MemoryCategory::Weights,
                bytes_before: 400,
                bytes_after: 100,
            }],
            quality: Some(QualityChange {
                metric: "perplexity".into(),
                before: 10.0,
                after: 10.5,
            }),
        };
        let json = compression_json(&compression);
        assert_eq!(json["ratio"], 0.25);
        assert_eq!(json["categories"][0]["bytes_before"], 400);
        assert_eq!(json["quality"]["metric"], "perplexity");
        assert_eq!(json["quality"]["after"], 10.5);
    }
}
