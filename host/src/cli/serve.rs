//! `pio serve --plugins DIR`: the long-running host. It loads and activates every plugin folder
//! in DIR, watches DIR and hot-reloads plugins as folders are added, changed or removed, and
//! prints every reload event as one JSON line on stdout (the event stream).

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use clap::Args;

use crate::watch::{PluginWatcher, WatchOptions};

use super::{run::ActivateArgs, session::new_manager};

/// Arguments of `pio serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The plugin directory to load and watch.
    #[arg(long)]
    plugins: PathBuf,
    /// Quiet time after the last file change before a folder is examined, in milliseconds.
    #[arg(long, default_value_t = 200)]
    debounce_ms: u64,
    #[command(flatten)]
    activate: ActivateArgs,
}

/// `pio serve`.
pub fn serve(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let manager = Arc::new(new_manager()?);
    let options = WatchOptions {
        debounce: std::time::Duration::from_millis(args.debounce_ms),
        activate: args.activate.options(),
        ..WatchOptions::default()
    };
    let (events_tx, events) = crossbeam_channel::unbounded();
    let _watcher = PluginWatcher::start(manager.clone(), &args.plugins, options, events_tx)?;
    eprintln!(
        "watching {}; events follow as JSON lines (Ctrl-C stops)",
        args.plugins.display()
    );
    for event in events {
        println!("{}", serde_json::to_string(&event)?);
    }
    Ok(ExitCode::SUCCESS)
}
