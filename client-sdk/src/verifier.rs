//! [`Verifier`]: offline verification of broker tokens on the resource side.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use crate::error::{Error, VerifyError};
use crate::jose::{self, PublicKey};
use crate::source::{Credential, unix_now};
use crate::types::{AccessTokenClaims, ErrorResponse, RevocationFeed, RevocationFeedRule};

/// How the verifier authenticates to read the revocation feed (a registry identity with
/// `may_introspect = true`).
pub type FeedCredential = Credential;

/// Least time between two JWKS refetches triggered by unknown `kid`s.
const MIN_JWKS_REFRESH: Duration = Duration::from_secs(5);

/// Default [`VerifierBuilder::jwks_max_age`].
pub const DEFAULT_JWKS_MAX_AGE: Duration = Duration::from_secs(300);

/// Default [`VerifierBuilder::verified_token_cache`]: tokens whose signature a verifier
/// remembers (a few MiB at most).
pub const DEFAULT_VERIFIED_TOKEN_CACHE: u64 = 10_000;

/// Longest a remembered signature check is reused (tokens live minutes; this only bounds
/// how long an entry can hold memory).
const VERIFIED_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Builds a [`Verifier`].
#[derive(Debug)]
pub struct VerifierBuilder {
    url: String,
    issuer: Option<String>,
    audience: String,
    ca: Option<PathBuf>,
    leeway: u64,
    scopes: Vec<String>,
    feed: Option<(FeedCredential, Duration)>,
    timeout: Duration,
    jwks_max_age: Duration,
    dpop_origin: Option<String>,
    dpop_proof_max_age: u64,
    verified_token_cache: u64,
}

impl VerifierBuilder {
    /// This resource's origin as clients address it (`https://ledger.example.org`), for the
    /// `htu` of DPoP proofs checked by the axum extractor (default: `http://` and the
    /// request's `Host`).
    pub fn dpop_origin(mut self, origin: impl Into<String>) -> Self {
        self.dpop_origin = Some(origin.into());
        self
    }
    /// How far a DPoP proof's `iat` may be from this resource's clock, either way
    /// (default [`crate::dpop::DEFAULT_PROOF_MAX_AGE`], 60 s; whole seconds). A proof is
    /// remembered for this long, so that it is refused if sent again; a wider window
    /// tolerates clients with worse clocks and keeps more proofs in memory (at most
    /// 100,000, the oldest forgotten first).
    pub fn dpop_proof_max_age(mut self, age: Duration) -> Self {
        self.dpop_proof_max_age = age.as_secs();
        self
    }
    /// The expected `iss` (default: the broker URL).
    pub fn issuer(mut self, iss: impl Into<String>) -> Self {
        self.issuer = Some(iss.into());
        self
    }
    /// The broker's CA bundle (PEM).
    pub fn ca_file(mut self, p: impl Into<PathBuf>) -> Self {
        self.ca = Some(p.into());
        self
    }
    /// Clock-skew leeway for `exp`/`nbf`, seconds (default 5).
    pub fn leeway(mut self, secs: u64) -> Self {
        self.leeway = secs;
        self
    }
    /// A scope every accepted token must carry (repeatable).
    pub fn require_scope(mut self, s: impl Into<String>) -> Self {
        self.scopes.push(s.into());
        self
    }
    /// How long a fetched JWKS is trusted before the next verification refetches it
    /// (default [`DEFAULT_JWKS_MAX_AGE`], 5 minutes). A key the broker stops publishing
    /// (retired, or withdrawn after a compromise) stops verifying within this time even if
    /// no token with a new `kid` ever arrives. If the refetch fails, the cached keys stay
    /// in use and a warning is logged (at most one attempt per 5 s).
    pub fn jwks_max_age(mut self, age: Duration) -> Self {
        self.jwks_max_age = age;
        self
    }
    /// How many tokens whose signature was checked the verifier remembers, by SHA-256 of
    /// the whole token (default [`DEFAULT_VERIFIED_TOKEN_CACHE`]; 0 turns it off).
    ///
    /// A client presents the same token on every request until it renews it, and the
    /// signature check is nearly all of a verification's cost. For a token seen before,
    /// only the parse and the signature check are skipped, and only while the JWKS still
    /// holds the same public key under its `kid`: a key that leaves the JWKS (retired,
    /// withdrawn after a compromise) or changes stops every token it verified at the next
    /// call. Everything else is checked on every call: `iss`, `aud`, `exp`, `nbf`,
    /// scopes, the certificate or DPoP binding and revocation. Refused tokens are never
    /// remembered.
    pub fn verified_token_cache(mut self, capacity: u64) -> Self {
        self.verified_token_cache = capacity;
        self
    }
    /// Poll the revocation feed every `every` with `credential`.
    pub fn revocation_feed(mut self, credential: FeedCredential, every: Duration) -> Self {
        self.feed = Some((credential, every));
        self
    }

