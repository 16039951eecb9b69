//! [`TokenSource`]: a token for one task, always fresh, never a long-lived secret.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::sync::Notify;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::jose;
use crate::types::{
    ErrorResponse, GRANT_TYPE_CLIENT_CREDENTIALS, GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT,
    TokenResponse,
};

/// Closure that returns a workload JWT.
pub type JwtProvider = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// How the workload proves who it is to the broker.
#[derive(Clone)]
pub enum Credential {
    /// A workload JWT in a file the platform rotates (Kubernetes projected token). Re-read
    /// on every fetch, never used past its own `exp`.
    JwtFile(PathBuf),
    /// A client certificate and key (mTLS, `client_credentials`). Re-read when they change.
    ClientCert {
        /// Certificate chain (PEM).
        cert: PathBuf,
        /// Private key (PEM).
        key: PathBuf,
    },
    /// A caller-supplied function returning a workload JWT.
    Provider(JwtProvider),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::JwtFile(p) => f.debug_tuple("JwtFile").field(p).finish(),
            Credential::ClientCert { cert, key } => f
                .debug_struct("ClientCert")
                .field("cert", cert)
                .field("key", key)
                .finish(),
            Credential::Provider(_) => f.write_str("Provider(..)"),
        }
    }
}

impl Credential {
    /// A JWT file credential.
    pub fn jwt_file(path: impl Into<PathBuf>) -> Self {
        Credential::JwtFile(path.into())
    }
    /// A client certificate credential.
    pub fn client_cert(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Credential::ClientCert {
            cert: cert.into(),
            key: key.into(),
        }
    }
    /// A closure credential.
    pub fn provider(f: impl Fn() -> Result<String, String> + Send + Sync + 'static) -> Self {
        Credential::Provider(Arc::new(f))
    }

    pub(crate) fn files(&self) -> Vec<&Path> {
        match self {
            Credential::ClientCert { cert, key } => vec![cert.as_path(), key.as_path()],
            _ => Vec::new(),
        }
    }

    /// The JWT to present (file or provider); `None` for certificates.
    pub(crate) fn jwt(&self) -> Result<Option<Zeroizing<String>>, Error> {
        let jwt = match self {
            Credential::ClientCert { .. } => return Ok(None),
            Credential::JwtFile(path) => Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| Error::CredentialUnreadable {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?
                    .trim()
                    .to_owned(),
            ),
            Credential::Provider(f) => {
                Zeroizing::new(f().map_err(|reason| Error::CredentialUnreadable {
                    path: PathBuf::from("<provider>"),
                    reason,
                })?)
            }
        };
        if let Some(exp) = jwt_exp(&jwt)
            && exp <= unix_now()
        {
            return Err(Error::CredentialExpired { exp });
        }
        Ok(Some(jwt))
    }
}

fn jwt_exp(jwt: &str) -> Option<u64> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()
}

pub(crate) fn unix_now() -> u64 {
    #[allow(clippy::disallowed_methods)] // the SDK runs in other processes; wall time is right here
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Modification times of credential files, to notice rotation.
type FileStamps = Vec<(PathBuf, Option<SystemTime>)>;

/// An access token. `Debug` never prints it.
#[derive(Clone)]
pub struct Token {
    secret: Arc<Zeroizing<String>>,
    expires_at: u64,
    scope: String,
    dpop: Option<Arc<crate::dpop::DpopKey>>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .finish()
    }
}

impl Token {
    /// The DPoP key the token is bound to, if the source asked for DPoP tokens.
    pub(crate) fn dpop_key(&self) -> Option<&Arc<crate::dpop::DpopKey>> {
        self.dpop.as_ref()
    }
    /// The bearer token. Send it; never log it.
    pub fn expose(&self) -> &str {
        &self.secret
    }
    /// Expiry, unix seconds.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }
    /// Granted scopes.
    pub fn scope(&self) -> &str {
        &self.scope
    }
    fn valid(&self) -> bool {
        unix_now() < self.expires_at
    }
}

