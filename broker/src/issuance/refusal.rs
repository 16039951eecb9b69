//! Every way the token endpoint (and the caller path of the other authenticated
//! endpoints) refuses, as one typed enum: [`Refusal::rule`] (the audit
//! record's `rule`, the metric's label) and [`Refusal::error`] (the OAuth error, status
//! and description) are derived from the variant, in this one place. The stages build
//! refusals with the named constructors.

use std::time::Duration;

use axum::http::StatusCode;
use broker_client::types::{
    GRANT_TYPE_CLIENT_CREDENTIALS, GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT,
};

use super::parse::clip;
use crate::authn::AuthnError;
use crate::authn::mtls::CertRefusal;
use crate::error::ApiError;
use crate::policy;

/// Why the token endpoint refused. Caller-supplied strings are clipped when stored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// This replica's view of the shared state is not confirmed.
    StateStale,
    /// The body is over `listen.max_body_bytes`.
    BodyTooLarge,
    /// The body could not be read.
    BodyUnreadable,
    /// Not an `application/x-www-form-urlencoded` body.
    NotAForm,
    /// The form does not parse.
    MalformedForm(String),
    /// An unknown `grant_type`.
    UnsupportedGrantType(String),
    /// A required parameter is missing: what, and why it is needed.
    Missing(&'static str),
    /// An unsupported `subject_token_type`.
    UnsupportedSubjectTokenType(String),
    /// `actor_token` was sent outside a token exchange.
    DelegationNeedsExchange,
    /// An unsupported `actor_token_type`.
    UnsupportedActorTokenType(String),
    /// The actor token was refused.
    ActorToken {
        /// The validation rule.
        rule: &'static str,
        /// What the caller is told.
        message: String,
        /// The full error when the broker is at fault, for the audit record and the log.
        detail: Option<String>,
    },
    /// The subject token's own `act` claim (an earlier delegation) is not an RFC 8693
    /// actor chain.
    ActClaimMalformed,
    /// No `[[task.delegation]]` of the subject's task names the actor.
    DelegationNotAllowed {
        /// The actor.
        actor: String,
        /// The identity acted for.
        identity: String,
        /// The task.
        task: String,
    },
    /// A scope beyond what the delegation rule allows.
    DelegationScope {
        /// The scope.
        scope: String,
        /// The actor.
        actor: String,
        /// The task.
        task: String,
    },
    /// A lifetime beyond the delegation rule's `max_ttl`.
    DelegationTtl {
        /// Seconds asked.
        asked: u64,
        /// The rule's `max_ttl`, seconds.
        max: u64,
    },
    /// The actor chain is longer than the delegation rule allows.
    DelegationChainTooDeep {
        /// Actors in the chain.
        depth: usize,
        /// The rule's `max_depth`.
        max: usize,
    },
    /// Break-glass tokens are never delegated.
    DelegationBreakGlass,
    /// The DPoP proof was refused; with the nonce to use when one is required.
    Dpop(broker_client::dpop::DpopError, Option<String>),
    /// The record of proofs other replicas accepted could not be asked, so the proof's
    /// single use cannot be checked; the store's error (for the record and the log).
    DpopReplayCheckUnavailable(String),
    /// The task requires DPoP-bound tokens and no proof was sent.
    DpopRequired {
        /// The task.
        task: String,
    },
    /// An unsupported `requested_token_type`.
    UnsupportedRequestedTokenType(String),
    /// `audience` and `resource` disagree.
    AudienceConflict,
    /// `requested_ttl` is not a positive number of seconds.
    BadTtl(String),
    /// The TLS client certificate could not be used.
    CertificateUnusable(String),
    /// `client_credentials` without a certificate.
    CertificateRequired,
    /// The certificate maps to no usable identity.
    Certificate {
        /// The mapping's rule.
        rule: &'static str,
        /// Why.
        reason: String,
    },
    /// `client_id` names another identity than the certificate.
    ClientIdMismatch {
        /// The `client_id` sent.
        client_id: String,
        /// The certificate's identity.
        identity: String,
    },
    /// The subject token was refused.
    SubjectToken {
        /// The validation rule.
        rule: &'static str,
        /// What the caller is told.
        message: String,
        /// The full error, for the audit record and the log only (issuer-key failures
        /// name the broker's files and URLs).
        detail: Option<String>,
    },
    /// The RFC 7523 client assertion was refused.
    ClientAssertion {
        /// The validation rule.
        rule: &'static str,
        /// What the caller is told.
        message: String,
        /// The full error when the broker is at fault (issuer keys, replay memory), for
        /// the audit record and the log only.
        detail: Option<String>,
    },
    /// A `client_assertion_type` other than RFC 7523's JWT bearer, or an assertion
    /// without its type.
    UnsupportedClientAssertionType(String),
    /// The client certificate and the client assertion prove different identities.
    ClientAuthMismatch {
        /// By the assertion.
        by_assertion: String,
        /// By the certificate.
        by_cert: String,
    },
    /// No registered identity matches the JWT.
    UnknownIdentity {
        /// `iss`.
        issuer: String,
        /// `sub`.
        subject: String,
    },
    /// The subject token and the client authentication prove different identities.
    IdentityMismatch {
        /// By the subject token.
        by_jwt: String,
        /// By the client authentication.
        by_cert: String,
        /// How the client authenticated: `client certificate` or `client assertion`.
        how: &'static str,
    },
    /// The kill switch is on.
    IdentityDisabled {
        /// The identity.
        identity: String,
        /// Why it was disabled.
        why: String,
    },
    /// The policy denied the request.
    Policy {
        /// The rule.
        rule: policy::Rule,
        /// Why.
        reason: String,
    },
    /// The grant's break-glass task is in no break-glass policy any more.
    NoBreakGlassPolicy {
        /// The grant.
        grant: String,
        /// Its task.
        task: String,
    },
    /// A break-glass task was asked for another audience.
    BreakGlassAudience {
        /// The task.
        task: String,
        /// Its audience.
        audience: String,
        /// The one asked for.
        asked: String,
    },
    /// A break-glass task was asked for a scope it does not grant.
    BreakGlassScope {
        /// The task.
        task: String,
        /// The scope.
        scope: String,
    },
    /// A break-glass task was asked for more than its `max_ttl`.
    BreakGlassTtl {
        /// Seconds asked.
        asked: u64,
        /// The task.
        task: String,
        /// Its `max_ttl`, seconds.
        max: u64,
    },
    /// A rate limit's bucket is empty.
    RateLimited {
        /// Which limit, in words.
        what: String,
        /// Seconds until a token is back.
        retry_after: u64,
    },
    /// An open `deny` anomaly holds the identity.
    HeldByAnomaly {
        /// The identity.
        identity: String,
        /// The anomaly.
        anomaly: String,
        /// Its kind.
        kind: &'static str,
    },
    /// An anomaly record could not be made durable.
    AuditUnavailable,
    /// Caller path: a client assertion and an `Authorization` header together.
    SeveralClientAuthMethods,
    /// Caller path: no certificate, bearer credential or client assertion.
    NoCredentials,
    /// Caller path: the `Authorization: Bearer` workload JWT was refused.
    BearerCredential {
        /// The validation rule.
        rule: &'static str,
        /// What the caller is told.
        message: String,
        /// The full error when the broker is at fault (issuer keys), for the log only.
        detail: Option<String>,
    },
    /// Caller path: no admin or registered identity matches the JWT.
    UnknownCaller {
        /// `iss`.
        issuer: String,
        /// `sub`.
        subject: String,
        /// Proved by a client assertion (else a bearer credential).
        by_assertion: bool,
    },
    /// Something inside the broker failed (`mint_failed`, `internal_error`); the log has
    /// the detail.
    Internal(&'static str),
}

impl Refusal {
    /// The stable rule name: the audit record's `rule` and the metric's label.
    pub fn rule(&self) -> &'static str {
        use Refusal::*;
        match self {
            StateStale => "state_stale",
            BodyTooLarge => "body_too_large",
            BodyUnreadable
            | NotAForm
            | MalformedForm(_)
            | Missing(_)
            | BadTtl(_)
            | UnsupportedSubjectTokenType(_)
            | DelegationNeedsExchange
            | UnsupportedActorTokenType(_)
            | UnsupportedRequestedTokenType(_) => "malformed_request",
            ActorToken { rule, .. } => rule,
            ActClaimMalformed => "act_claim_malformed",
            DelegationNotAllowed { .. } | DelegationBreakGlass => "delegation_not_allowed",
            DelegationScope { .. } => "delegation_scope",
            DelegationTtl { .. } => "delegation_ttl",
            DelegationChainTooDeep { .. } => "delegation_chain_too_deep",
            Dpop(e, _) => e.rule(),
            DpopReplayCheckUnavailable(_) => "replay_check_unavailable",
            DpopRequired { .. } => "dpop_required",
            UnsupportedGrantType(_) => "unsupported_grant_type",
            AudienceConflict => "audience_conflict",
            CertificateUnusable(_) => "client_certificate_unusable",
            CertificateRequired => "client_certificate_required",
            Certificate { rule, .. } | SubjectToken { rule, .. } => rule,
            ClientAssertion { rule, .. } => rule,
            UnsupportedClientAssertionType(_) => "client_assertion_type_unsupported",
            ClientAuthMismatch { .. } => "client_auth_mismatch",
            ClientIdMismatch { .. } => "client_id_mismatch",
            UnknownIdentity { .. } => policy::Rule::UnknownIdentity.as_str(),
            IdentityMismatch { .. } => "identity_mismatch",
            IdentityDisabled { .. } => "identity_disabled",
            Policy { rule, .. } => rule.as_str(),
            NoBreakGlassPolicy { .. } => "no_break_glass_policy",
            BreakGlassAudience { .. } => "audience_not_allowed",
            BreakGlassScope { .. } => "scope_not_allowed",
            BreakGlassTtl { .. } => "ttl_too_long",
            RateLimited { .. } => "rate_limited",
            HeldByAnomaly { .. } => "anomaly_unacknowledged",
            AuditUnavailable => "audit_unavailable",
            SeveralClientAuthMethods => "several_client_auth_methods",
            NoCredentials => "no_credentials",
            BearerCredential { rule, .. } => rule,
            UnknownCaller { .. } => policy::Rule::UnknownIdentity.as_str(),
            Internal(rule) => rule,
        }
    }

    /// The answer: status, OAuth error code and description (and `Retry-After`). Each
    /// category has its own function below; this only says which one answers.
    pub fn error(&self) -> ApiError {
        use Refusal::*;
        match self {
            StateStale => ApiError::state_stale(),
            AuditUnavailable => ApiError::audit_unavailable(),
            Internal(_) => ApiError::internal(),
            BodyTooLarge
            | BodyUnreadable
            | NotAForm
            | MalformedForm(_)
            | UnsupportedGrantType(_)
            | Missing(_)
            | UnsupportedSubjectTokenType(_)
            | DelegationNeedsExchange
            | UnsupportedActorTokenType(_)
            | UnsupportedRequestedTokenType(_)
            | AudienceConflict
            | BadTtl(_) => self.request_error(),
            CertificateUnusable(_)
            | CertificateRequired
            | Certificate { .. }
            | ClientIdMismatch { .. }
            | ClientAssertion { .. }
            | UnsupportedClientAssertionType(_)
            | ClientAuthMismatch { .. } => self.client_error(),
            SubjectToken { .. }
            | UnknownIdentity { .. }
            | IdentityMismatch { .. }
            | IdentityDisabled { .. } => self.identity_error(),
            Policy { .. }
            | NoBreakGlassPolicy { .. }
            | BreakGlassAudience { .. }
            | BreakGlassScope { .. }
            | BreakGlassTtl { .. }
            | RateLimited { .. }
            | HeldByAnomaly { .. } => self.policy_error(),
            ActorToken { .. }
            | ActClaimMalformed
            | DelegationNotAllowed { .. }
            | DelegationScope { .. }
            | DelegationTtl { .. }
            | DelegationChainTooDeep { .. }
            | DelegationBreakGlass => self.delegation_error(),
            Dpop(..) | DpopReplayCheckUnavailable(_) | DpopRequired { .. } => self.dpop_error(),
            SeveralClientAuthMethods
            | NoCredentials
            | BearerCredential { .. }
            | UnknownCaller { .. } => self.caller_error(),
        }
    }

    /// The answer on the caller path (admin, introspection, revocation, feed, break-glass):
    /// every failure to authenticate is `401 invalid_client`, except two credentials at
    /// once (`400 invalid_request`), a client assertion's own answers, and a bearer
    /// credential the broker could not check for a fault of its own (`503`).
    pub fn caller_error(&self) -> ApiError {
        use Refusal::*;
        let invalid_client = |why: String| err(StatusCode::UNAUTHORIZED, "invalid_client", why);
        match self {
            SeveralClientAuthMethods => err(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "send either a client assertion or an Authorization header, not both (RFC 6749 §2.3)".into(),
            ),
            NoCredentials => invalid_client(
                "authenticate with a TLS client certificate or `Authorization: Bearer <workload JWT>`"
                    .into(),
            ),
            // The broker's own fault (issuer keys, the replay check): not the caller's
            // credential, so not 401 (a client would drop a good credential).
            BearerCredential {
                rule,
                message,
                detail: Some(detail),
            } => cannot_check("bearer credential", rule, message, detail),
            BearerCredential { message, .. } => {
                invalid_client(format!("bearer credential rejected: {message}"))
            }
            UnknownCaller {
                issuer,
                subject,
                by_assertion: false,
            } => invalid_client(format!(
                "no admin or registered identity matches issuer {issuer} subject {subject}"
            )),
            UnknownCaller {
                issuer, subject, ..
            } => invalid_client(format!(
                "no registered identity matches issuer {issuer} subject {subject} of the client assertion"
            )),
            CertificateUnusable(why) | Certificate { reason: why, .. } => {
                invalid_client(why.clone())
            }
            _ => self.error(),
        }
    }

    /// The request itself: its body, form, grant type and parameters.
    fn request_error(&self) -> ApiError {
        use Refusal::*;
        match self {
            BodyTooLarge => err(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "request body is larger than this broker accepts (listen.max_body_bytes)".into(),
            ),
            BodyUnreadable => bad("request body could not be read".into()),
            NotAForm => bad(
                "the token endpoint takes application/x-www-form-urlencoded bodies (RFC 6749 §4)"
                    .into(),
            ),
            MalformedForm(e) => bad(format!("malformed form body: {e}")),
            UnsupportedGrantType(g) => err(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!(
                    "grant_type {g:?} is not supported: use {GRANT_TYPE_TOKEN_EXCHANGE} or {GRANT_TYPE_CLIENT_CREDENTIALS}"
                ),
            ),
            Missing(what) => bad((*what).into()),
            UnsupportedSubjectTokenType(t) => bad(format!(
                "subject_token_type {t:?} is not supported: use {TOKEN_TYPE_JWT}"
            )),
            DelegationNeedsExchange => bad(format!(
                "actor_token (delegation) is accepted only with grant_type={GRANT_TYPE_TOKEN_EXCHANGE}"
            )),
            UnsupportedActorTokenType(t) => bad(format!(
                "actor_token_type {t:?} is not supported: use {TOKEN_TYPE_JWT}"
            )),
            UnsupportedRequestedTokenType(t) => {
                bad(format!("requested_token_type {t:?} is not supported"))
            }
            AudienceConflict => err(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                "audience and resource name different targets; a token has exactly one audience"
                    .into(),
            ),
            BadTtl(s) => bad(format!(
                "requested_ttl {s:?} must be a positive number of seconds"
            )),
            _ => unreachable!("Refusal::error answers {self:?} elsewhere"),
        }
    }

    /// Client authentication: the TLS client certificate, the client assertion, `client_id`.
    fn client_error(&self) -> ApiError {
        use Refusal::*;
        match self {
            CertificateUnusable(why) => err(StatusCode::UNAUTHORIZED, "invalid_client", why.clone()),
            CertificateRequired => err(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client_credentials needs client authentication: a TLS client certificate (tls_client_auth, RFC 8705) or a client assertion (client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer, RFC 7523); none was presented".into(),
            ),
            Certificate { rule, reason } if *rule == "unknown_identity" => {
                err(StatusCode::FORBIDDEN, "unauthorized_client", reason.clone())
            }
            Certificate { reason, .. } => {
                err(StatusCode::UNAUTHORIZED, "invalid_client", reason.clone())
            }
            ClientIdMismatch { client_id, identity } => err(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                format!(
                    "client_id {client_id:?} does not match the identity {identity} the certificate proves"
                ),
            ),
            ClientAssertion {
                rule,
                message,
                detail: Some(detail),
            } => cannot_check("client_assertion", rule, message, detail),
            ClientAssertion { message, .. } => err(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                format!("client_assertion rejected: {message}"),
            ),
            UnsupportedClientAssertionType(t) => err(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                format!(
                    "client_assertion_type {t:?} is not supported: send client_assertion_type={} with client_assertion (RFC 7523 §2.2)",
                    crate::authn::CLIENT_ASSERTION_TYPE_JWT_BEARER
                ),
            ),
            ClientAuthMismatch { by_assertion, by_cert } => err(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                format!(
                    "the client assertion proves identity {by_assertion} but the client certificate proves {by_cert}: authenticate as one client"
                ),
            ),
            _ => unreachable!("Refusal::error answers {self:?} elsewhere"),
        }
    }

    /// Who the workload is: the subject token and the identity it maps to.
    fn identity_error(&self) -> ApiError {
        use Refusal::*;
        match self {
            SubjectToken {
                rule,
                message,
                detail: Some(detail),
            } => cannot_check("subject_token", rule, message, detail),
            SubjectToken { message, .. } => err(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                format!("subject_token rejected: {message}"),
            ),
            UnknownIdentity { issuer, subject } => err(
                StatusCode::FORBIDDEN,
                policy::Rule::UnknownIdentity.oauth_error(),
                format!(
                    "no registered identity matches issuer {issuer} subject {subject}: register it with an [[identity.match]] in the policy directory"
                ),
            ),
            IdentityMismatch {
                by_jwt,
                by_cert,
                how,
            } => err(
                StatusCode::FORBIDDEN,
                "access_denied",
                format!(
                    "the subject_token proves identity {by_jwt} but the {how} proves {by_cert}: present credentials of one workload (to act for another identity, send your own workload JWT as actor_token: RFC 8693 delegation)"
                ),
            ),
            IdentityDisabled { identity, why } => err(
                StatusCode::FORBIDDEN,
                "access_denied",
                format!("identity {identity} is disabled ({why}): an admin must enable it"),
            ),
            _ => unreachable!("Refusal::error answers {self:?} elsewhere"),
        }
    }

    /// What the policy decides: its rules, break-glass tasks, rate limits and anomalies.
    fn policy_error(&self) -> ApiError {
        use Refusal::*;
        match self {
            Policy { rule, reason } => err(
                StatusCode::from_u16(rule.http_status()).unwrap_or(StatusCode::FORBIDDEN),
                rule.oauth_error(),
                reason.clone(),
            ),
            NoBreakGlassPolicy { grant, task } => err(
                StatusCode::FORBIDDEN,
                "access_denied",
                format!(
                    "grant {grant} names task {task} that no break-glass policy allows any more"
                ),
            ),
            BreakGlassAudience {
                task,
                audience,
                asked,
            } => err(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                format!("break-glass task {task} is for audience {audience}, not {asked}"),
            ),
            BreakGlassScope { task, scope } => err(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                format!("scope {scope} is not granted by break-glass task {task}"),
            ),
            BreakGlassTtl { asked, task, max } => bad(format!(
                "requested_ttl {asked}s is over break-glass task {task}'s max_ttl of {max}s"
            )),
            RateLimited { what, retry_after } => {
                let mut e = err(
                    StatusCode::TOO_MANY_REQUESTS,
                    "temporarily_unavailable",
                    format!("{what}; retry after {retry_after}s"),
                );
                e.retry_after = Some(*retry_after);
                e
            }
            HeldByAnomaly {
                identity,
                anomaly,
                kind,
            } => err(
                StatusCode::FORBIDDEN,
                "access_denied",
                format!(
                    "identity {identity} is held by anomaly {anomaly} ({kind}): an admin must acknowledge it (POST /v1/admin/anomalies/{anomaly}/ack)"
                ),
            ),
            _ => unreachable!("Refusal::error answers {self:?} elsewhere"),
        }
    }

    /// Delegation (RFC 8693): the actor token, the actor chain and the delegation rules.
    fn delegation_error(&self) -> ApiError {
        use Refusal::*;
        match self {
            ActorToken {
                rule,
                message,
                detail: Some(detail),
            } => cannot_check("actor_token", rule, message, detail),
            ActorToken { message, .. } => err(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                format!("actor_token rejected: {message}"),
            ),
            ActClaimMalformed => err(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "the subject_token's act claim is not an RFC 8693 actor chain (objects with a string sub, nested by act)".into(),
            ),
            DelegationNotAllowed { actor, identity, task } => err(
                StatusCode::FORBIDDEN,
                "access_denied",
                format!(
                    "identity {actor} may not act for {identity} on task {task}: add it to a [[task.delegation]] actors list of {identity}'s task"
                ),
            ),
            DelegationScope { scope, actor, task } => err(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                format!(
                    "scope {scope} is beyond what task {task}'s delegation rule lets {actor} ask for"
                ),
            ),
            DelegationTtl { asked, max } => bad(format!(
                "requested_ttl {asked}s is over the delegation rule's max_ttl of {max}s"
            )),
            DelegationChainTooDeep { depth, max } => err(
                StatusCode::FORBIDDEN,
                "access_denied",
                format!(
                    "the actor chain would have {depth} actors; the delegation rule allows at most {max} (max_depth)"
                ),
            ),
            DelegationBreakGlass => err(
                StatusCode::FORBIDDEN,
                "access_denied",
                "break-glass tokens are never delegated: the person's workload asks for them itself".into(),
            ),
            _ => unreachable!("Refusal::error answers {self:?} elsewhere"),
        }
    }

    /// DPoP (RFC 9449): the proof, its nonce, and tasks that require one.
    fn dpop_error(&self) -> ApiError {
        use Refusal::*;
        match self {
            Dpop(broker_client::dpop::DpopError::Busy, _) => {
                let mut e = err(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    broker_client::dpop::DpopError::Busy.to_string(),
                );
                e.retry_after = Some(1);
                e
            }
            DpopReplayCheckUnavailable(detail) => {
                let mut e = err(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "cannot check the DPoP proof for replay: the broker's state store is unavailable; retry later with a new proof".into(),
                )
                .with_operator_detail(format!("cannot check the DPoP proof for replay: {detail}"));
                e.retry_after = Some(1);
                e
            }
            Dpop(e, nonce) => {
                let mut out = err(StatusCode::BAD_REQUEST, e.code(), e.to_string());
                out.dpop_nonce.clone_from(nonce);
                out
            }
            DpopRequired { task } => err(
                StatusCode::BAD_REQUEST,
                "invalid_dpop_proof",
                format!(
                    "task {task} issues only DPoP-bound tokens: send a DPoP proof header (RFC 9449)"
                ),
            ),
            _ => unreachable!("Refusal::error answers {self:?} elsewhere"),
        }
    }
}

