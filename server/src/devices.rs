//! The devices an active plugin's model runs on, as its stats details report them: a
//! `devices` array (one object per device: `adapter`, `layers` as `[first, end)`,
//! `allocated_bytes`, `peak_bytes`, `busy_seconds`) with `transferred_bytes` and
//! `pipeline_bubble` — what the Llama plugin reports when its layers are split over devices.
//! `/admin/plugins` shows them; `/metrics` exports them as gauges and counters. Both read the
//! stats the plugin's scheduler last cached ([`Engine::last_stats`]): asking a plugin busy with a
//! long call would block the route until it is done.

use pio_host::{PluginManager, PluginState, PluginSummary};
use serde_json::{json, Value};

use crate::engine::Engine;
use crate::metrics::GaugeSample;

/// The device facts of `plugin`'s stats details, or `null` for a plugin that is not active or
/// reports none.
pub fn plugin_json(engine: &Engine, plugin: &PluginSummary) -> Value {
    details(engine, plugin).map_or(Value::Null, |details| {
        json!({
            "devices": details["devices"],
            "transferred_bytes": details["transferred_bytes"],
            "transferred_bytes_per_token": details["transferred_bytes_per_token"],
            "pipeline_bubble": details["pipeline_bubble"],
        })
    })
}

/// Per device of every active plugin that reports devices: its layers and bytes (gauges), and
/// its busy time and the bytes moved between devices (counters, which only grow while the
/// plugin stays active).
pub fn samples(engine: &Engine, manager: &PluginManager) -> (Vec<GaugeSample>, Vec<GaugeSample>) {
    let (mut gauges, mut counters) = (Vec::new(), Vec::new());
    for plugin in manager.list_plugins() {
        let Some(details) = details(engine, &plugin) else {
            continue;
        };
        let name = &plugin.manifest.name;
        let devices = details["devices"].as_array().cloned().unwrap_or_default();
        for (index, device) in devices.iter().enumerate() {
            let labels = vec![("plugin", name.clone()), ("device", index.to_string())];
            let number = |key: &str| device[key].as_f64().unwrap_or(0.0);
            let layers = device["layers"][1].as_f64().unwrap_or(0.0)
                - device["layers"][0].as_f64().unwrap_or(0.0);
            gauges.push(GaugeSample {
                name: "pio_plugin_device_layers",
                help: "Transformer layers a plugin runs on each of its devices.",
                labels: labels.clone(),
                value: layers,
            });
            gauges.push(GaugeSample {
                name: "pio_plugin_device_allocated_bytes",
                help: "Device bytes a plugin holds on each of its devices.",
                labels: labels.clone(),
                value: number("allocated_bytes"),
            });
            counters.push(GaugeSample {
                name: "pio_plugin_device_busy_seconds_total",
                help:
                    "Time each of a plugin's devices spent on its forward passes since activation.",
                labels,
                value: number("busy_seconds"),
            });
        }
        counters.push(GaugeSample {
            name: "pio_plugin_transferred_bytes_total",
            help: "Hidden-state bytes a plugin moved between its devices since activation.",
            labels: vec![("plugin", name.clone())],
            value: details["transferred_bytes"].as_f64().unwrap_or(0.0),
        });
    }
    // The text format wants each metric's samples together.
    gauges.sort_by_key(|g| g.name);
    counters.sort_by_key(|c| c.name);
    (gauges, counters)
}

/// The last cached stats details of an active `plugin` that reports devices.
fn details(engine: &Engine, plugin: &PluginSummary) -> Option<Value> {
    if plugin.state != PluginState::Active {
        return None;
    }
    let stats = engine.last_stats(&plugin.manifest.name)?;
    let details: Value = serde_json::from_str(&stats.details_json).ok()?;
    details["devices"].is_array().then_some(details)
}
