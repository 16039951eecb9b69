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

/// Least time between two forced (unknown-`kid`) refreshes of one issuer's keys, and
/// between two attempts to load keys that have never loaded.
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

    /// Whether the current key set has `kid` (false if no key set can be had).
    pub async fn publishes(&self, kid: &str) -> bool {
        self.keys().await.is_ok_and(|k| k.keys.contains_key(kid))
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
        // The config checked its own URLs; a discovered `jwks_uri` is checked here.
        crate::config::key_fetch_url_allowed(url).map_err(unavailable)?;
        let mut resp = http
            .get(url)
            .send()
            .await
            .map_err(|e| unavailable(error_chain(&e)))?;
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

/// The outbound HTTP client: rustls on aws-lc-rs, trusting `ca_file` if given.
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
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthnError::KeysUnavailable(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        // At most three redirects, and none to a URL the config could not name (plain http
        // off loopback): a redirect must not downgrade where keys come from.
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() > 3 {
                attempt.error("more than 3 redirects")
            } else if let Err(e) = crate::config::key_fetch_url_allowed(attempt.url().as_str()) {
                attempt.error(format!("redirect refused: {e}"))
            } else {
                attempt.follow()
            }
        }))
        .build()
        .map_err(|e| AuthnError::KeysUnavailable(e.to_string()))
}

/// `e` and its sources, `: `-separated (reqwest's own message omits why a redirect failed).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Path of a JWKS file source, for diagnostics.
pub fn source_label(src: &JwksSource) -> String {
    match src {
        JwksSource::File(p) => PathBuf::from(p).display().to_string(),
        JwksSource::Uri(u) => u.clone(),
        JwksSource::Discovery => "OIDC discovery".into(),
    }
}

#[cfg(test)]
mod tests {
    //! Against a real HTTP issuer on 127.0.0.1 that counts the requests of each path.

    use std::collections::HashMap;
    use std::net::SocketAddr;

    use axum::extract::State;
    use axum::http::{StatusCode, Uri, header};
    use axum::response::{IntoResponse, Response};

    use super::*;

    /// A valid Ed25519 public key (`x`), shared by every test key: the tests look at kids.
    const X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    const JWKS_PATH: &str = "/jwks.json";
    const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

