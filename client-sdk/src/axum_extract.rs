//! An axum extractor that verifies bearer tokens with a [`Verifier`] from the state.
//!
//! Bad tokens are rejected with RFC 6750 answers: 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"` (or no `error` when no token was
//! sent), and 403 `insufficient_scope` for a missing scope. When the broker's keys cannot
//! be fetched, the token cannot be judged at all: 503 with `Retry-After`, not a 401 that
//! would send a well-behaved client off to fetch a new token. If the resource server
//! terminates mTLS, it inserts the caller's DER certificate as a [`ClientCertificateDer`]
//! request extension so bound tokens can be checked.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::VerifyError;
use crate::types::AccessTokenClaims;
use crate::verifier::Verifier;

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

impl<S> FromRequestParts<S> for Authenticated
where
    Verifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = Verifier::from_ref(state);
        let Some(token) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            // The auth scheme is case-insensitive (RFC 7235 §2.1).
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
            .map(|(_, token)| token)
        else {
            return Err(reject(
                StatusCode::UNAUTHORIZED,
                "Bearer realm=\"jit-broker\"",
            ));
        };
        let cert = parts
            .extensions
            .get::<ClientCertificateDer>()
            .map(|c| c.0.clone());
        match verifier.verify(token.trim(), cert.as_deref()).await {
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
