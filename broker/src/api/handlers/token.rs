//! `POST /oauth2/token`: RFC 8693 token exchange (workload JWT → access token) and
//! `client_credentials` with `tls_client_auth` (RFC 8705 §2.1: the client certificate is
//! the whole credential). Tokens issued over mTLS, by either grant, are bound to the
//! certificate (`cnf.x5t#S256`), and a JWT presented over mTLS must prove the same
//! identity as the certificate.
//!
//! Every outcome is appended to the audit log and made durable before the caller hears
//! it: the `issued` record before the token leaves, the `denied` record before the error.
//! If the record cannot be written, the answer is 503 and no token is returned.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use broker_client::types::{
    GRANT_TYPE_CLIENT_CREDENTIALS, GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_JWT, TokenResponse,
};
use serde::Deserialize;

use crate::api::{ApiError, AppState};
use crate::audit::event::{AuditEvent, Decision as AuditDecision, EventKind, Evidence};
use crate::authn::AuthnError;
use crate::authn::mtls::{CertRefusal, ClientCert, PeerCert};
use crate::mint::MintRequest;
use crate::policy::{self, Decision};

/// The form parameters the broker reads. Unknown parameters are ignored (RFC 6749 §3.2);
/// a repeated parameter is an error. No `Debug`: it holds the subject token.
#[derive(Deserialize, Default)]
struct TokenForm {
    grant_type: Option<String>,
    subject_token: Option<String>,
    subject_token_type: Option<String>,
    requested_token_type: Option<String>,
    actor_token: Option<String>,
    task: Option<String>,
    audience: Option<String>,
    resource: Option<String>,
    scope: Option<String>,
    requested_ttl: Option<String>,
    client_id: Option<String>,
}

/// A refusal: the error to answer with and the rule to record.
struct Refusal {
    rule: &'static str,
    error: ApiError,
}

impl Refusal {
    fn new(rule: &'static str, error: ApiError) -> Self {
        Self { rule, error }
    }
    fn invalid_request(rule: &'static str, description: impl Into<String>) -> Self {
        Self::new(rule, ApiError::invalid_request(description))
    }
}

/// The token endpoint.
#[tracing::instrument(skip_all, fields(source = %peer.ip()))]
pub async fn token(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client_cert: Option<Extension<ClientCert>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut ev = AuditEvent::new(EventKind::Denied);
    ev.source = Some(peer.ip().to_string());
    match issue(&st, peer, client_cert, &headers, body, &mut ev).await {
        Ok(res) => res,
        Err(refusal) => deny(&st, ev, refusal).await,
    }
}

async fn deny(st: &AppState, ev: AuditEvent, refusal: Refusal) -> Response {
    crate::api::record::deny(st, ev, refusal.rule, refusal.error).await
}

fn authn_refusal(e: &AuthnError) -> Refusal {
    let error = match e {
        AuthnError::KeysUnavailable(_) => {
            tracing::warn!(error = %e, "subject_token not checked: issuer keys unavailable");
            let mut err = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                format!("cannot check the subject_token: {}", e.public_message()),
            )
            .with_operator_detail(format!("cannot check the subject_token: {e}"));
            // Keys that failed to load are fetched again at most this often.
            err.retry_after = Some(crate::authn::issuers::MIN_REFRESH_INTERVAL.as_secs());
            err
        }
        _ => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            format!("subject_token rejected: {e}"),
        ),
    };
    Refusal::new(e.rule(), error)
}

fn policy_refusal(d: &policy::Denial) -> Refusal {
    let status = StatusCode::from_u16(d.rule.http_status()).unwrap_or(StatusCode::FORBIDDEN);
    Refusal::new(
        d.rule.as_str(),
        ApiError::new(status, d.rule.oauth_error(), d.reason.clone()),
    )
}

