//! `GET /healthz` (process alive), `GET /readyz` (able to issue), `GET /metrics`.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::AppState;
use crate::metrics::{OPENMETRICS_TEXT, PROMETHEUS_TEXT};

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

/// The metrics: Prometheus text (0.0.4) by default, OpenMetrics text when the scraper's
/// `Accept` asks for `application/openmetrics-text` (Prometheus itself does).
pub async fn metrics(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (text, content_type) = if openmetrics {
        (st.metrics.render_openmetrics(), OPENMETRICS_TEXT)
    } else {
        (st.metrics.render(), PROMETHEUS_TEXT)
    };
    match text {
        Ok(text) => {
            let mut res = text.into_response();
            res.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            res
        }
        Err(_) => {
            tracing::error!("could not encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