/// A `400 invalid_request`.
fn bad(d: String) -> ApiError {
    ApiError::invalid_request(d)
}

/// An error with this status, OAuth code and description.
fn err(status: StatusCode, code: &'static str, d: String) -> ApiError {
    ApiError::new(status, code, d)
}

/// The broker could not check a credential (`what`: `subject_token`, `actor_token`,
/// `client_assertion`) for a fault of its own (`rule`): the caller is told `message` and
/// when to come back, the audit record and the log get `detail`.
fn cannot_check(what: &str, rule: &str, message: &str, detail: &str) -> ApiError {
    let mut e = err(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        format!("cannot check the {what}: {message}"),
    )
    .with_operator_detail(format!("cannot check the {what}: {detail}"));
    e.retry_after = Some(if rule == "issuer_keys_unavailable" {
        // Issuer keys that failed to load are fetched again at most this often.
        crate::authn::issuers::MIN_REFRESH_INTERVAL.as_secs()
    } else {
        1
    });
    e
}

/// The constructors the stages use (they clip what the caller sent).
impl Refusal {
    /// See [`Refusal::StateStale`].
    pub fn state_stale() -> Self {
        Self::StateStale
    }
    /// See [`Refusal::BodyTooLarge`].
    pub fn body_too_large() -> Self {
        Self::BodyTooLarge
    }
    /// See [`Refusal::BodyUnreadable`].
    pub fn body_unreadable() -> Self {
        Self::BodyUnreadable
    }
    /// See [`Refusal::NotAForm`].
    pub fn not_a_form() -> Self {
        Self::NotAForm
    }
    /// See [`Refusal::MalformedForm`].
    pub fn malformed_form(e: impl std::fmt::Display) -> Self {
        Self::MalformedForm(e.to_string())
    }
    /// See [`Refusal::UnsupportedGrantType`].
    pub fn unsupported_grant_type(other: &str) -> Self {
        Self::UnsupportedGrantType(clip(other))
    }
    /// See [`Refusal::Missing`].
    pub fn missing(what: &'static str) -> Self {
        Self::Missing(what)
    }
    /// See [`Refusal::UnsupportedSubjectTokenType`].
    pub fn unsupported_subject_token_type(other: &str) -> Self {
        Self::UnsupportedSubjectTokenType(clip(other))
    }
    /// See [`Refusal::DelegationNeedsExchange`].
    pub fn delegation_needs_exchange() -> Self {
        Self::DelegationNeedsExchange
    }
    /// See [`Refusal::UnsupportedActorTokenType`].
    pub fn unsupported_actor_token_type(other: &str) -> Self {
        Self::UnsupportedActorTokenType(clip(other))
    }
    /// See [`Refusal::UnsupportedRequestedTokenType`].
    pub fn unsupported_requested_token_type(other: &str) -> Self {
        Self::UnsupportedRequestedTokenType(clip(other))
    }
    /// See [`Refusal::AudienceConflict`].
    pub fn audience_conflict() -> Self {
        Self::AudienceConflict
    }
    /// See [`Refusal::BadTtl`].
    pub fn bad_ttl(s: &str) -> Self {
        Self::BadTtl(clip(s))
    }
    /// See [`Refusal::CertificateUnusable`].
    pub fn certificate_unusable(why: String) -> Self {
        Self::CertificateUnusable(why)
    }
    /// See [`Refusal::CertificateRequired`].
    pub fn certificate_required() -> Self {
        Self::CertificateRequired
    }
    /// See [`Refusal::Certificate`].
    pub fn certificate(r: CertRefusal) -> Self {
        Self::Certificate {
            rule: r.rule,
            reason: r.reason,
        }
    }
    /// See [`Refusal::ClientIdMismatch`].
    pub fn client_id_mismatch(client_id: &str, identity: &str) -> Self {
        Self::ClientIdMismatch {
            client_id: clip(client_id),
            identity: identity.to_owned(),
        }
    }
    /// See [`Refusal::SubjectToken`]; failures of the broker's own (issuer keys, replay
    /// memory) are told plainly and logged.
    pub fn subject_token(e: &AuthnError) -> Self {
        let detail = e.is_unavailable().then(|| {
            tracing::warn!(error = %e, "subject_token not checked");
            e.to_string()
        });
        Self::SubjectToken {
            rule: e.rule(),
            message: e.public_message(),
            detail,
        }
    }
    /// See [`Refusal::ActorToken`].
    pub fn actor_token(e: &AuthnError) -> Self {
        let detail = e.is_unavailable().then(|| {
            tracing::warn!(error = %e, "actor_token not checked");
            e.to_string()
        });
        Self::ActorToken {
            rule: e.rule(),
            message: e.public_message(),
            detail,
        }
    }
    /// See [`Refusal::DelegationNotAllowed`].
    pub fn delegation_not_allowed(actor: &str, identity: &str, task: &str) -> Self {
        Self::DelegationNotAllowed {
            actor: actor.to_owned(),
            identity: identity.to_owned(),
            task: task.to_owned(),
        }
    }
    /// See [`Refusal::ClientAssertion`].
    pub fn client_assertion(e: &AuthnError) -> Self {
        let detail = e.is_unavailable().then(|| {
            tracing::warn!(error = %e, "client_assertion not checked");
            e.to_string()
        });
        Self::ClientAssertion {
            rule: e.rule(),
            message: e.public_message(),
            detail,
        }
    }
    /// See [`Refusal::BearerCredential`].
    pub fn bearer_credential(e: &AuthnError) -> Self {
        let detail = e.is_unavailable().then(|| {
            tracing::warn!(error = %e, "bearer credential not checked");
            e.to_string()
        });
        Self::BearerCredential {
            rule: e.rule(),
            message: e.public_message(),
            detail,
        }
    }
    /// See [`Refusal::UnknownCaller`].
    pub fn unknown_caller(issuer: &str, subject: &str, by_assertion: bool) -> Self {
        Self::UnknownCaller {
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            by_assertion,
        }
    }
    /// See [`Refusal::UnsupportedClientAssertionType`].
    pub fn unsupported_client_assertion_type(t: &str) -> Self {
        Self::UnsupportedClientAssertionType(clip(t))
    }
    /// See [`Refusal::ClientAuthMismatch`].
    pub fn client_auth_mismatch(by_assertion: &str, by_cert: &str) -> Self {
        Self::ClientAuthMismatch {
            by_assertion: by_assertion.to_owned(),
            by_cert: by_cert.to_owned(),
        }
    }
    /// See [`Refusal::UnknownIdentity`].
    pub fn unknown_identity(issuer: &str, subject: &str) -> Self {
        Self::UnknownIdentity {
            issuer: issuer.to_owned(),
            subject: clip(subject),
        }
    }
    /// See [`Refusal::IdentityMismatch`].
    pub fn identity_mismatch(by_jwt: &str, by_cert: &str, how: &'static str) -> Self {
        Self::IdentityMismatch {
            by_jwt: by_jwt.to_owned(),
            by_cert: by_cert.to_owned(),
            how,
        }
    }
    /// See [`Refusal::IdentityDisabled`].
    pub fn identity_disabled(identity: &str, why: &str) -> Self {
        Self::IdentityDisabled {
            identity: identity.to_owned(),
            why: why.to_owned(),
        }
    }
    /// See [`Refusal::Policy`].
    pub fn policy(d: &policy::Denial) -> Self {
        Self::Policy {
            rule: d.rule,
            reason: d.reason.clone(),
        }
    }
    /// See [`Refusal::NoBreakGlassPolicy`].
    pub fn no_break_glass_policy(grant: &str, task: &str) -> Self {
        Self::NoBreakGlassPolicy {
            grant: grant.to_owned(),
            task: task.to_owned(),
        }
    }
    /// See [`Refusal::BreakGlassAudience`].
    pub fn break_glass_audience(task: &str, audience: &str, asked: &str) -> Self {
        Self::BreakGlassAudience {
            task: task.to_owned(),
            audience: audience.to_owned(),
            asked: clip(asked),
        }
    }
    /// See [`Refusal::BreakGlassScope`].
    pub fn break_glass_scope(task: &str, scope: &str) -> Self {
        Self::BreakGlassScope {
            task: task.to_owned(),
            scope: clip(scope),
        }
    }
    /// See [`Refusal::BreakGlassTtl`].
    pub fn break_glass_ttl(asked: u64, task: &str, max: u64) -> Self {
        Self::BreakGlassTtl {
            asked,
            task: task.to_owned(),
            max,
        }
    }
    /// See [`Refusal::RateLimited`]; `wait` rounds up to whole seconds, at least one.
    pub fn rate_limited(what: &str, wait: Duration) -> Self {
        Self::RateLimited {
            what: what.to_owned(),
            retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
    }
    /// See [`Refusal::HeldByAnomaly`].
    pub fn held_by_anomaly(identity: &str, a: &crate::anomaly::Anomaly) -> Self {
        Self::HeldByAnomaly {
            identity: identity.to_owned(),
            anomaly: a.id.clone(),
            kind: a.kind,
        }
    }
    /// See [`Refusal::AuditUnavailable`].
    pub fn audit_unavailable() -> Self {
        Self::AuditUnavailable
    }
    /// See [`Refusal::Internal`].
    pub fn internal(rule: &'static str) -> Self {
        Self::Internal(rule)
    }
}

#[cfg(test)]
mod tests {
    use broker_client::dpop::DpopError;