    /// Builds the verifier (and starts the feed poller when configured; needs Tokio then).
    pub fn build(self) -> Result<Verifier, Error> {
        let http = jose::http_client(self.ca.as_deref(), None, self.timeout)
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        let feed_http = match &self.feed {
            Some((Credential::ClientCert { cert, key }, _)) => Some(
                jose::http_client(self.ca.as_deref(), Some((cert, key)), self.timeout)
                    .map_err(|e| Error::Config(format!("feed client: {e}")))?,
            ),
            Some(_) => Some(http.clone()),
            None => None,
        };
        let inner = Arc::new(VInner {
            keys: RwLock::new(Arc::new(HashMap::new())),
            last_fetch: Mutex::new(None),
            fetched_at: Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
            revoked: RwLock::new(Revoked::default()),
            http,
            feed_http,
            dpop_replay: crate::dpop::ReplayGuard::new(DPOP_REPLAY_CAPACITY),
            verified: (self.verified_token_cache > 0).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(self.verified_token_cache)
                    .time_to_live(VERIFIED_TOKEN_TTL)
                    .build()
            }),
            #[cfg(test)]
            signature_checks: std::sync::atomic::AtomicU64::new(0),
            cfg: self,
        });
        if let Some((_, every)) = &inner.cfg.feed {
            let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                Error::Config("the revocation feed poller needs a Tokio runtime".into())
            })?;
            runtime.spawn(poll_feed(Arc::downgrade(&inner), *every));
        }
        Ok(Verifier { inner })
    }
}

#[derive(Debug, Default)]
struct Revoked {
    cursor: u64,
    jtis: HashMap<String, u64>,
    rules: Vec<HeldRule>,
}

/// A revocation rule the verifier holds, until every token it covers has expired.
#[derive(Debug, Clone)]
struct HeldRule {
    rule: RevocationFeedRule,
    until: u64,
}

impl HeldRule {
    fn covers(&self, c: &AccessTokenClaims, kid: &str) -> bool {
        let rule = &self.rule;
        // A revoked signing key: every token it signed, whatever its `iat` (the key may
        // have signed until the revocation was installed, after the rule's cut-off).
        if rule.by == "key" {
            return rule.kid.as_deref() == Some(kid);
        }
        if c.iat > rule.issued_before {
            return false;
        }
        match rule.by.as_str() {
            "identity" => rule.identity.as_deref() == Some(c.sub.as_str()),
            "task" => {
                rule.task.as_deref() == Some(c.task.as_str())
                    && rule.identity.as_ref().is_none_or(|i| *i == c.sub)
            }
            "grant" => rule.grant.is_some() && rule.grant == c.bg,
            // Owner rules list the owner's identities when the broker knows them; with no
            // list the verifier cannot tell, and fails closed.
            "owner" => rule
                .identities
                .as_ref()
                .is_none_or(|ids| ids.is_empty() || ids.contains(&c.sub)),
            // A rule kind this SDK does not know: fail closed.
            _ => true,
        }
    }
}

struct VInner {
    cfg: VerifierBuilder,
    keys: RwLock<Arc<HashMap<String, PublicKey>>>,
    /// The last JWKS fetch attempt (for the rate limit).
    last_fetch: Mutex<Option<Instant>>,
    /// The last successful JWKS fetch (for the max age).
    fetched_at: Mutex<Option<Instant>>,
    fetch_lock: tokio::sync::Mutex<()>,
    revoked: RwLock<Revoked>,
    http: reqwest::Client,
    feed_http: Option<reqwest::Client>,
    /// DPoP proofs seen within their `iat` window.
    dpop_replay: crate::dpop::ReplayGuard,
    /// Tokens whose signature verified, by SHA-256 of the token (`None`: turned off).
    verified: Option<moka::sync::Cache<[u8; 32], Arc<SignatureChecked>>>,
    /// Signature checks made (for the tests of the cache).
    #[cfg(test)]
    signature_checks: std::sync::atomic::AtomicU64,
}