async fn issue(
    st: &AppState,
    peer: SocketAddr,
    client_cert: Option<Extension<ClientCert>>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    ev: &mut AuditEvent,
) -> Result<Response, Refusal> {
    if st.revocations.is_stale() {
        return Err(Refusal::new("state_stale", ApiError::state_stale()));
    }
    let body = body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Refusal::new(
                "body_too_large",
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request",
                    "request body is larger than this broker accepts (listen.max_body_bytes)",
                ),
            )
        } else {
            Refusal::invalid_request("malformed_request", "request body could not be read")
        }
    })?;
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    if !form_type {
        return Err(Refusal::invalid_request(
            "malformed_request",
            "the token endpoint takes application/x-www-form-urlencoded bodies (RFC 6749 §4)",
        ));
    }
    let form: TokenForm = serde_urlencoded::from_bytes(&body).map_err(|e| {
        Refusal::invalid_request("malformed_request", format!("malformed form body: {e}"))
    })?;

    let exchange = match form.grant_type.as_deref() {
        Some(GRANT_TYPE_TOKEN_EXCHANGE) => true,
        Some(GRANT_TYPE_CLIENT_CREDENTIALS) => false,
        Some(other) => {
            return Err(Refusal::new(
                "unsupported_grant_type",
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    format!(
                        "grant_type {:?} is not supported: use {GRANT_TYPE_TOKEN_EXCHANGE} or {GRANT_TYPE_CLIENT_CREDENTIALS}",
                        clip(other)
                    ),
                ),
            ));
        }
        None => {
            return Err(Refusal::invalid_request(
                "malformed_request",
                "grant_type is required",
            ));
        }
    };
    let subject_token = if exchange {
        Some(exchange_params(&form)?)
    } else {
        None
    };
    let Some(task) = form.task.as_deref().filter(|t| !t.is_empty()) else {
        return Err(Refusal::invalid_request(
            "malformed_request",
            "task is required: name the task of your identity's policy this token is for",
        ));
    };
    ev.task = Some(clip(task));
    let audience = match (form.audience.as_deref(), form.resource.as_deref()) {
        (Some(a), Some(r)) if a != r => {
            return Err(Refusal::new(
                "audience_conflict",
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_target",
                    "audience and resource name different targets; a token has exactly one audience",
                ),
            ));
        }
        (Some(a), _) | (None, Some(a)) => Some(a),
        (None, None) => None,
    };
    if let Some(a) = audience {
        ev.audience = Some(clip(a));
    }
    let scopes: Option<Vec<&str>> = form
        .scope
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.split_whitespace().collect());
    if let Some(s) = &scopes {
        ev.scopes = Some(s.iter().map(|s| clip(s)).collect());
    }
    let requested_ttl = match form.requested_ttl.as_deref() {
        None => None,
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n > 0 => Some(Duration::from_secs(n)),
            _ => {
                return Err(Refusal::invalid_request(
                    "malformed_request",
                    format!(
                        "requested_ttl {:?} must be a positive number of seconds",
                        clip(s)
                    ),
                ));
            }
        },
    };

    let cert: Option<&PeerCert> = match &client_cert {
        None => None,
        Some(Extension(ClientCert(c))) => match c.as_ref() {
            Ok(pc) => Some(pc),
            Err(e) => {
                return Err(Refusal::new(
                    "client_certificate_unusable",
                    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_client", e.clone()),
                ));
            }
        },
    };
    if let Some(pc) = cert {
        ev.evidence = Some(Evidence {
            kind: "mtls",
            issuer: pc.ca_name.clone(),
            subject: pc.subject_cn.clone(),
            spiffe_id: pc.spiffe_ids.first().cloned(),
            cert_sha256: Some(pc.sha256_hex.clone()),
            kid: None,
        });
    }

    let policies = st.policies.current();
    let identity = if let Some(subject_token) = subject_token {
        let jwt = st
            .authn
            .authenticate_jwt(subject_token)
            .await
            .map_err(|e| authn_refusal(&e))?;
        ev.evidence = Some(Evidence {
            kind: if cert.is_some() { "jwt+mtls" } else { "jwt" },
            issuer: Some(jwt.issuer.clone()),
            subject: Some(jwt.subject.clone()),
            spiffe_id: jwt
                .spiffe_id()
                .map(str::to_owned)
                .or_else(|| cert.and_then(|c| c.spiffe_ids.first().cloned())),
            cert_sha256: cert.map(|c| c.sha256_hex.clone()),
            kid: jwt.kid.clone(),
        });
        let Some(identity) = policies.match_jwt(&jwt.issuer, &jwt.subject, &jwt.claims) else {
            return Err(Refusal::new(
                policy::Rule::UnknownIdentity.as_str(),
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    policy::Rule::UnknownIdentity.oauth_error(),
                    format!(
                        "no registered identity matches issuer {} subject {}: register it with an [[identity.match]] in the policy directory",
                        jwt.issuer,
                        clip(&jwt.subject)
                    ),
                ),
            ));
        };
        if let Some(pc) = cert {
            // Over mTLS the token is bound to the certificate, so both must prove the
            // same identity.
            let by_cert = pc.identity(&policies).map_err(cert_refusal)?;
            if by_cert.id != identity.id {
                ev.identity = Some(identity.id.clone());
                return Err(Refusal::new(
                    "identity_mismatch",
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        "access_denied",
                        format!(
                            "the subject_token proves identity {} but the client certificate proves {}: present credentials of one workload",
                            identity.id, by_cert.id
                        ),
                    ),
                ));
            }
        }
        identity
    } else {
        let Some(pc) = cert else {
            return Err(Refusal::new(
                "client_certificate_required",
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "client_credentials needs a TLS client certificate (tls_client_auth, RFC 8705); none was presented",
                ),
            ));
        };
        let identity = pc.identity(&policies).map_err(cert_refusal)?;
        if let Some(cid) = form.client_id.as_deref()
            && cid != identity.id
        {
            return Err(Refusal::new(
                "client_id_mismatch",
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    format!(
                        "client_id {:?} does not match the identity {} the certificate proves",
                        clip(cid),
                        identity.id
                    ),
                ),
            ));
        }
        identity
    };
    ev.identity = Some(identity.id.clone());
    ev.environment = Some(identity.environment.clone());
    if let Some(why) = st.revocations.disabled(&identity.id) {
        return Err(Refusal::new(
            "identity_disabled",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "access_denied",
                format!(
                    "identity {} is disabled ({why}): an admin must enable it",
                    identity.id
                ),
            ),
        ));
    }

    let evaluation = policies.evaluate(&policy::Request {
        identity: &identity.id,
        task,
        audience,
        scopes: scopes.clone(),
        requested_ttl,
        source: peer.ip(),
        now: st.clock.now(),
        cert_bound: cert.is_some(),
    });
    // A task the identity's policy does not have may be a break-glass task under an
    // active grant; every other denial stands.
    let now_secs = st.clock.unix_secs();
    let break_glass = match &evaluation.decision {
        Decision::Deny(d) if d.rule == policy::Rule::UnknownTask => {
            st.grants.active(&identity.id, task, now_secs)
        }
        _ => None,
    };
    let grant = match (evaluation.decision, &break_glass) {
        (_, Some(bg)) => break_glass_grant(
            st,
            identity,
            bg,
            audience,
            scopes.as_deref(),
            requested_ttl,
            now_secs,
        )?,
        (Decision::Allow(g), None) => g,
        (Decision::Deny(d), None) => return Err(policy_refusal(&d)),
    };

    rate_limit(st, identity, &grant.task)?;
    monitor(st, identity, &grant, peer, ev).await?;

    let minted = st
        .minter
        .mint(&MintRequest {
            identity: &grant.identity,
            environment: &grant.environment,
            task: &grant.task,
            audience: &grant.audience,
            scopes: &grant.scopes,
            ttl_secs: grant.ttl.as_secs().max(1),
            cert_thumbprint: cert.map(|c| c.x5t_s256.clone()),
            break_glass: break_glass.as_ref().map(|g| g.id.clone()),
            min_iat: st
                .revocations
                .latest_rule_second(&grant.identity, &grant.task, &identity.owner)
                .map_or(0, |t| t + 1),
        })
        .map_err(|e| {
            tracing::error!(error = %e, "minting failed");
            Refusal::new("mint_failed", ApiError::internal())
        })?;

    ev.event = if break_glass.is_some() {
        EventKind::BreakGlassTokenIssued
    } else {
        EventKind::Issued
    };
    ev.decision = Some(AuditDecision::Allow);
    if let Some(bg) = &break_glass {
        ev.ticket = Some(bg.ticket.clone());
        ev.detail = Some(serde_json::json!({ "grant": bg.id, "ends_at": bg.ends_at }));
    }
    ev.audience = Some(grant.audience.clone());
    ev.scopes = Some(grant.scopes.clone());
    ev.task = Some(grant.task.clone());
    ev.jti = Some(minted.claims.jti.clone());
    ev.exp = Some(minted.claims.exp);
    ev.kid = Some(minted.kid.clone());
    // Recertification: inside the warning window tokens are still issued, and both the
    // record and the answer carry the deadline.
    let expires_in = identity
        .expires_at()
        .duration_since(st.clock.now())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let recertify = (expires_in < st.expiring_window_secs).then(|| identity.expires.to_string());
    if let Some(date) = &recertify {
        let mut detail = ev.detail.take().unwrap_or_else(|| serde_json::json!({}));
        detail["registration_expires"] = serde_json::json!(date);
        detail["recertify"] = serde_json::json!(format!(
            "registration {} expires on {date}: owner {} must recertify it",
            identity.id, identity.owner
        ));
        ev.detail = Some(detail);
    }
    let record = std::mem::replace(ev, AuditEvent::new(EventKind::Denied));
    if let Err(e) = st.audit.append(record).await {
        tracing::error!(error = %e, jti = %minted.claims.jti, "audit append failed; token discarded");
        st.metrics.audit_failure();
        return Ok(ApiError::audit_unavailable().into_response());
    }
    st.metrics.issued();
    st.revocations.record_issued(&minted.claims);
    st.usage.record_issued(
        &grant.identity,
        &grant.task,
        &grant.scopes,
        Some(&crate::usage::source_network(peer.ip())),
        minted.claims.nbf,
    );
    if let Some(bg) = &break_glass {
        let change = crate::store::GrantChange::TokenIssued {
            id: bg.id.clone(),
            jti: minted.claims.jti.clone(),
            audience: minted.claims.aud.clone(),
            scopes: grant.scopes.clone(),
            exp: minted.claims.exp,
            at: minted.claims.iat,
        };
        if let Err(e) = st.grants.commit(change) {
            tracing::error!(error = %e, grant = %bg.id, "could not add the token to the grant report");
        }
        // Like every other grant event, the grant itself (as it stands with this token).
        let grant_now = st.grants.get(&bg.id).map_or_else(
            || serde_json::json!({ "id": bg.id }),
            |g| serde_json::json!(g),
        );
        st.webhook.send(serde_json::json!({
            "event": "break_glass_token_issued", "grant": grant_now, "jti": minted.claims.jti,
            "audience": minted.claims.aud, "scopes": grant.scopes, "exp": minted.claims.exp,
        }));
    }
    tracing::debug!(jti = %minted.claims.jti, kid = %minted.kid, identity = %grant.identity, "issued");

    let body = TokenResponse {
        access_token: minted.expose_token().to_owned(),
        issued_token_type: TOKEN_TYPE_ACCESS_TOKEN.to_owned(),
        token_type: "Bearer".to_owned(),
        expires_in: minted.claims.exp.saturating_sub(minted.claims.nbf),
        scope: minted.claims.scope.clone(),
    };
    let mut res = axum::Json(body).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if let Some(v) = recertify.and_then(|d| HeaderValue::from_str(&d).ok()) {
        res.headers_mut().insert("registration-expires", v);
    }
    Ok(res)
}

