//! The admin API (JSON): `POST /v1/admin/revocations` (by `jti`, identity, task, owner or
//! break-glass grant) and the kill switch `POST /v1/admin/identities/{id}/disable` and
//! `/enable`. Only configured admins with the `revoke` role may call them; every call,
//! allowed or refused, is audited with who made it.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use broker_client::types::{IdentityStateResponse, RevocationResponse};
use serde::Deserialize;
use serde_json::json;

use crate::api::caller::{self, Caller};
use crate::api::refusal::{self, CallRefusal};
use crate::api::{ApiError, AppState, record};
use crate::audit::event::{AuditEvent, EventKind};
use crate::authn::mtls::ClientCert;
use crate::config::Role;
use crate::revocation::MAX_TOKEN_LIFETIME_SECS;
use crate::store::{Selector, StateChange};

/// Body of `POST /v1/admin/revocations`: exactly one selector (`task` may be combined
/// with `identity`), and a reason.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationRequest {
    jti: Option<String>,
    identity: Option<String>,
    task: Option<String>,
    owner: Option<String>,
    grant: Option<String>,
    reason: Option<String>,
}

/// Body of the disable/enable calls.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    reason: Option<String>,
}

/// Authenticates and requires an admin with `role`; records refusals.
async fn admin_caller(
    st: &AppState,
    ev: &mut AuditEvent,
    headers: &HeaderMap,
    client_cert: Option<&ClientCert>,
    role: Role,
) -> Result<Caller, Response> {
    let caller = caller::require(st, ev, headers, client_cert).await?;
    if caller.has_role(role) {
        return Ok(caller);
    }
    let refusal = match &caller {
        Caller::Workload { .. } => CallRefusal::AdminRequired {
            what: "workload identities cannot call the admin API".into(),
        },
        Caller::Admin(a) => CallRefusal::RoleRequired {
            what: format!("admin {} lacks the {} role", a.name, role.as_str()),
        },
    };
    Err(refusal::deny(st, ev.clone(), refusal).await)
}

/// A new rule id; `None` (logged) if the random generator failed.
fn new_id(prefix: &str) -> Option<String> {
    crate::ids::random_id(prefix)
        .inspect_err(|e| tracing::error!(error = %e, "could not make an id"))
        .ok()
}

fn store_unavailable(e: &crate::store::StoreError) -> Response {
    tracing::error!(error = %e, "state store append failed");
    ApiError::store_unavailable().into_response()
}

/// Revokes by selector.
pub async fn revocations(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client_cert: Option<Extension<ClientCert>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut ev = record::event(EventKind::Revoked, peer);
    let caller = match admin_caller(
        &st,
        &mut ev,
        &headers,
        client_cert.as_ref().map(|e| &e.0),
        Role::Revoke,
    )
    .await
    {
        Ok(c) => c,
        Err(res) => return res,
    };
    let req: RevocationRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return record::deny(
                &st,
                ev,
                "malformed_request",
                ApiError::invalid_request(format!("invalid JSON body: {e}")),
            )
            .await;
        }
    };
    let Some(reason) = req.reason.clone().filter(|r| !r.trim().is_empty()) else {
        return record::deny(
            &st,
            ev,
            "malformed_request",
            ApiError::invalid_request("reason is required"),
        )
        .await;
    };
    let now = st.clock.unix_secs();
    let policies = st.policies.current();
    let selector = match (&req.jti, &req.identity, &req.task, &req.owner, &req.grant) {
        (Some(jti), None, None, None, None) => None.or(Some(Err(jti.clone()))),
        (None, Some(i), None, None, None) => Some(Ok(Selector::Identity {
            identity: i.clone(),
        })),
        (None, i, Some(t), None, None) => Some(Ok(Selector::Task {
            task: t.clone(),
            identity: i.clone(),
        })),
        (None, None, None, Some(o), None) => {
            if !policies.identities().any(|i| &i.owner == o) {
                return record::deny(
                    &st,
                    ev,
                    "unknown_owner",
                    ApiError::invalid_request(format!("no registered identity has owner {o:?}")),
                )
                .await;
            }
            Some(Ok(Selector::Owner { owner: o.clone() }))
        }
        (None, None, None, None, Some(g)) => Some(Ok(Selector::Grant { grant: g.clone() })),
        _ => None,
    };
    let Some(selector) = selector else {
        return record::deny(
            &st,
            ev,
            "malformed_request",
            ApiError::invalid_request(
                "give exactly one of jti, identity, task (optionally with identity), owner, grant",
            ),
        )
        .await;
    };
    ev.reason = Some(reason.clone());
    let (change, covered) = match selector {
        Err(jti) => {
            ev.jti = Some(jti.clone());
            (
                StateChange::RevokeJti {
                    jti,
                    exp: now + MAX_TOKEN_LIFETIME_SECS,
                    at: now,
                    actor: caller.actor(),
                    reason,
                },
                None,
            )
        }
        Ok(sel) => {
            let owned: Vec<String> = match &sel {
                Selector::Owner { owner } => policies
                    .identities()
                    .filter(|i| &i.owner == owner)
                    .map(|i| i.id.clone())
                    .collect(),
                _ => Vec::new(),
            };
            let n = st.revocations.live_count(&sel, now, &owned);
            let Some(id) = new_id("rev") else {
                return ApiError::internal().into_response();
            };
            ev.detail = Some(json!({ "rule": id, "selector": sel, "live_tokens_covered": n }));
            if let Selector::Identity { identity } = &sel {
                ev.identity = Some(identity.clone());
            }
            (
                StateChange::RevokeRule {
                    id,
                    selector: sel,
                    issued_before: st.revocations.rule_cutoff(now),
                    until: now + MAX_TOKEN_LIFETIME_SECS,
                    at: now,
                    actor: caller.actor(),
                    reason,
                },
                Some(n),
            )
        }
    };
    if let Err(res) = record::change(&st, ev, || st.revocations.commit(&change)).await {
        return res;
    }
    let mut body = RevocationResponse {
        revoked: "jti".into(),
        jti: None,
        rule: None,
        selector: None,
        issued_before: None,
        live_tokens_covered: covered,
    };
    match &change {
        StateChange::RevokeRule {
            id,
            selector,
            issued_before,
            ..
        } => {
            body.revoked = "rule".into();
            body.rule = Some(id.clone());
            body.selector = serde_json::to_value(selector).ok();
            body.issued_before = Some(*issued_before);
        }
        StateChange::RevokeJti { jti, .. } => body.jti = Some(jti.clone()),
        _ => {}
    }
    (StatusCode::OK, Json(body)).into_response()
}

