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
/// only) and whether the memory manager swapped it out.
pub fn plugin_json(plugin: &PluginSummary) -> Value {
    json!({
        "estimate_bytes": plugin.estimate_bytes,
        "swapped_out": plugin.swapped_out,
        "report": plugin.memory.as_ref().map(report_json),
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

/// A compression report as JSON: method, overall ratio, bytes per category and the quality
/// change.
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
        "ratio": report.ratio(),
        "categories": categories,
        "quality": report.quality.as_ref().map(|q| json!({
            "metric": q.metric,
            "before": q.before,
            "after": q.after,
        })),
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
