//! What an audit record says: the event and its fields (the log adds `seq`, `ts`,
//! `prev` and `hash`). Field table: `docs/audit-log.md`.
//!
//! Never put a token, a private key or any other secret in an event: record `jti`s,
//! key ids and certificate fingerprints.

use serde::Serialize;

/// The kind of an audit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A token was issued.
    Issued,
    /// A request was refused.
    Denied,
    /// A token (or a set of tokens) was revoked.
    Revoked,
    /// The broker started serving.
    BrokerStarted,
    /// The broker stopped serving.
    BrokerStopped,
    /// Start-up repaired the log after an unclean stop: a torn tail cut off, and/or a batch
    /// whose commit was interrupted (its anchor durable, its records not all in the log).
    LogRepaired,
    /// The policy set was (re)loaded.
    PolicyReloaded,
    /// A policy reload was rejected; the old set stays live.
    PolicyReloadFailed,
    /// TLS material was reloaded.
    TlsReloaded,
    /// A TLS reload was rejected; the old material stays live.
    TlsReloadFailed,
    /// The kill switch: an identity was disabled (and its live tokens revoked).
    IdentityDisabled,
    /// A disabled identity was enabled again.
    IdentityEnabled,
    /// A break-glass grant was requested.
    BreakGlassRequested,
    /// A break-glass grant was approved by one approver.
    BreakGlassApproved,
    /// A break-glass grant became usable.
    BreakGlassActivated,
    /// A token was issued under a break-glass grant.
    BreakGlassTokenIssued,
    /// A break-glass grant was closed (and its tokens revoked).
    BreakGlassClosed,
    /// A break-glass grant ended by time, or was never approved in time (tokens revoked).
    BreakGlassExpired,
    /// Behavioural monitoring found an anomaly.
    Anomaly,
    /// An admin acknowledged an anomaly.
    AnomalyAcknowledged,
    /// Token-endpoint refusals from one source over its budget, counted instead of
    /// recorded one by one (`detail`: count, first, last, rules).
    DenialsSummarized,
    /// A signing key was published ahead of signing.
    KeyPrepared,
    /// A signing key started signing.
    KeyActivated,
    /// A signing key stopped signing; it stays published until its tokens expire.
    KeyRetiring,
    /// A signing key left the JWKS.
    KeyRetired,
    /// A signing key was revoked: gone from the JWKS at once, its tokens revoked.
    KeyRevoked,
    /// An admin signed in to the console (or a sign-in was refused: `decision = deny`).
    ConsoleLogin,
    /// An admin signed out of the console.
    ConsoleLogout,
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
}

/// How the caller proved who it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// `jwt` or `mtls`.
    pub kind: &'static str,
    /// JWT `iss`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// JWT `sub`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// SPIFFE ID (JWT-SVID `sub` or X.509-SVID URI SAN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// SHA-256 of the DER client certificate, hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_sha256: Option<String>,
    /// `kid` of the workload JWT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

/// One audit event. Build with `AuditEvent::new(kind)` and set what applies.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditEvent {
    /// What happened.
    pub event: EventKind,
    /// Allow or deny, for decisions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// The rule that decided, e.g. `registration_expired`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Operator-readable reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// OAuth error code returned, for denials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The registry identity (NHI id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Workload evidence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// Environment (trust zone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Task name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Audience.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Scopes granted (or requested, on denials).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// Token id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Token expiry (seconds since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Signing key id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Source address of the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Who approved (for approvals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// Approval ticket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Who acted (admin calls), or the acting identity of a delegated token request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// A delegated token request (RFC 8693 `actor_token`): the actor chain, the acting
    /// identity first, then the actors it acts through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegation: Option<Vec<String>>,
    /// The actor's evidence in a delegated token request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_evidence: Option<Evidence>,
    /// Thumbprint of the DPoP key a token request proved (RFC 9449 `cnf.jkt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dpop_jkt: Option<String>,
    /// Extra structured detail (counts, file names, repaired byte ranges).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    /// The replica that wrote the record (set by the log from its options).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

impl AuditEvent {
    /// An event of `kind` with every optional field empty.
    pub fn new(kind: EventKind) -> Self {
        Self {
            event: kind,
            decision: None,
            rule: None,
            reason: None,
            error: None,
            identity: None,
            evidence: None,
            environment: None,
            task: None,
            audience: None,
            scopes: None,
            jti: None,
            exp: None,
            kid: None,
            source: None,
            approved_by: None,
            ticket: None,
            actor: None,
            delegation: None,
            actor_evidence: None,
            dpop_jkt: None,
            detail: None,
            replica: None,
        }
    }
}
