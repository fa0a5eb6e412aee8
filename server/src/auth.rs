//! Optional API-key authentication: with a key configured, every route it wraps requires
//! `Authorization: Bearer <key>` (the router leaves `/health` outside it). The scheme is matched
//! case-insensitively (RFC 7235: `bearer`, `BEARER` and `Bearer` are the same scheme).

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
        .and_then(bearer_token);
    match sent {
        None => {
            ApiError::unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
                .into_response()
        }
        Some(key) if same(key.as_bytes(), expected.as_bytes()) => next.run(request).await,
        Some(_) => ApiError::unauthorized("invalid API key").into_response(),
    }
}

/// The token of an `Authorization` value whose scheme is `Bearer` in any case, with the
/// whitespace around it removed; `None` for another scheme or no token.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
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

    #[test]
    fn the_scheme_is_case_insensitive() {
        for value in [
            "Bearer k",
            "bearer k",
            "BEARER k",
            "bEaReR  k ",
            "\tbearer\tk",
        ] {
            assert_eq!(super::bearer_token(value), Some("k"), "{value:?}");
        }
        for value in ["Basic k", "Bearer", "Bearer ", "Bearerk", "k"] {
            assert_eq!(super::bearer_token(value), None, "{value:?}");
        }
    }
}
