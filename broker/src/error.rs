//! [`ApiError`]: the only type that becomes an error response.
//!
//! The body is always `{"error","error_description"}` (RFC 6749 §5.2) with a stable code
//! and a description an operator can act on. Internal detail (I/O errors, file paths) goes
//! to the logs only, never to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use broker_client::types::ErrorResponse;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OAuth error code.
    pub code: &'static str,
    /// Operator-actionable description (never a secret).
    pub description: String,
    /// Extra headers, e.g. `Retry-After`.
    pub retry_after: Option<u64>,
    /// What the operator needs and the caller must not see (file paths, URLs, I/O
    /// errors): recorded as the audit record's `reason` instead of `description`, never
    /// sent.
    pub operator_detail: Option<String>,
    /// A `DPoP-Nonce` to hand the caller (RFC 9449 §8).
    pub dpop_nonce: Option<String>,
}

impl ApiError {
    /// An error with the given status, code and description.
    pub fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            code,
            description: description.into(),
            retry_after: None,
            operator_detail: None,
            dpop_nonce: None,
        }
    }

    /// The same error, with `detail` for the audit record and the log only.
    pub fn with_operator_detail(mut self, detail: impl Into<String>) -> Self {
        self.operator_detail = Some(detail.into());
        self
    }

    /// 400 `invalid_request`.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// 503: the decision could not be recorded, so nothing is returned.
    pub fn audit_unavailable() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the broker cannot record this decision in its audit log, so it issues nothing; retry later",
        );
        e.retry_after = Some(1);
        e
    }

    /// 503: a state change (revocation, kill switch, grant) could not be made durable,
    /// so nothing changed.
    pub fn store_unavailable() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the change could not be stored; nothing was changed; retry",
        );
        e.retry_after = Some(1);
        e
    }

    /// 503: this replica has not confirmed its view of the shared state recently, so it
    /// might miss a revocation made on another replica; it answers nothing it cannot
    /// stand behind.
    pub fn state_stale() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "this broker replica cannot confirm its view of revocations in the state database (store.max_staleness passed); it issues and vouches for nothing until the database is reachable again; retry",
        );
        e.retry_after = Some(1);
        e
    }

    /// 500 without detail (the detail is logged by the caller).
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal error; the broker's log has the detail",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorResponse {
            error: self.code.to_owned(),
            error_description: Some(self.description),
        };
        let mut res = (self.status, Json(body)).into_response();
        let h = res.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(v) = self
            .dpop_nonce
            .as_deref()
            .and_then(|n| HeaderValue::from_str(n).ok())
        {
            h.insert("dpop-nonce", v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"jit-broker\""),
            );
        }
        res
    }
}
