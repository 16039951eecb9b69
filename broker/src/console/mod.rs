//! The operator console at `/console`: server-rendered HTML for the people who review
//! inventories, acknowledge anomalies, approve break-glass access, revoke tokens, watch
//! signing keys and search the audit log.
//!
//! Who: configured admins only, signed in with a one-time login link
//! (`broker console login --admin NAME`, [`session`]), or people the company's OpenID
//! Connect provider vouches for whose groups map to broker roles (`[console.oidc]`,
//! [`oidc`]). Every change the console makes
//! goes through the same handler as the JSON admin API, called with the signed-in admin as
//! the caller ([`crate::api::caller_request::CallerRequest::console_admin`]): the same role
//! checks, refusals and audit records, written once. Forms carry a per-session CSRF token
//! and the cookie is `SameSite=Strict`; every page is sent with a strict
//! `Content-Security-Policy` (no script at all, styles from `/console/static` only),
//! `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer` and `Cache-Control: no-store`.
//! No token, key or secret is ever rendered: tokens appear by `jti`, keys by `kid`.

pub mod html;
pub mod oidc;
pub mod oidc_config;
mod oidc_pages;
mod pages;
pub mod session;

use std::path::PathBuf;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::state::AppState;

/// The console's settings and sessions.
#[derive(Debug)]
pub struct Console {
    /// Where login tickets are (`<state dir>/console-tickets`).
    pub state_dir: PathBuf,
    /// The audit log (for the search).
    pub audit_dir: PathBuf,
    /// The key directory (retired keys' public halves, for the chain's status).
    pub key_dir: PathBuf,
    /// Whether the listener is TLS (the cookie is then `Secure`).
    pub secure_cookie: bool,
    /// Live sessions.
    pub sessions: session::Sessions,
    /// Sign-in through the company's identity provider, when `[console.oidc]` is set.
    pub oidc: Option<oidc::Oidc>,
}

/// The console's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(pages::inventory))
        .route("/console/login", get(pages::login_form).post(pages::login))
        .route("/console/logout", post(pages::logout))
        .route("/console/oidc/start", get(oidc_pages::start))
        .route("/console/oidc/callback", get(oidc_pages::callback))
        .route("/console/anomalies", get(pages::anomalies))
        .route("/console/anomalies/{id}/ack", post(pages::ack_anomaly))
        .route("/console/break-glass", get(pages::break_glass))
        .route(
            "/console/break-glass/{id}/approve",
            post(pages::approve_grant),
        )
        .route("/console/break-glass/{id}/close", post(pages::close_grant))
        .route(
            "/console/revocations",
            get(pages::revocations).post(pages::revoke),
        )
        .route("/console/keys", get(pages::keys))
        .route("/console/audit", get(pages::audit))
        .route("/console/static/console.css", get(stylesheet))
}

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// An HTML answer with the console's security headers.
pub fn html_response(status: StatusCode, body: String) -> Response {
    let mut res = (status, body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(h);
    res
}

pub(super) fn secure_headers(h: &mut axum::http::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

async fn stylesheet() -> Response {
    let mut res = include_str!("static/console.css").into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    secure_headers(h);
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    res
}
