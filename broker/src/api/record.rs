//! Recording outcomes before answering: every decision is durable in the audit log
//! before the caller hears it; if it cannot be recorded, the answer is 503.

use axum::response::{IntoResponse, Response};

use crate::api::{ApiError, AppState};
use crate::audit::event::{AuditEvent, Decision, EventKind};

/// Records a denial (`ev` with its context) and returns `error`, or 503 if the record
/// cannot be made durable.
pub async fn deny(
    st: &AppState,
    mut ev: AuditEvent,
    rule: &'static str,
    error: ApiError,
) -> Response {
    ev.event = EventKind::Denied;
    ev.decision = Some(Decision::Deny);
    ev.rule = Some(rule.to_owned());
    ev.error = Some(error.code.to_owned());
    ev.reason = Some(
        error
            .operator_detail
            .clone()
            .unwrap_or_else(|| error.description.clone()),
    );
    st.metrics.denied(rule);
    match st.audit.append(ev).await {
        Ok(_) => error.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "audit append failed for a denial");
            st.metrics.audit_failure();
            ApiError::audit_unavailable().into_response()
        }
    }
}

/// Records an allowed action; `Err` is the 503 to answer with.
pub async fn allow(st: &AppState, mut ev: AuditEvent) -> Result<(), ApiError> {
    ev.decision = Some(Decision::Allow);
    st.audit.append(ev).await.map(|_| ()).map_err(|e| {
        tracing::error!(error = %e, "audit append failed");
        st.metrics.audit_failure();
        ApiError::audit_unavailable()
    })
}

/// An admin state change, recorded first: `ev` (allowed) is made durable, then `apply`
/// makes the change durable in the state store. So a change is never applied without its
/// record, and never acknowledged when its record failed (503, nothing changed). If the
/// store then fails, a `denied` record with rule `store_unavailable` and
/// `detail.undoes` = the first record's seq says the change did not happen, and the answer
/// is 503. The order and what a reader of the log must do with it: `docs/audit-log.md`.
pub async fn change<T>(
    st: &AppState,
    mut ev: AuditEvent,
    apply: impl FnOnce() -> Result<T, crate::store::StoreError>,
) -> Result<T, Response> {
    ev.decision = Some(Decision::Allow);
    let undo = {
        let mut u = ev.clone();
        u.detail = None;
        u
    };
    let seq = match st.audit.append(ev).await {
        Ok(seq) => seq,
        Err(e) => {
            tracing::error!(error = %e, "audit append failed; the change is not made");
            st.metrics.audit_failure();
            return Err(ApiError::audit_unavailable().into_response());
        }
    };
    match apply() {
        Ok(t) => Ok(t),
        Err(e) => {
            tracing::error!(error = %e, record = seq, "state store append failed; the recorded change did not happen");
            let mut u = undo;
            u.detail = Some(serde_json::json!({ "undoes": seq }));
            Err(deny(st, u, "store_unavailable", ApiError::store_unavailable()).await)
        }
    }
}

/// A fresh event of `kind` carrying the source address.
pub fn event(kind: EventKind, source: std::net::SocketAddr) -> AuditEvent {
    let mut ev = AuditEvent::new(kind);
    ev.source = Some(source.ip().to_string());
    ev
}
