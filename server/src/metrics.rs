//! Prometheus metrics, written by hand in the text exposition format: counters and histograms
//! recorded as requests run, and gauges sampled from the engine when `/metrics` is read.

use std::{
    collections::{BTreeMap, VecDeque},
    fmt::Write,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Bucket upper bounds, in seconds, of the latency histograms.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Bucket upper bounds of the batch size histogram (sequences per step).
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The window over which `pio_decode_tokens_per_second` is averaged.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Label pairs of one series, e.g. `[("plugin", "llama")]`.
pub type Labels<'a> = &'a [(&'static str, &'a str)];

/// One metric with any number of labelled series.
struct Family<T> {
    name: &'static str,
    help: &'static str,
    series: Mutex<BTreeMap<String, T>>,
}

impl<T: Default> Family<T> {
    const fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    fn with(&self, labels: Labels<'_>, update: impl FnOnce(&mut T)) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        update(series.entry(render_labels(labels)).or_default());
    }
}

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// One count per bucket bound (allocated at the first observation).
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

/// A histogram metric: its series and their bucket bounds.
struct Histograms {
    family: Family<Histogram>,
    bounds: &'static [f64],
}

impl Histograms {
    const fn new(name: &'static str, help: &'static str, bounds: &'static [f64]) -> Self {
        Self {
            family: Family::new(name, help),
            bounds,
        }
    }

    fn observe(&self, labels: Labels<'_>, value: f64) {
        self.family.with(labels, |h| {
            h.counts.resize(self.bounds.len(), 0);
            for (count, bound) in h.counts.iter_mut().zip(self.bounds) {
                if value <= *bound {
                    *count += 1;
                }
            }
            h.count += 1;
            h.sum += value;
        });
    }

    fn render(&self, out: &mut String) {
        header(out, &self.family, "histogram");
        let name = self.family.name;
        for (labels, h) in lock(&self.family.series).iter() {
            for (count, bound) in h.counts.iter().zip(self.bounds) {
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
        }
    }
}

/// Token counts per second of wall time, for a sliding-window rate.
#[derive(Debug, Default)]
struct RateWindow {
    seconds: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    fn add(&mut self, now: Instant, tokens: u64) {
        match self.seconds.back_mut() {
            Some((start, count)) if now.duration_since(*start) < Duration::from_secs(1) => {
                *count += tokens
            }
            _ => self.seconds.push_back((now, tokens)),
        }
        while self
            .seconds
            .front()
            .is_some_and(|(start, _)| now.duration_since(*start) > RATE_WINDOW)
        {
            self.seconds.pop_front();
        }
    }

    fn per_second(&self, now: Instant) -> f64 {
        let total: u64 = self
            .seconds
            .iter()
            .filter(|(start, _)| now.duration_since(*start) <= RATE_WINDOW)
            .map(|(_, count)| count)
            .sum();
        total as f64 / RATE_WINDOW.as_secs_f64()
    }
}

/// A gauge value sampled at scrape time.
#[derive(Debug, Clone)]
pub struct GaugeSample {
    /// Metric name.
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Label pairs.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: f64,
}

/// Every counter and histogram of the server.
pub struct Metrics {
    http_responses: Family<u64>,
    errors: Family<u64>,
    generations: Family<u64>,
    prompt_tokens: Family<u64>,
    generated_tokens: Family<u64>,
    sequences_closed: Family<u64>,
    prefix_cache: Family<u64>,
    prefix_cache_tokens: Family<u64>,
    stuck_calls: Family<u64>,
    queue_wait: Histograms,
    time_to_first_token: Histograms,
    inter_token: Histograms,
    batch_size: Histograms,
    step_latency: Histograms,
    decode_rate: Family<RateWindow>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            http_responses: Family::new(
                "pio_http_responses_total",
                "HTTP responses by route and status.",
            ),
            errors: Family::new(
                "pio_errors_total",
                "Error responses by OpenAI error type and code.",
            ),
            generations: Family::new(
                "pio_generations_total",
                "Finished generations by plugin and outcome (stop, length, disconnected, timeout, error).",
            ),
            prompt_tokens: Family::new("pio_prompt_tokens_total", "Prompt tokens processed."),
            generated_tokens: Family::new("pio_generated_tokens_total", "Tokens generated."),
            sequences_closed: Family::new(
                "pio_sequences_closed_total",
                "Batched sequences closed in their plugin, by reason (finished, limit: the host cut a plugin that went past max_tokens or a stop string, disconnected, timeout, failed).",
            ),
            prefix_cache: Family::new(
                "pio_prefix_cache_lookups_total",
                "Batched sequences opened, by whether part of their prompt's keys and values was reused (hit) or not (miss).",
            ),
            prefix_cache_tokens: Family::new(
                "pio_prefix_cache_tokens_total",
                "Prompt tokens whose keys and values were reused instead of recomputed.",
            ),
            stuck_calls: Family::new(
                "pio_stuck_calls_total",
                "Plugin calls that gave no sign of life for the stall timeout; the plugin's scheduler was restarted and (in process) its instance replaced.",
            ),
            queue_wait: Histograms::new(
                "pio_queue_wait_seconds",
                "Time requests waited in the queue before their plugin took them.",
                &LATENCY_BUCKETS,
            ),
            time_to_first_token: Histograms::new(
                "pio_time_to_first_token_seconds",
                "From request arrival to its first generated token.",
                &LATENCY_BUCKETS,
            ),
            inter_token: Histograms::new(
                "pio_inter_token_latency_seconds",
                "Between consecutive generated tokens of one sequence.",
                &LATENCY_BUCKETS,
            ),
            batch_size: Histograms::new(
                "pio_batch_size",
                "Sequences per batched step.",
                &BATCH_BUCKETS,
            ),
            step_latency: Histograms::new(
                "pio_batch_step_seconds",
                "Duration of one batched step (one token for every sequence of the step).",
                &LATENCY_BUCKETS,
            ),
            decode_rate: Family::new(
                "pio_decode_tokens_per_second",
                "Tokens generated per second, averaged over the last 10 s.",
            ),
        }
    }
}

