//! `POST /oauth2/revoke` (RFC 7009): a workload revokes its own tokens, an admin with the
//! `revoke` role any. Unknown, foreign and already-expired tokens answer 200 as the RFC
//! says; the audit log records what happened either way.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use broker_client::types::AccessTokenClaims;
use serde::{Deserialize, Serialize};

use crate::api::caller::Caller;
use crate::api::caller_request::CallerRequest;
use crate::api::refusal::{self, CallRefusal};
use crate::api::{ApiError, AppState, record};
use crate::audit::event::{AuditEvent, EventKind};
use crate::config::Role;
use crate::mint::verify;
use crate::store::StateChange;

#[derive(Deserialize)]
struct RevokeForm {
    token: Option<String>,
    #[allow(dead_code)]
    token_type_hint: Option<String>,
}

/// What a revocation request came to: `detail.outcome` of its `revoked` record. Every
/// outcome answers 200 (RFC 7009 §2.2).
#[derive(Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    /// Not a token this broker signed.
    UnknownToken,
    /// Signed by this broker but past its `exp`.
    AlreadyExpired,
    /// Its `jti` is revoked now.
    Revoked,
}

impl Outcome {
    /// The record's `reason`.
    fn reason(self) -> &'static str {
        match self {
            Outcome::UnknownToken => "not a token issued by this broker; nothing to revoke",
            Outcome::AlreadyExpired => "token had already expired; nothing to revoke",
            Outcome::Revoked => "revoked through /oauth2/revoke",
        }
    }

    /// Writes the outcome into the record.
    fn note(self, ev: &mut AuditEvent) {
        ev.reason = Some(self.reason().into());
        ev.detail = Some(serde_json::json!({ "outcome": self }));
    }
}

/// The revocation endpoint.
#[tracing::instrument(skip_all, fields(source = %req.peer.ip()))]
pub async fn revoke(State(st): State<AppState>, req: CallerRequest, body: Bytes) -> Response {
    let path = crate::api::REVOCATION_PATH;
    let (caller, mut ev) = match req.require_form(&st, EventKind::Revoked, &body, path).await {
        Ok(c) => c,
        Err(res) => return res,
    };
    let token = match token_of(&body) {
        Ok(t) => t,
        Err(e) => return record::deny(&st, ev, "malformed_request", e).await,
    };
    let now = st.clock.unix_secs();
    let Ok(claims) = verify::verify_signature(&token, &st.minter.jwks(), st.minter.issuer()) else {
        return settled(&st, ev, Outcome::UnknownToken).await;
    };
    describe(&mut ev, &claims);
    if !may_revoke(&caller, &claims) {
        let refusal = CallRefusal::NotTokenOwner {
            actor: caller.actor(),
            owner: claims.sub,
        };
        return refusal::deny(&st, ev, refusal).await;
    }
    if now >= claims.exp {
        return settled(&st, ev, Outcome::AlreadyExpired).await;
    }
    revoke_jti(&st, ev, &claims, now, caller.actor()).await
}

/// The token the form names, or why the form is refused.
fn token_of(body: &[u8]) -> Result<String, ApiError> {
    let form: RevokeForm = serde_urlencoded::from_bytes(body)
        .map_err(|e| ApiError::invalid_request(format!("malformed form body: {e}")))?;
    form.token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::invalid_request("token is required"))
}

/// Puts the token's id, expiry, identity and task in the record.
fn describe(ev: &mut AuditEvent, claims: &AccessTokenClaims) {
    ev.jti = Some(claims.jti.clone());
    ev.exp = Some(claims.exp);
    ev.identity = Some(claims.sub.clone());
    ev.task = Some(claims.task.clone());
}

/// An admin with the `revoke` role may revoke any token, a workload its own.
fn may_revoke(caller: &Caller, claims: &AccessTokenClaims) -> bool {
    caller.has_role(Role::Revoke)
        || matches!(caller, Caller::Workload { identity, .. } if *identity == claims.sub)
}

/// Records an outcome that changes nothing, and answers 200.
async fn settled(st: &AppState, mut ev: AuditEvent, outcome: Outcome) -> Response {
    outcome.note(&mut ev);
    match record::allow(st, ev).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

/// Revokes the token's `jti`: recorded first, like every admin change
/// (docs/audit-log.md), then committed; 200 once both are durable.
async fn revoke_jti(
    st: &AppState,
    mut ev: AuditEvent,
    claims: &AccessTokenClaims,
    now: u64,
    actor: String,
) -> Response {
    let outcome = Outcome::Revoked;
    let change = StateChange::RevokeJti {
        jti: claims.jti.clone(),
        exp: claims.exp,
        at: now,
        actor,
        reason: outcome.reason().into(),
    };
    outcome.note(&mut ev);
    match record::change(st, ev, || st.revocations.commit(&change)).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(res) => res,
    }
}
