//! Stage 2, authenticate: the credential (a workload JWT, a TLS client certificate, or
//! both) to one registered identity, with the evidence for the audit record. The
//! evidence builders are shared with the admin and introspection caller path
//! ([`crate::api::caller`]).

use axum::Extension;

use broker_client::types::Actor;

use super::parse::{Credential, Params, clip};
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

/// The `DPoP` proof of a token request, checked (RFC 9449 §4.3): the key thumbprint the
/// token is to be bound to, or `None` for a bearer request. The proof's `htu` must be the
/// token endpoint under the broker's issuer URL; a request to a loopback `Host`
/// (`127.0.0.0/8`, `[::1]`, `localhost`: development and sidecars) may also name that host.
/// Any other `Host` is not trusted for `htu`: a proof made for another server, replayed
/// here with that server's name in `Host`, would otherwise pass.
pub async fn dpop(
    st: &AppState,
    header: Result<Option<&str>, ()>,
    host: Option<&str>,
    ev: &mut AuditEvent,
) -> Result<Option<String>, Refusal> {
    use broker_client::dpop::DpopError;
    let now = st.clock.unix_secs();
    let nonce = || st.dpop.nonce(now);
    let proof = header.map_err(|()| {
        Refusal::Dpop(
            DpopError::Malformed("send exactly one DPoP header"),
            nonce(),
        )
    })?;
    if proof.is_none() {
        return Ok(None);
    }
    let iss = st.minter.issuer().trim_end_matches('/');
    let path = crate::api::TOKEN_PATH;
    let mut urls = vec![format!("{iss}{path}")];
    if let Some(h) = host.filter(|h| h.len() <= 255 && is_loopback_host(h)) {
        urls.push(format!("http://{h}{path}"));
        urls.push(format!("https://{h}{path}"));
    }
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let jkt = st
        .dpop
        .check(proof, &urls, now)
        .await
        .map_err(|e| match e {
            crate::dpop::ProofRefused::Proof(e) => Refusal::Dpop(e, nonce()),
            crate::dpop::ProofRefused::ReplayCheckUnavailable(detail) => {
                Refusal::DpopReplayCheckUnavailable(detail)
            }
        })?;
    ev.dpop_jkt.clone_from(&jkt);
    Ok(jkt)
}

/// Whether a `Host` header value names a loopback address (with or without a port).
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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

/// The `aud` values an RFC 7523 client assertion sent to `endpoint_path` may carry: the
/// broker's issuer identifier, its token endpoint (RFC 7523 §3 item 3), and the endpoint
/// called.
pub fn assertion_audiences(st: &AppState, endpoint_path: &str) -> Vec<String> {
    let iss = st.minter.issuer();
    let base = iss.trim_end_matches('/');
    let mut out = vec![iss.to_owned(), format!("{base}{}", crate::api::TOKEN_PATH)];
    if endpoint_path != crate::api::TOKEN_PATH {
        out.push(format!("{base}{endpoint_path}"));
    }
    out
}

/// Who asks: the identity the token is for and, in a delegated request, who acts for it.
pub struct Caller<'p> {
    /// The identity the token is for (`sub`).
    pub identity: &'p Identity,
    /// The acting party of a delegated request.
    pub actor: Option<ActingParty<'p>>,
}

/// The acting party of a delegated request (RFC 8693 §4.1).
pub struct ActingParty<'p> {
    /// The acting identity (authenticated by the `actor_token`).
    pub identity: &'p Identity,
    /// The token's `act` claim: the actor, nesting the chain the subject token carried.
    pub act: Actor,
}

/// The identity the request's credentials prove (and, with an `actor_token`, the actor).
/// `ev` gets the evidence, and the identity as soon as it is known.
pub async fn authenticate<'p>(
    st: &AppState,
    policies: &'p PolicySet,
    params: &Params,
    cert: Option<&PeerCert>,
    ev: &mut AuditEvent,
) -> Result<Caller<'p>, Refusal> {
    let client = client_authentication(st, policies, params, cert, ev).await?;
    if let (Credential::SubjectToken(subject), Some(actor)) =
        (&params.credential, params.actor_token.as_deref())
    {
        return delegated(st, policies, subject, actor, client, cert, ev).await;
    }
    let identity = one_identity(st, policies, params, client, cert, ev).await?;
    Ok(Caller {
        identity,
        actor: None,
    })
}

/// A delegated request: the subject token proves the identity acted for, the actor
/// token the identity acting; the client authentication (a certificate, a client
/// assertion), if any, must be the actor's. The subject token's own `act` (an earlier
/// delegation) becomes the rest of the chain.
async fn delegated<'p>(
    st: &AppState,
    policies: &'p PolicySet,
    subject_token: &str,
    actor_token: &str,
    client: Option<ClientAuth<'p>>,
    cert: Option<&PeerCert>,
    ev: &mut AuditEvent,
) -> Result<Caller<'p>, Refusal> {
    let subject = st
        .authn
        .authenticate_jwt(subject_token)
        .await
        .map_err(|e| Refusal::subject_token(&e))?;
    ev.evidence = Some(jwt_evidence(&subject, None));
    let Some(identity) = policies.match_jwt(&subject.issuer, &subject.subject, &subject.claims)
    else {
        return Err(Refusal::unknown_identity(&subject.issuer, &subject.subject));
    };
    ev.identity = Some(identity.id.clone());
    let prior = prior_chain(subject.claims.get("act"))?;
    let jwt = st
        .authn
        .authenticate_jwt(actor_token)
        .await
        .map_err(|e| Refusal::actor_token(&e))?;
    ev.actor_evidence = Some(jwt_evidence(&jwt, cert));
    let Some(actor) = policies.match_jwt(&jwt.issuer, &jwt.subject, &jwt.claims) else {
        return Err(Refusal::unknown_identity(&jwt.issuer, &jwt.subject));
    };
    ev.actor = Some(actor.id.clone());
    if let Some(pc) = cert {
        let by_cert = pc.identity(policies).map_err(Refusal::certificate)?;
        if by_cert.id != actor.id {
            return Err(Refusal::identity_mismatch(
                &actor.id,
                &by_cert.id,
                "client certificate",
            ));
        }
    }
    if let Some(ClientAuth::Assertion(by_assertion)) = client
        && by_assertion.id != actor.id
    {
        return Err(Refusal::identity_mismatch(
            &actor.id,
            &by_assertion.id,
            "client assertion",
        ));
    }
    let act = Actor {
        sub: actor.id.clone(),
        act: prior.map(Box::new),
    };
    ev.delegation = Some(act.chain().into_iter().map(clip).collect());
    Ok(Caller {
        identity,
        actor: Some(ActingParty {
            identity: actor,
            act,
        }),
    })
}