/// Builds a [`TokenSource`].
#[derive(Debug)]
pub struct TokenSourceBuilder {
    url: String,
    task: String,
    audience: Option<String>,
    scopes: Vec<String>,
    ttl: Option<u64>,
    credential: Option<Credential>,
    acting_for: Option<Credential>,
    dpop: Option<Arc<crate::dpop::DpopKey>>,
    ca: Option<PathBuf>,
    renew_fraction: f64,
    jitter: f64,
    timeout: Duration,
    max_backoff: Duration,
}

impl TokenSourceBuilder {
    /// The workload credential (required).
    pub fn credential(mut self, c: Credential) -> Self {
        self.credential = Some(c);
        self
    }
    /// Act for another identity (RFC 8693 delegation): `subject` supplies the workload JWT
    /// of the identity acted for (the token's `sub`), and this source's own credential,
    /// which must then be a workload JWT, is sent as the `actor_token` (the token's
    /// `act`). The broker's policy decides who may act for whom (`[[task.delegation]]`).
    pub fn acting_for(mut self, subject: Credential) -> Self {
        self.acting_for = Some(subject);
        self
    }
    /// Ask for DPoP-bound tokens (RFC 9449): every token request carries a proof made
    /// with `key`, the tokens are bound to it (`cnf.jkt`), and [`crate::AuthorizedClient`]
    /// sends them as `Authorization: DPoP` with a fresh proof per request.
    pub fn dpop(mut self, key: Arc<crate::dpop::DpopKey>) -> Self {
        self.dpop = Some(key);
        self
    }
    /// The CA bundle (PEM) of the broker's TLS certificate.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(path.into());
        self
    }
    /// Narrow the audience.
    pub fn audience(mut self, a: impl Into<String>) -> Self {
        self.audience = Some(a.into());
        self
    }
    /// Ask for a scope (repeatable); default: the task's scopes.
    pub fn scope(mut self, s: impl Into<String>) -> Self {
        self.scopes.push(s.into());
        self
    }
    /// Ask for a shorter lifetime, seconds.
    pub fn ttl(mut self, secs: u64) -> Self {
        self.ttl = Some(secs);
        self
    }
    /// Renew after this fraction of the lifetime (default 0.75), ± the jitter fraction
    /// (default 0.1) so a fleet does not renew in lock-step.
    pub fn renew_at(mut self, fraction: f64, jitter: f64) -> Self {
        self.renew_fraction = fraction.clamp(0.1, 0.95);
        self.jitter = jitter.clamp(0.0, 0.5);
        self
    }
    /// Timeout of one broker request (default 10 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// Longest wait between renewal retries (default 30 s).
    pub fn max_backoff(mut self, t: Duration) -> Self {
        self.max_backoff = t;
        self
    }

    /// Builds the source and starts its renewal task. Needs a Tokio runtime.
    pub fn build(self) -> Result<TokenSource, Error> {
        let credential = self
            .credential
            .clone()
            .ok_or_else(|| Error::Config("a credential is required".into()))?;
        if let Some(subject) = &self.acting_for
            && (matches!(subject, Credential::ClientCert { .. })
                || matches!(credential, Credential::ClientCert { .. }))
        {
            return Err(Error::Config(
                "delegation (acting_for) needs workload JWTs for both the actor (credential) and the subject".into(),
            ));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("TokenSource::build needs a Tokio runtime".into()))?;
        let inner = Arc::new(Inner {
            client: Mutex::new(None),
            state: Mutex::new(State::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
            wake: Arc::new(Notify::new()),
            broker_requests: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            credential,
            cfg: self,
        });
        runtime.spawn(renewer(Arc::downgrade(&inner)));
        Ok(TokenSource { inner })
    }
}

#[derive(Default)]
struct State {
    token: Option<Token>,
    renew_after: Option<Instant>,
    last_error: Option<Error>,
}

struct Inner {
    cfg: TokenSourceBuilder,
    credential: Credential,
    client: Mutex<Option<(reqwest::Client, FileStamps)>>,
    state: Mutex<State>,
    fetch_lock: tokio::sync::Mutex<()>,
    wake: Arc<Notify>,
    broker_requests: AtomicU64,
    renewals: AtomicU64,
    failures: AtomicU64,
}

/// Always has a valid token for one task; see the crate docs.
#[derive(Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("task", &self.inner.cfg.task)
            .finish()
    }
}

