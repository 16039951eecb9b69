//! Who is calling: workload-identity JWT validation ([`Authenticator`]) and mTLS client
//! certificates ([`mtls`]).
//!
//! [`Authenticator::authenticate_jwt`] checks a workload JWT against the trusted issuer
//! named by its `iss`: algorithm on that issuer's allow-list (never `none` or HMAC),
//! signature with the issuer's published key for `kid`, `exp`/`nbf`/`iat` with the
//! issuer's leeway, `aud` among the issuer's audiences, `sub` present.
//!
//! Successful verifications are cached by the token's SHA-256 until the token expires,
//! so a workload that presents the same projected token again costs one hash, not one
//! RSA verification. A cached verification is used only while the issuer's current key
//! set still has the key that made it. The cache is bounded and never holds the token
//! itself.

pub mod issuers;
pub mod jws;
pub mod mtls;
pub mod replay;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::config::TrustedIssuer;
use issuers::IssuerKeys;

/// Why a workload credential was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuthnError {
    /// Not a well-formed JWT, or too long.
    #[error("{0}")]
    Malformed(String),
    /// The `iss` is not a configured trusted issuer.
    #[error("issuer {0:?} is not a trusted issuer of this broker")]
    UntrustedIssuer(String),
    /// `alg` refused.
    #[error("{0}")]
    AlgorithmNotAllowed(String),
    /// No key with this `kid` even after a refresh.
    #[error("issuer {issuer} has no key with kid {kid:?} (after refreshing its keys)")]
    UnknownKid {
        /// The issuer.
        issuer: String,
        /// The kid.
        kid: String,
    },
    /// Signature does not verify.
    #[error("JWT signature does not verify with the issuer's key")]
    BadSignature,
    /// `exp` passed.
    #[error("JWT expired at {exp} (now {now}, leeway {leeway}s)")]
    Expired {
        /// exp.
        exp: u64,
        /// now.
        now: u64,
        /// leeway seconds.
        leeway: u64,
    },
    /// `nbf` in the future.
    #[error("JWT not valid before {nbf} (now {now}, leeway {leeway}s)")]
    NotYetValid {
        /// nbf.
        nbf: u64,
        /// now.
        now: u64,
        /// leeway seconds.
        leeway: u64,
    },
    /// `aud` does not name this broker.
    #[error(
        "JWT audience {got} is not one this broker accepts for issuer {issuer} (expected one of: {expected})"
    )]
    WrongAudience {
        /// What the token said.
        got: String,
        /// The issuer.
        issuer: String,
        /// The accepted audiences.
        expected: String,
    },
    /// A required claim is missing or mistyped.
    #[error("JWT claim `{0}` is missing or not of the right type")]
    MissingClaim(&'static str),
    /// The issuer's keys could not be loaded.
    #[error("issuer keys unavailable: {0}")]
    KeysUnavailable(String),
    /// The JWS `typ` is not one this issuer's identity tokens carry (RFC 8725 §3.11).
    #[error("{0}")]
    TypeNotAllowed(String),
    /// A claim is present but not valid (a NumericDate out of range, say).
    #[error("JWT claim `{name}` {reason}")]
    InvalidClaim {
        /// The claim.
        name: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The token lives longer than the issuer's `max_lifetime`.
    #[error(
        "JWT lifetime of {lifetime}s is longer than the {max}s this issuer's tokens may have (trusted_issuer max_lifetime)"
    )]
    LifetimeTooLong {
        /// Seconds from `iat` (or now) to `exp`.
        lifetime: u64,
        /// The issuer's maximum.
        max: u64,
    },
    /// The token was issued longer ago than the issuer's `max_age`.
    #[error(
        "JWT was issued {age}s ago, more than the {max}s this issuer's tokens may be used for (trusted_issuer max_age)"
    )]
    TooOld {
        /// Seconds since `iat`.
        age: u64,
        /// The issuer's maximum.
        max: u64,
    },
    /// A single-use token (by `jti`) was presented again.
    #[error("JWT with jti {0:?} was already used; a single-use token is accepted once")]
    Replayed(String),
    /// The replay memory is full of unexpired tokens, so a single-use token cannot be
    /// checked.
    #[error(
        "the broker cannot check this token for replay right now (replay cache full); retry later"
    )]
    ReplayCacheFull,
    /// The shared record of used tokens (the state store other replicas share) could
    /// not be asked, so a single-use token cannot be checked; the store's error.
    #[error(
        "the broker cannot check this token for replay across its replicas right now ({0}); retry later with a new token"
    )]
    ReplayCheckUnavailable(String),
}

