//! The HTTP surface: [`router`] builds the axum router over an [`AppState`].
//!
//! Every input is bounded here: request bodies by `max_body_bytes`, whole requests by a
//! timeout; header sizes are bounded by the connection settings in [`crate::server`].

pub mod caller;
pub mod caller_request;
pub mod handlers;
#[cfg(test)]
mod in_process;
#[cfg(test)]
mod in_process_client_auth;
#[cfg(test)]
mod in_process_denials;
#[cfg(test)]
mod in_process_feed;
#[cfg(test)]
mod in_process_governance;
#[cfg(test)]
mod in_process_key_records;
#[cfg(test)]
pub(crate) mod in_process_keys;
#[cfg(test)]
pub(crate) mod in_process_record_first;
pub mod record;
pub mod refusal;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

// Below the HTTP layer (the issuance service uses them too); re-exported for handlers.
pub use crate::error::ApiError;
pub use crate::state::AppState;

/// The token endpoint (RFC 6749 §3.2).
pub const TOKEN_PATH: &str = "/oauth2/token";
/// The introspection endpoint (RFC 7662).
pub const INTROSPECTION_PATH: &str = "/oauth2/introspect";
/// The revocation endpoint (RFC 7009).
pub const REVOCATION_PATH: &str = "/oauth2/revoke";
/// The JWKS (RFC 7517).
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// Limits applied to every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest body, bytes.
    pub max_body_bytes: usize,
    /// Whole-request timeout.
    pub request_timeout: Duration,
}

/// The broker's router.
pub fn router(state: AppState, limits: Limits) -> Router {
    let timeout = limits.request_timeout;
    // The OAuth endpoints run in a `request` span with a W3C trace id (`crate::trace`).
    let traced = || middleware::from_fn(crate::trace::layer);
    Router::new()
        .route(TOKEN_PATH, post(handlers::token::token).layer(traced()))
        .route(
            REVOCATION_PATH,
            post(handlers::revoke::revoke).layer(traced()),
        )
        .route(
            INTROSPECTION_PATH,
            post(handlers::introspect::introspect).layer(traced()),
        )
        .route("/v1/revocations", get(handlers::feed::revocations))
        .route("/v1/admin/revocations", post(handlers::admin::revocations))
        .route(
            "/v1/admin/identities/{id}/disable",
            post(handlers::admin::disable),
        )
        .route(
            "/v1/admin/identities/{id}/enable",
            post(handlers::admin::enable),
        )
        .route("/v1/admin/inventory", get(handlers::inventory::inventory))
        .route("/v1/admin/keys", get(handlers::keys::list))
        .route("/v1/admin/keys/rotate", post(handlers::keys::rotate))
        .route("/v1/admin/keys/{kid}/retire", post(handlers::keys::retire))
        .route("/v1/admin/keys/{kid}/revoke", post(handlers::keys::revoke))
        .route(
            "/v1/admin/anomalies/{id}/ack",
            post(handlers::admin::ack_anomaly),
        )
        .route("/v1/break-glass", post(handlers::break_glass::request))
        .route(
            "/v1/break-glass/{id}/approve",
            post(handlers::break_glass::approve),
        )
        .route(
            "/v1/break-glass/{id}/close",
            post(handlers::break_glass::close),
        )
        .route(
            "/v1/break-glass/{id}/report",
            get(handlers::break_glass::report),
        )
        .route(JWKS_PATH, get(handlers::discovery::jwks))
        .route(
            "/.well-known/openid-configuration",
            get(handlers::discovery::openid_configuration),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(handlers::discovery::metadata),
        )
        .route("/healthz", get(handlers::health::healthz))
        .route("/readyz", get(handlers::health::readyz))
        .route("/metrics", get(handlers::health::metrics))
        .merge(crate::console::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn(
            move |req: Request, next: Next| async move {
                match tokio::time::timeout(timeout, next.run(req)).await {
                    Ok(res) => res,
                    Err(_) => ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "invalid_request",
                        format!("request not completed within {}s", timeout.as_secs()),
                    )
                    .into_response(),
                }
            },
        ))
        .with_state(state)
}

async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see /.well-known/oauth-authorization-server",
    )
    .into_response()
}
