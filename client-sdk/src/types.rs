//! Wire types of the broker's outside contract (DESIGN.md): the JSON bodies of the OAuth
//! endpoints. They build without any HTTP stack so both the broker and its clients use them.

use serde::{Deserialize, Serialize};

/// `issued_token_type` of every access token the broker returns (RFC 8693 §3).
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// `subject_token_type` of a workload-identity JWT (RFC 8693 §3).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The RFC 8693 token-exchange grant type.
pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The RFC 6749 client-credentials grant type (used with mTLS, RFC 8705).
pub const GRANT_TYPE_CLIENT_CREDENTIALS: &str = "client_credentials";

/// Successful answer of `POST /oauth2/token` (RFC 6749 §5.1, RFC 8693 §2.2.1).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenResponse {
    /// The signed access token (RFC 9068 JWT). Never log it.
    pub access_token: String,
    /// Always [`TOKEN_TYPE_ACCESS_TOKEN`].
    pub issued_token_type: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token's `exp`.
    pub expires_in: u64,
    /// Space-separated scopes granted.
    pub scope: String,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"[redacted]")
            .field("issued_token_type", &self.issued_token_type)
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

/// Error body of every failing endpoint (RFC 6749 §5.2).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorResponse {
    /// Stable machine-readable code (`invalid_request`, `invalid_grant`, ...).
    pub error: String,
    /// What decided, in words an operator can act on. Never contains a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

/// Claims of an access token minted by the broker (RFC 9068 §2.2 plus broker claims).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessTokenClaims {
    /// The broker's issuer URL.
    pub iss: String,
    /// The NHI id.
    pub sub: String,
    /// The NHI id (RFC 9068 requires `client_id`).
    pub client_id: String,
    /// Exactly one audience.
    pub aud: String,
    /// Space-separated scopes.
    pub scope: String,
    /// 128-bit random token id, base64url.
    pub jti: String,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Not before (seconds since the epoch).
    pub nbf: u64,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// The task of the workload's policy this token is for.
    pub task: String,
    /// The environment (trust zone) of the identity and the audience.
    pub env: String,
    /// Certificate binding (RFC 8705 §3) when issued over mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// Break-glass grant id when issued under break-glass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bg: Option<String>,
    /// The acting party when the token was delegated (RFC 8693 §4.1): `sub` acts for
    /// this token's `sub`; nested `act`s are the actors it acts through in turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
}

/// RFC 8693 §4.1 actor claim: who acts, and, nested, the earlier actors of the chain.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Actor {
    /// The acting identity.
    pub sub: String,
    /// The actor this one acts through (the next one back in the delegation chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// The chain of actors, the current (outermost) actor first.
    pub fn chain(&self) -> Vec<&str> {
        let mut out = vec![self.sub.as_str()];
        let mut next = self.act.as_deref();
        while let Some(a) = next {
            out.push(a.sub.as_str());
            next = a.act.as_deref();
        }
        out
    }

    /// How many actors the chain has.
    pub fn depth(&self) -> usize {
        1 + self.act.as_deref().map_or(0, Actor::depth)
    }
}

/// Confirmation claim (`cnf`): the certificate (RFC 8705) or DPoP key (RFC 9449) the
/// token is bound to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Confirmation {
    /// base64url SHA-256 of the DER client certificate (RFC 8705); empty when the token
    /// is not certificate-bound.
    #[serde(rename = "x5t#S256", default, skip_serializing_if = "String::is_empty")]
    pub x5t_s256: String,
    /// RFC 7638 thumbprint of the DPoP key the token is bound to (RFC 9449 §6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
}

/// Answer of `POST /oauth2/introspect` (RFC 7662 §2.2): `{"active": false}`, or for an
/// active token `active`, `token_type` and the token's claims.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IntrospectionResponse {
    /// Whether the token is active (signed by the broker, in its time window, not revoked).
    pub active: bool,
    /// `Bearer`, for an active token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    /// The claims, for an active token.
    #[serde(flatten)]
    pub claims: Option<AccessTokenClaims>,
}

/// Answer of `POST /v1/admin/revocations`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevocationResponse {
    /// `jti` or `rule`.
    pub revoked: String,
    /// The revoked token id (`revoked: "jti"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The rule's id (`revoked: "rule"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// What the rule covers (`{"by": "identity" | "task" | "owner" | "grant", ...}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<serde_json::Value>,
    /// The rule covers tokens with `iat` up to this (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<u64>,
    /// Live tokens this broker knows the rule covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_tokens_covered: Option<u64>,
}

