//! The `pio` command line: argument definitions and dispatch. Each command lives in its own
//! module and only calls the host library.

mod models;
mod output;
mod plugins;
mod run;
mod session;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

/// Inference-PIO: a host for hot-loadable transformer inference plugins.
#[derive(Debug, Parser)]
#[command(name = "pio", version, about, propagate_version = true)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect, check and pack plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// List and fetch the models the project knows.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Run one input through a plugin: a JSON object goes to `infer`, text to `generate` (or
    /// `embed` for embedding-only plugins).
    Run(run::RunArgs),
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// List the plugins found in the plugin directories.
    List(PluginDirs),
    /// Show everything known about one plugin.
    Info {
        /// Plugin name, or `name@version`.
        name: String,
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
    let result = match cli.command {
        Command::Plugins(PluginsCommand::List(dirs)) => plugins::list(&dirs),
        Command::Plugins(PluginsCommand::Info { name, dirs }) => plugins::info(&name, &dirs),
        Command::Plugins(PluginsCommand::Check { path }) => plugins::check(&path),
        Command::Plugins(PluginsCommand::Pack(args)) => plugins::pack(&args),
        Command::Models(ModelsCommand::List) => models::list(),
        Command::Models(ModelsCommand::Fetch { ids }) => models::fetch(&ids),
        Command::Run(args) => run::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
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
