//! Who is calling the introspection, revocation, feed and admin endpoints.
//!
//! Callers authenticate the way workloads do: an mTLS client certificate, an RFC 7523
//! client assertion in a form body (`client_assertion_type` + `client_assertion`, a
//! workload JWT whose `aud` names this broker, single-use), or
//! `Authorization: Bearer <workload JWT>` from a trusted issuer (the same validation as
//! the token path). An assertion and a Bearer credential together are refused (RFC 6749
//! §2.3: one method per request); an assertion and a certificate must prove the same
//! identity. Admins are named in the config; everyone else must be a registry identity.
//! A workload identity can never hold an admin role.

use axum::http::{HeaderMap, header};

use crate::api::{ApiError, AppState};
use crate::audit::event::Evidence;
use crate::authn::mtls::ClientCert;
use crate::config::{Admin, AdminMatch, Role};
use crate::issuance::Refusal;
use crate::issuance::authenticate::{cert_evidence, jwt_evidence};

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A configured admin.
    Admin(Admin),
    /// A registry identity.
    Workload {
        /// NHI id.
        identity: String,
        /// A resource server allowed to introspect.
        may_introspect: bool,
    },
}

impl Caller {
    /// The actor name for audit records.
    pub fn actor(&self) -> String {
        match self {
            Caller::Admin(a) => format!("admin:{}", a.name),
            Caller::Workload { identity, .. } => format!("identity:{identity}"),
        }
    }

    /// Whether the caller is an admin holding `role`.
    pub fn has_role(&self, role: Role) -> bool {
        matches!(self, Caller::Admin(a) if a.has(role))
    }

    /// Whether the caller may introspect and read the revocation feed.
    pub fn may_introspect(&self) -> bool {
        match self {
            Caller::Admin(_) => true,
            Caller::Workload { may_introspect, .. } => *may_introspect,
        }
    }
}

/// A refusal to authenticate: why (the rule and the answer derive from it, see
/// [`Refusal::caller_error`]), and what evidence was seen.
#[derive(Debug)]
pub struct CallerRefusal {
    /// Why.
    pub refusal: Refusal,
    /// Evidence seen so far.
    pub evidence: Option<Evidence>,
}

impl CallerRefusal {
    /// The stable rule name.
    pub fn rule(&self) -> &'static str {
        self.refusal.rule()
    }

    /// The answer.
    pub fn error(&self) -> ApiError {
        self.refusal.caller_error()
    }
}

fn refuse(refusal: Refusal, evidence: Option<Evidence>) -> CallerRefusal {
    CallerRefusal { refusal, evidence }
}

/// An RFC 7523 client assertion sent in a form body, and the endpoint it was sent to
/// (its `aud` may name that endpoint).
#[derive(Clone, Copy)]
pub struct FormAssertion<'a> {
    /// The assertion (never logged).
    pub assertion: &'a str,
    /// The endpoint path called.
    pub endpoint: &'static str,
}

#[derive(serde::Deserialize)]
struct AssertionFields {
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
}

/// The client assertion in a form `body`, if any (other fields are ignored here; a body
/// that is not a form has none).
pub fn form_assertion(body: &[u8]) -> Result<Option<String>, crate::issuance::Refusal> {
    let Ok(f) = serde_urlencoded::from_bytes::<AssertionFields>(body) else {
        return Ok(None);
    };
    crate::issuance::parse::client_assertion(
        f.client_assertion_type.as_deref(),
        f.client_assertion.as_deref(),
    )
}

/// Authenticates the caller of a non-token endpoint.
pub async fn authenticate(
    st: &AppState,
    headers: &HeaderMap,
    client_cert: Option<&ClientCert>,
) -> Result<(Caller, Evidence), CallerRefusal> {
    authenticate_with(st, headers, client_cert, None).await
}

