//! Client SDK for the JIT token broker.
//!
//! - [`TokenSource`] (calling side): always has a valid token for one task. It fetches
//!   from the broker with the workload's own credential (a projected JWT file, a client
//!   certificate, or a closure), serves it from cache, renews it in the background before
//!   it expires (at a fraction of its lifetime, with jitter), shares one in-flight request
//!   between concurrent callers, retries with capped exponential backoff, honours 429 and
//!   `Retry-After`, keeps serving the cached token while the broker is down until the
//!   token actually expires, and then fails with a typed [`Error`].
//! - [`AuthorizedClient`]: a reqwest wrapper that puts the current token on each request
//!   and, on a 401, fetches a fresh token once and retries once.
//! - [`Verifier`] (resource side): verifies tokens offline with the broker's JWKS (cached;
//!   refetched on an unknown `kid`, rate-limited), the expected `iss` and `aud`,
//!   `exp`/`nbf` with leeway, required scopes, the `cnf.x5t#S256` certificate binding, and
//!   the revocation feed. With the `axum` feature, [`axum_extract::Authenticated`] is an
//!   extractor that rejects bad tokens with a proper `WWW-Authenticate` header.
//! - [`types`]: the wire types shared with the broker (always built, no HTTP stack).
//!
//! Tokens are never logged: [`Token`]'s `Debug` prints `[redacted]`. Renewals, failures
//! and time-to-expiry are reported as `tracing` events under the `broker_client` target.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use broker_client::{Credential, TokenSource, Verifier};
//!
//! // Calling side: a workload with a Kubernetes projected token.
//! let source = TokenSource::builder("https://broker.example.org", "ledger-write")
//!     .credential(Credential::jwt_file("/var/run/secrets/tokens/broker"))
//!     .ca_file("/etc/broker/ca.pem")
//!     .scope("ledger:read")
//!     .build()?;
//! let token = source.token().await?;
//! let _header = format!("Bearer {}", token.expose());
//!
//! // Resource side: verify what callers present.
//! let verifier = Verifier::builder("https://broker.example.org", "https://ledger.prod.example.org")
//!     .ca_file("/etc/broker/ca.pem")
//!     .require_scope("ledger:read")
//!     .build()?;
//! let claims = verifier.verify(token.expose(), None).await?;
//! assert_eq!(claims.aud, "https://ledger.prod.example.org");
//! # Ok(()) }
//! ```

pub mod jwk;
pub mod jws;
pub mod types;

#[cfg(feature = "dpop")]
pub mod dpop;
#[cfg(feature = "client")]
mod error;
#[cfg(feature = "client")]
mod http;
#[cfg(feature = "client")]
mod jose;
#[cfg(feature = "client")]
mod source;
#[cfg(feature = "client")]
mod verifier;

#[cfg(feature = "axum")]
pub mod axum_extract;

#[cfg(feature = "client")]
pub use error::{Error, VerifyError};
#[cfg(feature = "client")]
pub use http::AuthorizedClient;
#[cfg(feature = "client")]
pub use http::RequestError;
#[cfg(feature = "client")]
pub use source::{Credential, JwtProvider, Token, TokenSource, TokenSourceBuilder};
#[cfg(feature = "client")]
pub use verifier::{
    DEFAULT_JWKS_MAX_AGE, DEFAULT_VERIFIED_TOKEN_CACHE, DpopRequest, FeedCredential, Verifier,
    VerifierBuilder,
};
