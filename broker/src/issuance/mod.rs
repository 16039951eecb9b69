//! The token path as a service in typed stages: [`TokenService::issue`] takes a
//! [`TokenCall`] (what arrived over HTTP) and returns an [`Issued`] token or a
//! [`Refusal`]. The HTTP handler (`api::handlers::token`) only translates.
//!
//! Stages, each a module: [`parse`] (the body to checked parameters) → [`authenticate`]
//! (one identity from the JWT and/or certificate) → [`admission`] (kill switch, decision
//! with break-glass, rate limits, anomaly holds) → [`record`] (mint, the durable `issued`
//! record, then the counters). Every outcome is recorded before the caller hears it: the
//! `issued` record before the token leaves, the `denied` record before the error (the
//! handler records refusals); if the record cannot be written, no token is returned.

pub mod admission;
pub mod authenticate;
mod form;
pub mod parse;
pub mod record;
pub mod refusal;

use std::net::SocketAddr;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use tracing::Instrument as _;

pub use refusal::Refusal;

use crate::audit::event::{AuditEvent, EventKind};
use crate::authn::mtls::ClientCert;
use crate::mint::MintedToken;
use crate::state::AppState;

/// What arrived: the peer, the TLS client certificate, the content type and the body.
pub struct TokenCall<'a> {
    /// The peer address.
    pub peer: SocketAddr,
    /// The TLS client certificate, if any.
    pub client_cert: Option<&'a Extension<ClientCert>>,
    /// `Content-Type`.
    pub content_type: Option<&'a str>,
    /// The `DPoP` proof header, if one was sent; `Err` when there were several or it is
    /// not text.
    pub dpop: Result<Option<&'a str>, ()>,
    /// The `Host` header (DPoP proofs may name the broker by it).
    pub host: Option<&'a str>,
    /// The body, or why it could not be read.
    pub body: Result<Bytes, BytesRejection>,
}

/// An issued token whose record is durable.
pub struct Issued {
    /// The token (secret: hand it to the caller, never log it).
    pub token: MintedToken,
    /// The registration's date when it is inside its recertification warning window.
    pub recertify: Option<String>,
}

/// Why a token was not issued: the refusal and the record built so far (the caller
/// records it as `denied`), or the `issued` record could not be made durable (nothing to
/// record; answer 503).
pub enum NotIssued {
    /// Refused; `record` says what was known when.
    Refused {
        /// The refusal.
        refusal: Refusal,
        /// The record so far.
        record: Box<AuditEvent>,
    },
    /// The token was minted but its record could not be made durable: it was discarded.
    AuditFailed,
}

/// Issuance over the broker's state.
pub struct TokenService<'a> {
    st: &'a AppState,
}

impl<'a> TokenService<'a> {
    /// The service over `st`.
    pub fn new(st: &'a AppState) -> Self {
        Self { st }
    }

    /// Runs every stage for `call`.
    pub async fn issue(&self, call: TokenCall<'_>) -> Result<Issued, NotIssued> {
        let mut ev = AuditEvent::new(EventKind::Denied);
        ev.source = Some(call.peer.ip().to_string());
        match self.stages(call, &mut ev).await {
            Ok(Some(issued)) => Ok(issued),
            Ok(None) => Err(NotIssued::AuditFailed),
            Err(refusal) => Err(NotIssued::Refused {
                refusal,
                record: Box::new(ev),
            }),
        }
    }

    async fn stages(
        &self,
        call: TokenCall<'_>,
        ev: &mut AuditEvent,
    ) -> Result<Option<Issued>, Refusal> {
        let st = self.st;
        if st.revocations.is_stale() {
            return Err(Refusal::state_stale());
        }
        let params = parse::parse(call.content_type, call.body, ev)?;
        let dpop_jkt = authenticate::dpop(st, call.dpop, call.host, ev).await?;
        let cert = authenticate::peer_cert(call.client_cert, ev)?;
        let policies = st.policies.current();
        let caller = authenticate::authenticate(st, &policies, &params, cert, ev)
            .instrument(tracing::debug_span!("authenticate"))
            .await?;
        let identity = caller.identity;
        ev.identity = Some(identity.id.clone());
        ev.environment = Some(identity.environment.clone());
        admission::not_disabled(st, identity)?;
        if let Some(actor) = &caller.actor {
            admission::not_disabled(st, actor.identity)?;
        }
        let (mut grant, break_glass) = tracing::debug_span!("policy").in_scope(|| {
            admission::decide(st, &policies, identity, &params, call.peer, cert.is_some())
        })?;
        if let Some(actor) = &caller.actor {
            grant = admission::delegate(identity, grant, actor, &params, break_glass.is_some())?;
        }
        admission::binding(identity, &grant, dpop_jkt.as_deref())?;
        admission::rate_limit(st, identity, &grant.task)?;
        admission::monitor(st, identity, &grant, call.peer, ev).await?;
        let act = caller.actor.as_ref().map(|a| &a.act);
        let token = tracing::debug_span!("mint").in_scope(|| {
            record::mint(
                st,
                identity,
                &grant,
                cert,
                break_glass.as_ref(),
                act,
                dpop_jkt.as_deref(),
            )
        })?;
        let recertify = record::fill_record(st, ev, identity, &grant, &token, break_glass.as_ref());
        let issued = std::mem::replace(ev, AuditEvent::new(EventKind::Denied));
        if let Err(e) = st
            .audit
            .append(issued)
            .instrument(tracing::debug_span!("audit_append"))
            .await
        {
            tracing::error!(error = %e, jti = %token.claims.jti, "audit append failed; token discarded");
            st.metrics.audit_failure();
            return Ok(None);
        }
        record::count(st, &grant, &token, break_glass.as_ref(), call.peer);
        tracing::debug!(jti = %token.claims.jti, kid = %token.kid, identity = %grant.identity, "issued");
        Ok(Some(Issued { token, recertify }))
    }
}