/// Behavioural monitoring: records the issuance in the identity's history, reports new
/// anomalies (audit, metric, webhook), and refuses while a `deny` anomaly is open.
async fn monitor(
    st: &AppState,
    identity: &crate::policy::Identity,
    grant: &policy::Grant,
    peer: SocketAddr,
    ev: &AuditEvent,
) -> Result<(), Refusal> {
    let blocked = |a: &crate::anomaly::Anomaly| {
        Refusal::new(
            "anomaly_unacknowledged",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "access_denied",
                format!(
                    "identity {} is held by anomaly {} ({}): an admin must acknowledge it (POST /v1/admin/anomalies/{}/ack)",
                    identity.id, a.id, a.kind, a.id
                ),
            ),
        )
    };
    if !st.monitoring {
        return Ok(());
    }
    if let Some(a) = st.monitor.blocking(&identity.id) {
        return Err(blocked(&a));
    }
    let now = st.clock.unix_secs();
    let network = crate::usage::source_network(peer.ip());
    let obs = st.usage.observe(
        &identity.id,
        &grant.task,
        &grant.scopes,
        Some(&network),
        now,
    );
    let action = identity.anomaly_action.unwrap_or(st.anomaly_action);
    // Fail closed: an anomaly that cannot be given an id is not silently skipped.
    let found = st
        .monitor
        .observe(&identity.id, &grant.task, &obs, now, action)
        .map_err(|e| {
            tracing::error!(error = %e, "could not raise an anomaly");
            Refusal::new("internal_error", ApiError::internal())
        })?;
    for a in &found {
        st.metrics.anomaly(a.kind);
        let mut rec = ev.clone();
        rec.event = EventKind::Anomaly;
        rec.decision = None;
        rec.rule = Some(a.kind.to_owned());
        rec.reason = Some(format!(
            "{} for identity {} (action {:?})",
            a.kind, a.identity, a.action
        ));
        rec.detail = Some(
            serde_json::json!({ "anomaly": a.id, "evidence": a.evidence, "action": a.action }),
        );
        if let Err(e) = st.audit.append(rec).await {
            tracing::error!(error = %e, "could not audit an anomaly");
            return Err(Refusal::new(
                "audit_unavailable",
                ApiError::audit_unavailable(),
            ));
        }
        st.webhook
            .send(serde_json::json!({ "event": "anomaly", "anomaly": a }));
    }
    match found
        .iter()
        .find(|a| a.action == crate::anomaly::AnomalyAction::Deny)
    {
        Some(a) => Err(blocked(a)),
        None => Ok(()),
    }
}