    use super::*;

    /// Rule, status and OAuth code come from the variant: a table of the ones callers see
    /// most, so that a change to the wire contract is a visible change here.
    #[test]
    fn each_refusal_has_one_rule_status_and_code() {
        let cases: Vec<(Refusal, &str, u16, &str)> = vec![
            (
                Refusal::state_stale(),
                "state_stale",
                503,
                "temporarily_unavailable",
            ),
            (
                Refusal::body_too_large(),
                "body_too_large",
                413,
                "invalid_request",
            ),
            (
                Refusal::not_a_form(),
                "malformed_request",
                400,
                "invalid_request",
            ),
            (
                Refusal::unsupported_grant_type("password"),
                "unsupported_grant_type",
                400,
                "unsupported_grant_type",
            ),
            (
                Refusal::audience_conflict(),
                "audience_conflict",
                400,
                "invalid_target",
            ),
            (
                Refusal::certificate_required(),
                "client_certificate_required",
                401,
                "invalid_client",
            ),
            (
                Refusal::unknown_identity("i", "s"),
                "unknown_identity",
                403,
                "unauthorized_client",
            ),
            (
                Refusal::identity_disabled("x", "why"),
                "identity_disabled",
                403,
                "access_denied",
            ),
            (
                Refusal::break_glass_scope("t", "s"),
                "scope_not_allowed",
                400,
                "invalid_scope",
            ),
            (
                Refusal::rate_limited("limit", Duration::from_millis(1500)),
                "rate_limited",
                429,
                "temporarily_unavailable",
            ),
            (
                Refusal::audit_unavailable(),
                "audit_unavailable",
                503,
                "temporarily_unavailable",
            ),
            (
                Refusal::internal("mint_failed"),
                "mint_failed",
                500,
                "server_error",
            ),
        ];
        for (r, rule, status, code) in cases {
            let e = r.error();
            assert_eq!(
                (r.rule(), e.status.as_u16(), e.code),
                (rule, status, code),
                "{r:?}"
            );
        }
        let e = Refusal::rate_limited("limit", Duration::from_millis(1500)).error();
        assert_eq!(e.retry_after, Some(2), "rounded up");
    }

