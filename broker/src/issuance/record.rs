//! Stages 5 and 6, mint and record: sign the token, make its `issued` record durable
//! (or discard the token), then count it: revocation counters, usage, the grant report.

use std::net::SocketAddr;

use super::refusal::Refusal;
use crate::audit::event::{AuditEvent, Decision as AuditDecision, EventKind};
use crate::authn::mtls::PeerCert;
use crate::breakglass::Grant as BreakGlassGrant;
use crate::mint::{MintRequest, MintedToken};
use crate::policy::{self, Identity};
use crate::state::AppState;

/// Signs the token for `grant`.
pub fn mint(
    st: &AppState,
    identity: &Identity,
    grant: &policy::Grant,
    cert: Option<&PeerCert>,
    break_glass: Option<&BreakGlassGrant>,
    actor: Option<&broker_client::types::Actor>,
    dpop_jkt: Option<&str>,
) -> Result<MintedToken, Refusal> {
    st.minter
        .mint(&MintRequest {
            identity: &grant.identity,
            environment: &grant.environment,
            task: &grant.task,
            audience: &grant.audience,
            scopes: &grant.scopes,
            ttl_secs: grant.ttl.as_secs().max(1),
            cert_thumbprint: cert.map(|c| c.x5t_s256.clone()),
            break_glass: break_glass.map(|g| g.id.clone()),
            not_after: break_glass.and_then(|g| g.ends_at),
            actor: actor.cloned(),
            dpop_jkt: dpop_jkt.map(str::to_owned),
            // A token minted in the second of a rule covering it must carry a later iat.
            min_iat: st
                .revocations
                .latest_rule_second(&grant.identity, &grant.task, &identity.owner)
                .map_or(0, |t| t + 1),
        })
        .map_err(|e| {
            tracing::error!(error = %e, "minting failed");
            if matches!(e, crate::mint::MintError::NoActiveKey) {
                // No key's publication is guaranteed (the store could not extend its
                // lease): retryable, like an audit log that cannot be written.
                Refusal::AuditUnavailable
            } else {
                Refusal::internal("mint_failed")
            }
        })
}

/// Fills `ev` as the `issued` (or `break_glass_token_issued`) record of `minted`.
/// Returns the recertification deadline when the registration is inside its warning
/// window (the record and the answer both carry it).
pub fn fill_record(
    st: &AppState,
    ev: &mut AuditEvent,
    identity: &Identity,
    grant: &policy::Grant,
    minted: &MintedToken,
    break_glass: Option<&BreakGlassGrant>,
) -> Option<String> {
    ev.event = if break_glass.is_some() {
        EventKind::BreakGlassTokenIssued
    } else {
        EventKind::Issued
    };
    ev.decision = Some(AuditDecision::Allow);
    if let Some(bg) = break_glass {
        ev.ticket = Some(bg.ticket.clone());
        ev.detail = Some(serde_json::json!({ "grant": bg.id, "ends_at": bg.ends_at }));
    }
    ev.audience = Some(grant.audience.clone());
    ev.scopes = Some(grant.scopes.clone());
    ev.task = Some(grant.task.clone());
    ev.jti = Some(minted.claims.jti.clone());
    ev.exp = Some(minted.claims.exp);
    ev.kid = Some(minted.kid.clone());
    let expires_in = identity
        .expires_at()
        .duration_since(st.clock.now())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let recertify =
        (expires_in < st.governance.expiring_window_secs).then(|| identity.expires.to_string());
    if let Some(date) = &recertify {
        let mut detail = ev.detail.take().unwrap_or_else(|| serde_json::json!({}));
        detail["registration_expires"] = serde_json::json!(date);
        detail["recertify"] = serde_json::json!(format!(
            "registration {} expires on {date}: owner {} must recertify it",
            identity.id, identity.owner
        ));
        ev.detail = Some(detail);
    }
    recertify
}

/// After the record is durable: counters, usage, and for a break-glass token the grant's
/// report and webhook.
pub fn count(
    st: &AppState,
    grant: &policy::Grant,
    minted: &MintedToken,
    break_glass: Option<&BreakGlassGrant>,
    peer: SocketAddr,
) {
    st.metrics.issued();
    st.revocations.record_issued(&minted.claims);
    st.governance.usage.record_issued(
        &grant.identity,
        &grant.task,
        &grant.scopes,
        Some(&crate::usage::source_network(peer.ip())),
        minted.claims.nbf,
    );
    let Some(bg) = break_glass else {
        return;
    };
    let change = crate::store::GrantChange::TokenIssued {
        id: bg.id.clone(),
        jti: minted.claims.jti.clone(),
        audience: minted.claims.aud.clone(),
        scopes: grant.scopes.clone(),
        exp: minted.claims.exp,
        at: minted.claims.iat,
    };
    if let Err(e) = st.break_glass.grants.commit(change) {
        tracing::error!(error = %e, grant = %bg.id, "could not add the token to the grant report");
    }
    // Like every other grant event, the grant itself (as it stands with this token).
    let grant_now = st.break_glass.grants.get(&bg.id).map_or_else(
        || serde_json::json!({ "id": bg.id }),
        |g| serde_json::json!(g),
    );
    st.webhook.send(serde_json::json!({
        "event": "break_glass_token_issued", "grant": grant_now, "jti": minted.claims.jti,
        "audience": minted.claims.aud, "scopes": grant.scopes, "exp": minted.claims.exp,
    }));
}
