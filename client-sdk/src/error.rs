//! Typed errors that say what to do.

use std::path::PathBuf;
use std::time::Duration;

/// Why a token could not be obtained.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker refused by policy or authentication. `error` is the OAuth code
    /// (`access_denied`, `invalid_scope`, …) and `description` the broker's reason: fix the
    /// registry entry, the task parameters or the credential; retrying will not help.
    #[error("broker denied the request ({status} {error}): {description}")]
    Denied {
        /// HTTP status.
        status: u16,
        /// OAuth error code, as data.
        error: String,
        /// The broker's reason.
        description: String,
    },
    /// The broker asked us to slow down; retry after the given time.
    #[error("rate limited by the broker; retry after {retry_after:?}")]
    RateLimited {
        /// How long to wait.
        retry_after: Duration,
    },
    /// The broker could not be reached or answered 5xx; the SDK retries with backoff.
    #[error("broker unavailable: {reason}")]
    BrokerUnavailable {
        /// What failed.
        reason: String,
    },
    /// The workload credential (JWT file, certificate, key) could not be read.
    #[error("credential {path} unreadable: {reason}")]
    CredentialUnreadable {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The workload credential itself has expired (the platform did not rotate it).
    #[error("the workload credential expired at {exp}; the platform should have rotated it")]
    CredentialExpired {
        /// Its `exp` (unix seconds).
        exp: u64,
    },
    /// The cached token expired and no fresh one could be obtained (the last failure is
    /// in `last_error`).
    #[error("token expired and could not be renewed: {last_error}")]
    TokenExpired {
        /// Why the renewal failed.
        last_error: String,
    },
    /// The SDK was configured wrongly.
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::RateLimited { .. }
                | Error::BrokerUnavailable { .. }
                | Error::TokenExpired { .. }
        )
    }
}

/// Why a token failed verification on the resource side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Not a well-formed access token (`typ: at+jwt`).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The `kid` is not in the broker's JWKS, even after a refresh.
    #[error("unknown signing key {0:?}")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// Past `exp`.
    #[error("token expired")]
    Expired,
    /// Before `nbf`.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the expected broker.
    #[error("wrong issuer {0:?}")]
    WrongIssuer(String),
    /// `aud` is not this resource server.
    #[error("wrong audience {0:?}")]
    WrongAudience(String),
    /// A required scope is missing.
    #[error("missing scope {0:?}")]
    MissingScope(String),
    /// The token was revoked (revocation feed).
    #[error("token revoked")]
    Revoked,
    /// The token is bound to a certificate (`cnf.x5t#S256`) other than the caller's, or
    /// the caller presented none.
    #[error("token is bound to another client certificate")]
    CertificateMismatch,
    /// The broker's keys could not be fetched.
    #[error("broker keys unavailable: {0}")]
    KeysUnavailable(String),
    /// The token is DPoP-bound (`cnf.jkt`) and was presented without a DPoP proof.
    #[error("token is DPoP-bound: present it with a DPoP proof (Authorization: DPoP)")]
    DpopRequired,
    /// The DPoP proof was refused.
    #[error("{0}")]
    Dpop(crate::dpop::DpopError),
}