/// Answer of `POST /v1/admin/identities/{id}/disable` and `/enable` (the kill switch).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdentityStateResponse {
    /// The NHI id.
    pub identity: String,
    /// Whether it is disabled now.
    pub disabled: bool,
    /// The rule that revoked its live tokens (disable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// How many live tokens that rule covered (disable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_tokens_revoked: Option<u64>,
}

/// One approval of a break-glass grant.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantApproval {
    /// Who approved (`admin:<name>`).
    pub approver: String,
    /// When (unix seconds).
    pub at: u64,
}

/// A token issued under a break-glass grant.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantTokenEntry {
    /// Token id.
    pub jti: String,
    /// Audience.
    pub audience: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Expiry (unix seconds).
    pub exp: u64,
    /// Issued at (unix seconds).
    pub issued_at: u64,
}

/// Answer of `GET /v1/break-glass/{id}/report`: the full account of a grant. Times are
/// unix seconds; absent ones are `null`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantReport {
    /// Grant id (the `bg` claim of its tokens).
    pub grant: String,
    /// Target identity.
    pub identity: String,
    /// Break-glass task.
    pub task: String,
    /// Break-glass policy.
    pub policy: String,
    /// Who asked.
    pub requested_by: String,
    /// When asked.
    pub requested_at: u64,
    /// Why.
    pub justification: String,
    /// Incident ticket.
    pub ticket: String,
    /// Approvals given.
    pub approvals: Vec<GrantApproval>,
    /// Approvals needed.
    pub approvals_needed: u32,
    /// `pending`, `active` or `closed`.
    pub status: String,
    /// When it became active.
    pub opened_at: Option<u64>,
    /// When its access ends (or ended).
    pub ends_at: Option<u64>,
    /// When it was closed.
    pub closed_at: Option<u64>,
    /// Who closed it (`broker` when by time).
    pub closed_by: Option<String>,
    /// Why it was closed.
    pub close_reason: Option<String>,
    /// Tokens issued under it.
    pub tokens: Vec<GrantTokenEntry>,
}

/// A revocation rule as the feed publishes it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevocationFeedRule {
    /// Rule id.
    pub id: String,
    /// What it selects by: `identity`, `task`, `owner`, `grant` or `key`.
    pub by: String,
    /// The identity (`by: identity`, or `by: task` restricted to one identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The task (`by: task`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The owner (`by: owner`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The break-glass grant (`by: grant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// The signing key (`by: key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Tokens with `iat` at or before this are revoked.
    pub issued_before: u64,
    /// The owner's identities (`by: owner`), for verifiers that cannot map owners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identities: Option<Vec<String>>,
}

/// One revocation in the feed: a token id or a rule.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevocationFeedEntry {
    /// Position in the feed; `?since=` takes the last one seen.
    pub cursor: u64,
    /// A revoked token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// A revocation rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RevocationFeedRule>,
    /// After this time the entry is irrelevant (every token it covers has expired).
    pub until: u64,
}

/// Answer of `GET /v1/revocations?since=<cursor>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevocationFeed {
    /// Poll again with `?since=` this.
    pub cursor: u64,
    /// The broker's time (unix seconds).
    pub now: u64,
    /// Revocations newer than `since` whose tokens can still be live.
    pub entries: Vec<RevocationFeedEntry>,
}

/// An anomaly as the admin API shows it (inventory entries, acknowledgements).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AnomalyReport {
    /// Id (for `POST /v1/admin/anomalies/{id}/ack`).
    pub id: String,
    /// The identity.
    pub identity: String,
    /// Kind, e.g. `volume_spike`, `new_source_network`.
    pub kind: String,
    /// What was seen.
    pub evidence: serde_json::Value,
    /// When (unix seconds).
    pub at: u64,
    /// `alert` or `deny`.
    pub action: String,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
}

/// One identity in `GET /v1/admin/inventory`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InventoryEntry {
    /// NHI id.
    pub id: String,
    /// Owning team.
    pub owner: String,
    /// Responsible person.
    pub steward: String,
    /// What it is for.
    pub purpose: String,
    /// Environment.
    pub environment: String,
    /// Whether it is a third party's.
    pub third_party: bool,
    /// Registration ticket.
    pub ticket: String,
    /// Registration expiry (`YYYY-MM-DD`).
    pub expires: String,
    /// `active`, `dormant`, `expiring`, `expired` or `disabled`.
    pub status: String,
    /// Last issuance (unix seconds).
    pub last_issued: Option<u64>,
    /// Tokens issued in the last 24 hours.
    pub tokens_24h: u64,
    /// Granted tasks used at least once.
    pub tasks_used: Vec<String>,
    /// Granted tasks never used.
    pub tasks_never_used: Vec<String>,
    /// Open (unacknowledged) anomalies.
    pub anomalies: Vec<AnomalyReport>,
    /// Granted tasks unused in the `?unused=` window (only with `?unused=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unused_tasks: Option<Vec<String>>,
    /// Granted scopes unused in the `?unused=` window (only with `?unused=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unused_scopes: Option<Vec<String>>,
}