/// SHA-256 of a token: its key in the verified-token cache.
fn sha256(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A token whose signature verified: the key that verified it and what it says.
struct SignatureChecked {
    kid: String,
    key: PublicKey,
    claims: AccessTokenClaims,
}

/// Proofs a verifier remembers at once (the `iat` window's worth of requests).
const DPOP_REPLAY_CAPACITY: usize = 100_000;

/// A DPoP proof that came with a request (RFC 9449 §7).
#[derive(Debug, Clone, Copy)]
pub struct DpopRequest<'a> {
    /// The `DPoP` header.
    pub proof: &'a str,
    /// The request's method.
    pub method: &'a str,
    /// The request's URL as the client addressed it.
    pub url: &'a str,
}

/// Verifies broker tokens offline; cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<VInner>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("audience", &self.inner.cfg.audience)
            .finish()
    }
}

impl Verifier {
    /// The origin (`https://host[:port]`) DPoP proofs of this resource must name in
    /// `htu`, if configured.
    pub fn dpop_origin(&self) -> Option<&str> {
        self.inner.cfg.dpop_origin.as_deref()
    }

    /// Starts building a verifier for tokens of the broker at `url` meant for `audience`.
    pub fn builder(url: impl Into<String>, audience: impl Into<String>) -> VerifierBuilder {
        VerifierBuilder {
            dpop_origin: None,
            url: url.into(),
            issuer: None,
            audience: audience.into(),
            ca: None,
            leeway: 5,
            scopes: Vec::new(),
            feed: None,
            timeout: Duration::from_secs(10),
            jwks_max_age: DEFAULT_JWKS_MAX_AGE,
            dpop_proof_max_age: crate::dpop::DEFAULT_PROOF_MAX_AGE,
            verified_token_cache: DEFAULT_VERIFIED_TOKEN_CACHE,
        }
    }

    /// Verifies `token`; `client_cert_der` is the caller's TLS client certificate, required
    /// when the token is certificate-bound.
    pub async fn verify(
        &self,
        token: &str,
        client_cert_der: Option<&[u8]>,
    ) -> Result<AccessTokenClaims, VerifyError> {
        self.verify_with(token, client_cert_der, None).await
    }

    /// Verifies a DPoP-bound `token` presented with `Authorization: DPoP` and its proof
    /// (RFC 9449 §7): the proof's signature, `htm`, `htu`, `iat`, `ath` (this token), that
    /// its key is the token's `cnf.jkt`, and that it was not seen before.
    pub async fn verify_dpop(
        &self,
        token: &str,
        dpop: DpopRequest<'_>,
        client_cert_der: Option<&[u8]>,
    ) -> Result<AccessTokenClaims, VerifyError> {
        self.verify_with(token, client_cert_der, Some(dpop)).await
    }

    /// Checks the token's DPoP binding against `dpop`.
    fn check_dpop(
        &self,
        token: &str,
        claims: &AccessTokenClaims,
        dpop: Option<DpopRequest<'_>>,
    ) -> Result<(), VerifyError> {
        use crate::dpop::{DpopError, ProofCheck, verify_proof};
        let max_age = self.inner.cfg.dpop_proof_max_age;
        let jkt = claims.cnf.as_ref().and_then(|c| c.jkt.as_deref());
        match (jkt, dpop) {
            (None, None) => Ok(()),
            (Some(_), None) => Err(VerifyError::DpopRequired),
            // `Authorization: DPoP` with a token that is not DPoP-bound.
            (None, Some(_)) => Err(VerifyError::Dpop(DpopError::WrongKey)),
            (Some(jkt), Some(d)) => {
                let now = unix_now();
                let proof = verify_proof(
                    d.proof,
                    &ProofCheck {
                        method: d.method,
                        urls: &[d.url],
                        now,
                        max_age,
                        access_token: Some(token),
                        nonce: None,
                    },
                )
                .map_err(VerifyError::Dpop)?;
                if proof.jkt != jkt {
                    return Err(VerifyError::Dpop(DpopError::WrongKey));
                }
                self.inner
                    .dpop_replay
                    .first_use(&proof, proof.iat.saturating_add(max_age), now)
                    .map_err(VerifyError::Dpop)
            }
        }
    }

