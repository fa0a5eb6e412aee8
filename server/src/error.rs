//! OpenAI-style error responses: `{"error": {"message", "type", "param", "code"}}` with the
//! matching HTTP status. Every refusal of the server goes through [`ApiError`].

use std::borrow::Cow;

use axum::{
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};
use pio_host::ErrorKind;

use pio_host::HostError;

use super::engine::EngineError;

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, naming the field, limit or model.
    pub message: String,
    /// OpenAI error type (`invalid_request_error`, `authentication_error`, ...).
    pub kind: &'static str,
    /// The request field at fault, if one is (`messages[2].role`).
    pub param: Option<Cow<'static, str>>,
    /// A stable machine-readable code.
    pub code: &'static str,
}

/// The error type and code of an answered error, attached to the response so the metrics
/// layer can count errors by kind.
#[derive(Debug, Clone, Copy)]
pub struct ErrorLabel {
    /// OpenAI error type.
    pub kind: &'static str,
    /// Stable code.
    pub code: &'static str,
}

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code,
        }
    }

    /// 400: the request is malformed or out of range; `param` names the field.
    pub fn invalid(param: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_value",
                message,
            )
        }
    }

    /// 400: the body is not the JSON the route expects.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            message,
        )
    }

    /// 401: no API key, or the wrong one.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            message,
        )
    }

    /// 404: no such model (plugin), or no such route.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", code, message)
    }

    /// 405: the route exists with another method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            "method not allowed on this route",
        )
    }

    /// 413: the body exceeds the configured limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "body_too_large",
            format!("request body exceeds the limit of {limit} bytes"),
        )
    }

    /// 408: the request body did not arrive in time; the connection is closed.
    pub fn body_timeout(after: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "body_timeout",
            format!(
                "the request body did not arrive within {} s",
                after.as_secs()
            ),
        )
    }

    /// 503: the server cannot serve this now (loading, timed out, plugin not ready).
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable_error",
            code,
            message,
        )
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            message,
        )
    }

    /// The error as the JSON body OpenAI clients expect.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body().to_string(),
        )
            .into_response();
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still be on its way: do not read it as the next request.
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        response.extensions_mut().insert(ErrorLabel {
            kind: self.kind,
            code: self.code,
        });
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::NotServed(model) => ApiError {
                param: Some("model".into()),
                ..ApiError::not_found(
                    "model_not_found",
                    format!("model '{model}' is not served (GET /v1/models lists the models)"),
                )
            },
            EngineError::QueueFull { plugin, depth } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "queue_full",
                format!("the request queue of '{plugin}' is full ({depth} waiting); retry later"),
            ),
            EngineError::Timeout(after) => ApiError::unavailable(
                "timeout",
                format!("the request did not finish within {} s", after.as_secs()),
            ),
            EngineError::Stopped(plugin) => ApiError::unavailable(
                "plugin_stopped",
                format!("plugin '{plugin}' stopped serving before answering"),
            ),
            EngineError::Host(error) => ApiError::from(&error),
            EngineError::Step(error) => ApiError::from(&*error),
        }
    }
}

impl From<HostError> for ApiError {
    fn from(error: HostError) -> Self {
        ApiError::from(&error)
    }
}

impl From<&HostError> for ApiError {
    fn from(error: &HostError) -> Self {
        let message = error.to_string();
        match error {
            HostError::NotFound(_) => ApiError {
                param: Some("model".into()),
                ..ApiError::not_found("model_not_found", message)
            },
            HostError::MissingCapability { .. } => ApiError::invalid("model", message),
            HostError::InvalidTransition { .. } => {
                ApiError::unavailable("plugin_not_active", message)
            }
            HostError::InstanceGone { .. } => ApiError::unavailable("instance_replaced", message),
            HostError::Plugin { error, .. } => match error.kind {
                ErrorKind::InvalidInput => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_input",
                    message,
                ),
                ErrorKind::Unsupported => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "unsupported",
                    message,
                ),
                ErrorKind::OutOfMemory => ApiError::unavailable("out_of_memory", message),
                _ => ApiError::internal(message),
            },
            // The plugin's worker crashed, hung or gave up: this request is lost, the next one
            // restarts the worker (or finds the plugin failed).
            HostError::Worker { .. } => ApiError::unavailable("plugin_crashed", message),
            _ => ApiError::internal(message),
        }
    }
}