impl AuthnError {
    /// What the caller is told: every error but [`AuthnError::KeysUnavailable`] as its
    /// message; that one plainly (its message names files, URLs and I/O errors of the
    /// broker's own configuration, which go to the audit record and the log only).
    pub fn public_message(&self) -> String {
        match self {
            AuthnError::KeysUnavailable(_) => {
                "the broker cannot load this issuer's signing keys right now; retry later".into()
            }
            AuthnError::ReplayCheckUnavailable(_) => {
                "the broker cannot check this token for replay right now (its state store is unavailable); retry later with a new token".into()
            }
            other => other.to_string(),
        }
    }

    /// The stable rule name recorded in the audit log.
    pub fn rule(&self) -> &'static str {
        match self {
            AuthnError::Malformed(_) => "token_malformed",
            AuthnError::UntrustedIssuer(_) => "untrusted_issuer",
            AuthnError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            AuthnError::UnknownKid { .. } => "unknown_kid",
            AuthnError::BadSignature => "bad_signature",
            AuthnError::Expired { .. } => "token_expired",
            AuthnError::NotYetValid { .. } => "token_not_yet_valid",
            AuthnError::WrongAudience { .. } => "wrong_audience",
            AuthnError::MissingClaim(_) => "missing_claim",
            AuthnError::KeysUnavailable(_) => "issuer_keys_unavailable",
            AuthnError::TypeNotAllowed(_) => "token_type_not_allowed",
            AuthnError::InvalidClaim { .. } => "invalid_claim",
            AuthnError::LifetimeTooLong { .. } => "lifetime_too_long",
            AuthnError::TooOld { .. } => "token_too_old",
            AuthnError::Replayed(_) => "token_replayed",
            AuthnError::ReplayCacheFull => "replay_cache_full",
            AuthnError::ReplayCheckUnavailable(_) => "replay_check_unavailable",
        }
    }

    /// True when the failure is the broker's (keys or replay memory unavailable), not
    /// the credential's: answered 503, retryable.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            AuthnError::KeysUnavailable(_)
                | AuthnError::ReplayCacheFull
                | AuthnError::ReplayCheckUnavailable(_)
        )
    }
}

/// How a JWT is presented, which decides its audience check and whether it is single-use.
#[derive(Debug, Clone, Copy)]
pub enum Presentation<'a> {
    /// As a workload identity (`subject_token`, `Authorization: Bearer`): `aud` among the
    /// issuer's `audiences`; single-use when the issuer says so.
    Identity,
    /// As an RFC 7523 client assertion: `aud` must name this broker (one of
    /// `audiences`: its issuer, its token endpoint, the endpoint called); `jti` required
    /// and always single-use.
    ClientAssertion {
        /// The accepted `aud` values.
        audiences: &'a [String],
    },
}

/// RFC 7523 §2.2: the `client_assertion_type` of a JWT client assertion.
pub const CLIENT_ASSERTION_TYPE_JWT_BEARER: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Capacity of the single-use (`jti`) memory.
pub const REPLAY_CACHE_CAPACITY: usize = 1_000_000;

