//! `pio bench [PLUGIN]`: load time, prefill and decode speed, time to first token, batched
//! (aggregate) decode speed, dispatches per token and peak memory of a text-generation plugin,
//! as a table or as JSON.
//!
//! The host times activation and reads its own peak RSS; the plugin measures its forward passes
//! itself through its `{"op": "bench"}` operation, which is run `--runs` times. The host also
//! times one streamed generation per run through the manager, as a client would see it — time
//! to first token and decode speed including the relay of every token (which is what
//! `--isolation process` adds to). Every figure is the median over the runs.
//!
//! With `--devices A,B,...` or `A*N` (two or more; the same adapter twice is two logical devices)
//! the benchmark runs twice, on the first device alone and with the layers split over all of
//! them, and prints both side by side with how the split used the devices.
//!
//! With `--per-kernel` the plugin also times each dispatch of one decoded token (at position
//! 128) and of one prefill chunk of [`PROFILE_PREFILL_TOKENS`] tokens, and the tables show the
//! time per kernel (calls, milliseconds, share of the step); each kernel's figure is the median
//! over the runs.

use std::{path::PathBuf, process::ExitCode, time::Instant};

use anyhow::Context;
use clap::Args;
use pio_host::{GenerateRequest, GenerationParams, Prompt, StreamControl};
use serde_json::{json, Value};

use pio_host::{isolation::Isolation, PluginManager};

use super::{
    output::print_table,
    run::ActivateArgs,
    text::{open, StorageArgs},
    PluginDirs,
};

/// Arguments of `pio bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The plugin (default `llama`).
    plugin: Option<String>,
    /// Model file passed to the plugin (default for `llama`: SmolLM2-135M-Instruct Q4_1).
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    #[command(flatten)]
    storage: StorageArgs,
    /// Benchmark runs; the median of each figure is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Prompt lengths whose prefill is timed.
    #[arg(long, value_delimiter = ',', default_values_t = [128, 512])]
    prompt_lengths: Vec<usize>,
    /// Tokens decoded (greedily, after a 128-token prompt) per run.
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Numbers of sequences decoded together (batched generation, for plugins that offer it;
    /// empty to skip): aggregate decode speed of each.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4, 8])]
    batch_sizes: Vec<usize>,
    /// Also time each dispatch of a decode step and a prefill step and show the time per
    /// kernel (device timestamps where the adapter has them).
    #[arg(long)]
    per_kernel: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Search every kernel's tile again, overwriting the tuning cache: `--tuning retune`.
    #[arg(long, conflicts_with = "tuning")]
    retune: bool,
    #[command(flatten)]
    activate: ActivateArgs,
    #[command(flatten)]
    dirs: PluginDirs,
}

/// Tokens of the prompt decoding starts after.
const DECODE_PROMPT: usize = 128;

/// Tokens of the prefill step `--per-kernel` times (one chunk of the Llama plugin's default
/// batch).
const PROFILE_PREFILL_TOKENS: usize = 64;

