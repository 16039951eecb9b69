//! [`CallerRequest`]: the one extractor of every authenticated non-token endpoint (admin,
//! break-glass, keys, inventory, feed, introspection, revocation): who is on the other
//! end (peer address, headers, client certificate), and the authentication and role check
//! that start each call's audit record.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use crate::api::caller::{self, Caller};
use crate::api::refusal::{self, CallRefusal};
use crate::api::{AppState, record};
use crate::audit::event::{AuditEvent, EventKind, Evidence};
use crate::authn::mtls::ClientCert;
use crate::config::{Admin, Role};

/// The parts of a request that say who sent it.
#[derive(Debug, Clone)]
pub struct CallerRequest {
    /// The TCP peer (the audit record's `source`).
    pub peer: SocketAddr,
    /// The request headers (`Authorization`, `DPoP`, ...).
    pub headers: HeaderMap,
    /// The verified client certificate, when the connection is mTLS.
    pub client_cert: Option<ClientCert>,
    /// An admin signed in to the console (`crate::console`), when the console calls a
    /// handler on the admin's behalf. Never set from the wire: the extractor leaves it
    /// `None`, only the console's own code builds a request with it.
    pub console_admin: Option<Admin>,
}

impl<S: Send + Sync> FromRequestParts<S> for CallerRequest {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let ConnectInfo(peer) = ConnectInfo::<SocketAddr>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self {
            peer,
            headers: parts.headers.clone(),
            client_cert: parts.extensions.get::<ClientCert>().cloned(),
            console_admin: None,
        })
    }
}

impl CallerRequest {
    /// The audit record of a call of `kind` from this peer.
    pub fn event(&self, kind: EventKind) -> AuditEvent {
        record::event(kind, self.peer)
    }

    /// Authenticates the caller (a refusal is recorded and answered); the caller and the
    /// call's record, which names the caller as its actor.
    pub async fn require(
        &self,
        st: &AppState,
        kind: EventKind,
    ) -> Result<(Caller, AuditEvent), Response> {
        let mut ev = self.event(kind);
        if let Some(admin) = self.console_session(&mut ev) {
            return Ok((admin, ev));
        }
        let caller = caller::require(st, &mut ev, &self.headers, self.client_cert.as_ref()).await?;
        Ok((caller, ev))
    }

    /// The console's signed-in admin as the caller, the record naming the session as its
    /// evidence.
    fn console_session(&self, ev: &mut AuditEvent) -> Option<Caller> {
        let admin = self.console_admin.clone()?;
        let caller = Caller::Admin(admin);
        ev.evidence = Some(Evidence {
            kind: "console_session",
            ..Default::default()
        });
        ev.actor = Some(caller.actor());
        Some(caller)
    }

    /// [`CallerRequest::require`] for a form endpoint at `endpoint`, whose `body` may
    /// carry a client assertion.
    pub async fn require_form(
        &self,
        st: &AppState,
        kind: EventKind,
        body: &[u8],
        endpoint: &'static str,
    ) -> Result<(Caller, AuditEvent), Response> {
        let mut ev = self.event(kind);
        if let Some(admin) = self.console_session(&mut ev) {
            return Ok((admin, ev));
        }
        let cert = self.client_cert.as_ref();
        let caller = caller::require_form(st, &mut ev, &self.headers, cert, body, endpoint).await?;
        Ok((caller, ev))
    }

    /// [`CallerRequest::require`] for an admin with `role`: a workload, or an admin without
    /// the role, is refused (recorded and answered).
    pub async fn require_role(
        &self,
        st: &AppState,
        kind: EventKind,
        role: Role,
    ) -> Result<(Caller, AuditEvent), Response> {
        let (caller, ev) = self.require(st, kind).await?;
        if caller.has_role(role) {
            return Ok((caller, ev));
        }
        let refusal = match &caller {
            Caller::Workload { .. } => CallRefusal::AdminRequired {
                what: "workload identities cannot call the admin API".into(),
            },
            Caller::Admin(a) => CallRefusal::RoleRequired {
                what: format!("admin {} lacks the {} role", a.name, role.as_str()),
            },
        };
        Err(refusal::deny(st, ev, refusal).await)
    }
}