/// When to renew a token of `expires_in` seconds: after `fraction` of its lifetime moved by
/// `jitter` (a signed fraction), kept within 5 %–95 % of the lifetime (never after expiry,
/// whatever the configured fraction and jitter add up to) and at least 0.5 s.
fn renew_delay(expires_in: u64, fraction: f64, jitter: f64) -> Duration {
    let factor = (fraction + jitter).clamp(0.05, 0.95);
    let expires_in = expires_in.min(MAX_EXPIRES_IN);
    Duration::from_secs_f64((expires_in as f64 * factor).max(0.5))
}

/// Longest `expires_in` taken from a token response: the broker never issues tokens
/// longer than 24 h; a larger value (a broken or hostile server) is cut to it, never
/// overflowing the clock arithmetic.
const MAX_EXPIRES_IN: u64 = 24 * 3600;

fn jitter_unit() -> f64 {
    let mut b = [0u8; 4];
    let _ = SystemRandom::new().fill(&mut b);
    f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX)
}

impl TokenSource {
    /// Starts building a source for `task` at the broker `url`.
    pub fn builder(url: impl Into<String>, task: impl Into<String>) -> TokenSourceBuilder {
        TokenSourceBuilder {
            url: url.into(),
            task: task.into(),
            audience: None,
            scopes: Vec::new(),
            ttl: None,
            credential: None,
            acting_for: None,
            dpop: None,
            ca: None,
            renew_fraction: 0.75,
            jitter: 0.1,
            timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
        }
    }

    /// A valid token: from cache when possible; otherwise one shared broker request.
    /// Never waits on the broker while a cached token is still valid.
    pub async fn token(&self) -> Result<Token, Error> {
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        let _flight = self.inner.fetch_lock.lock().await;
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        self.fetch_and_store().await
    }

    /// A fresh token, unless another caller already replaced `stale` (used after a 401).
    pub async fn refresh(&self, stale: Option<&Token>) -> Result<Token, Error> {
        let _flight = self.inner.fetch_lock.lock().await;
        if let (Some(stale), Some(current)) = (stale, self.current())
            && current.expose() != stale.expose()
            && current.valid()
        {
            return Ok(current);
        }
        self.fetch_and_store().await
    }

    /// Broker requests made so far (for tests and metrics).
    pub fn broker_requests(&self) -> u64 {
        self.inner.broker_requests.load(Ordering::Relaxed)
    }

    /// Successful renewals and failed attempts so far.
    pub fn renewal_stats(&self) -> (u64, u64) {
        (
            self.inner.renewals.load(Ordering::Relaxed),
            self.inner.failures.load(Ordering::Relaxed),
        )
    }

    fn current(&self) -> Option<Token> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .token
            .clone()
    }

    fn cached(&self) -> Option<Token> {
        let st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let t = st.token.as_ref().filter(|t| t.valid())?.clone();
        if st.renew_after.is_some_and(|r| Instant::now() >= r) {
            self.inner.wake.notify_one();
        }
        Some(t)
    }

    async fn fetch_and_store(&self) -> Result<Token, Error> {
        match fetch(&self.inner).await {
            Ok(t) => Ok(t),
            Err(e) => {
                let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
                st.last_error = Some(e.clone());
                if let Some(t) = st.token.as_ref().filter(|t| t.valid()) {
                    return Ok(t.clone());
                }
                if st.token.is_some() && e.is_retryable() {
                    return Err(Error::TokenExpired {
                        last_error: e.to_string(),
                    });
                }
                Err(e)
            }
        }
    }
}

fn client_for(inner: &Inner) -> Result<reqwest::Client, Error> {
    let fingerprint: Vec<(PathBuf, Option<SystemTime>)> = inner
        .credential
        .files()
        .into_iter()
        .map(|p| {
            (
                p.to_path_buf(),
                std::fs::metadata(p).and_then(|m| m.modified()).ok(),
            )
        })
        .collect();
    let mut slot = inner.client.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((c, fp)) = slot.as_ref()
        && *fp == fingerprint
    {
        return Ok(c.clone());
    }
    let client_cert = match &inner.credential {
        Credential::ClientCert { cert, key } => Some((cert.as_path(), key.as_path())),
        _ => None,
    };
    let c = jose::http_client(inner.cfg.ca.as_deref(), client_cert, inner.cfg.timeout).map_err(
        |reason| Error::CredentialUnreadable {
            path: inner.cfg.ca.clone().unwrap_or_default(),
            reason,
        },
    )?;
    *slot = Some((c.clone(), fingerprint));
    Ok(c)
}