/// The subject token's `act` claim as an actor chain: absent, or RFC 8693 objects
/// nested by `act`, no longer than any delegation rule may allow.
fn prior_chain(act: Option<&serde_json::Value>) -> Result<Option<Actor>, Refusal> {
    let Some(v) = act else { return Ok(None) };
    let prior: Actor = serde_json::from_value(v.clone()).map_err(|_| Refusal::ActClaimMalformed)?;
    let depth = prior.depth() + 1;
    if depth > crate::policy::MAX_DELEGATION_DEPTH {
        return Err(Refusal::DelegationChainTooDeep {
            depth,
            max: crate::policy::MAX_DELEGATION_DEPTH,
        });
    }
    Ok(Some(prior))
}

/// A request without delegation: one identity from the subject token or the client
/// authentication.
async fn one_identity<'p>(
    st: &AppState,
    policies: &'p PolicySet,
    params: &Params,
    client: Option<ClientAuth<'p>>,
    cert: Option<&PeerCert>,
    ev: &mut AuditEvent,
) -> Result<&'p Identity, Refusal> {
    match &params.credential {
        Credential::SubjectToken(token) => {
            let identity = by_jwt(st, policies, token, cert, ev).await?;
            if let Some(ClientAuth::Assertion(by_assertion)) = client
                && by_assertion.id != identity.id
            {
                ev.identity = Some(identity.id.clone());
                return Err(Refusal::identity_mismatch(
                    &identity.id,
                    &by_assertion.id,
                    "client assertion",
                ));
            }
            Ok(identity)
        }
        Credential::ClientCredentials { client_id } => {
            let identity = match client {
                Some(ClientAuth::Assertion(i) | ClientAuth::Certificate(i)) => i,
                None => return Err(Refusal::certificate_required()),
            };
            if let Some(cid) = client_id.as_deref()
                && cid != identity.id
            {
                return Err(Refusal::client_id_mismatch(cid, &identity.id));
            }
            Ok(identity)
        }
    }
}

/// How the client authenticated, and as whom.
enum ClientAuth<'p> {
    /// An RFC 7523 client assertion (and, over mTLS, a certificate of the same identity).
    Assertion(&'p Identity),
    /// Only a TLS client certificate (`tls_client_auth`).
    Certificate(&'p Identity),
}

/// The client authentication: a client assertion (checked against the certificate when
/// both are presented), else the certificate for `client_credentials`. A token exchange
/// without an assertion authenticates by its subject token alone, as before.
async fn client_authentication<'p>(
    st: &AppState,
    policies: &'p PolicySet,
    params: &Params,
    cert: Option<&PeerCert>,
    ev: &mut AuditEvent,
) -> Result<Option<ClientAuth<'p>>, Refusal> {
    if let Some(assertion) = &params.client_assertion {
        let audiences = assertion_audiences(st, crate::api::TOKEN_PATH);
        let jwt = st
            .authn
            .authenticate_client_assertion(assertion, &audiences)
            .await
            .map_err(|e| Refusal::client_assertion(&e))?;
        ev.evidence = Some(jwt_evidence(&jwt, cert));
        let Some(identity) = policies.match_jwt(&jwt.issuer, &jwt.subject, &jwt.claims) else {
            return Err(Refusal::unknown_identity(&jwt.issuer, &jwt.subject));
        };
        if let Some(pc) = cert {
            let by_cert = pc.identity(policies).map_err(Refusal::certificate)?;
            if by_cert.id != identity.id {
                ev.identity = Some(identity.id.clone());
                return Err(Refusal::client_auth_mismatch(&identity.id, &by_cert.id));
            }
        }
        return Ok(Some(ClientAuth::Assertion(identity)));
    }
    match (&params.credential, cert) {
        (Credential::ClientCredentials { .. }, Some(pc)) => Ok(Some(ClientAuth::Certificate(
            pc.identity(policies).map_err(Refusal::certificate)?,
        ))),
        _ => Ok(None),
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
            return Err(Refusal::identity_mismatch(
                &identity.id,
                &by_cert.id,
                "client certificate",
            ));
        }
    }
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn only_loopback_hosts_may_name_the_token_endpoint_in_a_dpop_proof() {
        for h in [
            "127.0.0.1:8080",
            "127.9.9.9",
            "localhost:1",
            "[::1]:443",
            "[::1]",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "broker.example.org",
            "10.0.0.1:443",
            "[2001:db8::1]:8080",
            "evil.test:80",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
