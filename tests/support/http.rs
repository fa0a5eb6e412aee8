//! The HTTP server on loopback for tests and benchmarks: a plugin directory with the plugins a
//! test asks for, a server on an ephemeral port, and a small blocking client.

use std::{
    io::{BufRead, BufReader, Read},
    net::TcpStream,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use pio_host::{watch::WatchOptions, ActivateOptions, PluginManager};
use pio_server::{ConfigLayer, PluginSource, RunningServer, ServerConfig, ServerOptions};
use serde_json::Value;

use crate::pack_into;

/// How long a test waits for a state it polls for before it fails.
pub const WAIT: Duration = Duration::from_secs(60);

/// A plugin to put in the served directory.
pub struct Served<'a> {
    /// Folder name.
    pub folder: &'a str,
    /// The built library.
    pub library: &'a Path,
    /// Manifest configuration.
    pub config: Value,
}

/// A running server with its own plugin directory and cache.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The key clients must send, if any.
    pub api_key: Option<String>,
    /// The served (and watched) plugin directory.
    pub plugin_dir: PathBuf,
    manager: Arc<PluginManager>,
    server: Option<RunningServer>,
    _tmp: tempfile::TempDir,
}

impl TestServer {
    /// Packs `plugins` into a fresh directory and serves it on an ephemeral loopback port with
    /// the settings of `layer` (its address is ignored), activating with `activate`; returns
    /// once `/health` says ready.
    pub fn start(plugins: &[Served<'_>], layer: ConfigLayer, activate: ActivateOptions) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("plugins");
        std::fs::create_dir_all(&dir).unwrap();
        let mut manager = PluginManager::new(&tmp.path().join("shadow")).unwrap();
        for plugin in plugins {
            pack_into(
                &manager,
                plugin.library,
                &dir,
                plugin.folder,
                plugin.config.clone(),
            );
        }
        let config: ServerConfig = ConfigLayer {
            addr: Some("127.0.0.1:0".to_owned()),
            plugins: Some(dir.clone()),
            ..layer
        }
        .resolve()
        .unwrap();
        manager.set_isolation(config.isolation.clone());
        let manager = Arc::new(manager);
        let api_key = config.api_key.clone();
        let server = RunningServer::start(
            manager.clone(),
            ServerOptions {
                config,
                source: PluginSource::Directory(dir.clone()),
                watch: WatchOptions {
                    activate,
                    ..WatchOptions::default()
                },
                print_events: false,
            },
        )
        .unwrap();
        let this = Self {
            base: format!("http://{}", server.local_addr()),
            api_key,
            plugin_dir: dir,
            manager,
            server: Some(server),
            _tmp: tmp,
        };
        this.wait_for("/health to answer 200", || this.get("/health").0 == 200);
        this
    }

    /// Polls `done` until it holds, failing the test after [`WAIT`].
    pub fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < WAIT, "waited {WAIT:?} for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Packs `library` with `config` in a hidden staging folder (which the watcher ignores),
    /// then moves the library and the manifest into `folder` of the served directory with
    /// atomic renames, library first: a new plugin or a reload for the watcher.
    pub fn install(&self, folder: &str, library: &Path, config: Value) {
        let staging_name = format!(".staging-{folder}");
        let (staging, manifest) = pack_into(
            &self.manager,
            library,
            &self.plugin_dir,
            &staging_name,
            config,
        );
        let target = self.plugin_dir.join(folder);
        std::fs::create_dir_all(&target).unwrap();
        std::fs::rename(
            staging.join(&manifest.library),
            target.join(&manifest.library),
        )
        .unwrap();
        std::fs::rename(staging.join("plugin.json"), target.join("plugin.json")).unwrap();
        std::fs::remove_dir_all(staging).unwrap();
    }

    /// A raw TCP connection to the server, whose reads give up after [`WAIT`].
    pub fn connect(&self) -> TcpStream {
        let addr = self.base.strip_prefix("http://").expect("an http:// base");
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into()
    }

    fn authorize<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        with_key(request, self.api_key.as_deref())
    }

    /// `GET path` with the server's key: status and body text.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.get_with_key(path, self.api_key.as_deref())
    }

    /// `GET path` sending `key` (or none): status and body text.
    pub fn get_with_key(&self, path: &str, key: Option<&str>) -> (u16, String) {
        read(with_key(Self::agent().get(self.url(path)), key).call())
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> String {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200, "{text}");
        text
    }

    /// The value of the metric line starting with `series` (name and labels), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    /// `POST path` with raw `body` and optional `key`: status and body text.
    pub fn post_raw(&self, path: &str, body: &[u8], key: Option<&str>) -> (u16, String) {
        let request = Self::agent()
            .post(self.url(path))
            .header("Content-Type", "application/json");
        read(with_key(request, key).send(body))
    }

    /// `POST path` with raw `body` and the header `Authorization: {authorization}`: status and
    /// body text.
    pub fn post_with_authorization(
        &self,
        path: &str,
        body: &[u8],
        authorization: &str,
    ) -> (u16, String) {
        let request = Self::agent()
            .post(self.url(path))
            .header("Content-Type", "application/json")
            .header("Authorization", authorization);
        read(request.send(body))
    }

    /// `POST path` with a JSON body and the server's key: status and JSON answer.
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) =
            self.post_raw(path, body.to_string().as_bytes(), self.api_key.as_deref());
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("answer to {path} is not JSON ({e}): {text}"));
        (status, json)
    }

    /// `POST path` expecting an event stream: the status and the `data:` payloads as they
    /// arrive.
    pub fn stream(&self, path: &str, body: &Value) -> (u16, SseReader) {
        let response = self
            .authorize(Self::agent().post(self.url(path)))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes())
            .expect("the request is sent");
        let status = response.status().as_u16();
        let reader = BufReader::new(Box::new(response.into_body().into_reader()) as Box<dyn Read>);
        (status, SseReader { reader })
    }

    /// Drains the server (see `RunningServer::drain`): the requests still running when
    /// `grace` ends.
    pub fn drain(&self, grace: Duration) -> usize {
        self.server
            .as_ref()
            .expect("the server runs until stopped")
            .drain(grace)
    }

    /// Stops the server now (it also stops when dropped).
    pub fn stop(&mut self) {
        self.server.take();
    }
}

fn with_key<B>(request: ureq::RequestBuilder<B>, key: Option<&str>) -> ureq::RequestBuilder<B> {
    match key {
        Some(key) => request.header("Authorization", &format!("Bearer {key}")),
        None => request,
    }
}

fn read(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, String) {
    let mut response = response.expect("the server answers");
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .expect("the body is text");
    (status, text)
}

/// The `data:` payloads of a server-sent event stream.
pub struct SseReader {
    reader: BufReader<Box<dyn Read>>,
}

impl SseReader {
    /// The next payload (`[DONE]` included), or `None` at the end of the stream.
    pub fn next_data(&mut self) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                return Some(data.to_owned());
            }
        }
    }

    /// The rest of the body as text (the error body of a refused request).
    pub fn into_text(mut self) -> String {
        let mut text = String::new();
        let _ = self.reader.read_to_string(&mut text);
        text
    }

    /// Every remaining payload.
    pub fn collect_all(mut self) -> Vec<String> {
        std::iter::from_fn(|| self.next_data()).collect()
    }
}

/// The text of a sequence of chat or completion chunks (`delta.content` or `text`).
pub fn chunk_text(chunk: &Value) -> &str {
    let choice = &chunk["choices"][0];
    choice["delta"]["content"]
        .as_str()
        .or_else(|| choice["text"].as_str())
        .unwrap_or("")
}