/// A workload JWT whose signature and claims checked out.
#[derive(Debug, Clone)]
pub struct VerifiedJwt {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `kid` of the issuer key that signed it.
    pub kid: Option<String>,
    /// `exp`.
    pub exp: u64,
    /// `jti`, when the token has one.
    pub jti: Option<String>,
    /// All claims (for claim matchers).
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl VerifiedJwt {
    /// The SPIFFE ID when this is a JWT-SVID (`sub` is a `spiffe://` URI).
    pub fn spiffe_id(&self) -> Option<&str> {
        self.subject
            .starts_with("spiffe://")
            .then_some(self.subject.as_str())
    }
}

/// Validates workload credentials against the trusted issuers.
pub struct Authenticator {
    issuers: HashMap<String, Arc<IssuerKeys>>,
    verified: moka::sync::Cache<[u8; 32], Arc<VerifiedJwt>>,
    replay: replay::ReplayCache,
    /// Uses other replicas made (nothing to ask with a store of one process).
    shared_uses: crate::single_use::SharedUses,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuers", &self.issuers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Latest NumericDate accepted: 9999-12-31T23:59:59Z. Anything later is not a date a
/// real issuer writes, and past it `u64` arithmetic would need care.
const MAX_NUMERIC_DATE: f64 = 253_402_300_799.0;

/// A NumericDate claim (RFC 7519 §2): a non-negative number of seconds, fractions cut.
fn num_claim(
    claims: &serde_json::Map<String, serde_json::Value>,
    name: &'static str,
) -> Result<Option<u64>, AuthnError> {
    let Some(v) = claims.get(name) else {
        return Ok(None);
    };
    let Some(f) = v.as_f64() else {
        return Err(AuthnError::InvalidClaim {
            name,
            reason: "is not a number (a NumericDate is seconds since 1970)",
        });
    };
    if !(0.0..=MAX_NUMERIC_DATE).contains(&f) {
        return Err(AuthnError::InvalidClaim {
            name,
            reason: "is not a NumericDate between 1970 and the year 9999",
        });
    }
    Ok(Some(v.as_u64().unwrap_or(f as u64)))
}

impl Authenticator {
    /// Builds the authenticator over the configured issuers (keys load lazily).
    pub fn new(issuers: &[TrustedIssuer], clock: Arc<dyn Clock>) -> Result<Self, AuthnError> {
        let mut map = HashMap::new();
        for t in issuers {
            map.insert(t.issuer.clone(), Arc::new(IssuerKeys::new(t.clone())?));
        }
        Ok(Self {
            issuers: map,
            verified: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            replay: replay::ReplayCache::new(REPLAY_CACHE_CAPACITY),
            shared_uses: crate::single_use::SharedUses::default(),
            clock,
        })
    }

    /// Checks single-use tokens against the uses other replicas recorded too.
    pub fn with_shared_uses(mut self, shared_uses: crate::single_use::SharedUses) -> Self {
        self.shared_uses = shared_uses;
        self
    }

    /// Loads every issuer's keys once; returns the issuers whose keys failed to load.
    pub async fn preload(&self) -> Vec<(String, AuthnError)> {
        let mut failed = Vec::new();
        for (iss, keys) in &self.issuers {
            if let Err(e) = keys.keys().await {
                failed.push((iss.clone(), e));
            }
        }
        failed
    }