    async fn verify_with(
        &self,
        token: &str,
        client_cert_der: Option<&[u8]>,
        dpop: Option<DpopRequest<'_>>,
    ) -> Result<AccessTokenClaims, VerifyError> {
        let checked = self.signature_checked(token).await?;
        let (kid, claims) = (&checked.kid, &checked.claims);
        let c = &self.inner.cfg;
        let issuer = c.issuer.as_deref().unwrap_or(c.url.as_str());
        if claims.iss != issuer {
            return Err(VerifyError::WrongIssuer(claims.iss.clone()));
        }
        if claims.aud != c.audience {
            return Err(VerifyError::WrongAudience(claims.aud.clone()));
        }
        let now = unix_now();
        if now >= claims.exp.saturating_add(c.leeway) {
            return Err(VerifyError::Expired);
        }
        if claims.nbf > now.saturating_add(c.leeway) {
            return Err(VerifyError::NotYetValid);
        }
        for s in &c.scopes {
            if !claims.scope.split(' ').any(|x| x == s) {
                return Err(VerifyError::MissingScope(s.clone()));
            }
        }
        if let Some(cnf) = &claims.cnf
            && !cnf.x5t_s256.is_empty()
        {
            match client_cert_der {
                Some(der) if jose::thumbprint(der) == cnf.x5t_s256 => {}
                _ => return Err(VerifyError::CertificateMismatch),
            }
        }
        if self.is_revoked(claims, kid) {
            return Err(VerifyError::Revoked);
        }
        self.check_dpop(token, claims, dpop)?;
        Ok(checked.claims.clone())
    }

    /// The token's signature checked against the JWKS: remembered from an earlier call
    /// while the same key is still published under its `kid`, else checked now (and
    /// remembered if it verifies).
    async fn signature_checked(&self, token: &str) -> Result<Arc<SignatureChecked>, VerifyError> {
        let remembered = self
            .inner
            .verified
            .as_ref()
            .map(|cache| (cache, sha256(token)));
        if let Some((cache, digest)) = &remembered
            && let Some(hit) = cache.get(digest)
        {
            self.refresh_keys_past_max_age().await;
            if self.key(&hit.kid).as_ref() == Some(&hit.key) {
                return Ok(hit);
            }
            // The key left the JWKS or changed: check again, against what is published.
            cache.invalidate(digest);
        }
        // A malformed token is refused before any network wait.
        let (kid, alg, msg, sig, claims) = jose::split(token)?;
        self.refresh_keys_past_max_age().await;
        let key = match self.key(&kid) {
            Some(k) => k,
            None => {
                self.refetch_keys(false).await?;
                self.key(&kid)
                    .ok_or_else(|| VerifyError::UnknownKey(kid.clone()))?
            }
        };
        #[cfg(test)]
        self.inner
            .signature_checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        jose::verify(&key, &alg, msg, &sig)?;
        let checked = Arc::new(SignatureChecked { kid, key, claims });
        if let Some((cache, digest)) = remembered {
            cache.insert(digest, Arc::clone(&checked));
        }
        Ok(checked)
    }

    /// Refetches the JWKS if the cached copy is older than the max age; on failure the
    /// cached keys stay in use (logged).
    async fn refresh_keys_past_max_age(&self) {
        if self.keys_expired()
            && let Err(e) = self.refetch_keys(false).await
        {
            tracing::warn!(
                target: "broker_client",
                error = %e,
                "broker JWKS past its max age and could not be refetched; using the cached keys"
            );
        }
    }