async fn fetch(inner: &Inner) -> Result<Token, Error> {
    let cfg = &inner.cfg;
    let jwt = inner.credential.jwt()?;
    let client = client_for(inner)?;
    let subject = match &cfg.acting_for {
        Some(s) => s.jwt()?,
        None => None,
    };
    let mut form: Vec<(&str, String)> = vec![("task", cfg.task.clone())];
    match (&subject, &jwt) {
        (Some(subject), Some(actor)) => {
            form.push(("grant_type", GRANT_TYPE_TOKEN_EXCHANGE.into()));
            form.push(("subject_token_type", TOKEN_TYPE_JWT.into()));
            form.push(("subject_token", subject.to_string()));
            form.push(("actor_token_type", TOKEN_TYPE_JWT.into()));
            form.push(("actor_token", actor.to_string()));
        }
        (_, Some(jwt)) => {
            form.push(("grant_type", GRANT_TYPE_TOKEN_EXCHANGE.into()));
            form.push(("subject_token_type", TOKEN_TYPE_JWT.into()));
            form.push(("subject_token", jwt.to_string()));
        }
        (_, None) => form.push(("grant_type", GRANT_TYPE_CLIENT_CREDENTIALS.into())),
    }
    if let Some(a) = &cfg.audience {
        form.push(("audience", a.clone()));
    }
    if !cfg.scopes.is_empty() {
        form.push(("scope", cfg.scopes.join(" ")));
    }
    if let Some(t) = cfg.ttl {
        form.push(("requested_ttl", t.to_string()));
    }
    let body = Zeroizing::new(
        serde_urlencoded::to_string(&form).map_err(|e| Error::Config(e.to_string()))?,
    );
    drop(form);
    inner.broker_requests.fetch_add(1, Ordering::Relaxed);
    let url = format!("{}/oauth2/token", cfg.url.trim_end_matches('/'));
    // Before the request: the broker's `exp` is its own now (at or after this) plus
    // `expires_in`, so counting from here never puts `expires_at` after the real `exp`.
    let sent_at = unix_now();
    let mut post = client.post(&url).header(
        reqwest::header::CONTENT_TYPE,
        "application/x-www-form-urlencoded",
    );
    if let Some(key) = &cfg.dpop {
        let proof = key
            .proof("POST", &url, None, None)
            .map_err(|e| Error::Config(e.to_string()))?;
        post = post.header("DPoP", proof);
    }
    let resp = post
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| Error::BrokerUnavailable {
            reason: format!("{url}: {e}"),
        });
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            inner.failures.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
    };
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let bytes = resp.bytes().await.map_err(|e| Error::BrokerUnavailable {
        reason: e.to_string(),
    })?;
    if status.is_success() {
        let tr: TokenResponse =
            serde_json::from_slice(&bytes).map_err(|e| Error::BrokerUnavailable {
                reason: format!("unexpected token response: {e}"),
            })?;
        let token = Token {
            secret: Arc::new(Zeroizing::new(tr.access_token)),
            expires_at: sent_at.saturating_add(tr.expires_in.min(MAX_EXPIRES_IN)),
            scope: tr.scope,
            // Bound to the key only if the broker says so (`token_type: DPoP`).
            dpop: cfg
                .dpop
                .clone()
                .filter(|_| tr.token_type.eq_ignore_ascii_case("DPoP")),
        };
        let renew_in = renew_delay(
            tr.expires_in,
            cfg.renew_fraction,
            (jitter_unit() * 2.0 - 1.0) * cfg.jitter,
        );
        {
            let mut st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            st.token = Some(token.clone());
            st.renew_after = Some(Instant::now() + renew_in);
            st.last_error = None;
        }
        inner.renewals.fetch_add(1, Ordering::Relaxed);
        inner.wake.notify_one();
        tracing::info!(target: "broker_client", task = %cfg.task, expires_in = tr.expires_in, renew_in_ms = renew_in.as_millis() as u64, "token obtained");
        return Ok(token);
    }
    inner.failures.fetch_add(1, Ordering::Relaxed);
    let err_body: Option<ErrorResponse> = serde_json::from_slice(&bytes).ok();
    let err = if status.as_u16() == 429 {
        Error::RateLimited {
            retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
        }
    } else if status.is_server_error() {
        Error::BrokerUnavailable {
            reason: format!(
                "HTTP {status}{}",
                err_body
                    .as_ref()
                    .and_then(|b| b.error_description.as_deref())
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ),
        }
    } else {
        Error::Denied {
            status: status.as_u16(),
            error: err_body
                .as_ref()
                .map(|b| b.error.clone())
                .unwrap_or_else(|| "unknown".into()),
            description: err_body
                .and_then(|b| b.error_description)
                .unwrap_or_default(),
        }
    };
    tracing::warn!(target: "broker_client", task = %cfg.task, error = %err, "token request failed");
    Err(err)
}

