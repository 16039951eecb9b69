//! `GET /healthz` (process alive), `GET /readyz` (able to issue), `GET /metrics`.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::AppState;

/// Liveness.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: policies loaded and, with a shared state store, the view of it current.
pub async fn readyz(State(st): State<AppState>) -> Response {
    if let Some(why) = st.audit.write_failure() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the audit log cannot be written ({why}); nothing is issued until it can\n"),
        )
            .into_response()
    } else if st.revocations.is_stale() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: state store view is stale\n",
        )
            .into_response()
    } else if !st.policies.current().is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// Prometheus text exposition.
pub async fn metrics(State(st): State<AppState>) -> Response {
    let mut text = st.metrics.render();
    text.push_str(&st.audit.stats().render());
    text.push_str(&format!(
        "# HELP broker_audit_write_failing 1 while the audit log cannot be written (issuance answers 503).\n# TYPE broker_audit_write_failing gauge\nbroker_audit_write_failing {}\n",
        u8::from(st.audit.write_failure().is_some())
    ));
    let mut res = text.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    res
}
