//! Trusted issuers' signing keys: from a local JWKS file, a `jwks_uri`, or OIDC discovery.
//!
//! Key sets are cached with moka; concurrent loads of one issuer share a single fetch.
//! An unknown `kid` forces a refresh at most once per [`MIN_REFRESH_INTERVAL`] per issuer,
//! so a flood of tokens with random `kid`s cannot turn the broker into a fetch amplifier;
//! lookups that arrive while that refresh runs wait for it and then see its result. A
//! failed refresh keeps the last good key set; an issuer that has never loaded is retried
//! at most once per [`MIN_REFRESH_INTERVAL`] too (the last error is answered meanwhile).
//! OIDC discovery requires the document's `issuer` to be the configured issuer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::future::Cache;
use serde::Deserialize;

use super::AuthnError;
use super::jws::{JwsAlgorithm, KeySet};
use crate::config::{JwksSource, TrustedIssuer};

/// Least time between two forced (unknown-`kid`) refreshes of one issuer's keys.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// How long a fetched key set is used before a background-free refresh on next use.
pub const KEY_SET_TTL: Duration = Duration::from_secs(300);
/// Largest JWKS or discovery document accepted, bytes.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Timeout of one outbound fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One trusted issuer and its keys.
pub struct IssuerKeys {
    /// The validated config entry.
    pub config: TrustedIssuer,
    /// The parsed allow-list.
    pub algorithms: Vec<JwsAlgorithm>,
    cache: Cache<(), Arc<KeySet>>,
    last_good: Mutex<Option<Arc<KeySet>>>,
    /// When a load failed with no good key set to fall back on, and why.
    last_failure: Mutex<Option<(Instant, AuthnError)>>,
    /// When the last forced refresh started. An async lock held across that refresh, so
    /// concurrent unknown-`kid` lookups wait for it rather than read the old set.
    last_forced: tokio::sync::Mutex<Option<Instant>>,
    min_refresh_interval: Duration,
    http: Option<reqwest::Client>,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKeys")
            .field("issuer", &self.config.issuer)
            .finish()
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl IssuerKeys {
    /// Builds the key source of `config` (no fetch yet).
    pub fn new(config: TrustedIssuer) -> Result<Self, AuthnError> {
        Self::with_limits(config, MIN_REFRESH_INTERVAL, FETCH_TIMEOUT)
    }

    /// [`IssuerKeys::new`] with another refresh interval and fetch timeout (for tests).
    fn with_limits(
        config: TrustedIssuer,
        min_refresh_interval: Duration,
        fetch_timeout: Duration,
    ) -> Result<Self, AuthnError> {
        let algorithms = config
            .algorithms
            .iter()
            .filter_map(|a| JwsAlgorithm::parse(a))
            .collect();
        let http = match &config.jwks {
            JwksSource::File(_) => None,
            _ => Some(client_with_timeout(
                config.ca_file.as_deref(),
                fetch_timeout,
            )?),
        };
        Ok(Self {
            config,
            algorithms,
            cache: Cache::builder()
                .max_capacity(1)
                .time_to_live(KEY_SET_TTL)
                .build(),
            last_good: Mutex::new(None),
            last_failure: Mutex::new(None),
            last_forced: tokio::sync::Mutex::new(None),
            min_refresh_interval,
            http,
        })
    }

    /// The current key set (loading it if needed; loads are single-flight).
    pub async fn keys(&self) -> Result<Arc<KeySet>, AuthnError> {
        self.cache
            .try_get_with((), self.load())
            .await
            .map_err(Arc::unwrap_or_clone)
    }

    /// Forces a reload after an unknown `kid`, unless one happened within
    /// [`MIN_REFRESH_INTERVAL`]. Returns whether a refresh ran (and yielded keys, possibly
    /// the last good ones). A call made while another caller's refresh runs waits for it.
    pub async fn refresh_for_unknown_kid(&self, now: Instant) -> bool {
        let mut last = self.last_forced.lock().await;
        if last.is_some_and(|t| now.saturating_duration_since(t) < self.min_refresh_interval) {
            return false;
        }
        *last = Some(now);
        self.cache.invalidate(&()).await;
        self.keys().await.is_ok()
    }

    async fn load(&self) -> Result<Arc<KeySet>, AuthnError> {
        {
            let failure = self.last_failure.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, e)) = &*failure
                && at.elapsed() < self.min_refresh_interval
            {
                return Err(e.clone());
            }
        }
        match self.fetch().await {
            Ok(set) => {
                let set = Arc::new(set);
                *self.last_good.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&set));
                *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(set)
            }
            Err(e) => {
                let last = self
                    .last_good
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                match last {
                    Some(set) => {
                        tracing::warn!(issuer = %self.config.issuer, error = %e, "key refresh failed; keeping the last good key set");
                        Ok(set)
                    }
                    None => {
                        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some((Instant::now(), e.clone()));
                        Err(e)
                    }
                }
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, AuthnError> {
        let bytes = match &self.config.jwks {
            JwksSource::File(path) => read_file(path).await?,
            JwksSource::Uri(uri) => self.get(uri).await?,
            JwksSource::Discovery => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.config.issuer.trim_end_matches('/')
                );
                let doc: Discovery =
                    serde_json::from_slice(&self.get(&url).await?).map_err(|e| {
                        AuthnError::KeysUnavailable(format!("discovery document {url}: {e}"))
                    })?;
                if doc.issuer != self.config.issuer {
                    return Err(AuthnError::KeysUnavailable(format!(
                        "discovery document {url} is for issuer {:?}, not {:?}",
                        doc.issuer, self.config.issuer
                    )));
                }
                self.get(&doc.jwks_uri).await?
            }
        };
        let (set, skipped) = KeySet::from_jwks_json(&bytes).map_err(|e| {
            AuthnError::KeysUnavailable(format!("issuer {}: {e}", self.config.issuer))
        })?;
        tracing::info!(issuer = %self.config.issuer, keys = set.keys.len(), skipped, "loaded issuer keys");
        Ok(set)
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, AuthnError> {
        let unavailable = |m: String| AuthnError::KeysUnavailable(format!("{url}: {m}"));
        let Some(http) = &self.http else {
            return Err(unavailable("no HTTP client".into()));
        };
        let mut resp = http
            .get(url)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!("HTTP {}", resp.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| unavailable(e.to_string()))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(unavailable(format!(
                    "document larger than {MAX_DOCUMENT_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

async fn read_file(path: &Path) -> Result<Vec<u8>, AuthnError> {
    tokio::fs::read(path)
        .await
        .map_err(|e| AuthnError::KeysUnavailable(format!("JWKS file {}: {e}", path.display())))
}

/// The outbound HTTP client: rustls on ring, trusting `ca_file` if given.
pub fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client, AuthnError> {
    client_with_timeout(ca_file, FETCH_TIMEOUT)
}

fn client_with_timeout(
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<reqwest::Client, AuthnError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca_file {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .map_err(|e| AuthnError::KeysUnavailable(format!("CA file {}: {e}", ca.display())))?
            .collect::<Result<_, _>>()
            .map_err(|e| AuthnError::KeysUnavailable(format!("CA file {}: {e}", ca.display())))?;
        for c in certs {
            roots.add(c).map_err(|e| {
                AuthnError::KeysUnavailable(format!("CA file {}: {e}", ca.display()))
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthnError::KeysUnavailable(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .map_err(|e| AuthnError::KeysUnavailable(e.to_string()))
}

/// Path of a JWKS file source, for diagnostics.
pub fn source_label(src: &JwksSource) -> String {
    match src {
        JwksSource::File(p) => PathBuf::from(p).display().to_string(),
        JwksSource::Uri(u) => u.clone(),
        JwksSource::Discovery => "OIDC discovery".into(),
    }
}