    /// Each refusal's status and OAuth code: one table per category of [`Refusal::error`],
    /// every variant in one, so that moving an arm between categories cannot change an
    /// answer.
    fn answers(cases: Vec<(Refusal, u16, &str)>) {
        for (r, status, code) in cases {
            let e = r.error();
            assert_eq!((e.status.as_u16(), e.code), (status, code), "{r:?}");
        }
    }

    fn s(v: &str) -> String {
        v.to_owned()
    }

    fn not_a_jwt() -> AuthnError {
        AuthnError::Malformed("not a JWT".into())
    }

    fn keys_unavailable() -> AuthnError {
        AuthnError::KeysUnavailable("https://issuer.internal/jwks".into())
    }

    /// The broker's own state and the request itself.
    #[test]
    fn broker_and_request_refusals() {
        answers(vec![
            // Answered by `error` itself.
            (Refusal::StateStale, 503, "temporarily_unavailable"),
            (Refusal::AuditUnavailable, 503, "temporarily_unavailable"),
            (Refusal::Internal("internal_error"), 500, "server_error"),
            // The request.
            (Refusal::BodyTooLarge, 413, "invalid_request"),
            (Refusal::BodyUnreadable, 400, "invalid_request"),
            (Refusal::NotAForm, 400, "invalid_request"),
            (Refusal::MalformedForm(s("x")), 400, "invalid_request"),
            (
                Refusal::UnsupportedGrantType(s("password")),
                400,
                "unsupported_grant_type",
            ),
            (Refusal::Missing("subject_token"), 400, "invalid_request"),
            (
                Refusal::UnsupportedSubjectTokenType(s("x")),
                400,
                "invalid_request",
            ),
            (Refusal::DelegationNeedsExchange, 400, "invalid_request"),
            (
                Refusal::UnsupportedActorTokenType(s("x")),
                400,
                "invalid_request",
            ),
            (
                Refusal::UnsupportedRequestedTokenType(s("x")),
                400,
                "invalid_request",
            ),
            (Refusal::AudienceConflict, 400, "invalid_target"),
            (Refusal::BadTtl(s("-1")), 400, "invalid_request"),
        ]);
    }