/// Authenticates the caller, who may also have sent a client assertion in the body.
pub async fn authenticate_with(
    st: &AppState,
    headers: &HeaderMap,
    client_cert: Option<&ClientCert>,
    assertion: Option<FormAssertion<'_>>,
) -> Result<(Caller, Evidence), CallerRefusal> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    if let Some(a) = assertion {
        if bearer.is_some() {
            return Err(refuse(Refusal::SeveralClientAuthMethods, None));
        }
        return by_assertion(st, a, client_cert).await;
    }
    if let Some(jwt) = bearer {
        let v = st.authn.authenticate_jwt(jwt).await.map_err(|e| {
            refuse(
                Refusal::bearer_credential(&e),
                Some(Evidence {
                    kind: "jwt",
                    ..Default::default()
                }),
            )
        })?;
        let evidence = jwt_evidence(&v, None);
        if let Some(admin) = st.admins.iter().find(|a| {
            matches!(&a.matcher, AdminMatch::Jwt { issuer, subject } if *issuer == v.issuer && *subject == v.subject)
        }) {
            return Ok((Caller::Admin(admin.clone()), evidence));
        }
        let policies = st.policies.current();
        return match policies.match_jwt(&v.issuer, &v.subject, &v.claims) {
            Some(i) => Ok((
                Caller::Workload {
                    identity: i.id.clone(),
                    may_introspect: i.may_introspect,
                },
                evidence,
            )),
            None => Err(refuse(
                Refusal::unknown_caller(&v.issuer, &v.subject, false),
                Some(evidence),
            )),
        };
    }
    if let Some(ClientCert(cert)) = client_cert {
        let pc = match cert.as_ref() {
            Ok(pc) => pc,
            Err(e) => return Err(refuse(Refusal::certificate_unusable(e.clone()), None)),
        };
        let evidence = cert_evidence(pc);
        let spiffe = pc
            .spiffe_id()
            .map_err(|r| refuse(Refusal::certificate(r), Some(evidence.clone())))?;
        if let Some(admin) = st.admins.iter().find(|a| match &a.matcher {
            AdminMatch::SpiffeId(s) => spiffe == Some(s.as_str()),
            AdminMatch::CertSubject(c) => {
                spiffe.is_none() && pc.subject_cn.as_deref() == Some(c.as_str())
            }
            AdminMatch::Jwt { .. } => false,
        }) {
            return Ok((Caller::Admin(admin.clone()), evidence));
        }
        let policies = st.policies.current();
        return match pc.identity(&policies) {
            Ok(i) => Ok((
                Caller::Workload {
                    identity: i.id.clone(),
                    may_introspect: i.may_introspect,
                },
                evidence,
            )),
            Err(r) => Err(refuse(Refusal::certificate(r), Some(evidence))),
        };
    }
    Err(refuse(Refusal::NoCredentials, None))
}

/// A caller authenticated by an RFC 7523 client assertion (and, over mTLS, a
/// certificate of the same identity).
async fn by_assertion(
    st: &AppState,
    a: FormAssertion<'_>,
    client_cert: Option<&ClientCert>,
) -> Result<(Caller, Evidence), CallerRefusal> {
    let audiences = crate::issuance::authenticate::assertion_audiences(st, a.endpoint);
    let v = st
        .authn
        .authenticate_client_assertion(a.assertion, &audiences)
        .await
        .map_err(|e| {
            refuse(
                Refusal::client_assertion(&e),
                Some(Evidence {
                    kind: "jwt",
                    ..Default::default()
                }),
            )
        })?;
    let pc = match client_cert {
        Some(ClientCert(cert)) => match cert.as_ref() {
            Ok(pc) => Some(pc),
            Err(e) => return Err(refuse(Refusal::certificate_unusable(e.clone()), None)),
        },
        None => None,
    };
    let evidence = jwt_evidence(&v, pc);
    let policies = st.policies.current();
    let Some(i) = policies.match_jwt(&v.issuer, &v.subject, &v.claims) else {
        return Err(refuse(
            Refusal::unknown_caller(&v.issuer, &v.subject, true),
            Some(evidence),
        ));
    };
    if let Some(pc) = pc {
        let by_cert = pc
            .identity(&policies)
            .map_err(|r| refuse(Refusal::certificate(r), Some(evidence.clone())))?;
        if by_cert.id != i.id {
            return Err(refuse(
                Refusal::client_auth_mismatch(&i.id, &by_cert.id),
                Some(evidence),
            ));
        }
    }
    Ok((
        Caller::Workload {
            identity: i.id.clone(),
            may_introspect: i.may_introspect,
        },
        evidence,
    ))
}

/// Authenticates the caller; on failure records a `denied` event (built from `ev`) and
/// returns the answer to send. On success `ev` carries the evidence and the actor.
pub async fn require(
    st: &AppState,
    ev: &mut crate::audit::event::AuditEvent,
    headers: &HeaderMap,
    client_cert: Option<&ClientCert>,
) -> Result<Caller, axum::response::Response> {
    require_with(st, ev, headers, client_cert, None).await
}

/// [`require`] for a form endpoint at `endpoint`: the body may carry a client assertion.
pub async fn require_form(
    st: &AppState,
    ev: &mut crate::audit::event::AuditEvent,
    headers: &HeaderMap,
    client_cert: Option<&ClientCert>,
    body: &[u8],
    endpoint: &'static str,
) -> Result<Caller, axum::response::Response> {
    let assertion = match form_assertion(body) {
        Ok(a) => a,
        Err(r) => return Err(crate::api::record::deny(st, ev.clone(), r.rule(), r.error()).await),
    };
    let form = assertion.as_deref().map(|assertion| FormAssertion {
        assertion,
        endpoint,
    });
    require_with(st, ev, headers, client_cert, form).await
}

/// [`require`] for endpoints whose form body may carry a client assertion.
pub async fn require_with(
    st: &AppState,
    ev: &mut crate::audit::event::AuditEvent,
    headers: &HeaderMap,
    client_cert: Option<&ClientCert>,
    assertion: Option<FormAssertion<'_>>,
) -> Result<Caller, axum::response::Response> {
    match authenticate_with(st, headers, client_cert, assertion).await {
        Ok((caller, evidence)) => {
            ev.evidence = Some(evidence);
            ev.actor = Some(caller.actor());
            Ok(caller)
        }
        Err(r) => {
            let (rule, error) = (r.rule(), r.error());
            ev.evidence = r.evidence;
            Err(crate::api::record::deny(st, ev.clone(), rule, error).await)
        }
    }
}