/// Takes a token from the identity's bucket (config) and the task's (policy).
fn rate_limit(
    st: &AppState,
    identity: &crate::policy::Identity,
    task: &str,
) -> Result<(), Refusal> {
    let now = std::time::Instant::now();
    let refuse = |rule: &'static str, what: String, wait: Duration| {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "temporarily_unavailable",
            format!("{what}; retry after {secs}s"),
        );
        e.retry_after = Some(secs);
        Refusal::new(rule, e)
    };
    if let Some(rate) = st.identity_rate_limit {
        st.rate_limiter
            .check(&format!("identity\u{0}{}", identity.id), rate, now)
            .map_err(|w| {
                refuse(
                    "rate_limited",
                    format!(
                        "identity {} is over its issuance rate limit ({}/{}s)",
                        identity.id,
                        rate.count,
                        rate.period.as_secs()
                    ),
                    w,
                )
            })?;
    }
    if let Some(rate) = identity.task(task).and_then(|t| t.rate_limit) {
        st.rate_limiter
            .check(&format!("task\u{0}{}\u{0}{task}", identity.id), rate, now)
            .map_err(|w| {
                refuse(
                    "rate_limited",
                    format!(
                        "task {task} of identity {} is over its rate limit ({}/{}s)",
                        identity.id,
                        rate.count,
                        rate.period.as_secs()
                    ),
                    w,
                )
            })?;
    }
    Ok(())
}