    /// Client authentication, the subject token and the identity.
    #[test]
    fn client_and_identity_refusals() {
        answers(vec![
            // Client authentication.
            (Refusal::CertificateUnusable(s("x")), 401, "invalid_client"),
            (Refusal::CertificateRequired, 401, "invalid_client"),
            (
                Refusal::Certificate {
                    rule: "unknown_identity",
                    reason: s("x"),
                },
                403,
                "unauthorized_client",
            ),
            (
                Refusal::Certificate {
                    rule: "certificate_unmapped",
                    reason: s("x"),
                },
                401,
                "invalid_client",
            ),
            (Refusal::client_id_mismatch("a", "b"), 401, "invalid_client"),
            (
                Refusal::client_assertion(&not_a_jwt()),
                401,
                "invalid_client",
            ),
            (
                Refusal::client_assertion(&keys_unavailable()),
                503,
                "temporarily_unavailable",
            ),
            (
                Refusal::UnsupportedClientAssertionType(s("x")),
                401,
                "invalid_client",
            ),
            (
                Refusal::client_auth_mismatch("a", "b"),
                401,
                "invalid_client",
            ),
            // The subject token and the identity.
            (Refusal::subject_token(&not_a_jwt()), 400, "invalid_grant"),
            (
                Refusal::subject_token(&keys_unavailable()),
                503,
                "temporarily_unavailable",
            ),
            (
                Refusal::unknown_identity("i", "s"),
                403,
                "unauthorized_client",
            ),
            (
                Refusal::identity_mismatch("a", "b", "client certificate"),
                403,
                "access_denied",
            ),
            (Refusal::identity_disabled("a", "why"), 403, "access_denied"),
        ]);
    }

