//! `ApiError`: every admin API error is answered as JSON, `{"error": .., "code": ..}`, built
//! here, and control-plane errors ([`AdminError`]) become HTTP statuses in one place.
//!
//! Plain values; handlers on the admin server's tasks return them.

use std::borrow::Cow;

use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::control::AdminError;
use crate::hooks::SubscriberLimit;

/// An admin API error, rendered as `{"error": .., "code": ..}`, plus `"node": ..` when it
/// concerns one node of a fleet.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    /// One of the codes the admin API documents, or one passed on from another node's answer.
    code: Cow<'static, str>,
    message: String,
    node: Option<String>,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            node: None,
        }
    }

    /// The same error, naming the fleet node it concerns.
    pub(super) fn with_node(mut self, node: &str) -> Self {
        self.node = Some(node.to_owned());
        self
    }

    /// The human-readable message.
    pub(super) fn message(&self) -> &str {
        &self.message
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

/// The one place control-plane errors become HTTP answers.
impl From<AdminError> for ApiError {
    fn from(err: AdminError) -> Self {
        let (status, code) = match &err {
            AdminError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AdminError::RelayFull(_) => (StatusCode::SERVICE_UNAVAILABLE, "relay_full"),
            AdminError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            AdminError::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "stopped"),
            AdminError::NotMigrating(_) => (StatusCode::CONFLICT, "not_migrating"),
            AdminError::UnknownPeer(_) => (StatusCode::NOT_FOUND, "unknown_peer"),
            AdminError::NotAFleetNode => (StatusCode::CONFLICT, "not_a_fleet_node"),
            AdminError::DirectoryUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "directory_unavailable")
            }
        };
        ApiError::new(status, code, err.to_string())
    }
}

impl From<SubscriberLimit> for ApiError {
    fn from(err: SubscriberLimit) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_subscribers",
            err.to_string(),
        )
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let code = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "invalid_request"
        };
        ApiError::new(rejection.status(), code, rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message, "code": self.code });
        if let Some(node) = self.node {
            body["node"] = serde_json::Value::String(node);
        }
        let body = Json(body);
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
