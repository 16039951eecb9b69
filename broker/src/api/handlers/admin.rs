//! The admin API (JSON): `POST /v1/admin/revocations` (by `jti`, identity, task, owner or
//! break-glass grant), the kill switch `POST /v1/admin/identities/{id}/disable` and
//! `/enable`, and `POST /v1/admin/anomalies/{id}/ack`. Only configured admins with the
//! `revoke` role may call them; every call, allowed or refused, is audited with who made
//! it.
//!
//! These handlers authenticate the caller and translate HTTP to
//! [`crate::admin_changes`] and back; each change is recorded before it is made
//! ([`record::change`]).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::admin_changes::anomaly_ack::{self, AckError};
use crate::admin_changes::{self as changes, ChangeRefusal, Planned};
use crate::api::caller_request::CallerRequest;
use crate::api::refusal::{self, CallRefusal};
use crate::api::{AppState, record};
use crate::audit::event::{AuditEvent, EventKind};
use crate::config::Role;

/// Makes a planned change, recorded first, and answers with its answer; or records the
/// refusal.
async fn make<A: Serialize>(
    st: &AppState,
    ev: AuditEvent,
    planned: Result<Planned<A>, ChangeRefusal>,
) -> Response {
    let p = match planned {
        Ok(p) => p,
        Err(r) => {
            return match r.rule() {
                Some(rule) => record::deny(st, ev, rule, r.error()).await,
                None => r.error().into_response(),
            };
        }
    };
    // One unit: no replica ever sees part of a change (a disabled identity without its
    // tokens revoked).
    match record::change(st, ev, || st.revocations.commit_all(&p.changes)).await {
        Ok(()) => Json(p.answer).into_response(),
        Err(res) => res,
    }
}

/// Revokes by selector.
pub async fn revocations(State(st): State<AppState>, req: CallerRequest, body: Bytes) -> Response {
    let kind = EventKind::Revoked;
    let (caller, mut ev) = match req.require_role(&st, kind, Role::Revoke).await {
        Ok(c) => c,
        Err(res) => return res,
    };
    let planned = changes::plan_revocation(&st, &caller.actor(), &body, &mut ev);
    make(&st, ev, planned).await
}

/// The kill switch: no new tokens, every live token revoked, in one step.
pub async fn disable(
    State(st): State<AppState>,
    Path(id): Path<String>,
    req: CallerRequest,
    body: Bytes,
) -> Response {
    let kind = EventKind::IdentityDisabled;
    let (caller, mut ev) = match req.require_role(&st, kind, Role::Revoke).await {
        Ok(c) => c,
        Err(res) => return res,
    };
    ev.identity = Some(id.clone());
    let planned = changes::plan_disable(&st, &caller.actor(), &id, &body, &mut ev);
    make(&st, ev, planned).await
}

/// Lifts the kill switch; tokens revoked by it stay revoked.
pub async fn enable(
    State(st): State<AppState>,
    Path(id): Path<String>,
    req: CallerRequest,
    body: Bytes,
) -> Response {
    let kind = EventKind::IdentityEnabled;
    let (caller, mut ev) = match req.require_role(&st, kind, Role::Revoke).await {
        Ok(c) => c,
        Err(res) => return res,
    };
    ev.identity = Some(id.clone());
    let planned = changes::plan_enable(&st, &caller.actor(), &id, &body);
    make(&st, ev, planned).await
}

/// Acknowledges an anomaly: an identity held by a `deny` anomaly may get tokens again.
pub async fn ack_anomaly(
    State(st): State<AppState>,
    Path(id): Path<String>,
    req: CallerRequest,
) -> Response {
    let kind = EventKind::AnomalyAcknowledged;
    let (caller, mut ev) = match req.require_role(&st, kind, Role::Revoke).await {
        Ok(c) => c,
        Err(res) => return res,
    };
    match anomaly_ack::acknowledge(&st, &id, &caller.actor(), &mut ev).await {
        Ok(a) => Json(a.report()).into_response(),
        Err(AckError::Unknown) => refusal::deny(&st, ev, CallRefusal::UnknownAnomaly { id }).await,
        Err(AckError::Failed(e)) => e.into_response(),
    }
}