/// The kill switch: no new tokens, every live token revoked, in one step.
pub async fn disable(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    client_cert: Option<Extension<ClientCert>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut ev = record::event(EventKind::IdentityDisabled, peer);
    ev.identity = Some(id.clone());
    let caller = match admin_caller(
        &st,
        &mut ev,
        &headers,
        client_cert.as_ref().map(|e| &e.0),
        Role::Revoke,
    )
    .await
    {
        Ok(c) => c,
        Err(res) => return res,
    };
    let reason = match parse_reason(&body) {
        Ok(r) => r.unwrap_or_else(|| "disabled by an admin".into()),
        Err(e) => return record::deny(&st, ev, "malformed_request", e).await,
    };
    if st.policies.current().identity(&id).is_none() {
        return refusal::deny(
            &st,
            ev,
            CallRefusal::UnknownIdentity {
                id,
                or_disabled: false,
            },
        )
        .await;
    }
    let now = st.clock.unix_secs();
    let selector = Selector::Identity {
        identity: id.clone(),
    };
    let covered = st.revocations.live_count(&selector, now, &[]);
    let Some(rule) = new_id("rev") else {
        return ApiError::internal().into_response();
    };
    let changes = [
        StateChange::Disable {
            identity: id.clone(),
            at: now,
            actor: caller.actor(),
            reason: reason.clone(),
        },
        StateChange::RevokeRule {
            id: rule.clone(),
            selector,
            issued_before: st.revocations.rule_cutoff(now),
            until: now + MAX_TOKEN_LIFETIME_SECS,
            at: now,
            actor: caller.actor(),
            reason: format!("identity disabled: {reason}"),
        },
    ];
    ev.reason = Some(reason);
    ev.detail = Some(json!({ "rule": rule, "live_tokens_revoked": covered }));
    // One unit: no replica ever sees the identity disabled without its tokens revoked.
    if let Err(res) = record::change(&st, ev, || st.revocations.commit_all(&changes)).await {
        return res;
    }
    Json(IdentityStateResponse {
        identity: id,
        disabled: true,
        rule: Some(rule),
        live_tokens_revoked: Some(covered),
    })
    .into_response()
}

/// Lifts the kill switch; tokens revoked by it stay revoked.
pub async fn enable(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    client_cert: Option<Extension<ClientCert>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut ev = record::event(EventKind::IdentityEnabled, peer);
    ev.identity = Some(id.clone());
    let caller = match admin_caller(
        &st,
        &mut ev,
        &headers,
        client_cert.as_ref().map(|e| &e.0),
        Role::Revoke,
    )
    .await
    {
        Ok(c) => c,
        Err(res) => return res,
    };
    if let Err(e) = parse_reason(&body) {
        return record::deny(&st, ev, "malformed_request", e).await;
    }
    if st.policies.current().identity(&id).is_none() && st.revocations.disabled(&id).is_none() {
        return refusal::deny(
            &st,
            ev,
            CallRefusal::UnknownIdentity {
                id,
                or_disabled: true,
            },
        )
        .await;
    }
    let now = st.clock.unix_secs();
    let change = StateChange::Enable {
        identity: id.clone(),
        at: now,
        actor: caller.actor(),
    };
    if let Err(res) = record::change(&st, ev, || st.revocations.commit(&change)).await {
        return res;
    }
    Json(IdentityStateResponse {
        identity: id,
        disabled: false,
        rule: None,
        live_tokens_revoked: None,
    })
    .into_response()
}

fn parse_reason(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice::<ReasonBody>(body)
        .map(|b| b.reason)
        .map_err(|e| ApiError::invalid_request(format!("invalid JSON body: {e}")))
}

/// Acknowledges an anomaly: an identity held by a `deny` anomaly may get tokens again.
pub async fn ack_anomaly(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    client_cert: Option<Extension<ClientCert>>,
    headers: HeaderMap,
) -> Response {
    let mut ev = record::event(EventKind::AnomalyAcknowledged, peer);
    let caller = match admin_caller(
        &st,
        &mut ev,
        &headers,
        client_cert.as_ref().map(|e| &e.0),
        Role::Revoke,
    )
    .await
    {
        Ok(c) => c,
        Err(res) => return res,
    };
    let acked = match st
        .governance
        .monitor
        .acknowledge(&id, &caller.actor(), st.clock.unix_secs())
    {
        Ok(a) => a,
        Err(e) => return store_unavailable(&e),
    };
    let Some(a) = acked else {
        return refusal::deny(&st, ev, CallRefusal::UnknownAnomaly { id }).await;
    };
    ev.identity = Some(a.identity.clone());
    ev.detail = Some(json!({ "anomaly": a.id, "kind": a.kind }));
    if let Err(e) = record::allow(&st, ev).await {
        return e.into_response();
    }
    Json(a).into_response()
}