/// The grant for a break-glass task under an active grant: the break-glass policy's task,
/// narrowed as asked (never widened), and never outliving the grant.
fn break_glass_grant(
    st: &AppState,
    identity: &crate::policy::Identity,
    bg: &crate::breakglass::Grant,
    audience: Option<&str>,
    scopes: Option<&[&str]>,
    requested_ttl: Option<Duration>,
    now: u64,
) -> Result<policy::Grant, Refusal> {
    let policies = st.policies.break_glass();
    let Some((_, task)) = policies.find(&identity.id, &bg.task) else {
        return Err(Refusal::new(
            "no_break_glass_policy",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "access_denied",
                format!(
                    "grant {} names task {} that no break-glass policy allows any more",
                    bg.id, bg.task
                ),
            ),
        ));
    };
    if let Some(a) = audience
        && a != task.audience
    {
        return Err(Refusal::new(
            "audience_not_allowed",
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                format!(
                    "break-glass task {} is for audience {}, not {}",
                    task.name,
                    task.audience,
                    clip(a)
                ),
            ),
        ));
    }
    let granted: Vec<String> = match scopes {
        None => task.scopes.clone(),
        Some(asked) => {
            if let Some(extra) = asked.iter().find(|s| !task.scopes.iter().any(|t| t == *s)) {
                return Err(Refusal::new(
                    "scope_not_allowed",
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_scope",
                        format!(
                            "scope {} is not granted by break-glass task {}",
                            clip(extra),
                            task.name
                        ),
                    ),
                ));
            }
            task.scopes
                .iter()
                .filter(|t| asked.contains(&t.as_str()))
                .cloned()
                .collect()
        }
    };
    let left = bg.ends_at.unwrap_or(now).saturating_sub(now);
    let max = task.max_ttl.as_secs().min(left);
    let ttl = match requested_ttl {
        Some(t) if t.as_secs() > task.max_ttl.as_secs() => {
            return Err(Refusal::invalid_request(
                "ttl_too_long",
                format!(
                    "requested_ttl {}s is over break-glass task {}'s max_ttl of {}s",
                    t.as_secs(),
                    task.name,
                    task.max_ttl.as_secs()
                ),
            ));
        }
        Some(t) => t.as_secs().min(max),
        None => max,
    };
    Ok(policy::Grant {
        identity: identity.id.clone(),
        environment: identity.environment.clone(),
        task: task.name.clone(),
        audience: task.audience.clone(),
        scopes: granted,
        ttl: Duration::from_secs(ttl.max(1)),
    })
}

