//! Break-glass endpoints: `POST /v1/break-glass` (request), `POST
//! /v1/break-glass/{id}/approve`, `POST /v1/break-glass/{id}/close` and `GET
//! /v1/break-glass/{id}/report`. Every step is audited and sent to the webhook.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use crate::api::caller::{self, Caller};
use crate::api::refusal::{self, CallRefusal};
use crate::api::{ApiError, AppState, record};
use crate::audit::event::{AuditEvent, EventKind};
use crate::authn::mtls::ClientCert;
use crate::breakglass::{Grant, GrantStatus};
use crate::config::Role;
use crate::grant_lifecycle::{close_grant, grant_event, notify};

fn store_unavailable() -> Response {
    ApiError::store_unavailable().into_response()
}

/// Activates `g` if it needs no (more) approvals; audits and notifies.
async fn activate_if_ready(st: &AppState, g: Grant, ev: &AuditEvent) -> Result<Grant, Response> {
    let now = st.clock.unix_secs();
    match st.break_glass.grants.activate_if_ready(&g.id, now) {
        Ok(None) => Ok(g),
        Ok(Some(g)) => {
            record::allow(st, grant_event(EventKind::BreakGlassActivated, &g, ev))
                .await
                .map_err(IntoResponse::into_response)?;
            notify(st, "break_glass_activated", &g);
            Ok(g)
        }
        Err(_) => Err(store_unavailable()),
    }
}

/// Requests a grant.
pub async fn request(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client_cert: Option<Extension<ClientCert>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut ev = record::event(EventKind::BreakGlassRequested, peer);
    let caller =
        match caller::require(&st, &mut ev, &headers, client_cert.as_ref().map(|e| &e.0)).await {
            Ok(c) => c,
            Err(r) => return r,
        };
    let is_admin = matches!(&caller, Caller::Admin(_));
    let me = match &caller {
        Caller::Workload { identity, .. } => Some(identity.clone()),
        Caller::Admin(_) => None,
    };
    let may_request = |p: &crate::breakglass::policy::BreakGlassPolicy| {
        is_admin || me.as_ref().is_some_and(|m| p.requesters.contains(m))
    };
    let change = match crate::grant_lifecycle::check_request(
        &st,
        &body,
        &caller.actor(),
        may_request,
        &mut ev,
    ) {
        Ok(c) => c,
        Err(r) => return record::deny(&st, ev, r.rule(), r.error()).await,
    };
    let Some(preview) = crate::breakglass::Grants::preview(&change) else {
        return ApiError::internal().into_response();
    };
    // Recorded first, like every admin change (docs/audit-log.md).
    let requested = grant_event(EventKind::BreakGlassRequested, &preview, &ev);
    let g = match record::change(&st, requested, || st.break_glass.grants.commit(change)).await {
        Ok(Some(g)) => g,
        Ok(None) => return store_unavailable(),
        Err(res) => return res,
    };
    notify(&st, "break_glass_requested", &g);
    let g = match activate_if_ready(&st, g, &ev).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    (StatusCode::CREATED, Json(g)).into_response()
}

/// Approves a grant (a different person with the `break_glass_approve` role).
pub async fn approve(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    client_cert: Option<Extension<ClientCert>>,
    headers: HeaderMap,
) -> Response {
    let mut ev = record::event(EventKind::BreakGlassApproved, peer);
    let caller =
        match caller::require(&st, &mut ev, &headers, client_cert.as_ref().map(|e| &e.0)).await {
            Ok(c) => c,
            Err(r) => return r,
        };
    ev.detail = Some(json!({ "grant": id }));
    if !caller.has_role(Role::BreakGlassApprove) {
        let what = format!("{} lacks the break_glass_approve role", caller.actor());
        return refusal::deny(&st, ev, CallRefusal::RoleRequired { what }).await;
    }
    let now = st.clock.unix_secs();
    let (g, activated) = match st.break_glass.grants.approve(&id, &caller.actor(), now) {
        Ok(x) => x,
        Err(crate::breakglass::ApproveError::Refused(r)) => {
            return refusal::deny(&st, ev, CallRefusal::Grant(r)).await;
        }
        Err(crate::breakglass::ApproveError::Store(_)) => return store_unavailable(),
    };
    let mut approved = grant_event(EventKind::BreakGlassApproved, &g, &ev);
    approved.approved_by = Some(caller.actor());
    if let Err(e) = record::allow(&st, approved).await {
        return e.into_response();
    }
    notify(&st, "break_glass_approved", &g);
    if activated {
        if let Err(e) =
            record::allow(&st, grant_event(EventKind::BreakGlassActivated, &g, &ev)).await
        {
            return e.into_response();
        }
        notify(&st, "break_glass_activated", &g);
    }
    Json(g).into_response()
}

/// Closes a grant early.
pub async fn close(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    client_cert: Option<Extension<ClientCert>>,
    headers: HeaderMap,
) -> Response {
    let mut ev = record::event(EventKind::BreakGlassClosed, peer);
    let caller =
        match caller::require(&st, &mut ev, &headers, client_cert.as_ref().map(|e| &e.0)).await {
            Ok(c) => c,
            Err(r) => return r,
        };
    let Some(g) = st.break_glass.grants.get(&id) else {
        return refusal::deny(&st, ev, CallRefusal::UnknownGrant { id }).await;
    };
    let may = caller.has_role(Role::Revoke)
        || caller.has_role(Role::BreakGlassApprove)
        || caller.actor() == g.requester;
    if !may {
        let what = format!("{} may not close grant {id}", caller.actor());
        return refusal::deny(&st, ev, CallRefusal::RoleRequired { what }).await;
    }
    if g.status == GrantStatus::Closed {
        return Json(g).into_response();
    }
    match close_grant(&st, &g, &caller.actor(), "closed by request", false, &ev).await {
        Ok(g) => Json(g).into_response(),
        Err(_) => store_unavailable(),
    }
}

/// The full account of a grant.
pub async fn report(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    client_cert: Option<Extension<ClientCert>>,
    headers: HeaderMap,
) -> Response {
    let mut ev = record::event(EventKind::Denied, peer);
    let caller =
        match caller::require(&st, &mut ev, &headers, client_cert.as_ref().map(|e| &e.0)).await {
            Ok(c) => c,
            Err(r) => return r,
        };
    let Some(g) = st.break_glass.grants.get(&id) else {
        return CallRefusal::UnknownGrant { id }.error().into_response();
    };
    if !matches!(caller, Caller::Admin(_)) && caller.actor() != g.requester {
        let what = format!("{} may not read grant {id}", caller.actor());
        return refusal::deny(&st, ev, CallRefusal::RoleRequired { what }).await;
    }
    Json(json!({
        "grant": g.id, "identity": g.identity, "task": g.task, "policy": g.policy,
        "requested_by": g.requester, "requested_at": g.requested_at,
        "justification": g.justification, "ticket": g.ticket,
        "approvals": g.approvals, "approvals_needed": g.approvals_needed,
        "status": g.status, "opened_at": g.activated_at, "ends_at": g.ends_at,
        "closed_at": g.closed_at, "closed_by": g.closed_by, "close_reason": g.close_reason,
        "tokens": g.tokens,
    }))
    .into_response()
}
