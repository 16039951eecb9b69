//! `POST /oauth2/revoke` (RFC 7009): a workload revokes its own tokens, an admin with the
//! `revoke` role any. Unknown, foreign and already-expired tokens answer 200 as the RFC
//! says; the audit log records what happened either way.

use std::net::SocketAddr;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::api::caller::{self, Caller};
use crate::api::refusal::{self, CallRefusal};
use crate::api::{ApiError, AppState, record};
use crate::audit::event::EventKind;
use crate::authn::mtls::ClientCert;
use crate::config::Role;
use crate::mint::verify;
use crate::store::StateChange;

#[derive(Deserialize)]
struct RevokeForm {
    token: Option<String>,
    #[allow(dead_code)]
    token_type_hint: Option<String>,
}

/// The revocation endpoint.
#[tracing::instrument(skip_all, fields(source = %peer.ip()))]
pub async fn revoke(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client_cert: Option<Extension<ClientCert>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut ev = record::event(EventKind::Revoked, peer);
    let caller = match caller::require_form(
        &st,
        &mut ev,
        &headers,
        client_cert.as_ref().map(|e| &e.0),
        &body,
        crate::api::REVOCATION_PATH,
    )
    .await
    {
        Ok(c) => c,
        Err(res) => return res,
    };
    let form: RevokeForm = match serde_urlencoded::from_bytes(&body) {
        Ok(f) => f,
        Err(e) => {
            return record::deny(
                &st,
                ev,
                "malformed_request",
                ApiError::invalid_request(format!("malformed form body: {e}")),
            )
            .await;
        }
    };
    let Some(token) = form.token.filter(|t| !t.is_empty()) else {
        return record::deny(
            &st,
            ev,
            "malformed_request",
            ApiError::invalid_request("token is required"),
        )
        .await;
    };
    let now = st.clock.unix_secs();
    let claims = match verify::verify_signature(&token, &st.minter.jwks(), st.minter.issuer()) {
        Ok(c) => c,
        Err(_) => {
            ev.reason = Some("not a token issued by this broker; nothing to revoke".into());
            ev.detail = Some(serde_json::json!({ "outcome": "unknown_token" }));
            return match record::allow(&st, ev).await {
                Ok(()) => StatusCode::OK.into_response(),
                Err(e) => e.into_response(),
            };
        }
    };
    ev.jti = Some(claims.jti.clone());
    ev.exp = Some(claims.exp);
    ev.identity = Some(claims.sub.clone());
    ev.task = Some(claims.task.clone());
    let allowed = caller.has_role(Role::Revoke)
        || matches!(&caller, Caller::Workload { identity, .. } if *identity == claims.sub);
    if !allowed {
        return refusal::deny(
            &st,
            ev,
            CallRefusal::NotTokenOwner {
                actor: caller.actor(),
                owner: claims.sub.clone(),
            },
        )
        .await;
    }
    if now >= claims.exp {
        ev.reason = Some("token had already expired; nothing to revoke".into());
        ev.detail = Some(serde_json::json!({ "outcome": "already_expired" }));
    } else {
        let change = StateChange::RevokeJti {
            jti: claims.jti.clone(),
            exp: claims.exp,
            at: now,
            actor: caller.actor(),
            reason: "revoked through /oauth2/revoke".into(),
        };
        ev.reason = Some("revoked through /oauth2/revoke".into());
        ev.detail = Some(serde_json::json!({ "outcome": "revoked" }));
        // Recorded first, like every admin change (docs/audit-log.md).
        return match record::change(&st, ev, || st.revocations.commit(&change)).await {
            Ok(()) => StatusCode::OK.into_response(),
            Err(res) => res,
        };
    }
    match record::allow(&st, ev).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}
