//! Client connections: the accept loop and one HTTP/1 connection per task (hyper), with the
//! limits that keep half-sent requests and idle connections from piling up.
//!
//! Each connection has a watchdog that knows which phase it is in:
//!
//! - *idle* — no request in flight and no byte of the next one yet (a fresh connection, or a
//!   kept-alive one between requests): closed after `idle_timeout`;
//! - *receiving* — the first byte of a request has arrived but its headers are not complete
//!   (the router has not been called): closed after `header_read_timeout`;
//! - *busy* — a request is in the router or its response body is being sent: no limit here
//!   (the request timeout and the body read timeout of [`body`](super::body) bound it).
//!
//! Closing means dropping the connection: the client reads end of file. Request line plus
//! headers larger than `header_limit_bytes` are answered 431 by hyper, which then closes the
//! connection (the read buffer is capped at the limit too, at least 8 KiB, so incomplete headers
//! cannot grow past it). hyper's own header read timer (which starts when a connection waits for a
//! request, so it also bounds idle time) is set to `idle_timeout + header_read_timeout` as a
//! backstop, e.g. for a pipelined request whose first bytes arrived during the previous one.

use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes, HttpBody},
    http::{Request, Response},
    Router,
};
use hyper::{
    body::{Frame, Incoming, SizeHint},
    server::conn::http1,
    service::Service,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch, Notify},
};

use super::config::ConnectionLimits;

/// The smallest read buffer hyper accepts.
const MIN_BUF_SIZE: usize = 8192;

/// Accepts connections on `listener` and serves each with `router` under `limits` until
/// `shutdown` fires (or its sender is dropped); then open connections are asked to finish
/// their current request and close.
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    mut shutdown: oneshot::Receiver<()>,
) {
    let (stop, stopped) = watch::channel(());
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_connection(stream, router.clone(), limits, stopped.clone()));
                }
                Err(error) if is_per_connection(&error) => {}
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("accepting a connection failed: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(stop);
}

/// Accept errors that concern only the connection being accepted.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection until it ends, a limit of its watchdog closes it, or the server stops.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: ConnectionLimits,
    mut stopped: watch::Receiver<()>,
) {
    let phase = Arc::new(PhaseWatch::new());
    let io = TokioIo::new(Watched {
        stream,
        phase: phase.clone(),
    });
    let service = Tracked {
        router: TowerToHyperService::new(router),
        phase: phase.clone(),
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout + limits.header_read_timeout)
        // Checked once the headers are complete ...
        .max_header_size(limits.header_limit_bytes)
        // ... and, while they are not, the read buffer cannot grow past the limit (hyper's
        // smallest buffer is 8 KiB).
        .max_buf_size(limits.header_limit_bytes.max(MIN_BUF_SIZE));
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        let deadline = phase.deadline(&limits);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!("connection ended: {error}");
                }
                return;
            }
            () = phase.changed.notified() => {}
            () = sleep_until(deadline) => {
                // The phase may have changed just as the timer fired.
                if phase.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!("connection closed: {}", phase.describe());
                    return;
                }
            }
            _ = stopped.changed(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Where a connection stands, for its watchdog.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No request in flight and no byte of the next one, since then.
    Idle(Instant),
    /// The first bytes of a request arrived then; its headers are not complete.
    Receiving(Instant),
    /// This many requests are being answered.
    Busy(usize),
}

/// A connection's phase, shared by its IO (bytes arriving), its service (requests starting and
/// ending) and its watchdog.
#[derive(Debug)]
struct PhaseWatch {
    phase: Mutex<Phase>,
    /// Wakes the watchdog when the phase changes.
    changed: Notify,
}

impl PhaseWatch {
    fn new() -> Self {
        Self {
            phase: Mutex::new(Phase::Idle(Instant::now())),
            changed: Notify::new(),
        }
    }

    fn update(&self, change: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        *phase = change(*phase);
        drop(phase);
        self.changed.notify_one();
    }

    fn bytes_arrived(&self) {
        let idle = matches!(
            *self.phase.lock().unwrap_or_else(|p| p.into_inner()),
            Phase::Idle(_)
        );
        if idle {
            self.update(|phase| match phase {
                Phase::Idle(_) => Phase::Receiving(Instant::now()),
                other => other,
            });
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.update(|phase| match phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            Phase::Idle(_) | Phase::Receiving(_) => Phase::Busy(1),
        });
        InFlight(self.clone())
    }

    fn request_ended(&self) {
        self.update(|phase| match phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        });
    }

    /// When the connection is to be closed unless its phase changes.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        match *self.phase.lock().unwrap_or_else(|p| p.into_inner()) {
            Phase::Idle(since) => Some(since + limits.idle_timeout),
            Phase::Receiving(since) => Some(since + limits.header_read_timeout),
            Phase::Busy(_) => None,
        }
    }

    fn describe(&self) -> &'static str {
        match *self.phase.lock().unwrap_or_else(|p| p.into_inner()) {
            Phase::Idle(_) => "idle timeout",
            Phase::Receiving(_) => "the request headers did not arrive in time",
            Phase::Busy(_) => "busy",
        }
    }
}

/// A request in flight; dropping it (the response body sent or abandoned) ends it.
#[derive(Debug)]
struct InFlight(Arc<PhaseWatch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// The TCP stream, noting when bytes arrive.
struct Watched {
    stream: TcpStream,
    phase: Arc<PhaseWatch>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.phase.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The router as hyper's service, marking each request in flight until its response body is
/// done.
#[derive(Clone)]
struct Tracked {
    router: TowerToHyperService<Router>,
    phase: Arc<PhaseWatch>,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl Service<Request<Incoming>> for Tracked {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, request: Request<Incoming>) -> Answer {
        let in_flight = self.phase.request_started();
        let response = self.router.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Body::new(HoldingBody::new(body, in_flight))))
        })
    }
}

/// A response body holding `T` (a guard marking its request in flight) until it is dropped.
pub(crate) struct HoldingBody<T> {
    body: Body,
    _held: T,
}

impl<T> HoldingBody<T> {
    pub fn new(body: Body, held: T) -> Self {
        Self { body, _held: held }
    }
}

impl<T: Unpin> HttpBody for HoldingBody<T> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
