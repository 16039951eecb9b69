//! State changes recorded before they are made (docs/audit-log.md, "Admin changes: the
//! record comes first"), below the HTTP layer so that services and the server's
//! background loop use the same order as the handlers ([`crate::api::record`] answers
//! with these).
//!
//! 1. The change's records (decision `allow`) are made durable; if one fails, nothing is
//!    changed and the answer is 503.
//! 2. The change is made durable in the state store. If that fails, a `denied` record with
//!    rule `store_unavailable` and `detail.undoes` = the first record's `seq` says the
//!    change did not happen (503).
//! 3. A change decided in the store's transaction ([`decided`]) may find that its subject
//!    changed since the records were written (another request or replica came first):
//!    then nothing is appended, a `denied` record with rule [`STALE_RULE`] undoes each
//!    record, and the caller decides again on the newer state.

use crate::audit::event::{AuditEvent, Decision, EventKind};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::StoreError;

/// The rule of the record that undoes a decided change whose subject changed before it
/// was made.
pub const STALE_RULE: &str = "changed_before_made";

/// Records a denial (`ev` with its context): `Ok` when durable, `Err` = the 503 to
/// answer with instead of `error`.
pub async fn deny(
    st: &AppState,
    mut ev: AuditEvent,
    rule: &'static str,
    error: &ApiError,
) -> Result<(), ApiError> {
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
    st.audit.append(ev).await.map(|_| ()).map_err(|e| {
        tracing::error!(error = %e, "audit append failed for a denial");
        st.metrics.audit_failure();
        ApiError::audit_unavailable()
    })
}

/// Records an allowed action; returns its `seq`, or the 503 to answer with.
pub async fn allow(st: &AppState, mut ev: AuditEvent) -> Result<u64, ApiError> {
    ev.decision = Some(Decision::Allow);
    st.audit.append(ev).await.map_err(|e| {
        tracing::error!(error = %e, "audit append failed; the change is not made");
        st.metrics.audit_failure();
        ApiError::audit_unavailable()
    })
}

/// The record that says record `seq` (a copy of `ev` without its detail) did not happen.
async fn undo(st: &AppState, ev: &AuditEvent, seq: u64, rule: &'static str, error: &ApiError) {
    let mut u = ev.clone();
    u.detail = Some(serde_json::json!({ "undoes": seq }));
    if deny(st, u, rule, error).await.is_err() {
        tracing::error!(
            record = seq,
            "could not record that an audited change did not happen"
        );
    }
}

/// One admin change, recorded first: `ev` is made durable, then `apply` makes the change
/// durable. `Err` is the answer (503) when either failed; nothing changed then.
pub async fn change<T>(
    st: &AppState,
    ev: AuditEvent,
    apply: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, ApiError> {
    let mut out = decided(st, vec![ev], || apply().map(Some)).await?;
    out.take().ok_or_else(ApiError::store_unavailable)
}

/// A change decided in the store's transaction, recorded first: every record of `evs`
/// is made durable in order, then `apply` runs; `Ok(None)` from it means the subject
/// changed since the records were written and nothing was appended (each record is then
/// undone with [`STALE_RULE`] and `Ok(None)` returned, so that the caller decides again).
pub async fn decided<T>(
    st: &AppState,
    evs: Vec<AuditEvent>,
    apply: impl FnOnce() -> Result<Option<T>, StoreError>,
) -> Result<Option<T>, ApiError> {
    let mut written: Vec<(AuditEvent, u64)> = Vec::with_capacity(evs.len());
    for ev in evs {
        let mut plain = ev.clone();
        plain.detail = None;
        match allow(st, ev).await {
            Ok(seq) => written.push((plain, seq)),
            Err(e) => {
                for (u, seq) in &written {
                    undo(st, u, *seq, "audit_unavailable", &e).await;
                }
                return Err(e);
            }
        }
    }
    match apply() {
        Ok(Some(t)) => Ok(Some(t)),
        Ok(None) => {
            let stale = ApiError::store_unavailable();
            for (u, seq) in &written {
                undo(st, u, *seq, STALE_RULE, &stale).await;
            }
            Ok(None)
        }
        Err(e) => {
            let first = written.first().map_or(0, |w| w.1);
            tracing::error!(error = %e, record = first, "state store append failed; the recorded change did not happen");
            let answer = ApiError::store_unavailable();
            let mut failed = None;
            for (u, seq) in &written {
                let mut r = u.clone();
                r.detail = Some(serde_json::json!({ "undoes": seq }));
                if let Err(a) = deny(st, r, "store_unavailable", &answer).await {
                    failed = Some(a);
                }
            }
            Err(failed.unwrap_or(answer))
        }
    }
}