    fn jwks(kids: &[&str]) -> String {
        let keys: Vec<serde_json::Value> = kids
            .iter()
            .map(|k| serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": X, "kid": k}))
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    /// A JWKS with one key `kid` padded (with an ignored member) to exactly `len` bytes.
    fn jwks_of_len(kid: &str, len: usize) -> String {
        let empty = format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{X}","kid":"{kid}","pad":""}}]}}"#
        );
        let doc = empty.replace(
            r#""pad":"""#,
            &format!(r#""pad":"{}""#, "p".repeat(len - empty.len())),
        );
        assert_eq!(doc.len(), len);
        doc
    }

    #[derive(Default)]
    struct Routes {
        /// Path → (status, body); for a redirect the body is the `Location`.
        replies: HashMap<String, (u16, String)>,
        /// Requests seen, by path.
        hits: HashMap<String, usize>,
        /// How long every answer is held back.
        delay: Duration,
    }

    /// The test issuer: answers what [`TestIssuer::set`] says; stops when dropped.
    struct TestIssuer {
        addr: SocketAddr,
        routes: Arc<Mutex<Routes>>,
        server: tokio::task::JoinHandle<()>,
    }

    impl Drop for TestIssuer {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    async fn answer(State(routes): State<Arc<Mutex<Routes>>>, uri: Uri) -> Response {
        let (reply, delay) = {
            let mut r = routes.lock().unwrap();
            *r.hits.entry(uri.path().to_owned()).or_default() += 1;
            (r.replies.get(uri.path()).cloned(), r.delay)
        };
        tokio::time::sleep(delay).await;
        match reply {
            Some((status, location)) if (300..400).contains(&status) => (
                StatusCode::from_u16(status).unwrap(),
                [(header::LOCATION, location)],
            )
                .into_response(),
            Some((status, body)) => (
                StatusCode::from_u16(status).unwrap(),
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }

    impl TestIssuer {
        async fn start() -> Self {
            let routes = Arc::new(Mutex::new(Routes::default()));
            let app = axum::Router::new()
                .fallback(answer)
                .with_state(Arc::clone(&routes));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                axum::serve(listener, app).await.unwrap();
            });
            Self {
                addr,
                routes,
                server,
            }
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        fn set(&self, path: &str, status: u16, body: &str) {
            let mut r = self.routes.lock().unwrap();
            r.replies.insert(path.to_owned(), (status, body.to_owned()));
        }

        fn publish(&self, kids: &[&str]) {
            self.set(JWKS_PATH, 200, &jwks(kids));
        }

        fn delay(&self, d: Duration) {
            self.routes.lock().unwrap().delay = d;
        }

        fn hits(&self, path: &str) -> usize {
            let r = self.routes.lock().unwrap();
            r.hits.get(path).copied().unwrap_or(0)
        }

        /// A trusted issuer whose keys come from this server's `jwks_uri`.
        fn jwks_uri_issuer(&self) -> TrustedIssuer {
            trusted("https://issuer.test", JwksSource::Uri(self.url(JWKS_PATH)))
        }
    }

    fn trusted(issuer: &str, jwks: JwksSource) -> TrustedIssuer {
        TrustedIssuer::with_defaults(issuer, &["jit-broker"], &["EdDSA"], jwks)
    }

    fn kids(set: &KeySet) -> Vec<String> {
        let mut k: Vec<String> = set.keys.keys().cloned().collect();
        k.sort();
        k
    }

    #[tokio::test]
    async fn keys_load_from_a_jwks_uri_once() {
        let srv = TestIssuer::start().await;
        srv.publish(&["k1", "k2"]);
        let keys = IssuerKeys::new(srv.jwks_uri_issuer()).unwrap();
        assert_eq!(keys.algorithms, vec![JwsAlgorithm::EdDSA]);
        assert_eq!(kids(&keys.keys().await.unwrap()), ["k1", "k2"]);
        // Cached: the second use does not fetch again.
        assert_eq!(kids(&keys.keys().await.unwrap()), ["k1", "k2"]);
        assert_eq!(srv.hits(JWKS_PATH), 1);
    }

    #[tokio::test]
    async fn keys_load_via_oidc_discovery() {
        let srv = TestIssuer::start().await;
        // An issuer URL with a path and a trailing slash, as some providers have.
        let issuer = srv.url("/tenant/");
        let discovery = "/tenant/.well-known/openid-configuration";
        srv.set(
            discovery,
            200,
            &serde_json::json!({"issuer": issuer, "jwks_uri": srv.url("/tenant/keys")}).to_string(),
        );
        srv.set("/tenant/keys", 200, &jwks(&["d1"]));
        let keys = IssuerKeys::new(trusted(&issuer, JwksSource::Discovery)).unwrap();
        assert_eq!(kids(&keys.keys().await.unwrap()), ["d1"]);
        assert_eq!(srv.hits(discovery), 1);
        assert_eq!(srv.hits("/tenant/keys"), 1);
        assert_eq!(source_label(&JwksSource::Discovery), "OIDC discovery");
    }

    #[tokio::test]
    async fn discovery_document_of_another_issuer_is_refused() {
        let srv = TestIssuer::start().await;
        let issuer = srv.url("");
        srv.set(
            DISCOVERY_PATH,
            200,
            &serde_json::json!({"issuer": "https://evil.example", "jwks_uri": srv.url(JWKS_PATH)})
                .to_string(),
        );
        srv.publish(&["k1"]);
        let keys = IssuerKeys::new(trusted(&issuer, JwksSource::Discovery)).unwrap();
        let err = keys.keys().await.unwrap_err();
        assert!(
            matches!(&err, AuthnError::KeysUnavailable(m) if m.contains("https://evil.example")),
            "{err}"
        );
        assert_eq!(
            srv.hits(JWKS_PATH),
            0,
            "the foreign jwks_uri is not fetched"
        );

        // A discovery document without `jwks_uri` is an error too, not a panic.
        let srv = TestIssuer::start().await;
        let issuer = srv.url("");
        srv.set(
            DISCOVERY_PATH,
            200,
            &serde_json::json!({ "issuer": issuer }).to_string(),
        );
        let keys = IssuerKeys::new(trusted(&issuer, JwksSource::Discovery)).unwrap();
        let err = keys.keys().await.unwrap_err();
        assert!(err.to_string().contains("jwks_uri"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_loads_share_one_fetch() {
        let srv = TestIssuer::start().await;
        srv.publish(&["k1"]);
        srv.delay(Duration::from_millis(300));
        let keys = Arc::new(IssuerKeys::new(srv.jwks_uri_issuer()).unwrap());
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let keys = Arc::clone(&keys);
                tokio::spawn(async move { keys.keys().await })
            })
            .collect();
        for t in tasks {
            assert_eq!(kids(&t.await.unwrap().unwrap()), ["k1"]);
        }
        assert_eq!(srv.hits(JWKS_PATH), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_unknown_kid_lookups_share_one_refresh_and_all_see_it() {
        let srv = TestIssuer::start().await;
        srv.publish(&["old"]);
        let keys = Arc::new(IssuerKeys::new(srv.jwks_uri_issuer()).unwrap());
        assert_eq!(kids(&keys.keys().await.unwrap()), ["old"]);

        // The issuer rotates; a burst of tokens with the new kid arrives at once.
        srv.publish(&["old", "new"]);
        srv.delay(Duration::from_millis(300));
        let now = Instant::now();
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let keys = Arc::clone(&keys);
                tokio::spawn(async move {
                    let ran = keys.refresh_for_unknown_kid(now).await;
                    (ran, keys.keys().await)
                })
            })
            .collect();
        let mut refreshes = 0;
        for t in tasks {
            let (ran, set) = t.await.unwrap();
            refreshes += usize::from(ran);
            // Nobody reads the old set while the refresh runs.
            assert_eq!(kids(&set.unwrap()), ["new", "old"]);
        }
        assert_eq!(refreshes, 1);
        assert_eq!(srv.hits(JWKS_PATH), 2, "the first load and one refresh");
    }

    #[tokio::test]
    async fn unknown_kid_refresh_is_rate_limited() {
        let srv = TestIssuer::start().await;
        srv.publish(&["k1"]);
        let keys = IssuerKeys::new(srv.jwks_uri_issuer()).unwrap();
        assert_eq!(kids(&keys.keys().await.unwrap()), ["k1"]);

        srv.publish(&["k1", "k2"]);
        let t0 = Instant::now();
        assert!(keys.refresh_for_unknown_kid(t0).await);
        assert_eq!(kids(&keys.keys().await.unwrap()), ["k1", "k2"]);
        assert_eq!(srv.hits(JWKS_PATH), 2);

        // Another unknown kid within the interval: no fetch, the published k3 is not seen.
        srv.publish(&["k1", "k2", "k3"]);
        let almost = t0 + MIN_REFRESH_INTERVAL - Duration::from_millis(1);
        for at in [t0, t0 + Duration::from_secs(1), almost] {
            assert!(!keys.refresh_for_unknown_kid(at).await);
        }
        assert_eq!(kids(&keys.keys().await.unwrap()), ["k1", "k2"]);
        assert_eq!(srv.hits(JWKS_PATH), 2);

        // Once the interval has passed, the next unknown kid refreshes again.
        assert!(
            keys.refresh_for_unknown_kid(t0 + MIN_REFRESH_INTERVAL)
                .await
        );
        assert_eq!(kids(&keys.keys().await.unwrap()), ["k1", "k2", "k3"]);
        assert_eq!(srv.hits(JWKS_PATH), 3);
    }

    #[tokio::test]
    async fn failed_refresh_keeps_the_last_good_keys() {
        let srv = TestIssuer::start().await;
        srv.publish(&["good"]);
        let keys = IssuerKeys::new(srv.jwks_uri_issuer()).unwrap();
        assert_eq!(kids(&keys.keys().await.unwrap()), ["good"]);

        let too_big = jwks_of_len("big", MAX_DOCUMENT_BYTES + 1);
        let bad: [(u16, &str); 6] = [
            (500, r#"{"keys":[]}"#),
            (404, ""),
            (200, "<html>garbage</html>"),
            (200, r#"{"keys":[{"kty":"OKP""#),
            (200, r#"{"no_keys":true}"#),
            (200, &too_big),
        ];
        let mut at = Instant::now();
        for (i, (status, body)) in bad.iter().enumerate() {
            srv.set(JWKS_PATH, *status, body);
            at += MIN_REFRESH_INTERVAL;
            assert!(keys.refresh_for_unknown_kid(at).await, "case {i}");
            assert_eq!(srv.hits(JWKS_PATH), i + 2, "case {i}: the refresh fetched");
            assert_eq!(kids(&keys.keys().await.unwrap()), ["good"], "case {i}");
        }

        // A good document again (as large as allowed) is picked up.
        srv.set(JWKS_PATH, 200, &jwks_of_len("next", MAX_DOCUMENT_BYTES));
        assert!(
            keys.refresh_for_unknown_kid(at + MIN_REFRESH_INTERVAL)
                .await
        );
        assert_eq!(kids(&keys.keys().await.unwrap()), ["next"]);
    }

    #[tokio::test]
    async fn oversized_documents_are_refused() {
        let srv = TestIssuer::start().await;
        srv.set(JWKS_PATH, 200, &jwks_of_len("k", MAX_DOCUMENT_BYTES + 1));
        let keys = IssuerKeys::new(srv.jwks_uri_issuer()).unwrap();
        let err = keys.keys().await.unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");

        let srv = TestIssuer::start().await;
        srv.set(JWKS_PATH, 200, &jwks_of_len("k", MAX_DOCUMENT_BYTES));
        let keys = IssuerKeys::new(srv.jwks_uri_issuer()).unwrap();
        assert_eq!(kids(&keys.keys().await.unwrap()), ["k"]);
    }

    #[tokio::test]
    async fn redirects_are_followed_at_most_three_times() {
        let srv = TestIssuer::start().await;
        srv.publish(&["k1"]);
        for (from, to) in [
            ("/r1", "/r2"),
            ("/r2", "/r3"),
            ("/r3", JWKS_PATH),
            ("/r0", "/r1"),
        ] {
            srv.set(from, 302, &srv.url(to));
        }
        let via = |path: &str| trusted("https://issuer.test", JwksSource::Uri(srv.url(path)));
        let keys = IssuerKeys::new(via("/r1")).unwrap();
        assert_eq!(kids(&keys.keys().await.unwrap()), ["k1"]);

        let keys = IssuerKeys::new(via("/r0")).unwrap();
        assert!(keys.keys().await.is_err(), "four redirects are too many");
        assert_eq!(srv.hits("/r3"), 2);
        assert_eq!(
            srv.hits(JWKS_PATH),
            1,
            "the fourth redirect is not followed"
        );
    }

    #[tokio::test]
    async fn keys_are_never_fetched_over_plain_http_off_loopback() {
        // A redirect that downgrades to plain http on another host is not followed.
        let srv = TestIssuer::start().await;
        srv.set("/down", 302, "http://keys.example.invalid/jwks.json");
        let keys = IssuerKeys::new(trusted(
            "https://issuer.test",
            JwksSource::Uri(srv.url("/down")),
        ))
        .unwrap();
        let err = keys.keys().await.unwrap_err().to_string();
        assert!(err.contains("redirect refused"), "{err}");

        // Nor is a discovered jwks_uri that is plain http off loopback.
        let srv = TestIssuer::start().await;
        let issuer = srv.url("");
        srv.set(
            "/.well-known/openid-configuration",
            200,
            &serde_json::json!({"issuer": issuer, "jwks_uri": "http://keys.example.invalid/jwks.json"})
                .to_string(),
        );
        let keys = IssuerKeys::new(trusted(&issuer, JwksSource::Discovery)).unwrap();
        let err = keys.keys().await.unwrap_err().to_string();
        assert!(err.contains("plain http"), "{err}");
    }

    #[tokio::test]
    async fn an_issuer_that_never_loaded_is_retried_at_most_once_per_interval() {
        let srv = TestIssuer::start().await;
        srv.set(JWKS_PATH, 503, "");
        let interval = Duration::from_millis(400);
        let keys = IssuerKeys::with_limits(srv.jwks_uri_issuer(), interval, FETCH_TIMEOUT).unwrap();
        let err = keys.keys().await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("HTTP 503"), "{msg}");
        assert_eq!(
            msg.matches("issuer keys unavailable").count(),
            1,
            "one prefix: {msg}"
        );
        for _ in 0..20 {
            assert!(keys.keys().await.is_err());
        }
        assert_eq!(srv.hits(JWKS_PATH), 1, "a token flood does not refetch");

        srv.publish(&["k1"]);
        tokio::time::sleep(interval + Duration::from_millis(100)).await;
        assert_eq!(kids(&keys.keys().await.unwrap()), ["k1"]);
        assert_eq!(srv.hits(JWKS_PATH), 2);
    }

    #[tokio::test]
    async fn fetch_timeout_is_enforced() {
        let srv = TestIssuer::start().await;
        srv.publish(&["k1"]);
        let timeout = Duration::from_millis(300);
        let keys =
            IssuerKeys::with_limits(srv.jwks_uri_issuer(), MIN_REFRESH_INTERVAL, timeout).unwrap();
        assert_eq!(kids(&keys.keys().await.unwrap()), ["k1"]);

        // The issuer hangs: the refresh gives up after the timeout and keeps k1.
        srv.publish(&["k2"]);
        srv.delay(Duration::from_secs(30));
        let started = Instant::now();
        assert!(keys.refresh_for_unknown_kid(Instant::now()).await);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(started.elapsed() >= timeout);
        assert_eq!(kids(&keys.keys().await.unwrap()), ["k1"]);
        assert_eq!(srv.hits(JWKS_PATH), 2);
    }

    #[tokio::test]
    async fn jwks_file_source_needs_no_http() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks(&["f1"])).unwrap();
        let keys = IssuerKeys::new(trusted("https://issuer.test", JwksSource::File(path))).unwrap();
        assert!(keys.http.is_none());
        assert_eq!(kids(&keys.keys().await.unwrap()), ["f1"]);

        let missing = IssuerKeys::new(trusted(
            "https://issuer.test",
            JwksSource::File(dir.path().join("missing.json")),
        ))
        .unwrap();
        assert!(matches!(
            missing.keys().await,
            Err(AuthnError::KeysUnavailable(_))
        ));
    }
}