    /// Policy, break-glass, rate limits and anomalies.
    #[test]
    fn policy_refusals() {
        answers(vec![
            // Policy, break-glass, rate limits, anomalies.
            (
                Refusal::Policy {
                    rule: policy::Rule::TtlTooLong,
                    reason: s("x"),
                },
                400,
                "invalid_request",
            ),
            (
                Refusal::Policy {
                    rule: policy::Rule::SourceNotAllowed,
                    reason: s("x"),
                },
                403,
                "access_denied",
            ),
            (
                Refusal::no_break_glass_policy("g", "t"),
                403,
                "access_denied",
            ),
            (
                Refusal::break_glass_audience("t", "a", "b"),
                400,
                "invalid_target",
            ),
            (Refusal::break_glass_scope("t", "s"), 400, "invalid_scope"),
            (Refusal::break_glass_ttl(9, "t", 1), 400, "invalid_request"),
            (
                Refusal::rate_limited("limit", Duration::from_secs(3)),
                429,
                "temporarily_unavailable",
            ),
            (
                Refusal::HeldByAnomaly {
                    identity: s("a"),
                    anomaly: s("an-1"),
                    kind: "burst",
                },
                403,
                "access_denied",
            ),
        ]);
    }

    /// Delegation and DPoP.
    #[test]
    fn delegation_and_dpop_refusals() {
        answers(vec![
            // Delegation.
            (Refusal::actor_token(&not_a_jwt()), 400, "invalid_grant"),
            (
                Refusal::actor_token(&keys_unavailable()),
                503,
                "temporarily_unavailable",
            ),
            (Refusal::ActClaimMalformed, 400, "invalid_grant"),
            (
                Refusal::delegation_not_allowed("a", "b", "t"),
                403,
                "access_denied",
            ),
            (
                Refusal::DelegationScope {
                    scope: s("x"),
                    actor: s("a"),
                    task: s("t"),
                },
                400,
                "invalid_scope",
            ),
            (
                Refusal::DelegationTtl { asked: 9, max: 1 },
                400,
                "invalid_request",
            ),
            (
                Refusal::DelegationChainTooDeep { depth: 3, max: 2 },
                403,
                "access_denied",
            ),
            (Refusal::DelegationBreakGlass, 403, "access_denied"),
            // DPoP.
            (
                Refusal::Dpop(DpopError::Busy, None),
                503,
                "temporarily_unavailable",
            ),
            (
                Refusal::DpopReplayCheckUnavailable(s("database down")),
                503,
                "temporarily_unavailable",
            ),
            (
                Refusal::Dpop(DpopError::Signature, None),
                400,
                "invalid_dpop_proof",
            ),
            (
                Refusal::Dpop(DpopError::NonceRequired, Some(s("n-1"))),
                400,
                "use_dpop_nonce",
            ),
            (
                Refusal::DpopRequired { task: s("t") },
                400,
                "invalid_dpop_proof",
            ),
        ]);
    }