/// `pio bench`.
pub fn bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    let n = args.storage.devices.count();
    if n < 2 {
        let report = bench_once(args, &args.storage)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report.to_json())?);
        } else {
            report.print();
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut alone = args.storage.clone();
    alone.devices = args.storage.devices.first();
    let reports = [bench_once(args, &alone)?, bench_once(args, &args.storage)?];
    if args.json {
        let out = json!({
            "devices_1": reports[0].to_json(),
            format!("devices_{n}"): reports[1].to_json(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_side_by_side(&reports, &["1 DEVICE".to_owned(), format!("{n} DEVICES")]);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the benchmark `--runs` times with the plugin's storage and devices as `storage` says.
fn bench_once(args: &BenchArgs, storage: &StorageArgs) -> anyhow::Result<Report> {
    let longest = args
        .prompt_lengths
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(DECODE_PROMPT + args.decode_tokens);
    let mut storage = storage.clone();
    if args.retune {
        storage.tuning = Some("retune".to_owned());
    }
    let start = Instant::now();
    let (manager, id) = open(
        args.plugin.as_deref(),
        args.model.as_ref(),
        &storage,
        &args.activate,
        Some(u32::try_from(longest).context("prompt too long")?),
        &args.dirs,
    )?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let stats = manager.stats(&id)?;

    let mut request = json!({
        "op": "bench",
        "prompt_lengths": args.prompt_lengths,
        "decode_prompt": DECODE_PROMPT,
        "decode_tokens": args.decode_tokens,
        "batch_sizes": args.batch_sizes,
    });
    if args.per_kernel {
        request["per_kernel"] = json!({
            "decode_position": DECODE_PROMPT,
            "prefill_tokens": PROFILE_PREFILL_TOKENS,
        });
    }
    let mut runs = Vec::with_capacity(args.runs);
    let mut streamed = Vec::with_capacity(args.runs);
    for run in 0..args.runs {
        let context = || format!("benchmark run {} of {}", run + 1, args.runs);
        let answer = manager
            .execute(&id, &request)
            .with_context(context)?
            .response;
        runs.push(answer);
        streamed.push(stream_generation(&manager, &id, args.decode_tokens).with_context(context)?);
    }
    let mut report = Report::new(
        &id,
        &runs,
        load_ms,
        stats.activate_ms,
        &args.prompt_lengths,
        &args.batch_sizes,
    )?;
    report.isolation = manager.isolation_of(&manager.info(&id)?.manifest.name);
    if args.per_kernel {
        report.per_kernel = Some(PerKernel::median(&runs)?);
    }
    report.streamed = Some(Streamed::median(&streamed));
    Ok(report)
}

/// Prints the rows of `reports` in one table, a column each under `headers`.
fn print_side_by_side(reports: &[Report], headers: &[String]) {
    for report in reports {
        println!("adapter:   {}", report.adapter);
    }
    println!("median of {} runs", reports[0].runs);
    let columns: Vec<Vec<Vec<String>>> = reports.iter().map(Report::rows).collect();
    let mut metrics: Vec<(String, String)> = Vec::new();
    for row in columns.iter().flatten() {
        if !metrics.iter().any(|(m, _)| *m == row[0]) {
            metrics.push((row[0].clone(), row[2].clone()));
        }
    }
    let rows: Vec<Vec<String>> = metrics
        .into_iter()
        .map(|(metric, unit)| {
            let mut row = vec![metric.clone()];
            row.extend(columns.iter().map(|rows| {
                rows.iter()
                    .find(|r| r[0] == metric)
                    .map_or_else(|| "-".to_owned(), |r| r[1].clone())
            }));
            row.push(unit);
            row
        })
        .collect();
    let mut header = vec!["METRIC"];
    header.extend(headers.iter().map(String::as_str));
    header.push("UNIT");
    print_table(&header, &rows);
    for (report, name) in reports.iter().zip(headers) {
        if report.tuning.is_some() || report.per_kernel.is_some() {
            println!("\n{}:", name.to_lowercase());
        }
        if let Some(tuning) = &report.tuning {
            tuning.print();
        }
        if let Some(per_kernel) = &report.per_kernel {
            per_kernel.print();
        }
    }
}

/// One generation streamed through the manager, timed by the host.
#[derive(Debug, Clone, Copy)]
struct Streamed {
    /// Time to the first streamed token.
    ttft_ms: f64,
    /// Tokens after the first, per second.
    decode_tok_s: f64,
    /// Tokens generated.
    tokens: usize,
}

impl Streamed {
    fn median(runs: &[Streamed]) -> Streamed {
        Streamed {
            ttft_ms: median(runs.iter().map(|r| r.ttft_ms).collect()),
            decode_tok_s: median(runs.iter().map(|r| r.decode_tok_s).collect()),
            tokens: runs.iter().map(|r| r.tokens).min().unwrap_or(0),
        }
    }
}

/// Generates greedily after a [`DECODE_PROMPT`]-token prompt through the manager, timing the
/// first token and the rest as a client receives them.
fn stream_generation(
    manager: &PluginManager,
    plugin: &str,
    max_tokens: usize,
) -> anyhow::Result<Streamed> {
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(DECODE_PROMPT);
    let mut prompt = manager.tokenize(plugin, &text, false)?;
    prompt.truncate(DECODE_PROMPT);
    let request = GenerateRequest {
        prompt: Prompt::Tokens(prompt),
        params: GenerationParams::greedy(u32::try_from(max_tokens)?),
    };
    let start = Instant::now();
    let mut arrivals = Vec::with_capacity(max_tokens);
    manager.generate(plugin, &request, |_| {
        arrivals.push(start.elapsed());
        StreamControl::Continue
    })?;
    let (Some(first), Some(last)) = (arrivals.first(), arrivals.last()) else {
        anyhow::bail!("the plugin generated no token");
    };
    let decoded = arrivals.len() - 1;
    Ok(Streamed {
        ttft_ms: first.as_secs_f64() * 1e3,
        decode_tok_s: decoded as f64 / (*last - *first).as_secs_f64().max(1e-9),
        tokens: arrivals.len(),
    })
}

/// One step's time per kernel, medians over the runs.
#[derive(Debug, Clone, PartialEq)]
struct StepKernels {
    tokens: u64,
    position: u64,
    /// (kernel, calls, median total ms), the most expensive first.
    kernels: Vec<(String, u64, f64)>,
}

impl StepKernels {
    /// From the `per_kernel.<step>` objects of the runs' answers.
    fn median(steps: &[&Value]) -> anyhow::Result<Self> {
        let first = steps[0];
        let mut kernels = Vec::new();
        for kernel in first["kernels"]
            .as_array()
            .context("a per-kernel profile without kernels")?
        {
            let name = kernel["kernel"]
                .as_str()
                .context("a kernel without a name")?;
            let times = steps
                .iter()
                .map(|step| {
                    step["kernels"]
                        .as_array()
                        .and_then(|ks| ks.iter().find(|k| k["kernel"] == name))
                        .and_then(|k| k["total_ms"].as_f64())
                        .with_context(|| format!("a run's profile has no time for {name}"))
                })
                .collect::<anyhow::Result<Vec<f64>>>()?;
            let calls = kernel["calls"].as_u64().unwrap_or(0);
            kernels.push((name.to_owned(), calls, median(times)));
        }
        kernels.sort_by(|a, b| b.2.total_cmp(&a.2));
        Ok(StepKernels {
            tokens: first["tokens"].as_u64().unwrap_or(0),
            position: first["position"].as_u64().unwrap_or(0),
            kernels,
        })
    }

    fn total_ms(&self) -> f64 {
        self.kernels.iter().map(|k| k.2).sum()
    }

    /// `(kernel, calls, ms, share)` rows.
    fn rows(&self) -> Vec<(String, u64, f64, f64)> {
        let total = self.total_ms();
        self.kernels
            .iter()
            .map(|(name, calls, ms)| {
                let share = if total > 0.0 { ms / total } else { 0.0 };
                (name.clone(), *calls, *ms, share)
            })
            .collect()
    }

    fn to_json(&self) -> Value {
        let kernels: Vec<Value> = self
            .rows()
            .into_iter()
            .map(|(kernel, calls, ms, share)| {
                json!({"kernel": kernel, "calls": calls, "total_ms": ms, "share": share})
            })
            .collect();
        json!({
            "tokens": self.tokens,
            "position": self.position,
            "total_ms": self.total_ms(),
            "kernels": kernels,
        })
    }

    fn print(&self, step: &str, method: &str) {
        println!();
        println!(
            "{step}: {} token(s) at position {}, {:.2} ms in kernels ({method})",
            self.tokens,
            self.position,
            self.total_ms()
        );
        let rows: Vec<Vec<String>> = self
            .rows()
            .into_iter()
            .map(|(kernel, calls, ms, share)| {
                vec![
                    kernel,
                    calls.to_string(),
                    format!("{ms:.3}"),
                    format!("{:.1}", share * 100.0),
                ]
            })
            .collect();
        print_table(&["KERNEL", "CALLS", "MS", "SHARE %"], &rows);
    }
}

/// The per-kernel profiles of a decode and a prefill step (`--per-kernel`).
#[derive(Debug, Clone, PartialEq)]
struct PerKernel {
    method: String,
    decode: StepKernels,
    prefill: StepKernels,
}

impl PerKernel {
    /// Medians over the runs' `per_kernel` answers.
    fn median(runs: &[Value]) -> anyhow::Result<Self> {
        let profiles: Vec<&Value> = runs.iter().map(|r| &r["per_kernel"]).collect();
        anyhow::ensure!(
            profiles.iter().all(|p| p.is_object()),
            "the plugin's bench answer has no per-kernel profile (does it support --per-kernel?)"
        );
        let step = |name: &str| {
            let steps: Vec<&Value> = profiles.iter().map(|p| &p[name]).collect();
            StepKernels::median(&steps).with_context(|| format!("the {name} step's profile"))
        };
        Ok(PerKernel {
            method: profiles[0]["method"]
                .as_str()
                .unwrap_or("unknown")
                .to_owned(),
            decode: step("decode")?,
            prefill: step("prefill")?,
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "method": self.method,
            "decode": self.decode.to_json(),
            "prefill": self.prefill.to_json(),
        })
    }

    fn print(&self) {
        self.decode.print("decode step", &self.method);
        self.prefill.print("prefill step", &self.method);
    }
}

/// Medians over the runs, plus what is measured once.
struct Report {
    plugin: String,
    isolation: Isolation,
    adapter: String,
    runs: usize,
    load_ms: f64,
    activate_ms: f64,
    peak_rss_bytes: Option<u64>,
    dispatches_per_token: u64,
    dispatches_per_layer: u64,
    /// (prompt tokens, prefill tok/s, time to first token ms)
    prefill: Vec<(usize, f64, f64)>,
    decode_tokens: u64,
    decode_tok_s: f64,
    /// (sequences decoded together, aggregate tok/s)
    batched: Vec<(usize, f64)>,
    /// The streamed generation timed by the host.
    streamed: Option<Streamed>,
    /// The most device memory the plugin held (its own accounting), if it says.
    device_peak_bytes: Option<u64>,
    /// Layers streamed from the model file (the disk pipeline), if any.
    disk: Option<DiskStreaming>,
    /// How the layers were split over devices, when over more than one.
    pipeline: Option<Pipeline>,
    /// Time per kernel of a decode and a prefill step (`--per-kernel`).
    per_kernel: Option<PerKernel>,
    /// How the plugin chose its kernels' tiles, if it says.
    tuning: Option<Tuning>,
}

/// What the plugin says of its kernel tuning (the bench answer's `tuning` object): done once,
/// at activation.
#[derive(Debug, Clone)]
struct Tuning {
    mode: String,
    searches: u64,
    search_seconds: f64,
    /// Per device: how its kernels load storage data and read activations.
    devices: Vec<(String, String)>,
    /// Per kernel shape: device, shape, variant, milliseconds per launch, source.
    kernels: Vec<(u64, String, String, Option<f64>, String)>,
    /// The answer's object, for `--json`.
    json: Value,
}

impl Tuning {
    /// From a bench answer; `None` when the plugin does not report tuning.
    fn from_answer(answer: &Value) -> Option<Self> {
        let tuning = answer.get("tuning")?;
        let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
        Some(Tuning {
            mode: text(&tuning["mode"]),
            searches: tuning["searches"].as_u64().unwrap_or(0),
            search_seconds: tuning["search_seconds"].as_f64().unwrap_or(0.0),
            devices: tuning["devices"]
                .as_array()
                .map(|devices| {
                    devices
                        .iter()
                        .map(|d| (text(&d["load_width"]), text(&d["activation_reads"])))
                        .collect()
                })
                .unwrap_or_default(),
            kernels: tuning["kernels"]
                .as_array()
                .map(|kernels| {
                    kernels
                        .iter()
                        .map(|k| {
                            (
                                k["device"].as_u64().unwrap_or(0),
                                text(&k["shape"]),
                                text(&k["variant"]),
                                k["ms"].as_f64(),
                                text(&k["source"]),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            json: tuning.clone(),
        })
    }

    /// The chosen variant of each kernel shape, one row each.
    fn print(&self) {
        println!(
            "\nkernel tiles (tuning {}: {} shapes searched in {:.2} s at activation)",
            self.mode, self.searches, self.search_seconds
        );
        for (device, (load_width, reads)) in self.devices.iter().enumerate() {
            println!("device {device}: {load_width} loads, {reads} activation reads");
        }
        let devices = self.kernels.iter().any(|k| k.0 > 0);
        let rows: Vec<Vec<String>> = self
            .kernels
            .iter()
            .map(|(device, shape, variant, ms, source)| {
                let shape = match devices {
                    true => format!("device {device}: {shape}"),
                    false => shape.clone(),
                };
                let ms = ms.map_or_else(String::new, |ms| format!("{ms:.3}"));
                vec![shape, variant.clone(), ms, source.clone()]
            })
            .collect();
        print_table(&["KERNEL SHAPE", "VARIANT", "MS", "SOURCE"], &rows);
    }
}

/// What the plugin says of the devices its layers are split over, over all runs.
#[derive(Debug, Clone)]
struct Pipeline {
    /// Per device: its layers `[first, end)`, peak bytes and busy seconds.
    devices: Vec<(u64, u64, u64, f64)>,
    bytes_per_token: f64,
    bubble: f64,
}

impl Pipeline {
    /// From a bench answer's `pipeline` object; `None` with one device.
    fn from_answer(answer: &Value) -> Option<Self> {
        let pipeline = &answer["pipeline"];
        let devices: Vec<_> = pipeline["devices"]
            .as_array()?
            .iter()
            .map(|d| {
                (
                    d["layers"][0].as_u64().unwrap_or(0),
                    d["layers"][1].as_u64().unwrap_or(0),
                    d["peak_bytes"].as_u64().unwrap_or(0),
                    d["busy_seconds"].as_f64().unwrap_or(0.0),
                )
            })
            .collect();
        (devices.len() > 1).then(|| Pipeline {
            devices,
            bytes_per_token: pipeline["transferred_bytes_per_token"]
                .as_f64()
                .unwrap_or(0.0),
            bubble: pipeline["pipeline_bubble"].as_f64().unwrap_or(0.0),
        })
    }
}

/// What the plugin says of the layers it streams from the model file, over all runs.
#[derive(Debug, Clone, Copy)]
struct DiskStreaming {
    layers: u64,
    ring_bytes: u64,
    load_seconds: f64,
    wait_seconds: f64,
}

impl DiskStreaming {
    /// From a bench answer's `streaming` object; `None` when no layer streams.
    fn from_answer(answer: &Value) -> Option<Self> {
        let streaming = &answer["streaming"];
        let layers = streaming["streamed_layers"].as_u64().filter(|&n| n > 0)?;
        Some(DiskStreaming {
            layers,
            ring_bytes: streaming["stream_ring_bytes"].as_u64().unwrap_or(0),
            load_seconds: streaming["stream_load_seconds"].as_f64().unwrap_or(0.0),
            wait_seconds: streaming["stream_wait_seconds"].as_f64().unwrap_or(0.0),
        })
    }

    /// The share of the loader's time the steps did not wait for.
    fn hidden(&self) -> f64 {
        if self.load_seconds > 0.0 {
            1.0 - (self.wait_seconds / self.load_seconds).min(1.0)
        } else {
            1.0
        }
    }
}

impl Report {
    fn new(
        plugin: &str,
        runs: &[Value],
        load_ms: f64,
        activate_ms: f64,
        prompt_lengths: &[usize],
        batch_sizes: &[usize],
    ) -> anyhow::Result<Self> {
        let first = &runs[0];
        let number = |v: &Value, what: &str| {
            v.as_f64()
                .with_context(|| format!("the plugin's bench answer has no number {what}"))
        };
        let median_of = |what: &str, pick: &dyn Fn(&Value) -> &Value| -> anyhow::Result<f64> {
            let values: Vec<f64> = runs
                .iter()
                .map(|r| number(pick(r), what))
                .collect::<anyhow::Result<_>>()?;
            Ok(median(values))
        };
        let prefill = prompt_lengths
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                Ok((
                    len,
                    median_of("prefill_tok_s", &|r| &r["prefill"][i]["prefill_tok_s"])?,
                    median_of("ttft_ms", &|r| &r["prefill"][i]["ttft_ms"])?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        let batched = batch_sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                Ok((
                    n,
                    median_of("aggregate_tok_s", &|r| &r["batched"][i]["aggregate_tok_s"])?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Report {
            plugin: plugin.to_owned(),
            isolation: Isolation::default(),
            adapter: first["adapter"].as_str().unwrap_or("unknown").to_owned(),
            runs: runs.len(),
            load_ms,
            activate_ms,
            peak_rss_bytes: peak_rss_bytes(),
            dispatches_per_token: first["dispatches_per_token"].as_u64().unwrap_or(0),
            dispatches_per_layer: first["dispatches_per_layer"].as_u64().unwrap_or(0),
            prefill,
            decode_tokens: first["decode"]["decode_tokens"].as_u64().unwrap_or(0),
            decode_tok_s: median_of("decode_tok_s", &|r| &r["decode"]["decode_tok_s"])?,
            batched,
            streamed: None,
            device_peak_bytes: runs
                .iter()
                .filter_map(|r| r["device_peak_bytes"].as_u64())
                .max(),
            disk: runs.last().and_then(DiskStreaming::from_answer),
            pipeline: runs.last().and_then(Pipeline::from_answer),
            per_kernel: None,
            tuning: Tuning::from_answer(first),
        })
    }

    fn to_json(&self) -> Value {
        let mut out = json!({
            "plugin": self.plugin,
            "isolation": self.isolation.as_str(),
            "adapter": self.adapter,
            "runs": self.runs,
            "load_ms": self.load_ms,
            "activate_ms": self.activate_ms,
            "peak_rss_bytes": self.peak_rss_bytes,
            "dispatches_per_token": self.dispatches_per_token,
            "dispatches_per_layer": self.dispatches_per_layer,
            "decode_tokens": self.decode_tokens,
            "decode_tok_s": self.decode_tok_s,
        });
        for &(len, tok_s, ttft) in &self.prefill {
            out[format!("prefill_tok_s_{len}")] = tok_s.into();
            out[format!("ttft_ms_{len}")] = ttft.into();
        }
        for &(n, tok_s) in &self.batched {
            out[format!("batched_decode_tok_s_{n}")] = tok_s.into();
        }
        if let Some(bytes) = self.device_peak_bytes {
            out["device_peak_bytes"] = bytes.into();
        }
        if let Some(disk) = self.disk {
            out["disk_streamed_layers"] = disk.layers.into();
            out["disk_ring_bytes"] = disk.ring_bytes.into();
            out["disk_load_seconds"] = disk.load_seconds.into();
            out["disk_wait_seconds"] = disk.wait_seconds.into();
            out["disk_hidden_fraction"] = disk.hidden().into();
        }
        if let Some(pipeline) = &self.pipeline {
            out["devices"] = pipeline
                .devices
                .iter()
                .map(|&(first, end, peak, busy)| {
                    json!({"layers": [first, end], "peak_bytes": peak, "busy_seconds": busy})
                })
                .collect();
            out["transferred_bytes_per_token"] = pipeline.bytes_per_token.into();
            out["pipeline_bubble"] = pipeline.bubble.into();
        }
        if let Some(streamed) = self.streamed {
            out["streamed_ttft_ms"] = streamed.ttft_ms.into();
            out["streamed_decode_tok_s"] = streamed.decode_tok_s.into();
            out["streamed_tokens"] = streamed.tokens.into();
        }
        if let Some(per_kernel) = &self.per_kernel {
            out["per_kernel"] = per_kernel.to_json();
        }
        if let Some(tuning) = &self.tuning {
            out["tuning"] = tuning.json.clone();
        }
        out
    }

    fn print(&self) {
        println!("plugin:    {}", self.plugin);
        println!("isolation: {}", self.isolation.as_str());
        println!("adapter:   {}", self.adapter);
        println!("median of {} runs", self.runs);
        print_table(&["METRIC", "VALUE", "UNIT"], &self.rows());
        if let Some(tuning) = &self.tuning {
            tuning.print();
        }
        if let Some(per_kernel) = &self.per_kernel {
            per_kernel.print();
        }
    }

    /// The table's rows: metric, value, unit.
    fn rows(&self) -> Vec<Vec<String>> {
        let mut rows = vec![
            row("load (plugin load + activate)", self.load_ms, "ms"),
            row("activate (weights, pipelines)", self.activate_ms, "ms"),
        ];
        if let Some(tuning) = &self.tuning {
            rows.push(row(
                &format!("  kernel tuning search ({})", tuning.mode),
                tuning.search_seconds * 1e3,
                "ms",
            ));
        }
        for &(len, tok_s, ttft) in &self.prefill {
            rows.push(row(&format!("prefill {len} tokens"), tok_s, "tok/s"));
            rows.push(row(&format!("time to first token ({len})"), ttft, "ms"));
        }
        rows.push(row(
            &format!("decode {} tokens", self.decode_tokens),
            self.decode_tok_s,
            "tok/s",
        ));
        for &(n, tok_s) in &self.batched {
            rows.push(row(
                &format!("batched decode, {n} sequences (aggregate)"),
                tok_s,
                "tok/s",
            ));
        }
        if let Some(streamed) = self.streamed {
            rows.push(row(
                &format!("streamed: time to first token ({DECODE_PROMPT})"),
                streamed.ttft_ms,
                "ms",
            ));
            rows.push(row(
                &format!("streamed: decode {} tokens", streamed.tokens),
                streamed.decode_tok_s,
                "tok/s",
            ));
        }
        if let Some(disk) = self.disk {
            rows.push(count_row("layers streamed from the file", disk.layers));
            rows.push(row(
                "  their ring on the device",
                disk.ring_bytes as f64 / (1 << 20) as f64,
                "MiB",
            ));
            rows.push(row(
                "  reading hidden behind compute",
                disk.hidden() * 100.0,
                "%",
            ));
        }
        rows.push(count_row("dispatches per token", self.dispatches_per_token));
        rows.push(count_row("dispatches per layer", self.dispatches_per_layer));
        if let Some(bytes) = self.device_peak_bytes {
            rows.push(row(
                "peak device memory (plugin's accounting)",
                bytes as f64 / (1 << 20) as f64,
                "MiB",
            ));
        }
        if let Some(bytes) = self.peak_rss_bytes {
            rows.push(row(
                "peak RSS (host process)",
                bytes as f64 / (1 << 20) as f64,
                "MiB",
            ));
        }
        if let Some(pipeline) = &self.pipeline {
            for (i, &(first, end, peak, busy)) in pipeline.devices.iter().enumerate() {
                rows.push(vec![
                    format!("device {i}: layers"),
                    format!("{first}..{end}"),
                    String::new(),
                ]);
                let peak = peak as f64 / (1 << 20) as f64;
                rows.push(row(&format!("device {i}: peak memory"), peak, "MiB"));
                rows.push(row(&format!("device {i}: busy"), busy, "s"));
            }
            rows.push(row(
                "hidden states moved per token",
                pipeline.bytes_per_token,
                "bytes",
            ));
            rows.push(row("pipeline bubble", pipeline.bubble * 100.0, "%"));
        }
        rows
    }
}

fn row(metric: &str, value: f64, unit: &str) -> Vec<String> {
    vec![metric.to_owned(), format!("{value:.1}"), unit.to_owned()]
}

fn count_row(metric: &str, value: u64) -> Vec<String> {
    vec![metric.to_owned(), value.to_string(), String::new()]
}

/// The median of `values` (not empty).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// This process's peak resident set size (`VmHWM`), where the OS reports it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn tuning_is_read_from_the_answer_and_passed_to_json_and_the_table() {
        let tuning = json!({
            "mode": "auto",
            "searches": 2,
            "search_seconds": 1.5,
            "kernels": [
                {"device": 0, "shape": "linear q4_1 576x576, 1 token",
                 "variant": "1 tok/inv, wg 8", "ms": 0.11, "source": "searched"},
                {"device": 0, "shape": "gated q4_1 3072x576 +norm, 64 tokens",
                 "variant": "4 tok/inv, wg 8", "ms": null, "source": "default"},
            ],
        });
        let answer = json!({
            "prefill": [],
            "decode": {"decode_tokens": 1, "decode_tok_s": 1.0},
            "batched": [],
            "tuning": tuning,
        });
        let report = Report::new("llama", &[answer], 0.0, 0.0, &[], &[]).unwrap();
        assert_eq!(report.to_json()["tuning"], tuning);
        let parsed = report.tuning.as_ref().unwrap();
        assert_eq!((parsed.searches, parsed.search_seconds), (2, 1.5));
        assert_eq!(parsed.kernels[1].2, "4 tok/inv, wg 8");
        assert_eq!(parsed.kernels[1].3, None);
        let rows = report.rows();
        let search = rows
            .iter()
            .find(|r| r[0].contains("tuning search"))
            .unwrap();
        assert_eq!((search[1].as_str(), search[2].as_str()), ("1500.0", "ms"));
    }

    #[test]
    fn report_takes_medians_and_names_fields_for_json() {
        let run = |decode: f64, prefill: f64| {
            json!({
                "adapter": "llvmpipe",
                "dispatches_per_token": 152,
                "dispatches_per_layer": 5,
                "prefill": [{"prompt_tokens": 128, "prefill_tok_s": prefill, "ttft_ms": 10.0}],
                "decode": {"decode_tokens": 128, "decode_tok_s": decode},
                "batched": [{"sequences": 4, "aggregate_tok_s": 2.0 * decode}],
            })
        };
        let runs = [run(10.0, 50.0), run(30.0, 70.0), run(20.0, 60.0)];
        let report = Report::new("llama@0.1.0", &runs, 900.0, 800.0, &[128], &[4]).unwrap();
        let j = report.to_json();
        assert_eq!(j["decode_tok_s"], 20.0);
        assert_eq!(j["prefill_tok_s_128"], 60.0);
        assert_eq!(j["batched_decode_tok_s_4"], 40.0);
        assert_eq!(j["dispatches_per_layer"], 5);
        let broken = [json!({"prefill": [], "decode": {}})];
        let err = Report::new("x", &broken, 0.0, 0.0, &[128], &[])
            .err()
            .unwrap();
        assert!(err.to_string().contains("prefill_tok_s"), "{err}");
    }

    #[test]
    fn per_kernel_takes_each_kernels_median_and_recomputes_shares() {
        let run = |a: f64, b: f64| {
            let step = json!({
                "tokens": 1, "position": 128, "total_ms": a + b,
                "kernels": [
                    {"kernel": "linear q8_0 49152x576", "calls": 1, "total_ms": a},
                    {"kernel": "attention", "calls": 30, "total_ms": b},
                ],
            });
            json!({"per_kernel": {"method": "timestamps", "decode": step, "prefill": step}})
        };
        let runs = [run(9.0, 1.0), run(1.0, 3.0), run(5.0, 2.0)];
        let p = PerKernel::median(&runs).unwrap();
        assert_eq!(p.method, "timestamps");
        let rows = p.decode.rows();
        assert_eq!(
            rows[0],
            ("linear q8_0 49152x576".to_owned(), 1, 5.0, 5.0 / 7.0)
        );
        assert_eq!(rows[1].1, 30);
        let j = p.to_json();
        assert_eq!(j["decode"]["total_ms"], 7.0);
        assert_eq!(j["prefill"]["kernels"][1]["kernel"], "attention");
        let err = PerKernel::median(&[json!({})]).unwrap_err().to_string();
        assert!(err.contains("per-kernel"), "{err}");
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().unwrap() > 1 << 20);
        }
    }
}
