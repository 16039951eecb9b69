//! An axum extractor that verifies bearer tokens with a [`Verifier`] from the state.
//!
//! Bad tokens are rejected with RFC 6750 answers: 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"` (or no `error` when no token was
//! sent), and 403 `insufficient_scope` for a missing scope. When the broker's keys cannot
//! be fetched, the token cannot be judged at all: 503 with `Retry-After`, not a 401 that
//! would send a well-behaved client off to fetch a new token. If the resource server
//! terminates mTLS, it inserts the caller's DER certificate as a [`ClientCertificateDer`]
//! request extension so bound tokens can be checked.
//!
//! DPoP-bound tokens (RFC 9449) come as `Authorization: DPoP <token>` with a `DPoP` proof
//! header; the proof is checked for this request's method and URL (the verifier's
//! [`crate::VerifierBuilder::dpop_origin`] and the path), and refusals answer
//! `WWW-Authenticate: DPoP error="invalid_dpop_proof"`. A DPoP-bound token sent as
//! `Bearer` is refused.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::VerifyError;
use crate::types::AccessTokenClaims;
use crate::verifier::{DpopRequest, Verifier};

/// The caller's TLS client certificate (DER), inserted by the server's TLS layer.
#[derive(Debug, Clone)]
pub struct ClientCertificateDer(pub Vec<u8>);

/// A verified token's claims.
#[derive(Debug, Clone)]
pub struct Authenticated(pub AccessTokenClaims);

fn reject(status: StatusCode, challenge: &str) -> Response {
    let mut res = status.into_response();
    if let Ok(v) = HeaderValue::from_str(challenge) {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    res
}

/// The challenge when no token was sent: either scheme is accepted.
const BEARER_AND_DPOP: &str = "Bearer realm=\"jit-broker\", DPoP algs=\"ES256 EdDSA\"";

/// A refused DPoP proof (RFC 9449 §7.1).
fn dpop_reject(why: &str) -> Response {
    reject(
        StatusCode::UNAUTHORIZED,
        &format!(
            "DPoP algs=\"ES256 EdDSA\", error=\"invalid_dpop_proof\", error_description=\"{}\"",
            why.replace('"', "'")
        ),
    )
}

/// The URL the client addressed: the verifier's configured origin (or `http://` and the
/// `Host` header) and the request's path.
fn request_url(parts: &Parts, origin: Option<&str>) -> String {
    let path = parts.uri.path_and_query().map_or("/", |p| p.path());
    match origin {
        Some(o) => format!("{}{path}", o.trim_end_matches('/')),
        None => {
            let host = parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| parts.uri.authority().map(|a| a.as_str()))
                .unwrap_or("localhost");
            format!("http://{host}{path}")
        }
    }
}

impl<S> FromRequestParts<S> for Authenticated
where
    Verifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = Verifier::from_ref(state);
        let Some((scheme, token)) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            // The auth scheme is case-insensitive (RFC 7235 §2.1).
            .filter(|(scheme, _)| {
                scheme.eq_ignore_ascii_case("Bearer") || scheme.eq_ignore_ascii_case("DPoP")
            })
        else {
            return Err(reject(StatusCode::UNAUTHORIZED, BEARER_AND_DPOP));
        };
        let cert = parts
            .extensions
            .get::<ClientCertificateDer>()
            .map(|c| c.0.clone());
        let token = token.trim();
        let result = if scheme.eq_ignore_ascii_case("DPoP") {
            let mut proofs = parts.headers.get_all("dpop").iter();
            let (Some(proof), None) = (proofs.next(), proofs.next()) else {
                return Err(dpop_reject("exactly one DPoP header is required"));
            };
            let Ok(proof) = proof.to_str() else {
                return Err(dpop_reject("the DPoP header is not text"));
            };
            let url = request_url(parts, verifier.dpop_origin());
            let req = DpopRequest {
                proof,
                method: parts.method.as_str(),
                url: &url,
            };
            verifier.verify_dpop(token, req, cert.as_deref()).await
        } else {
            verifier.verify(token, cert.as_deref()).await
        };
        match result {
            Ok(claims) => Ok(Authenticated(claims)),
            Err(VerifyError::KeysUnavailable(_)) => {
                let mut res = StatusCode::SERVICE_UNAVAILABLE.into_response();
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                Err(res)
            }
            Err(VerifyError::MissingScope(s)) => Err(reject(
                StatusCode::FORBIDDEN,
                &format!(
                    "Bearer realm=\"jit-broker\", error=\"insufficient_scope\", scope=\"{s}\""
                ),
            )),
            Err(VerifyError::Dpop(e)) => Err(dpop_reject(&e.to_string())),
            Err(VerifyError::DpopRequired) => Err(reject(
                StatusCode::UNAUTHORIZED,
                "DPoP algs=\"ES256 EdDSA\", error=\"invalid_token\", error_description=\"the token is DPoP-bound: send it as Authorization: DPoP with a DPoP proof\"",
            )),
            Err(e) => Err(reject(
                StatusCode::UNAUTHORIZED,
                &format!(
                    "Bearer realm=\"jit-broker\", error=\"invalid_token\", error_description=\"{}\"",
                    e.to_string().replace('"', "'")
                ),
            )),
        }
    }
}