    /// What comes with some answers besides status and code: the operator detail and
    /// `Retry-After` of checks the broker could not make, and DPoP nonces.
    /// The caller path (admin, introspection, revocation, feed): its own variants, and the
    /// token path's certificate refusals, answer 401 `invalid_client` with their rule; a
    /// certificate of no identity is 401 here, 403 on the token endpoint.
    #[test]
    fn caller_refusals() {
        let unknown_cert = Refusal::certificate(CertRefusal {
            rule: "unknown_identity",
            reason: s("no identity"),
        });
        let cases: Vec<(Refusal, &str, u16, &str)> = vec![
            (
                Refusal::SeveralClientAuthMethods,
                "several_client_auth_methods",
                400,
                "invalid_request",
            ),
            (
                Refusal::NoCredentials,
                "no_credentials",
                401,
                "invalid_client",
            ),
            (
                Refusal::bearer_credential(&not_a_jwt()),
                not_a_jwt().rule(),
                401,
                "invalid_client",
            ),
            (
                Refusal::unknown_caller("iss", "sub", false),
                "unknown_identity",
                401,
                "invalid_client",
            ),
            (
                Refusal::unknown_caller("iss", "sub", true),
                "unknown_identity",
                401,
                "invalid_client",
            ),
            (
                Refusal::certificate_unusable(s("bad")),
                "client_certificate_unusable",
                401,
                "invalid_client",
            ),
            (
                unknown_cert.clone(),
                "unknown_identity",
                401,
                "invalid_client",
            ),
            (
                Refusal::client_assertion(&not_a_jwt()),
                not_a_jwt().rule(),
                401,
                "invalid_client",
            ),
        ];
        for (r, rule, status, code) in cases {
            let e = r.caller_error();
            assert_eq!(
                (r.rule(), e.status.as_u16(), e.code),
                (rule, status, code),
                "{r:?}"
            );
        }
        assert_eq!(unknown_cert.error().status.as_u16(), 403, "the token path");
        let e = Refusal::bearer_credential(&keys_unavailable()).caller_error();
        assert_eq!(
            (e.status.as_u16(), e.code, e.retry_after),
            (503, "temporarily_unavailable", Some(10)),
            "the broker's fault, not the credential's"
        );
        assert!(
            !e.description.contains("issuer.internal"),
            "{}",
            e.description
        );
        assert_eq!(
            e.operator_detail.as_deref(),
            Some(
                "cannot check the bearer credential: issuer keys unavailable: https://issuer.internal/jwks"
            )
        );
        let e = Refusal::bearer_credential(&AuthnError::ReplayCheckUnavailable(s("db down")))
            .caller_error();
        assert_eq!(
            (e.status.as_u16(), e.code, e.retry_after),
            (503, "temporarily_unavailable", Some(1))
        );
        assert!(!e.description.contains("db down"), "{}", e.description);
        let e = Refusal::unknown_caller("https://i", "s", true).caller_error();
        assert!(
            e.description.contains("of the client assertion"),
            "{}",
            e.description
        );
    }

