//! The JSON body extractor: the body is read up to the configured limit (larger is 413) within
//! the idle timeout (a body still incomplete then is 408, and the connection is closed) and
//! parsed into the route's request type (malformed or mistyped is 400, naming the problem).

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::StatusCode,
};
use serde::de::DeserializeOwned;

use super::{error::ApiError, App};

/// A request body parsed as JSON into `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<App>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, app: &Arc<App>) -> Result<Self, ApiError> {
        let timeout = app.config.connection.idle_timeout;
        let read = tokio::time::timeout(timeout, Bytes::from_request(request, app));
        let bytes = read
            .await
            .map_err(|_| ApiError::body_timeout(timeout))?
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large(app.config.body_limit_bytes)
                } else {
                    ApiError::malformed(format!(
                        "cannot read the request body: {}",
                        rejection.body_text()
                    ))
                }
            })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Data => ApiError::malformed(format!("invalid request: {e}")),
                Category::Syntax | Category::Eof | Category::Io => {
                    ApiError::malformed(format!("the body is not valid JSON: {e}"))
                }
            }
        })
    }
}
