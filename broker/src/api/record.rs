//! Recording outcomes before answering: every decision is durable in the audit log
//! before the caller hears it; if it cannot be recorded, the answer is 503.

use axum::response::{IntoResponse, Response};

use crate::api::{ApiError, AppState};
use crate::audit::event::{AuditEvent, EventKind};
use crate::record_first;

/// Records a denial (`ev` with its context) and returns `error`, or 503 if the record
/// cannot be made durable.
pub async fn deny(st: &AppState, ev: AuditEvent, rule: &'static str, error: ApiError) -> Response {
    match record_first::deny(st, ev, rule, &error).await {
        Ok(()) => error.into_response(),
        Err(unavailable) => unavailable.into_response(),
    }
}

/// Records an allowed action; `Err` is the 503 to answer with.
pub async fn allow(st: &AppState, ev: AuditEvent) -> Result<(), ApiError> {
    record_first::allow(st, ev).await.map(|_| ())
}

/// An admin state change, recorded first ([`record_first::change`]): `ev` (allowed) is
/// made durable, then `apply` makes the change durable in the state store. So a change is
/// never applied without its record, and never acknowledged when its record failed (503,
/// nothing changed). If the store then fails, a `denied` record with rule
/// `store_unavailable` and `detail.undoes` = the first record's seq says the change did
/// not happen, and the answer is 503. The order and what a reader of the log must do with
/// it: `docs/audit-log.md`.
pub async fn change<T>(
    st: &AppState,
    ev: AuditEvent,
    apply: impl FnOnce() -> Result<T, crate::store::StoreError>,
) -> Result<T, Response> {
    record_first::change(st, ev, apply)
        .await
        .map_err(IntoResponse::into_response)
}

/// A fresh event of `kind` carrying the source address.
pub fn event(kind: EventKind, source: std::net::SocketAddr) -> AuditEvent {
    let mut ev = AuditEvent::new(kind);
    ev.source = Some(source.ip().to_string());
    ev
}