    #[test]
    fn retry_after_operator_detail_and_nonce() {
        for (r, what) in [
            (Refusal::subject_token(&keys_unavailable()), "subject_token"),
            (Refusal::actor_token(&keys_unavailable()), "actor_token"),
            (
                Refusal::client_assertion(&keys_unavailable()),
                "client_assertion",
            ),
        ] {
            let e = r.error();
            assert_eq!(
                e.description,
                format!(
                    "cannot check the {what}: the broker cannot load this issuer's signing keys right now; retry later"
                )
            );
            let detail = format!(
                "cannot check the {what}: issuer keys unavailable: https://issuer.internal/jwks"
            );
            assert_eq!(e.operator_detail, Some(detail));
            assert_eq!(
                e.retry_after,
                Some(crate::authn::issuers::MIN_REFRESH_INTERVAL.as_secs())
            );
        }
        let e = Refusal::Dpop(DpopError::Busy, Some(s("n-1"))).error();
        assert_eq!((e.retry_after, e.dpop_nonce), (Some(1), None));
        let e = Refusal::Dpop(DpopError::NonceRequired, Some(s("n-1"))).error();
        assert_eq!(
            (e.retry_after, e.dpop_nonce.as_deref()),
            (None, Some("n-1"))
        );
        let e = Refusal::rate_limited("limit", Duration::from_secs(3)).error();
        assert_eq!(e.retry_after, Some(3));
        assert_eq!(Refusal::BodyTooLarge.error().retry_after, None);
    }

    #[test]
    fn issuer_key_details_go_to_the_record_not_the_caller() {
        let r = Refusal::subject_token(&AuthnError::KeysUnavailable(
            "https://issuer.internal/jwks: connection refused".into(),
        ));
        let e = r.error();
        assert_eq!(e.status.as_u16(), 503);
        assert!(
            !e.description.contains("issuer.internal"),
            "{}",
            e.description
        );
        assert!(
            e.operator_detail
                .is_some_and(|d| d.contains("issuer.internal"))
        );
    }

    #[test]
    fn caller_strings_are_clipped() {
        let long = "x".repeat(5000);
        let e = Refusal::unsupported_grant_type(&long).error();
        assert!(e.description.len() < 600, "{}", e.description.len());
    }
}