/// Background renewal: wakes at the renewal time, retries with capped exponential backoff
/// and jitter, honours `Retry-After`; stops when the source is dropped.
async fn renewer(weak: Weak<Inner>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let wait = {
            let st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            st.renew_after
                .map(|r| r.saturating_duration_since(Instant::now()))
        };
        let wake = Arc::clone(&inner.wake);
        let notified = wake.notified();
        let Some(wait) = wait else {
            // Nothing fetched yet: sleep until the first fetch wakes us.
            drop(inner);
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            continue;
        };
        if !wait.is_zero() {
            drop(inner);
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        let source = TokenSource {
            inner: Arc::clone(&inner),
        };
        let result = {
            let _flight = inner.fetch_lock.lock().await;
            let due = inner
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .renew_after
                .is_some_and(|r| Instant::now() >= r);
            if due { Some(fetch(&inner).await) } else { None }
        };
        drop(source);
        match result {
            None | Some(Ok(_)) => backoff = Duration::from_millis(200),
            Some(Err(e)) => {
                let ttl_left = inner
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .token
                    .as_ref()
                    .map(|t| t.expires_at.saturating_sub(unix_now()))
                    .unwrap_or(0);
                tracing::warn!(target: "broker_client", error = %e, time_to_expiry_s = ttl_left, "renewal failed; retrying");
                inner
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last_error = Some(e.clone());
                let mut wait = backoff.mul_f64(0.5 + jitter_unit());
                if let Error::RateLimited { retry_after } = &e {
                    wait = wait.max(*retry_after);
                }
                if matches!(e, Error::Denied { .. }) {
                    wait = wait.max(inner.cfg.max_backoff);
                }
                backoff = (backoff * 2).min(inner.cfg.max_backoff);
                drop(inner);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_before_expiry_whatever_fraction_and_jitter_add_up_to() {
        // The largest settings the builder allows: 0.95 + 0.5 jitter.
        assert_eq!(renew_delay(600, 0.95, 0.5), Duration::from_secs(570));
        assert_eq!(renew_delay(600, 0.1, -0.5), Duration::from_secs(30));
        assert_eq!(renew_delay(600, 0.75, 0.1), Duration::from_secs(510));
        assert_eq!(renew_delay(600, 0.75, -0.1), Duration::from_secs(390));
        // Very short lifetimes still wait a moment.
        assert_eq!(renew_delay(0, 0.75, 0.0), Duration::from_millis(500));
        for draw in [-0.5, -0.25, 0.0, 0.25, 0.5] {
            assert!(renew_delay(60, 0.95, draw) < Duration::from_secs(60));
        }
    }

    /// Found by the `sdk_token_response` fuzz target: `expires_in` of u64::MAX or 1.8e19
    /// overflowed the renewal arithmetic (a panic in the caller's task); it is cut to 24 h.
    #[test]
    fn a_huge_expires_in_is_cut_not_a_panic() {
        for e in [u64::MAX, 18_000_000_000_000_000_000] {
            let d = renew_delay(e, 0.75, 0.1);
            assert!(d <= Duration::from_secs(MAX_EXPIRES_IN), "{d:?}");
            let _ = std::time::Instant::now() + d;
        }
    }
}
