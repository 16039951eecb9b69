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
}

/// RFC 8705 confirmation claim.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Confirmation {
    /// base64url SHA-256 of the DER client certificate.
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
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