impl Metrics {
    /// Counts one HTTP response.
    pub fn response(&self, route: &str, status: u16) {
        let status = status.to_string();
        self.http_responses
            .with(&[("route", route), ("status", &status)], |n| *n += 1);
    }

    /// Counts one error response.
    pub fn error(&self, kind: &str, code: &str) {
        self.errors
            .with(&[("type", kind), ("code", code)], |n| *n += 1);
    }

    /// Counts one finished generation of `plugin` with its `outcome`.
    pub fn generation(&self, plugin: &str, outcome: &str, prompt_tokens: u64) {
        self.generations
            .with(&[("plugin", plugin), ("outcome", outcome)], |n| *n += 1);
        self.prompt_tokens
            .with(&[("plugin", plugin)], |n| *n += prompt_tokens);
    }

    /// Records how long a request waited in `plugin`'s queue.
    pub fn queue_wait(&self, plugin: &str, waited: Duration) {
        self.queue_wait
            .observe(&[("plugin", plugin)], waited.as_secs_f64());
    }

    /// Records one batched step of `plugin` carrying `sequences` that took `took`.
    pub fn step(&self, plugin: &str, sequences: usize, took: Duration) {
        let labels = [("plugin", plugin)];
        self.batch_size.observe(&labels, sequences as f64);
        self.step_latency.observe(&labels, took.as_secs_f64());
    }

    /// Counts one batched sequence of `plugin` opened with `cached_tokens` prompt tokens reused
    /// from its prefix cache (a hit when positive).
    pub fn sequence_opened(&self, plugin: &str, cached_tokens: u32) {
        let result = if cached_tokens > 0 { "hit" } else { "miss" };
        self.prefix_cache
            .with(&[("plugin", plugin), ("result", result)], |n| *n += 1);
        self.prefix_cache_tokens
            .with(&[("plugin", plugin)], |n| *n += u64::from(cached_tokens));
    }

    /// Counts one batched sequence of `plugin` closed for `reason`.
    pub fn sequence_closed(&self, plugin: &str, reason: &str) {
        self.sequences_closed
            .with(&[("plugin", plugin), ("reason", reason)], |n| *n += 1);
    }

    /// Counts one call into `plugin` given up as stuck.
    pub fn stuck_call(&self, plugin: &str) {
        self.stuck_calls.with(&[("plugin", plugin)], |n| *n += 1);
    }

    /// Records one generated token of `plugin`: `since_previous` is the time since the
    /// previous token of the sequence, or since the request arrived for the first token.
    pub fn token(&self, plugin: &str, first: bool, since_previous: Duration) {
        let labels = [("plugin", plugin)];
        let latency = if first {
            &self.time_to_first_token
        } else {
            &self.inter_token
        };
        latency.observe(&labels, since_previous.as_secs_f64());
        self.generated_tokens.with(&labels, |n| *n += 1);
        self.decode_rate.with(&labels, |w| w.add(Instant::now(), 1));
    }

    /// The tokens generated by `plugin` so far.
    pub fn generated_tokens(&self, plugin: &str) -> u64 {
        let key = render_labels(&[("plugin", plugin)]);
        let series = self
            .generated_tokens
            .series
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        series.get(&key).copied().unwrap_or(0)
    }

