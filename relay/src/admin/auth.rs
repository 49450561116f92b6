//! Bearer-token auth of the `/v1/` routes: the admin token, and the event stream's own token
//! when one is configured. Tokens are kept and compared as SHA-256 digests, in constant time
//! (`crate::crypto`), so the comparison does not depend on the token or its length.
//!
//! Middleware on the admin server's tasks; reads only [`AdminState`].

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AdminState, ApiError};
use crate::crypto;

pub(super) fn digest(token: &str) -> Arc<[u8; 32]> {
    Arc::new(crypto::sha256(token.as_bytes()))
}

/// Rejects `/v1/` requests without the right bearer token, when one is configured.
pub(super) async fn require_token(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Response {
    check_token(state.token_digest.as_deref(), request, next).await
}

/// Rejects `/v1/events` requests without the event stream's token, when there is one.
pub(super) async fn require_stream_token(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Response {
    check_token(state.stream_token_digest.as_deref(), request, next).await
}

async fn check_token(expected: Option<&[u8; 32]>, request: Request, next: Next) -> Response {
    if let Some(expected) = expected {
        if !bearer_matches(request.headers(), expected) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token",
            )
            .into_response();
        }
    }
    next.run(request).await
}

fn bearer_matches(headers: &HeaderMap, expected: &[u8; 32]) -> bool {
    let Some((scheme, token)) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
    else {
        return false;
    };
    let presented = crypto::sha256(token.trim().as_bytes());
    // Evaluate both sides so the scheme check does not short-circuit the comparison.
    let scheme_ok = scheme.eq_ignore_ascii_case("bearer");
    let token_ok = crypto::constant_time_eq(&presented, expected);
    scheme_ok & token_ok
}