/// Answer of `GET /v1/admin/inventory`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InventoryResponse {
    /// The broker's time (unix seconds).
    pub now: u64,
    /// Every registered identity (those the filters keep).
    pub identities: Vec<InventoryEntry>,
}

/// Answer of `GET /.well-known/oauth-authorization-server`: the broker's authorization
/// server metadata (RFC 8414 §2). The members are in alphabetical order, the order the
/// broker has always sent them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuthorizationServerMetadata {
    /// Algorithms the broker signs access tokens with.
    pub access_token_signing_alg_values_supported: Vec<String>,
    /// Algorithms of the DPoP proofs the token endpoint accepts (RFC 9449 §5.1).
    pub dpop_signing_alg_values_supported: Vec<String>,
    /// [`GRANT_TYPE_TOKEN_EXCHANGE`] and [`GRANT_TYPE_CLIENT_CREDENTIALS`].
    pub grant_types_supported: Vec<String>,
    /// URL of `POST /oauth2/introspect` (RFC 7662).
    pub introspection_endpoint: String,
    /// How callers authenticate at the introspection endpoint.
    pub introspection_endpoint_auth_methods_supported: Vec<String>,
    /// Algorithms of the client assertions the introspection endpoint accepts.
    pub introspection_endpoint_auth_signing_alg_values_supported: Vec<String>,
    /// The broker's issuer URL (the `iss` of its tokens).
    pub issuer: String,
    /// URL of the JWKS (RFC 7517).
    pub jwks_uri: String,
    /// Always `["none"]`: the broker has no authorization endpoint.
    pub response_types_supported: Vec<String>,
    /// URL of `POST /oauth2/revoke` (RFC 7009).
    pub revocation_endpoint: String,
    /// How callers authenticate at the revocation endpoint.
    pub revocation_endpoint_auth_methods_supported: Vec<String>,
    /// Algorithms of the client assertions the revocation endpoint accepts.
    pub revocation_endpoint_auth_signing_alg_values_supported: Vec<String>,
    /// Every scope a loaded policy grants.
    pub scopes_supported: Vec<String>,
    /// Always `true`: tokens issued over mTLS are bound to the certificate (RFC 8705 §3.3).
    pub tls_client_certificate_bound_access_tokens: bool,
    /// URL of `POST /oauth2/token`.
    pub token_endpoint: String,
    /// How callers authenticate at the token endpoint.
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// Algorithms of the client assertions the token endpoint accepts.
    pub token_endpoint_auth_signing_alg_values_supported: Vec<String>,
}

/// Answer of `GET /.well-known/openid-configuration`: OpenID Provider metadata (OIDC
/// Discovery 1.0 §3) for relying parties that discover keys that way. The members are in
/// alphabetical order, the order the broker has always sent them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpenIdConfiguration {
    /// Claims the broker's tokens carry.
    pub claims_supported: Vec<String>,
    /// [`GRANT_TYPE_TOKEN_EXCHANGE`] and [`GRANT_TYPE_CLIENT_CREDENTIALS`].
    pub grant_types_supported: Vec<String>,
    /// Algorithms the broker signs tokens with.
    pub id_token_signing_alg_values_supported: Vec<String>,
    /// The broker's issuer URL (the `iss` of its tokens).
    pub issuer: String,
    /// URL of the JWKS (RFC 7517).
    pub jwks_uri: String,
    /// Always `["id_token"]` (the specification requires the member).
    pub response_types_supported: Vec<String>,
    /// Every scope a loaded policy grants.
    pub scopes_supported: Vec<String>,
    /// Always `["public"]`: `sub` is the NHI id for every relying party.
    pub subject_types_supported: Vec<String>,
    /// URL of `POST /oauth2/token`.
    pub token_endpoint: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inactive_introspection_is_just_active_false_and_reads_back() {
        let inactive = IntrospectionResponse {
            active: false,
            token_type: None,
            claims: None,
        };
        let json = serde_json::to_string(&inactive).unwrap();
        assert_eq!(json, r#"{"active":false}"#);
        assert_eq!(
            serde_json::from_str::<IntrospectionResponse>(&json).unwrap(),
            inactive
        );
    }
}
