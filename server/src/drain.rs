//! Draining before a stop: after SIGTERM or SIGINT the server answers readiness 503
//! ("draining") at once, refuses new model requests with 503 (a load balancer retries them on
//! another replica), lets the requests in flight finish — streams included — and only then
//! stops, or when the grace period ends.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tokio::sync::Notify;

use crate::{conn::HoldingBody, error::ApiError, App};

/// Whether the server is draining, and the model requests in flight.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    /// Signalled when a request ends.
    ended: Notify,
}

impl Drain {
    /// From now on, new model requests are refused and readiness is 503.
    pub fn begin(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Model requests being answered (their response bodies included).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no model request is in flight, or `grace` has passed; returns how many
    /// still are.
    pub async fn settle(&self, grace: Duration) -> usize {
        let idle = async {
            loop {
                let ended = self.ended.notified();
                if self.in_flight() == 0 {
                    return;
                }
                ended.await;
            }
        };
        let _ = tokio::time::timeout(grace, idle).await;
        self.in_flight()
    }

    fn start_request(self: &Arc<Self>) -> InFlightRequest {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlightRequest(self.clone())
    }
}

/// A model request being answered; dropping it (its response body sent or abandoned) ends it.
struct InFlightRequest(Arc<Drain>);

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.ended.notify_waiters();
    }
}

/// Middleware of the model routes: while draining, 503 with `Connection: close` (nothing new
/// starts here); otherwise the request counts as in flight until its response body is done.
pub(crate) async fn track(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if app.drain.is_draining() {
        let mut response = ApiError::unavailable(
            "draining",
            "this server is shutting down and takes no new requests; retry on another replica",
        )
        .into_response();
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        return response;
    }
    let in_flight = app.drain.start_request();
    next.run(request)
        .await
        .map(|body| Body::new(HoldingBody::new(body, in_flight)))
}
