//! Stage 2, authenticate: the credential (a workload JWT, a TLS client certificate, or
//! both) to one registered identity, with the evidence for the audit record. The
//! evidence builders are shared with the admin and introspection caller path
//! ([`crate::api::caller`]).

use axum::Extension;

use super::parse::{Credential, Params};
use super::refusal::Refusal;
use crate::audit::event::{AuditEvent, Evidence};
use crate::authn::VerifiedJwt;
use crate::authn::mtls::{ClientCert, PeerCert};
use crate::policy::{Identity, PolicySet};
use crate::state::AppState;

/// The audit evidence of a TLS client certificate.
pub fn cert_evidence(pc: &PeerCert) -> Evidence {
    Evidence {
        kind: "mtls",
        issuer: pc.ca_name.clone(),
        subject: pc.subject_cn.clone(),
        spiffe_id: pc.spiffe_ids.first().cloned(),
        cert_sha256: Some(pc.sha256_hex.clone()),
        kid: None,
    }
}

/// The audit evidence of a verified workload JWT, presented over mTLS with `cert` or not.
pub fn jwt_evidence(jwt: &VerifiedJwt, cert: Option<&PeerCert>) -> Evidence {
    Evidence {
        kind: if cert.is_some() { "jwt+mtls" } else { "jwt" },
        issuer: Some(jwt.issuer.clone()),
        subject: Some(jwt.subject.clone()),
        spiffe_id: jwt
            .spiffe_id()
            .map(str::to_owned)
            .or_else(|| cert.and_then(|c| c.spiffe_ids.first().cloned())),
        cert_sha256: cert.map(|c| c.sha256_hex.clone()),
        kid: jwt.kid.clone(),
    }
}

/// The usable client certificate, if one was presented (an unusable one is refused).
pub fn peer_cert<'c>(
    client_cert: Option<&'c Extension<ClientCert>>,
    ev: &mut AuditEvent,
) -> Result<Option<&'c PeerCert>, Refusal> {
    let Some(Extension(ClientCert(c))) = client_cert else {
        return Ok(None);
    };
    match c.as_ref() {
        Ok(pc) => {
            ev.evidence = Some(cert_evidence(pc));
            Ok(Some(pc))
        }
        Err(e) => Err(Refusal::certificate_unusable(e.clone())),
    }
}

/// The identity the request's credentials prove. `ev` gets the evidence, and the
/// identity as soon as it is known.
pub async fn authenticate<'p>(
    st: &AppState,
    policies: &'p PolicySet,
    params: &Params,
    cert: Option<&PeerCert>,
    ev: &mut AuditEvent,
) -> Result<&'p Identity, Refusal> {
    match &params.credential {
        Credential::SubjectToken(token) => by_jwt(st, policies, token, cert, ev).await,
        Credential::ClientCertificate { client_id } => {
            let pc = cert.ok_or_else(Refusal::certificate_required)?;
            let identity = pc.identity(policies).map_err(Refusal::certificate)?;
            if let Some(cid) = client_id.as_deref()
                && cid != identity.id
            {
                return Err(Refusal::client_id_mismatch(cid, &identity.id));
            }
            Ok(identity)
        }
    }
}

/// A workload JWT (and, over mTLS, the certificate proving the same identity).
async fn by_jwt<'p>(
    st: &AppState,
    policies: &'p PolicySet,
    token: &str,
    cert: Option<&PeerCert>,
    ev: &mut AuditEvent,
) -> Result<&'p Identity, Refusal> {
    let jwt = st
        .authn
        .authenticate_jwt(token)
        .await
        .map_err(|e| Refusal::subject_token(&e))?;
    ev.evidence = Some(jwt_evidence(&jwt, cert));
    let Some(identity) = policies.match_jwt(&jwt.issuer, &jwt.subject, &jwt.claims) else {
        return Err(Refusal::unknown_identity(&jwt.issuer, &jwt.subject));
    };
    if let Some(pc) = cert {
        // Over mTLS the token is bound to the certificate, so both must prove the same
        // identity.
        let by_cert = pc.identity(policies).map_err(Refusal::certificate)?;
        if by_cert.id != identity.id {
            ev.identity = Some(identity.id.clone());
            return Err(Refusal::identity_mismatch(&identity.id, &by_cert.id));
        }
    }
    Ok(identity)
}