/// The RFC 8693 parameters; returns the subject token.
fn exchange_params(form: &TokenForm) -> Result<&str, Refusal> {
    match form.subject_token_type.as_deref() {
        Some(TOKEN_TYPE_JWT) | Some("urn:ietf:params:oauth:token-type:id_token") => {}
        Some(other) => {
            return Err(Refusal::invalid_request(
                "malformed_request",
                format!(
                    "subject_token_type {:?} is not supported: use {TOKEN_TYPE_JWT}",
                    clip(other)
                ),
            ));
        }
        None => {
            return Err(Refusal::invalid_request(
                "malformed_request",
                "subject_token_type is required",
            ));
        }
    }
    if form.actor_token.is_some() {
        return Err(Refusal::invalid_request(
            "malformed_request",
            "delegation (actor_token) is not supported",
        ));
    }
    if let Some(t) = form.requested_token_type.as_deref()
        && t != TOKEN_TYPE_ACCESS_TOKEN
        && t != TOKEN_TYPE_JWT
    {
        return Err(Refusal::invalid_request(
            "malformed_request",
            format!("requested_token_type {:?} is not supported", clip(t)),
        ));
    }
    form.subject_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Refusal::invalid_request("malformed_request", "subject_token is required"))
}

fn cert_refusal(r: CertRefusal) -> Refusal {
    let error = if r.rule == "unknown_identity" {
        ApiError::new(StatusCode::FORBIDDEN, "unauthorized_client", r.reason)
    } else {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_client", r.reason)
    };
    Refusal::new(r.rule, error)
}

/// Bounds a caller-supplied string before it goes into a record or a message.
fn clip(s: &str) -> String {
    const MAX: usize = 256;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