    /// True when the cached JWKS is older than the max age.
    fn keys_expired(&self) -> bool {
        self.inner
            .fetched_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t.elapsed() >= self.inner.cfg.jwks_max_age)
    }

    fn key(&self, kid: &str) -> Option<PublicKey> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kid)
            .cloned()
    }

    /// Fetches the JWKS now (rate-limited unless `force`).
    pub async fn refetch_keys(&self, force: bool) -> Result<(), VerifyError> {
        let _g = self.inner.fetch_lock.lock().await;
        {
            let last = self
                .inner
                .last_fetch
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !force && last.is_some_and(|t| t.elapsed() < MIN_JWKS_REFRESH) {
                return Ok(());
            }
        }
        *self
            .inner
            .last_fetch
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let url = format!(
            "{}/.well-known/jwks.json",
            self.inner.cfg.url.trim_end_matches('/')
        );
        let resp = self
            .inner
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| VerifyError::KeysUnavailable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(VerifyError::KeysUnavailable(format!(
                "{url}: HTTP {}",
                resp.status()
            )));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| VerifyError::KeysUnavailable(e.to_string()))?;
        let keys = jose::parse_jwks(&bytes).map_err(VerifyError::KeysUnavailable)?;
        tracing::debug!(target: "broker_client", keys = keys.len(), "fetched broker JWKS");
        *self.inner.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        *self
            .inner
            .fetched_at
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        Ok(())
    }

    fn is_revoked(&self, c: &AccessTokenClaims, kid: &str) -> bool {
        let r = self.inner.revoked.read().unwrap_or_else(|e| e.into_inner());
        r.jtis.contains_key(&c.jti) || r.rules.iter().any(|rule| rule.covers(c, kid))
    }

    /// Polls the revocation feed once now (the background poller does this periodically).
    pub async fn sync_revocations(&self) -> Result<(), Error> {
        sync_feed(&self.inner).await
    }
}

async fn sync_feed(inner: &VInner) -> Result<(), Error> {
    let since = inner
        .revoked
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .cursor;
    let mut page = feed_page(inner, since).await?;
    if page.cursor < since {
        // The broker's feed started again (its revocation state was reset, or another
        // instance took over the URL): its cursors are no longer comparable to ours, so
        // read everything it has. What we already know stays revoked until its `until`.
        tracing::warn!(target: "broker_client", since, cursor = page.cursor, "revocation feed cursor went back; resyncing from the start");
        page = feed_page(inner, 0).await?;
    }
    let now = unix_now();
    let mut r = inner.revoked.write().unwrap_or_else(|e| e.into_inner());
    for e in page.entries {
        if let Some(j) = e.jti {
            r.jtis.insert(j, e.until);
        }
        if let Some(rule) = e.rule
            && !r
                .rules
                .iter()
                .any(|x| x.rule.id == rule.id && x.rule.issued_before == rule.issued_before)
        {
            r.rules.push(HeldRule {
                rule,
                until: e.until,
            });
        }
    }
    r.cursor = if page.cursor < since {
        page.cursor
    } else {
        r.cursor.max(page.cursor)
    };
    r.jtis.retain(|_, until| *until > now);
    r.rules.retain(|x| x.until > now);
    Ok(())
}

/// One `GET /v1/revocations?since=`; errors typed like the token endpoint's.
async fn feed_page(inner: &VInner, since: u64) -> Result<RevocationFeed, Error> {
    let (Some((cred, _)), Some(http)) = (&inner.cfg.feed, &inner.feed_http) else {
        return Err(Error::Config("no revocation feed configured".into()));
    };
    let url = format!(
        "{}/v1/revocations?since={since}",
        inner.cfg.url.trim_end_matches('/')
    );
    let mut req = http.get(&url);
    if let Some(jwt) = cred.jwt()? {
        req = req.bearer_auth(jwt.as_str());
    }
    let resp = req.send().await.map_err(|e| Error::BrokerUnavailable {
        reason: format!("{url}: {e}"),
    })?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        let body: Option<ErrorResponse> = serde_json::from_str(&text).ok();
        if status.is_server_error() {
            return Err(Error::BrokerUnavailable {
                reason: format!("{url}: HTTP {status}"),
            });
        }
        return Err(Error::Denied {
            status: status.as_u16(),
            error: body
                .as_ref()
                .map(|b| b.error.clone())
                .unwrap_or_else(|| "unknown".into()),
            description: body.and_then(|b| b.error_description).unwrap_or(text),
        });
    }
    resp.json().await.map_err(|e| Error::BrokerUnavailable {
        reason: format!("{url}: unexpected feed answer: {e}"),
    })
}

