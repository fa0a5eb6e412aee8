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
    counts: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
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
    queue_wait: Family<Histogram>,
    time_to_first_token: Family<Histogram>,
    inter_token: Family<Histogram>,
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
            queue_wait: Family::new(
                "pio_queue_wait_seconds",
                "Time requests waited in the queue before their plugin took them.",
            ),
            time_to_first_token: Family::new(
                "pio_time_to_first_token_seconds",
                "From request arrival to its first generated token.",
            ),
            inter_token: Family::new(
                "pio_inter_token_latency_seconds",
                "Between consecutive generated tokens of one sequence.",
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
            .with(&[("plugin", plugin)], |h| observe(h, waited));
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
        latency.with(&labels, |h| observe(h, since_previous));
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
    pub fn render(&self, gauges: &[GaugeSample]) -> String {
        let mut out = String::new();
        for family in [
            &self.http_responses,
            &self.errors,
            &self.generations,
            &self.prompt_tokens,
            &self.generated_tokens,
        ] {
            render_counter(&mut out, family);
        }
        for family in [
            &self.queue_wait,
            &self.time_to_first_token,
            &self.inter_token,
        ] {
            render_histogram(&mut out, family);
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
        for gauge in gauges {
            if gauge.name != last {
                let _ = writeln!(out, "# HELP {} {}", gauge.name, gauge.help);
                let _ = writeln!(out, "# TYPE {} gauge", gauge.name);
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

fn observe(histogram: &mut Histogram, value: Duration) {
    let seconds = value.as_secs_f64();
    for (count, bound) in histogram.counts.iter_mut().zip(LATENCY_BUCKETS) {
        if seconds <= bound {
            *count += 1;
        }
    }
    histogram.count += 1;
    histogram.sum += seconds;
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

fn render_histogram(out: &mut String, family: &Family<Histogram>) {
    header(out, family, "histogram");
    let name = family.name;
    for (labels, h) in lock(&family.series).iter() {
        for (count, bound) in h.counts.iter().zip(LATENCY_BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
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
        let text = metrics.render(&[
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
        ]);
        assert!(text.contains("pio_http_responses_total{route=\"/v1/models\",status=\"200\"} 1"));
        assert!(text.contains("pio_generated_tokens_total{plugin=\"a\\\"b\"} 2"));
        assert!(text
            .contains("pio_time_to_first_token_seconds_bucket{plugin=\"a\\\"b\",le=\"0.025\"} 1"));
        assert!(text
            .contains("pio_time_to_first_token_seconds_bucket{plugin=\"a\\\"b\",le=\"0.01\"} 0"));
        assert!(text.contains("pio_inter_token_latency_seconds_count{plugin=\"a\\\"b\"} 1"));
        assert!(text.contains("# TYPE pio_queue_depth gauge\npio_queue_depth{plugin=\"x\"} 3"));
        assert!(text.contains("\npio_ready 1\n"), "{text}");
        assert_eq!(metrics.generated_tokens("a\"b"), 2);
    }
}
