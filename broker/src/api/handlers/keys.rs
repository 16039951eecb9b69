//! The signing-key admin API (what `broker keys` calls): `GET /v1/admin/keys` (every
//! key and its state; `read_audit`), `POST /v1/admin/keys/rotate` (`admin`),
//! `POST /v1/admin/keys/{kid}/retire` (`admin`) and `POST /v1/admin/keys/{kid}/revoke`
//! (`revoke`). Every change is recorded before it is made, like every admin change
//! ([`crate::admin_changes::keys`]; the `key_revoked` record through
//! [`record::change`]). The domain logic is [`crate::mint::lifecycle::KeyService`].

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::admin_changes::keys::{self as key_changes, KeyChangeError};
use crate::api::caller_request::CallerRequest;
use crate::api::{ApiError, AppState, record};
use crate::audit::event::EventKind;
use crate::config::Role;
use crate::mint::lifecycle::LifecycleError;

fn refused(e: &LifecycleError) -> Response {
    match e {
        LifecycleError::UnknownKey(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "invalid_request", e.to_string()).into_response()
        }
        LifecycleError::NotOurs { .. } | LifecycleError::WrongState { .. } => {
            ApiError::new(StatusCode::CONFLICT, "invalid_request", e.to_string()).into_response()
        }
        LifecycleError::Store(_) => ApiError::store_unavailable().into_response(),
        LifecycleError::Key(_) => {
            tracing::error!(error = %e, "signing-key operation failed");
            ApiError::internal().into_response()
        }
    }
}

/// The answer to a key change: the keys after it, or why it was not made.
fn answer(st: &AppState, made: Result<bool, KeyChangeError>) -> Response {
    match made {
        Ok(_) => Json(st.keys.list()).into_response(),
        Err(KeyChangeError::Refused(e)) => refused(&e),
        Err(KeyChangeError::Failed(e)) => e.into_response(),
    }
}

/// `GET /v1/admin/keys`.
pub async fn list(State(st): State<AppState>, caller_req: CallerRequest) -> Response {
    if let Err(res) = caller_req
        .require_role(&st, EventKind::Denied, Role::ReadAudit)
        .await
    {
        return res;
    }
    Json(st.keys.list()).into_response()
}

/// Body of `POST /v1/admin/keys/rotate`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// Activate at once instead of after `prepublish` (verifiers refetch on the new
    /// `kid`).
    #[serde(default)]
    immediately: bool,
}

/// `POST /v1/admin/keys/rotate`.
pub async fn rotate(
    State(st): State<AppState>,
    caller_req: CallerRequest,
    body: Bytes,
) -> Response {
    let caller = match caller_req
        .require_role(&st, EventKind::Denied, Role::Admin)
        .await
    {
        Ok((caller, _)) => caller,
        Err(res) => return res,
    };
    let req: RotateBody = if body.is_empty() {
        RotateBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return ApiError::invalid_request(format!("invalid JSON body: {e}"))
                    .into_response();
            }
        }
    };
    let immediately = req.immediately;
    let made = key_changes::change(&st, Some(&caller.actor()), move |keys| {
        keys.plan_rotate(immediately)
    })
    .await;
    answer(&st, made)
}

/// `POST /v1/admin/keys/{kid}/retire`.
pub async fn retire(
    State(st): State<AppState>,
    Path(kid): Path<String>,
    caller_req: CallerRequest,
) -> Response {
    let caller = match caller_req
        .require_role(&st, EventKind::Denied, Role::Admin)
        .await
    {
        Ok((caller, _)) => caller,
        Err(res) => return res,
    };
    let made = key_changes::change(&st, Some(&caller.actor()), move |keys| {
        keys.plan_retire(&kid)
    })
    .await;
    answer(&st, made)
}

/// Body of `POST /v1/admin/keys/{kid}/revoke`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeKeyBody {
    reason: Option<String>,
}

/// The reason the body of a key revocation gives, or why the body is refused.
fn reason_of(body: &[u8]) -> Result<String, ApiError> {
    let req: RevokeKeyBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("invalid JSON body: {e}")))?;
    req.reason
        .filter(|r| !r.trim().is_empty())
        .ok_or_else(|| ApiError::invalid_request("reason is required"))
}

/// `POST /v1/admin/keys/{kid}/revoke`: the key leaves every replica's JWKS at once, a
/// feed rule revokes every token it signed, and (for this replica's key) a new key
/// signs at once.
pub async fn revoke(
    State(st): State<AppState>,
    Path(kid): Path<String>,
    caller_req: CallerRequest,
    body: Bytes,
) -> Response {
    let (caller, mut ev) = match caller_req
        .require_role(&st, EventKind::KeyRevoked, Role::Revoke)
        .await
    {
        Ok(c) => c,
        Err(res) => return res,
    };
    let reason = match reason_of(&body) {
        Ok(r) => r,
        Err(e) => return record::deny(&st, ev, "malformed_request", e).await,
    };
    let changes = match st.keys.revocation_changes(&kid, &caller.actor(), &reason) {
        Ok(c) => c,
        Err(e) => return refused(&e),
    };
    ev.kid = Some(kid.clone());
    ev.actor = Some(caller.actor());
    ev.reason = Some(reason);
    ev.detail = Some(serde_json::json!({ "rule": "key", "kid": kid }));
    // The key's state, the feed rule and (for this replica's signing key) its successor
    // in one transaction, after their records.
    let made = key_changes::change_led_by(&st, Some(ev), Some(&caller.actor()), move |keys| {
        keys.plan_revocation(&kid, changes)
    })
    .await;
    answer(&st, made)
}