    /// Every algorithm some trusted issuer may sign with (what client assertions may
    /// use), sorted, for the metadata's `*_auth_signing_alg_values_supported`.
    pub fn algorithms(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .issuers
            .values()
            .flat_map(|i| i.config.algorithms.iter().cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Validates a workload JWT presented as an identity (`subject_token`, Bearer).
    pub async fn authenticate_jwt(&self, token: &str) -> Result<Arc<VerifiedJwt>, AuthnError> {
        self.authenticate(token, Presentation::Identity).await
    }

    /// Validates an RFC 7523 client assertion whose `aud` must be one of `audiences`.
    pub async fn authenticate_client_assertion(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<Arc<VerifiedJwt>, AuthnError> {
        self.authenticate(token, Presentation::ClientAssertion { audiences })
            .await
    }

    /// Validates a workload JWT presented as `how`: the signature and claims, then
    /// single use.
    #[tracing::instrument(skip_all)]
    pub async fn authenticate(
        &self,
        token: &str,
        how: Presentation<'_>,
    ) -> Result<Arc<VerifiedJwt>, AuthnError> {
        let now = self.clock.unix_secs();
        let (verified, single_use) = match how {
            Presentation::Identity => self.verify_identity_cached(token, now).await?,
            // Assertions are single-use, so caching their verification gains nothing.
            Presentation::ClientAssertion { .. } => self.verify(token, how, now).await?,
        };
        if single_use {
            let jti = verified
                .jti
                .as_deref()
                .ok_or(AuthnError::MissingClaim("jti"))?;
            match self
                .replay
                .first_use(&verified.issuer, jti, verified.exp, now)
            {
                replay::Seen::First => {}
                replay::Seen::Replayed => {
                    return Err(AuthnError::Replayed(truncate(jti, 100)));
                }
                replay::Seen::Full => return Err(AuthnError::ReplayCacheFull),
            }
            let kind = crate::single_use::UseKind::Jwt;
            match self
                .shared_uses
                .first_use(kind, &verified.issuer, jti, verified.exp, now)
                .await
            {
                Ok(true) => {}
                Ok(false) => return Err(AuthnError::Replayed(truncate(jti, 100))),
                Err(e) => {
                    // Not used after all: a retry of the same token may pass here.
                    self.replay.forget(&verified.issuer, jti);
                    return Err(AuthnError::ReplayCheckUnavailable(e.to_string()));
                }
            }
        }
        Ok(verified)
    }

    /// An identity JWT through the verification cache; returns whether it is single-use.
    async fn verify_identity_cached(
        &self,
        token: &str,
        now: u64,
    ) -> Result<(Arc<VerifiedJwt>, bool), AuthnError> {
        let digest: [u8; 32] = {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
            let mut out = [0u8; 32];
            out.copy_from_slice(d.as_ref());
            out
        };
        if let Some(hit) = self.verified.get(&digest) {
            // A verification holds only while the issuer still publishes the key that made
            // it: once a (compromised, retired) key leaves the issuer's JWKS, the token
            // goes through the full check again, which refuses it.
            match self.issuers.get(&hit.issuer) {
                Some(issuer)
                    if issuer
                        .publishes(hit.kid.as_deref().unwrap_or_default())
                        .await =>
                {
                    // Time-dependent checks are repeated on every use.
                    let leeway = issuer.config.leeway.as_secs();
                    if now <= hit.exp.saturating_add(leeway) {
                        return Ok((hit, issuer.config.single_use));
                    }
                    self.verified.invalidate(&digest);
                    return Err(AuthnError::Expired {
                        exp: hit.exp,
                        now,
                        leeway,
                    });
                }
                _ => self.verified.invalidate(&digest),
            }
        }
        let (verified, single_use) = self.verify(token, Presentation::Identity, now).await?;
        self.verified.insert(digest, Arc::clone(&verified));
        Ok((verified, single_use))
    }

    /// The full check: structure, issuer, algorithm, `typ`, signature, then the claims.
    /// Returns whether the token is single-use.
    async fn verify(
        &self,
        token: &str,
        how: Presentation<'_>,
        now: u64,
    ) -> Result<(Arc<VerifiedJwt>, bool), AuthnError> {
        let parsed = jws::parse(token)?;
        if parsed.header.crit.is_some() {
            return Err(AuthnError::Malformed(
                "JWT header has `crit` extensions the broker does not understand".into(),
            ));
        }
        let iss = parsed
            .claims
            .get("iss")
            .and_then(|v| v.as_str())
            .ok_or(AuthnError::MissingClaim("iss"))?;
        let issuer = self
            .issuers
            .get(iss)
            .ok_or_else(|| AuthnError::UntrustedIssuer(truncate(iss, 200)))?;
        let alg = jws::check_algorithm(&parsed.header.alg, &issuer.algorithms)?;
        check_typ(parsed.header.typ.as_deref(), &issuer.config.token_types)?;

        let kid = parsed.header.kid.clone().unwrap_or_default();
        let mut keys = issuer.keys().await?;
        if !keys.keys.contains_key(&kid) {
            issuer.refresh_for_unknown_kid(Instant::now()).await;
            keys = issuer.keys().await?;
        }
        let key = keys.keys.get(&kid).ok_or_else(|| AuthnError::UnknownKid {
            issuer: issuer.config.issuer.clone(),
            kid: truncate(&kid, 100),
        })?;
        jws::verify_signature(alg, key, parsed.signing_input, &parsed.signature)?;

        // Claims, only after the signature holds.
        let exp = check_times(&parsed.claims, &issuer.config, now)?;
        let expected: &[String] = match how {
            Presentation::Identity => &issuer.config.audiences,
            Presentation::ClientAssertion { audiences } => audiences,
        };
        check_audience(&parsed.claims, &issuer.config.issuer, expected)?;
        let subject = parsed
            .claims
            .get("sub")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or(AuthnError::MissingClaim("sub"))?
            .to_owned();
        let jti = match parsed.claims.get("jti") {
            None => None,
            Some(serde_json::Value::String(j)) if !j.is_empty() && j.len() <= 256 => {
                Some(j.clone())
            }
            Some(_) => {
                return Err(AuthnError::InvalidClaim {
                    name: "jti",
                    reason: "is not a string of 1 to 256 bytes",
                });
            }
        };
        let single_use = match how {
            Presentation::Identity => issuer.config.single_use,
            Presentation::ClientAssertion { .. } => true,
        };
        let verified = Arc::new(VerifiedJwt {
            issuer: issuer.config.issuer.clone(),
            subject,
            kid: parsed.header.kid,
            exp,
            jti,
            claims: parsed.claims,
        });
        Ok((verified, single_use))
    }
}

/// The JWS `typ` against the issuer's accepted values (RFC 8725 §3.11): an access token
/// (`at+jwt`, RFC 9068 §4) is never an identity credential, whatever the config says.
fn check_typ(typ: Option<&str>, accepted: &[String]) -> Result<(), AuthnError> {
    let Some(typ) = typ else {
        return Ok(());
    };
    let t = crate::config::normalized_typ(typ);
    if t == "at+jwt" {
        return Err(AuthnError::TypeNotAllowed(
            "JWT typ at+jwt is an access token (RFC 9068), never accepted as a workload identity or client assertion".into(),
        ));
    }
    if accepted.contains(&t) {
        Ok(())
    } else {
        Err(AuthnError::TypeNotAllowed(format!(
            "JWT typ {:?} is not one this issuer's identity tokens carry (accepted: {})",
            truncate(typ, 64),
            accepted.join(", ")
        )))
    }
}

/// `exp` (required), `nbf`, `iat`, the lifetime and the age; returns `exp`.
fn check_times(
    claims: &serde_json::Map<String, serde_json::Value>,
    issuer: &TrustedIssuer,
    now: u64,
) -> Result<u64, AuthnError> {
    let leeway = issuer.leeway.as_secs();
    let exp = num_claim(claims, "exp")?.ok_or(AuthnError::MissingClaim("exp"))?;
    if now > exp.saturating_add(leeway) {
        return Err(AuthnError::Expired { exp, now, leeway });
    }
    if let Some(nbf) = num_claim(claims, "nbf")?
        && nbf > now.saturating_add(leeway)
    {
        return Err(AuthnError::NotYetValid { nbf, now, leeway });
    }
    let iat = num_claim(claims, "iat")?;
    if let Some(iat) = iat
        && iat > now.saturating_add(leeway)
    {
        return Err(AuthnError::NotYetValid {
            nbf: iat,
            now,
            leeway,
        });
    }
    let from = iat.unwrap_or(now).min(now);
    let lifetime = exp.saturating_sub(from);
    let max = issuer.max_lifetime.as_secs();
    if lifetime > max.saturating_add(leeway) {
        return Err(AuthnError::LifetimeTooLong { lifetime, max });
    }
    if let (Some(iat), Some(max_age)) = (iat, issuer.max_age) {
        let age = now.saturating_sub(iat);
        if age > max_age.as_secs().saturating_add(leeway) {
            return Err(AuthnError::TooOld {
                age,
                max: max_age.as_secs(),
            });
        }
    }
    Ok(exp)
}

/// `aud` (a string or an array) must hold one of `expected`.
fn check_audience(
    claims: &serde_json::Map<String, serde_json::Value>,
    issuer: &str,
    expected: &[String],
) -> Result<(), AuthnError> {
    let auds: Vec<&str> = match claims.get("aud") {
        Some(serde_json::Value::String(s)) => vec![s.as_str()],
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
        _ => return Err(AuthnError::MissingClaim("aud")),
    };
    if auds.iter().any(|a| expected.iter().any(|x| x == a)) {
        Ok(())
    } else {
        Err(AuthnError::WrongAudience {
            got: truncate(&auds.join(" "), 200),
            issuer: issuer.to_owned(),
            expected: expected.join(", "),
        })
    }
}

/// `s` cut to at most `max` bytes (on a character boundary, with `…`), for caller-supplied
/// strings going into messages and records.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_owned()
    } else {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;
    use crate::clock::SystemClock;
    use crate::config::JwksSource;

    const ISS: &str = "https://issuer.test";

    fn p256() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap()
    }

    fn write_jwks(path: &Path, keys: &[(&str, &EcdsaKeyPair)]) {
        let keys: Vec<serde_json::Value> = keys
            .iter()
            .map(|(kid, k)| {
                let point = k.public_key().as_ref();
                serde_json::json!({
                    "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
                })
            })
            .collect();
        std::fs::write(path, serde_json::json!({ "keys": keys }).to_string()).unwrap();
    }

    fn es256_jwt(kid: &str, key: &EcdsaKeyPair, now: u64) -> String {
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid});
        let claims = serde_json::json!({
            "iss": ISS, "sub": "system:serviceaccount:a:b", "aud": "jit-broker",
            "iat": now, "nbf": now, "exp": now + 600,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    #[tokio::test]
    async fn a_cached_verification_ends_when_its_key_leaves_the_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        let (old, new) = (p256(), p256());
        write_jwks(&jwks, &[("old", &old)]);
        let mut issuer = TrustedIssuer::with_defaults(
            ISS,
            &["jit-broker"],
            &["ES256"],
            JwksSource::File(jwks.clone()),
        );
        issuer.leeway = Duration::from_secs(5);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let authn = Authenticator::new(&[issuer], Arc::clone(&clock)).unwrap();
        let token = es256_jwt("old", &old, clock.unix_secs());
        for _ in 0..2 {
            let v = authn.authenticate_jwt(&token).await.unwrap();
            assert_eq!(v.kid.as_deref(), Some("old"));
        }

        // The issuer rotates the old key out; the broker's key set catches up.
        write_jwks(&jwks, &[("new", &new)]);
        assert!(
            authn.issuers[ISS]
                .refresh_for_unknown_kid(Instant::now())
                .await
        );
        let err = authn.authenticate_jwt(&token).await.unwrap_err();
        assert!(matches!(err, AuthnError::UnknownKid { .. }), "{err}");
        // And tokens under the new key verify.
        let fresh = es256_jwt("new", &new, clock.unix_secs());
        authn.authenticate_jwt(&fresh).await.unwrap();
    }
}