async fn poll_feed(weak: Weak<VInner>, every: Duration) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if let Err(e) = sync_feed(&inner).await {
            tracing::warn!(target: "broker_client", error = %e, "revocation feed poll failed");
        }
        drop(inner);
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> AccessTokenClaims {
        serde_json::from_value(serde_json::json!({
            "iss": "https://broker.test", "sub": "payments-api", "client_id": "payments-api",
            "aud": "https://ledger.test", "scope": "ledger:read", "jti": "j1",
            "iat": 100, "nbf": 100, "exp": 400, "task": "ledger-write", "env": "prod",
        }))
        .expect("claims")
    }

    fn held(rule: serde_json::Value) -> HeldRule {
        HeldRule {
            rule: serde_json::from_value(rule).expect("a feed rule"),
            until: 1_000,
        }
    }

    #[test]
    fn rules_cover_what_they_select_and_unknown_kinds_fail_closed() {
        let c = claims();
        let cases = [
            (
                serde_json::json!({"id": "r", "by": "identity", "identity": "payments-api", "issued_before": 100}),
                true,
            ),
            (
                serde_json::json!({"id": "r", "by": "identity", "identity": "other", "issued_before": 100}),
                false,
            ),
            (
                serde_json::json!({"id": "r", "by": "identity", "identity": "payments-api", "issued_before": 99}),
                false,
            ),
            (
                serde_json::json!({"id": "r", "by": "task", "task": "ledger-write", "issued_before": 100}),
                true,
            ),
            (
                serde_json::json!({"id": "r", "by": "task", "task": "ledger-write", "identity": "other", "issued_before": 100}),
                false,
            ),
            (
                serde_json::json!({"id": "r", "by": "key", "kid": "k1", "issued_before": 100}),
                true,
            ),
            (
                serde_json::json!({"id": "r", "by": "key", "kid": "k2", "issued_before": 100}),
                false,
            ),
            // A key signs until its revocation is installed: its tokens are covered
            // whatever their `iat`.
            (
                serde_json::json!({"id": "r", "by": "key", "kid": "k1", "issued_before": 99}),
                true,
            ),
            (
                serde_json::json!({"id": "r", "by": "grant", "grant": "bg1", "issued_before": 100}),
                false,
            ),
            (
                serde_json::json!({"id": "r", "by": "owner", "owner": "team", "issued_before": 100}),
                true,
            ),
            (
                serde_json::json!({"id": "r", "by": "owner", "owner": "team", "identities": ["other"], "issued_before": 100}),
                false,
            ),
            (
                serde_json::json!({"id": "r", "by": "something-new", "issued_before": 100}),
                true,
            ),
        ];
        for (rule, covered) in cases {
            assert_eq!(held(rule.clone()).covers(&c, "k1"), covered, "{rule}");
        }
    }

    /// A broker signing key for the cache tests, and tokens it signs.
    struct TestKey(aws_lc_rs::signature::Ed25519KeyPair);

    const URL: &str = "http://127.0.0.1:1";
    const AUD: &str = "https://ledger.test";

    impl TestKey {
        fn new() -> Self {
            let pkcs8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(
                &aws_lc_rs::rand::SystemRandom::new(),
            )
            .expect("a key");
            Self(aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("a key"))
        }

        fn public(&self) -> PublicKey {
            use aws_lc_rs::signature::KeyPair;
            let jwk = crate::jwk::Jwk::ed25519(self.0.public_key().as_ref()).with_kid("k1");
            let set = serde_json::json!({ "keys": [jwk] }).to_string();
            jose::parse_jwks(set.as_bytes())
                .expect("a JWKS")
                .remove("k1")
                .expect("the key")
        }

        fn token(&self, jti: &str, exp: u64) -> String {
            self.token_with(jti, exp, serde_json::json!({}))
        }

        /// A token with `extra` claims added (`cnf`, say).
        fn token_with(&self, jti: &str, exp: u64, extra: serde_json::Value) -> String {
            use base64::Engine;
            let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
            let header = serde_json::json!({"alg": "EdDSA", "kid": "k1", "typ": "at+jwt"});
            let now = unix_now();
            let mut claims = serde_json::json!({
                "iss": URL, "sub": "payments-api", "client_id": "payments-api", "aud": AUD,
                "scope": "ledger:read", "jti": jti, "iat": now, "nbf": now, "exp": exp,
                "task": "ledger-write", "env": "prod",
            });
            if let (Some(c), serde_json::Value::Object(extra)) = (claims.as_object_mut(), extra) {
                c.extend(extra);
            }
            let input = format!(
                "{}.{}",
                b64(header.to_string().as_bytes()),
                b64(claims.to_string().as_bytes())
            );
            let sig = self.0.sign(input.as_bytes());
            format!("{input}.{}", b64(sig.as_ref()))
        }
    }

    fn verifier(key: &TestKey, leeway: u64) -> Verifier {
        let v = Verifier::builder(URL, AUD)
            .leeway(leeway)
            .build()
            .expect("a verifier");
        v.set_keys([("k1", key.public())]);
        v
    }

    impl Verifier {
        fn set_keys<'a>(&self, keys: impl IntoIterator<Item = (&'a str, PublicKey)>) {
            let keys = keys.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            *self.inner.keys.write().expect("keys") = Arc::new(keys);
            // As if just fetched: no refetch for the max age or the rate limit.
            *self.inner.fetched_at.lock().expect("fetched") = Some(Instant::now());
            *self.inner.last_fetch.lock().expect("fetched") = Some(Instant::now());
        }

        fn signature_checks(&self) -> u64 {
            self.inner
                .signature_checks
                .load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    #[tokio::test]
    async fn the_dpop_proof_window_is_configurable() {
        use crate::dpop::{DpopError, DpopKey};
        let key = TestKey::new();
        let client = DpopKey::generate_ed25519().expect("a DPoP key");
        let token = key.token_with(
            "j1",
            unix_now() + 300,
            serde_json::json!({ "cnf": { "jkt": client.thumbprint() } }),
        );
        const ENTRIES: &str = "https://ledger.test/entries";
        let made_ago = |secs: u64| {
            client
                .proof_at("GET", ENTRIES, Some(&token), None, unix_now() - secs)
                .expect("a proof")
        };
        fn request(proof: &str) -> DpopRequest<'_> {
            DpopRequest {
                proof,
                method: "GET",
                url: ENTRIES,
            }
        }
        let (recent, old, older) = (made_ago(10), made_ago(90), made_ago(150));
        // The default window, 60 s either way.
        let v = verifier(&key, 5);
        assert!(v.verify_dpop(&token, request(&recent), None).await.is_ok());
        let refused = v.verify_dpop(&token, request(&old), None).await;
        assert!(
            matches!(refused, Err(VerifyError::Dpop(DpopError::Stale))),
            "{refused:?}"
        );
        // A 120 s window takes the 90 s old proof, once, and still refuses an older one.
        let wide = Verifier::builder(URL, AUD)
            .dpop_proof_max_age(Duration::from_secs(120))
            .build()
            .expect("a verifier");
        wide.set_keys([("k1", key.public())]);
        assert!(wide.verify_dpop(&token, request(&old), None).await.is_ok());
        let again = wide.verify_dpop(&token, request(&old), None).await;
        assert!(
            matches!(again, Err(VerifyError::Dpop(DpopError::Replayed))),
            "{again:?}"
        );
        let too_old = wide.verify_dpop(&token, request(&older), None).await;
        assert!(
            matches!(too_old, Err(VerifyError::Dpop(DpopError::Stale))),
            "{too_old:?}"
        );
    }

    #[tokio::test]
    async fn a_token_seen_before_skips_only_the_signature_check() {
        let key = TestKey::new();
        let v = verifier(&key, 5);
        let token = key.token("j1", unix_now() + 300);
        let first = v.verify(&token, None).await.expect("verifies");
        assert_eq!(v.signature_checks(), 1);
        let again = v.verify(&token, None).await.expect("verifies again");
        assert_eq!(
            v.signature_checks(),
            1,
            "the second call is served from the cache"
        );
        assert_eq!((again.jti, again.exp), (first.jti, first.exp));

        // One byte of the signature changed: another token, checked and refused, and
        // never remembered.
        let (head, sig) = token.rsplit_once('.').expect("a JWS");
        let flipped = if sig.starts_with('A') { 'B' } else { 'A' };
        let forged = format!("{head}.{flipped}{}", &sig[1..]);
        assert!(matches!(
            v.verify(&forged, None).await,
            Err(VerifyError::BadSignature)
        ));
        assert!(v.verify(&forged, None).await.is_err());
        assert_eq!(
            v.signature_checks(),
            3,
            "a refused token is checked every time"
        );

        // Claims are checked on every call, cached or not: a revocation after the first
        // verification refuses the token.
        v.inner
            .revoked
            .write()
            .expect("revoked")
            .jtis
            .insert("j1".into(), u64::MAX);
        assert!(matches!(
            v.verify(&token, None).await,
            Err(VerifyError::Revoked)
        ));
        // And so is the audience and the scope of another verifier's configuration.
        let strict = Verifier::builder(URL, AUD)
            .require_scope("ledger:write")
            .build()
            .expect("a verifier");
        strict.set_keys([("k1", key.public())]);
        assert!(matches!(
            strict
                .verify(&key.token("j2", unix_now() + 300), None)
                .await,
            Err(VerifyError::MissingScope(_))
        ));
    }

    #[tokio::test]
    async fn a_remembered_token_is_checked_again_once_its_key_changes_or_leaves_the_jwks() {
        let key = TestKey::new();
        let v = verifier(&key, 5);
        let token = key.token("j1", unix_now() + 300);
        v.verify(&token, None).await.expect("verifies");

        // Another key published under the same `kid`: the token is checked against it,
        // and refused.
        let other = TestKey::new();
        v.set_keys([("k1", other.public())]);
        assert!(matches!(
            v.verify(&token, None).await,
            Err(VerifyError::BadSignature)
        ));
        assert_eq!(v.signature_checks(), 2);

        // The key is back, then withdrawn: the token is refused without it (the refetch
        // fails: nothing listens at the URL).
        v.set_keys([("k1", key.public())]);
        v.verify(&token, None)
            .await
            .expect("verifies under its key");
        v.set_keys([]);
        assert!(v.verify(&token, None).await.is_err());
    }

    #[tokio::test]
    async fn a_remembered_token_still_expires() {
        let key = TestKey::new();
        let v = verifier(&key, 0);
        let token = key.token("j1", unix_now() + 1);
        v.verify(&token, None).await.expect("verifies");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(matches!(
            v.verify(&token, None).await,
            Err(VerifyError::Expired)
        ));
        assert_eq!(
            v.signature_checks(),
            1,
            "the expiry was found on the cached claims"
        );
    }

    #[tokio::test]
    async fn a_malformed_token_is_refused_before_a_stale_jwks_is_refetched() {
        let key = TestKey::new();
        let v = verifier(&key, 5);
        let long_ago = Instant::now()
            .checked_sub(DEFAULT_JWKS_MAX_AGE + Duration::from_secs(60))
            .expect("an instant");
        *v.inner.fetched_at.lock().expect("fetched") = Some(long_ago);
        *v.inner.last_fetch.lock().expect("fetched") = Some(long_ago);
        assert!(matches!(
            v.verify("not.a-token", None).await,
            Err(VerifyError::Malformed(_))
        ));
        assert_eq!(
            *v.inner.last_fetch.lock().expect("fetched"),
            Some(long_ago),
            "no refetch was tried for a malformed token"
        );
        // A well-formed one refetches the stale JWKS first (it fails here: nothing listens;
        // the cached keys stay in use and the token verifies).
        v.verify(&key.token("j1", unix_now() + 300), None)
            .await
            .expect("verifies with the cached keys");
        assert_ne!(*v.inner.last_fetch.lock().expect("fetched"), Some(long_ago));
    }

    #[tokio::test]
    async fn with_the_cache_off_every_call_checks_the_signature() {
        let key = TestKey::new();
        let v = Verifier::builder(URL, AUD)
            .verified_token_cache(0)
            .build()
            .expect("a verifier");
        v.set_keys([("k1", key.public())]);
        let token = key.token("j1", unix_now() + 300);
        for _ in 0..3 {
            v.verify(&token, None).await.expect("verifies");
        }
        assert_eq!(v.signature_checks(), 3);
    }

    #[test]
    fn a_feed_page_without_the_broker_time_or_a_rule_id_is_refused() {
        let ok = r#"{"cursor":3,"now":50,"entries":[{"cursor":3,"rule":{"id":"r","by":"identity","identity":"a","issued_before":1},"until":9}]}"#;
        assert!(serde_json::from_str::<RevocationFeed>(ok).is_ok());
        let no_now = r#"{"cursor":3,"entries":[]}"#;
        assert!(serde_json::from_str::<RevocationFeed>(no_now).is_err());
        let no_id = r#"{"cursor":3,"now":50,"entries":[{"cursor":3,"rule":{"by":"identity","identity":"a","issued_before":1},"until":9}]}"#;
        assert!(serde_json::from_str::<RevocationFeed>(no_id).is_err());
    }
}