    /// Everything in the Prometheus text format, with `gauges` sampled by the caller.
    pub fn render(&self, gauges: &[GaugeSample], counters: &[GaugeSample]) -> String {
        let mut out = String::new();
        for family in [
            &self.http_responses,
            &self.errors,
            &self.generations,
            &self.prompt_tokens,
            &self.generated_tokens,
            &self.sequences_closed,
            &self.prefix_cache,
            &self.prefix_cache_tokens,
            &self.stuck_calls,
        ] {
            render_counter(&mut out, family);
        }
        for histograms in [
            &self.queue_wait,
            &self.time_to_first_token,
            &self.inter_token,
            &self.batch_size,
            &self.step_latency,
        ] {
            histograms.render(&mut out);
        }
        let now = Instant::now();
        header(&mut out, &self.decode_rate, "gauge");
        for (labels, window) in lock(&self.decode_rate.series).iter() {
            let _ = writeln!(
                out,
                "{}{{{labels}}} {}",
                self.decode_rate.name,
                window.per_second(now)
            );
        }
        let mut last = "";
        let sampled = gauges
            .iter()
            .map(|g| (g, "gauge"))
            .chain(counters.iter().map(|c| (c, "counter")));
        for (gauge, kind) in sampled {
            if gauge.name != last {
                let _ = writeln!(out, "# HELP {} {}", gauge.name, gauge.help);
                let _ = writeln!(out, "# TYPE {} {kind}", gauge.name);
                last = gauge.name;
            }
            let labels: Vec<(&'static str, &str)> =
                gauge.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let labels = match render_labels(&labels) {
                labels if labels.is_empty() => labels,
                labels => format!("{{{labels}}}"),
            };
            let _ = writeln!(out, "{}{labels} {}", gauge.name, gauge.value);
        }
        out
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn header<T>(out: &mut String, family: &Family<T>, kind: &str) {
    let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
    let _ = writeln!(out, "# TYPE {} {kind}", family.name);
}

fn render_counter(out: &mut String, family: &Family<u64>) {
    header(out, family, "counter");
    for (labels, value) in lock(&family.series).iter() {
        let _ = writeln!(out, "{}{{{labels}}} {value}", family.name);
    }
}

/// `a="x",b="y"` with `\`, `"` and newlines escaped.
fn render_labels(labels: Labels<'_>) -> String {
    labels
        .iter()
        .map(|(key, value)| {
            let escaped = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{key}=\"{escaped}\"")
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let metrics = Metrics::default();
        metrics.response("/v1/models", 200);
        metrics.token("a\"b", true, Duration::from_millis(20));
        metrics.token("a\"b", false, Duration::from_millis(2));
        metrics.step("x", 3, Duration::from_millis(30));
        metrics.sequence_closed("x", "finished");
        metrics.sequence_opened("x", 0);
        metrics.sequence_opened("x", 12);
        metrics.sequence_opened("x", 30);
        let text = metrics.render(
            &[
                GaugeSample {
                    name: "pio_queue_depth",
                    help: "Waiting requests.",
                    labels: vec![("plugin", "x".to_owned())],
                    value: 3.0,
                },
                GaugeSample {
                    name: "pio_ready",
                    help: "Ready.",
                    labels: Vec::new(),
                    value: 1.0,
                },
            ],
            &[GaugeSample {
                name: "pio_plugin_swaps_total",
                help: "Swaps.",
                labels: vec![("plugin", "x".to_owned()), ("direction", "in".to_owned())],
                value: 2.0,
            }],
        );
        assert!(text.contains("pio_http_responses_total{route=\"/v1/models\",status=\"200\"} 1"));
        assert!(text.contains("pio_generated_tokens_total{plugin=\"a\\\"b\"} 2"));
        assert!(text
            .contains("pio_time_to_first_token_seconds_bucket{plugin=\"a\\\"b\",le=\"0.025\"} 1"));
        assert!(text
            .contains("pio_time_to_first_token_seconds_bucket{plugin=\"a\\\"b\",le=\"0.01\"} 0"));
        assert!(text.contains("pio_inter_token_latency_seconds_count{plugin=\"a\\\"b\"} 1"));
        assert!(text.contains("pio_batch_size_bucket{plugin=\"x\",le=\"2\"} 0"));
        assert!(text.contains("pio_batch_size_bucket{plugin=\"x\",le=\"4\"} 1"));
        assert!(text.contains("pio_batch_step_seconds_count{plugin=\"x\"} 1"));
        assert!(text.contains("pio_sequences_closed_total{plugin=\"x\",reason=\"finished\"} 1"));
        assert!(text.contains("pio_prefix_cache_lookups_total{plugin=\"x\",result=\"hit\"} 2"));
        assert!(text.contains("pio_prefix_cache_lookups_total{plugin=\"x\",result=\"miss\"} 1"));
        assert!(text.contains("pio_prefix_cache_tokens_total{plugin=\"x\"} 42"));
        assert!(text.contains("# TYPE pio_queue_depth gauge\npio_queue_depth{plugin=\"x\"} 3"));
        assert!(text.contains("\npio_ready 1\n"), "{text}");
        assert!(text.contains(
            "# TYPE pio_plugin_swaps_total counter\npio_plugin_swaps_total{plugin=\"x\",direction=\"in\"} 2"
        ));
        assert_eq!(metrics.generated_tokens("a\"b"), 2);
    }
}
