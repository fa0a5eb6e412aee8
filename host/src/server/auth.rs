//! Optional API-key authentication: with a key configured, every route it wraps requires
//! `Authorization: Bearer <key>` (the router leaves `/health` outside it).

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::header::AUTHORIZATION,
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{error::ApiError, App};

/// Middleware: lets the request through when no key is configured or the right one is sent.
pub async fn require_api_key(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &app.config.api_key else {
        return next.run(request).await;
    };
    let sent = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match sent {
        None => {
            ApiError::unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
                .into_response()
        }
        Some(key) if same(key.trim().as_bytes(), expected.as_bytes()) => next.run(request).await,
        Some(_) => ApiError::unauthorized("invalid API key").into_response(),
    }
}

/// Compares without stopping at the first difference, so timing does not reveal the prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn compares_whole_keys() {
        assert!(super::same(b"secret", b"secret"));
        assert!(!super::same(b"secret", b"secreT"));
        assert!(!super::same(b"secret", b"secret2"));
    }
}
