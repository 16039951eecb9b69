//! `POST /oauth2/token`: RFC 8693 token exchange (workload JWT → access token) and
//! `client_credentials` with `tls_client_auth` (RFC 8705 §2.1: the client certificate is
//! the whole credential). Tokens issued over mTLS, by either grant, are bound to the
//! certificate (`cnf.x5t#S256`), and a JWT presented over mTLS must prove the same
//! identity as the certificate.
//!
//! This handler only translates HTTP to [`crate::issuance::TokenService`] and back; the
//! stages, and the rule that every outcome is durable in the audit log before the caller
//! hears it, live there.

use std::net::SocketAddr;
use std::time::Instant;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use broker_client::types::{TOKEN_TYPE_ACCESS_TOKEN, TokenResponse};

use axum::http::StatusCode;

use crate::api::{ApiError, AppState};
use crate::authn::mtls::ClientCert;
use crate::denial_budget::Admit;
use crate::issuance::{Issued, NotIssued, TokenCall, TokenService};
use crate::metrics::TokenOutcome;

/// The token endpoint.
#[tracing::instrument(skip_all, fields(source = %peer.ip()))]
pub async fn token(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client_cert: Option<Extension<ClientCert>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let call = TokenCall {
        peer,
        client_cert: client_cert.as_ref(),
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        dpop: dpop_header(&headers),
        host: headers.get(header::HOST).and_then(|v| v.to_str().ok()),
        body,
    };
    let (outcome, res) = match TokenService::new(&st).issue(call).await {
        Ok(issued) => (TokenOutcome::Issued, answer(&issued)),
        Err(NotIssued::Refused { refusal, record }) => {
            let res = refused(&st, peer, &refusal, *record).await;
            // Recording the refusal can fail too (503).
            let outcome = if res.status() == StatusCode::SERVICE_UNAVAILABLE {
                TokenOutcome::Failed
            } else {
                TokenOutcome::Denied
            };
            (outcome, res)
        }
        Err(NotIssued::AuditFailed) => (
            TokenOutcome::Failed,
            ApiError::audit_unavailable().into_response(),
        ),
    };
    st.metrics.token_request(outcome, started);
    res
}

/// The `DPoP` header: none, one (text), or an error.
fn dpop_header(headers: &HeaderMap) -> Result<Option<&str>, ()> {
    let mut all = headers.get_all("dpop").iter();
    match (all.next(), all.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v.to_str().map(Some).map_err(|_| ()),
        (Some(_), Some(_)) => Err(()),
    }
}

/// A refusal, recorded, or over the source's budget answered 429 and counted into its
/// summary (`crate::denial_budget`).
async fn refused(
    st: &AppState,
    peer: SocketAddr,
    refusal: &crate::issuance::Refusal,
    record: crate::audit::event::AuditEvent,
) -> Response {
    let now = st
        .clock
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    match st.denials.admit(peer.ip(), refusal.rule(), now) {
        Admit::Record { summary } => {
            if let Some(s) = summary
                && let Err(e) = st.audit.append(*s).await
            {
                tracing::error!(error = %e, "could not record a denial summary");
            }
            crate::api::record::deny(st, record, refusal.rule(), refusal.error()).await
        }
        Admit::Suppress { retry_after } => {
            st.metrics.denied(refusal.rule());
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                format!(
                    "too many refused requests from this address (the last: {}); they are counted, not recorded one by one; retry after {retry_after}s",
                    refusal.rule()
                ),
            );
            e.retry_after = Some(retry_after);
            e.into_response()
        }
    }
}

/// The RFC 6749 §5.1 answer (never cached), with the recertification deadline if any.
fn answer(issued: &Issued) -> Response {
    let t = &issued.token;
    let body = TokenResponse {
        access_token: t.expose_token().to_owned(),
        issued_token_type: TOKEN_TYPE_ACCESS_TOKEN.to_owned(),
        // RFC 9449 §5: a DPoP-bound token is of type DPoP.
        token_type: if t.claims.cnf.as_ref().is_some_and(|c| c.jkt.is_some()) {
            "DPoP".to_owned()
        } else {
            "Bearer".to_owned()
        },
        expires_in: t.claims.exp.saturating_sub(t.claims.nbf),
        scope: t.claims.scope.clone(),
    };
    let mut res = axum::Json(body).into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if let Some(v) = issued
        .recertify
        .as_deref()
        .and_then(|d| HeaderValue::from_str(d).ok())
    {
        h.insert("registration-expires", v);
    }
    res
}
