//! # pio-server
//!
//! The OpenAI-compatible HTTP server of `pio serve`, over a [`PluginManager`] of the `pio-host`
//! library.
//!
//! - [`config`]: defaults, profiles, TOML file, `PIO_*` environment, flags; validation.
//! - [`plugins`]: what is served (a watched plugin directory, or plugins the caller loads), the
//!   loading state behind `/health`, and the reload-event log.
//! - [`engine`]: per-plugin bounded priority queues and the scheduler threads that make every
//!   call into the plugins (continuous batching, cancellation, timeouts).
//! - [`routes`]: the router and handlers; [`openai`]: the wire format; [`stream`]: SSE;
//!   [`body`]: JSON bodies within the size limit; [`auth`]: the API key; [`error`]: error
//!   bodies; [`metrics`]: Prometheus text; [`memory`]: the memory manager's listings, metrics
//!   and keep-alive expiry.
//! - `conn`: the accept loop and HTTP/1 connections with their header-read and idle timeouts
//!   and header size limit; `drain`: the stop after SIGTERM or SIGINT (readiness 503, new
//!   model requests refused, those in flight finished within the grace period).
//!
//! The HTTP side is async (`tokio`, `axum`); plugins are called only from the scheduler
//! threads, which talk to handlers through channels.

pub mod auth;
pub mod body;
mod complete;
pub mod config;
mod conn;
pub mod devices;
mod drain;
pub mod engine;
pub mod error;
pub mod logprobs;
pub mod memory;
pub mod metrics;
pub mod openai;
pub mod plugins;
pub mod routes;
pub mod stream;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::oneshot;

use pio_host::{watch::WatchOptions, PluginManager};

pub use config::{BatchConfig, BatchLayer, ConfigLayer, ConnectionLimits, Profile, ServerConfig};
pub use plugins::{LoadPlugins, LoadReport, PluginSource};

use engine::Engine;
use metrics::Metrics;
use plugins::PluginLog;

/// Everything the handlers share.
pub struct App {
    manager: Arc<PluginManager>,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    config: ServerConfig,
    plugins: Arc<PluginLog>,
    /// Unix seconds at start (the `created` of every model).
    started: u64,
    requests: AtomicU64,
    drain: Arc<drain::Drain>,
}

impl App {
    fn next_request_number(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed)
    }
}

/// How to run a server.
#[derive(Debug)]
pub struct ServerOptions {
    /// Address, limits, key.
    pub config: ServerConfig,
    /// What to serve.
    pub source: PluginSource,
    /// Watcher timing and plugin activation options.
    pub watch: WatchOptions,
    /// Print every reload event as a JSON line on stdout.
    pub print_events: bool,
}

/// A server listening on its address; dropping it stops it.
pub struct RunningServer {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: Option<oneshot::Sender<()>>,
    drain: Arc<drain::Drain>,
    shutdown_grace: Duration,
    _stop_loader: crossbeam_channel::Sender<()>,
    _stop_expiry: crossbeam_channel::Sender<()>,
}

impl RunningServer {
    /// Binds the address, starts answering at once (`/health` is 503 until the plugins are
    /// loaded) and loads the plugins in the background.
    pub fn start(manager: Arc<PluginManager>, options: ServerOptions) -> std::io::Result<Self> {
        let ServerOptions {
            config,
            source,
            watch,
            print_events,
        } = options;
        manager.set_memory_policy(config.memory.clone());
        match config.memory.budget {
            Some(budget) => tracing::info!(
                budget = %pio_host::memory::format_size(budget),
                "memory budget: plugins are swapped out (least recently used, idle first) to stay within it"
            ),
            None => tracing::info!(
                "no memory budget: plugins are never swapped out for memory; set memory_budget, PIO_MEMORY_BUDGET or --memory-budget to share a device between plugins"
            ),
        }
        let listener = std::net::TcpListener::bind(config.addr).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.addr))
        })?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let metrics = Arc::new(Metrics::default());
        let engine = Arc::new(Engine::new(
            manager.clone(),
            metrics.clone(),
            config.queue_depth,
            config.request_timeout,
            config.isolation.worker.stall_timeout,
            config.batch,
        ));
        Engine::start_watchdog(&engine)?;
        let (stop_expiry, expiry_rx) = crossbeam_channel::bounded(1);
        memory::start_expiry(manager.clone(), expiry_rx)?;
        let log = Arc::new(PluginLog::new(print_events));
        let (stop_loader, stop_rx) = crossbeam_channel::bounded(1);
        plugins::start_loading(
            manager.clone(),
            engine.clone(),
            log.clone(),
            source,
            watch,
            stop_rx,
        )?;
        let drain = Arc::new(drain::Drain::default());
        let shutdown_grace = config.shutdown_grace;
        let app = Arc::new(App {
            manager,
            engine,
            metrics,
            config,
            plugins: log,
            started: openai::unix_seconds(),
            requests: AtomicU64::new(1),
            drain: drain.clone(),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("pio-http")
            .enable_io()
            .enable_time()
            .build()?;
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let limits = app.config.connection;
        let router = routes::router(app);
        runtime.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::error!("cannot serve on {addr}: {e}");
                    return;
                }
            };
            conn::serve(listener, router, limits, shutdown_rx).await;
        });
        tracing::info!(%addr, "listening");
        Ok(Self {
            addr,
            runtime: Some(runtime),
            shutdown: Some(shutdown),
            drain,
            shutdown_grace,
            _stop_loader: stop_loader,
            _stop_expiry: stop_expiry,
        })
    }

    /// The address the server listens on (with the port chosen when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking model requests — readiness (`/health`, `/health/ready`) answers 503
    /// "draining" and new model requests 503 with `Connection: close` — and waits until the
    /// requests in flight have finished, streams included, or `grace` has passed. Returns how
    /// many were still running then (they are cut when the server is dropped).
    pub fn drain(&self, grace: Duration) -> usize {
        self.drain.begin();
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        runtime.block_on(self.drain.settle(grace))
    }

    /// Serves until Ctrl-C (SIGINT) or SIGTERM, then drains (see [`RunningServer::drain`],
    /// within the configured `shutdown_grace`) and stops.
    pub fn run_until_signal(self) -> std::io::Result<()> {
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        runtime.block_on(async {
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let (signalled, mut received) = tokio::sync::mpsc::channel::<()>(2);
            let on_interrupt = signalled.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    let _ = on_interrupt.send(()).await;
                }
            });
            tokio::spawn(async move {
                terminate.recv().await;
                let _ = signalled.send(()).await;
            });
            received.recv().await;
            Ok::<_, std::io::Error>(())
        })?;
        let in_flight = self.drain.in_flight();
        tracing::info!(
            in_flight,
            grace_secs = self.shutdown_grace.as_secs(),
            "stop signal: draining (no new requests; those in flight may finish)"
        );
        let cut = self.drain(self.shutdown_grace);
        match cut {
            0 => tracing::info!("drained: every request finished"),
            n => tracing::warn!("grace period over: {n} requests still running are cut"),
        }
        Ok(())
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            // Open streams are cut after this grace period.
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}
