//! Break-glass endpoints: `POST /v1/break-glass` (request), `POST
//! /v1/break-glass/{id}/approve`, `POST /v1/break-glass/{id}/close` and `GET
//! /v1/break-glass/{id}/report`. Every step is audited and sent to the webhook.
//!
//! These handlers authenticate the caller and translate HTTP to
//! [`crate::grant_lifecycle`] and back; the rules, and the order of records and changes,
//! live there.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::caller::Caller;
use crate::api::caller_request::CallerRequest;
use crate::api::refusal::{self, CallRefusal};
use crate::api::{AppState, record};
use crate::audit::event::{AuditEvent, EventKind};
use crate::breakglass::Grant;
use crate::config::Role;
use crate::grant_lifecycle::{self as lifecycle, StepError};

/// The answer to a grant step: the grant, or its refusal recorded.
async fn answer(
    st: &AppState,
    ev: AuditEvent,
    id: &str,
    done: Result<Grant, StepError>,
    status: StatusCode,
) -> Response {
    let refusal = match done {
        Ok(g) => return (status, Json(g)).into_response(),
        Err(StepError::Failed(e)) => return e.into_response(),
        Err(StepError::UnknownGrant) => CallRefusal::UnknownGrant { id: id.to_owned() },
        Err(StepError::NotAllowed(what)) => CallRefusal::RoleRequired { what },
        Err(StepError::Refused(r)) => CallRefusal::Grant(r),
    };
    refusal::deny(st, ev, refusal).await
}

/// Requests a grant.
pub async fn request(State(st): State<AppState>, req: CallerRequest, body: Bytes) -> Response {
    let kind = EventKind::BreakGlassRequested;
    let (caller, mut ev) = match req.require(&st, kind).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let me = match &caller {
        Caller::Workload { identity, .. } => Some(identity.clone()),
        Caller::Admin(_) => None,
    };
    let may_request = |p: &crate::breakglass::policy::BreakGlassPolicy| {
        me.as_ref().is_none_or(|m| p.requesters.contains(m))
    };
    let change = match lifecycle::check_request(&st, &body, &caller.actor(), may_request, &mut ev) {
        Ok(c) => c,
        Err(r) => return record::deny(&st, ev, r.rule(), r.error()).await,
    };
    let opened = lifecycle::open(&st, change, &ev).await;
    answer(&st, ev, "", opened, StatusCode::CREATED).await
}

/// Approves a grant (a different person with the `break_glass_approve` role).
pub async fn approve(
    State(st): State<AppState>,
    Path(id): Path<String>,
    req: CallerRequest,
) -> Response {
    let kind = EventKind::BreakGlassApproved;
    let (caller, mut ev) = match req.require(&st, kind).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    ev.detail = Some(json!({ "grant": id }));
    let may = caller.has_role(Role::BreakGlassApprove);
    let approved = lifecycle::approve(&st, &id, &caller.actor(), may, &ev).await;
    answer(&st, ev, &id, approved, StatusCode::OK).await
}

/// Closes a grant early.
pub async fn close(
    State(st): State<AppState>,
    Path(id): Path<String>,
    req: CallerRequest,
) -> Response {
    let kind = EventKind::BreakGlassClosed;
    let (caller, ev) = match req.require(&st, kind).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let privileged = caller.has_role(Role::Revoke) || caller.has_role(Role::BreakGlassApprove);
    let closed = lifecycle::close_by(&st, &id, &caller.actor(), privileged, &ev).await;
    answer(&st, ev, &id, closed, StatusCode::OK).await
}

/// The full account of a grant.
pub async fn report(
    State(st): State<AppState>,
    Path(id): Path<String>,
    req: CallerRequest,
) -> Response {
    let (caller, ev) = match req.require(&st, EventKind::Denied).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let admin = matches!(caller, Caller::Admin(_));
    match lifecycle::report(&st, &id, &caller.actor(), admin) {
        Ok(report) => Json(report).into_response(),
        // An unknown grant is answered unrecorded (nothing was read).
        Err(StepError::UnknownGrant) => CallRefusal::UnknownGrant { id }.error().into_response(),
        Err(e) => answer(&st, ev, &id, Err(e), StatusCode::OK).await,
    }
}
