//! The in-process test tier: the broker's real router, state and audit log, driven with
//! `tower::ServiceExt::oneshot` (no sockets, no process) on a [`ManualClock`], so that
//! time-dependent behaviour (dormancy, registration windows, token expiry) is tested by
//! moving the clock instead of sleeping. End-to-end tests keep what needs the real binary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt as _;

use crate::clock::{Clock, ManualClock};
use crate::config::Config;
use crate::dev::{DEV_SUBJECT, DEV_TASK};
use crate::server::{Broker, start_with_clock};

/// A broker on a dev folder (`serve --dev`'s files plus `extra` config lines), on a
/// manual clock.
pub(crate) struct InProcess {
    dir: tempfile::TempDir,
    broker: Broker,
    /// The broker's clock: move it with `advance`.
    pub(crate) clock: Arc<ManualClock>,
    /// Whether each call first runs the key lifecycle's tick (as the server's loop would).
    pub(crate) key_ticks: std::sync::atomic::AtomicBool,
}

/// An answer: status, headers, JSON body.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: axum::http::HeaderMap,
    pub(crate) body: Value,
}

impl InProcess {
    /// Starts at `unix` seconds with `extra` appended to the dev config.
    pub(crate) async fn start_at(unix: u64, extra: &str) -> Self {
        Self::start_edited(unix, |_, text| format!("{text}{extra}")).await
    }

    /// Starts at `unix` seconds with the dev config rewritten by `edit`, which may also
    /// add files to the dev folder it is given.
    pub(crate) async fn start_edited(
        unix: u64,
        edit: impl FnOnce(&std::path::Path, String) -> String,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = crate::dev::prepare(
            dir.path(),
            "127.0.0.1:8080",
            crate::mint::keys::SigningAlgorithm::ES256,
        )
        .unwrap();
        let text = edit(dir.path(), std::fs::read_to_string(&path).unwrap());
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap();
        let clock = Arc::new(ManualClock::at_unix(unix));
        let broker = start_with_clock(&config, Arc::clone(&clock) as Arc<dyn Clock>)
            .await
            .unwrap_or_else(|e| panic!("in-process broker: {e}"));
        Self {
            dir,
            broker,
            clock,
            key_ticks: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// `POST /oauth2/token` for the dev workload's task, with a workload JWT issued at the
    /// broker's current time, from `peer`.
    pub(crate) async fn token(&self, peer: &str) -> Answer {
        let now = self.clock.unix_secs();
        let jwt = crate::dev::workload_token_at(self.dir.path(), DEV_SUBJECT, 300, now).unwrap();
        let body = serde_urlencoded::to_string([
            (
                "grant_type",
                broker_client::types::GRANT_TYPE_TOKEN_EXCHANGE,
            ),
            ("subject_token_type", broker_client::types::TOKEN_TYPE_JWT),
            ("subject_token", &jwt),
            ("task", DEV_TASK),
        ])
        .unwrap();
        let req = Request::post("/oauth2/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        self.call(req, peer).await
    }

    async fn call(&self, mut req: Request<Body>, peer: &str) -> Answer {
        // What the server's background loop does every 500 ms: the signing-key lifecycle
        // (lease extensions, scheduled steps) catches up with the clock.
        if self.key_ticks.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = crate::admin_changes::keys::tick(self.broker.state()).await;
        }
        let addr: SocketAddr = peer.parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(addr));
        let res = self.broker.router().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// Every audit record so far.
    pub(crate) fn records(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut paths: Vec<_> = std::fs::read_dir(self.dir.path().join("audit"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        paths.sort();
        for p in paths {
            for line in std::fs::read_to_string(p).unwrap().lines() {
                out.push(serde_json::from_str(line).unwrap());
            }
        }
        out
    }

    /// The records of `event`.
    pub(crate) fn records_of(&self, event: &str) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["event"] == event)
            .collect()
    }
}

const DAY: u64 = 86_400;
/// 2099-01-01T00:00:00Z: when the dev registration expires.
const EXPIRY: u64 = 4_070_908_800;
/// 2098-12-01T00:00:00Z: 31 days before, outside the 30-day warning window.
const BEFORE_EXPIRY: u64 = EXPIRY - 31 * DAY;

/// Dormancy without sleeping: an identity idle for longer than `dormant_after` raises
/// `dormant_reactivated` on its next issuance (alert: the token is still issued), and one
/// idle for less does not.
#[tokio::test]
async fn an_identity_idle_past_dormant_after_is_reported_when_it_returns() {
    let b = InProcess::start_at(
        BEFORE_EXPIRY - 60 * DAY,
        "\n[governance]\ndormant_after = \"30d\"\n",
    )
    .await;
    assert_eq!(b.token("127.0.0.1:5000").await.status, StatusCode::OK);
    b.clock.advance(Duration::from_secs(29 * DAY));
    assert_eq!(b.token("127.0.0.1:5000").await.status, StatusCode::OK);
    assert!(
        b.records_of("anomaly").is_empty(),
        "idle 29 days: not dormant"
    );
    b.clock.advance(Duration::from_secs(31 * DAY));
    let r = b.token("127.0.0.1:5000").await;
    assert_eq!(r.status, StatusCode::OK, "alert only: {}", r.body);
    let anomalies = b.records_of("anomaly");
    assert_eq!(anomalies.len(), 1, "{anomalies:#?}");
    assert_eq!(anomalies[0]["rule"], "dormant_reactivated");
    assert_eq!(
        anomalies[0]["detail"]["evidence"]["idle_secs"],
        31 * DAY,
        "{}",
        anomalies[0]
    );
}

/// The registration's life on the broker's clock: before the warning window a plain
/// token; inside it the token and the record carry the deadline; from the expiry date on,
/// `registration_expired`.
#[tokio::test]
async fn a_registration_warns_inside_its_window_and_is_refused_after_it_expires() {
    let b = InProcess::start_at(EXPIRY - 40 * DAY, "").await;
    let r = b.token("127.0.0.1:5000").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.headers.get("registration-expires").is_none());

    b.clock.advance(Duration::from_secs(30 * DAY)); // 10 days before the expiry
    let r = b.token("127.0.0.1:5000").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.headers
            .get("registration-expires")
            .and_then(|v| v.to_str().ok()),
        Some("2099-01-01")
    );
    let issued = b.records_of("issued");
    assert_eq!(
        issued.last().unwrap()["detail"]["registration_expires"],
        "2099-01-01"
    );

    b.clock.advance(Duration::from_secs(11 * DAY)); // past 2099-01-01
    let r = b.token("127.0.0.1:5000").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let denied = b.records_of("denied");
    assert_eq!(denied.last().unwrap()["rule"], "registration_expired");
}

/// A token's lifetime on the broker's clock: the answer's `expires_in` is the task's
/// `max_ttl`, and the token's `exp` follows the clock, not the wall.
#[tokio::test]
async fn a_token_lives_max_ttl_on_the_brokers_clock() {
    let b = InProcess::start_at(BEFORE_EXPIRY - 60 * DAY, "").await;
    let r = b.token("127.0.0.1:5000").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["expires_in"], 600, "demo max_ttl is 10m");
    let issued = b.records_of("issued");
    assert_eq!(issued[0]["exp"], BEFORE_EXPIRY - 60 * DAY + 600);
}

impl InProcess {
    /// `POST /oauth2/token` with `form` as the body.
    pub(crate) async fn token_form(&self, form: &[(&str, &str)], peer: &str) -> Answer {
        let body = serde_urlencoded::to_string(form).unwrap();
        let req = Request::post("/oauth2/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        self.call(req, peer).await
    }

    /// `POST path` with `form` as the body.
    pub(crate) async fn post_form(&self, path: &str, form: &[(&str, &str)], peer: &str) -> Answer {
        let body = serde_urlencoded::to_string(form).unwrap();
        let req = Request::post(path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        self.call(req, peer).await
    }

    /// A JWT the dev issuer signs with header `typ` and these `claims`.
    pub(crate) fn dev_issuer_jwt(&self, typ: Option<&str>, claims: &Value) -> String {
        crate::dev::sign_as_dev_issuer(self.dir.path(), typ, claims.to_string().as_bytes()).unwrap()
    }

    /// A JWT the dev issuer signs over raw claim bytes.
    pub(crate) fn dev_issuer_jwt_raw(&self, claims: &str) -> String {
        crate::dev::sign_as_dev_issuer(self.dir.path(), Some("JWT"), claims.as_bytes()).unwrap()
    }

    /// A dev-issuer JWT for `subject`, at the broker's time.
    pub(crate) fn jwt(&self, subject: &str) -> String {
        crate::dev::workload_token_at(self.dir.path(), subject, 300, self.clock.unix_secs())
            .unwrap()
    }

    /// The rule of the newest `denied` record.
    pub(crate) fn last_denial(&self) -> Value {
        self.records_of("denied").pop().unwrap_or(Value::Null)
    }
}

fn exchange<'a>(jwt: &'a str, task: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (
            "grant_type",
            broker_client::types::GRANT_TYPE_TOKEN_EXCHANGE,
        ),
        ("subject_token_type", broker_client::types::TOKEN_TYPE_JWT),
        ("subject_token", jwt),
        ("task", task),
    ]
}

/// Authenticate stage: a JWT no registered identity matches, and `client_credentials`
/// without a certificate, are refused with their rules, and the record says what was seen.
#[tokio::test]
async fn the_authenticate_stage_refuses_unknown_callers_with_their_rules() {
    let b = InProcess::start_at(BEFORE_EXPIRY - 60 * DAY, "").await;
    let stranger = b.jwt("system:serviceaccount:nobody:stranger");
    let r = b
        .token_form(&exchange(&stranger, DEV_TASK), "127.0.0.1:5000")
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let d = b.last_denial();
    assert_eq!(d["rule"], "unknown_identity");
    assert_eq!(
        d["evidence"]["subject"],
        "system:serviceaccount:nobody:stranger"
    );
    let r = b
        .token_form(
            &[("grant_type", "client_credentials"), ("task", DEV_TASK)],
            "127.0.0.1:5000",
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_eq!(r.body["error"], "invalid_client");
    assert_eq!(b.last_denial()["rule"], "client_certificate_required");
}

/// Decision and admission stages: a task the policy lacks is the policy's denial (no
/// break-glass grant is active); a source outside the task's networks is refused; the
/// identity rate limit answers 429 with `Retry-After` once its burst is used.
#[tokio::test]
async fn the_admission_stages_refuse_with_the_policy_and_the_limits() {
    let b = InProcess::start_at(
        BEFORE_EXPIRY - 60 * DAY,
        "\n[governance]\nidentity_rate_limit = \"2/m\"\n",
    )
    .await;
    let jwt = b.jwt(DEV_SUBJECT);
    let r = b
        .token_form(&exchange(&jwt, "no-such-task"), "127.0.0.1:5000")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(b.last_denial()["rule"], "unknown_task");
    let r = b
        .token_form(&exchange(&jwt, DEV_TASK), "10.9.9.9:5000")
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(b.last_denial()["rule"], "source_not_allowed");
    for _ in 0..2 {
        assert_eq!(b.token("127.0.0.1:5000").await.status, StatusCode::OK);
    }
    let r = b.token("127.0.0.1:5000").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(
        r.headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("30")
    );
    assert_eq!(b.last_denial()["rule"], "rate_limited");
}

/// Mint and record stages: the `issued` record names the token (`jti`, `kid`, `exp`) and
/// what was granted, and the answer is never cached.
#[tokio::test]
async fn the_record_stage_writes_the_issued_record_before_the_answer() {
    let b = InProcess::start_at(BEFORE_EXPIRY - 60 * DAY, "").await;
    let r = b.token("127.0.0.1:5000").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.headers.get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let issued = b.records_of("issued");
    assert_eq!(issued.len(), 1);
    let rec = &issued[0];
    let token = r.body["access_token"].as_str().unwrap();
    let claims = crate::dev::decode_for_display(token).unwrap();
    assert!(claims.contains(rec["jti"].as_str().unwrap()), "{rec}");
    assert!(rec["kid"].is_string() && rec["exp"].is_u64(), "{rec}");
    assert_eq!(rec["task"], DEV_TASK);
    assert_eq!(
        rec["scopes"],
        serde_json::json!(["demo:read", "demo:write"])
    );
    assert!(
        !rec.to_string().contains(token),
        "the record never holds the token"
    );
}

/// An `[[admin]]` with the `admin` role, authenticated by a dev-issuer JWT.
pub(crate) fn admin_toml() -> String {
    format!(
        "\n[[admin]]\nname = \"ops\"\nroles = [\"admin\"]\nissuer = \"{}\"\nsubject = \"admin:ops\"\n",
        crate::dev::DEV_ISSUER
    )
}

impl InProcess {
    /// `GET /v1/admin/inventory{query}` as the `ops` admin.
    pub(crate) async fn inventory(&self, query: &str) -> Value {
        let bearer = self.jwt("admin:ops");
        let req = Request::get(format!("/v1/admin/inventory{query}"))
            .header("authorization", format!("Bearer {bearer}"))
            .body(Body::empty())
            .unwrap();
        let r = self.call(req, "127.0.0.1:5000").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body
    }

    /// The dev workload's inventory entry.
    pub(crate) async fn demo_entry(&self, query: &str) -> Value {
        let inv = self.inventory(query).await;
        inv["identities"]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["id"] == "demo-workload").cloned())
            .unwrap_or_else(|| panic!("the inventory lists demo-workload: {inv:#}"))
    }
}

/// Moved from the e2e inventory test (which slept for `dormant_after`): idle for
/// `dormant_after` on the broker's clock, an active identity becomes `dormant`, and its
/// `last_issued` stays the last issuance.
#[tokio::test]
async fn an_idle_identity_becomes_dormant_in_the_inventory() {
    let start = BEFORE_EXPIRY - 60 * DAY;
    let b = InProcess::start_at(
        start,
        &format!("{}\n[governance]\ndormant_after = \"3s\"\n", admin_toml()),
    )
    .await;
    assert_eq!(b.token("127.0.0.1:5000").await.status, StatusCode::OK);
    let e = b.demo_entry("").await;
    assert_eq!(e["status"], "active", "{e:#}");
    b.clock.advance(Duration::from_secs(4));
    let e = b.demo_entry("").await;
    assert_eq!(e["status"], "dormant", "{e:#}");
    assert_eq!(e["last_issued"], start, "{e:#}");
}

/// Moved from the e2e `?unused=` test (which slept past the window): a window shorter
/// than the time since the last use lists every granted task and scope as unused.
#[tokio::test]
async fn a_window_shorter_than_the_idle_time_lists_everything_unused() {
    let b = InProcess::start_at(BEFORE_EXPIRY - 60 * DAY, &admin_toml()).await;
    assert_eq!(b.token("127.0.0.1:5000").await.status, StatusCode::OK);
    let e = b.demo_entry("?unused=30d").await;
    assert_eq!(e["unused_tasks"], serde_json::json!([]), "{e:#}");
    b.clock.advance(Duration::from_secs(2));
    let e = b.demo_entry("?unused=1s").await;
    assert_eq!(e["unused_tasks"], serde_json::json!([DEV_TASK]), "{e:#}");
    assert_eq!(
        e["unused_scopes"],
        serde_json::json!(["demo:read", "demo:write"]),
        "{e:#}"
    );
}

impl InProcess {
    /// `GET path` without credentials.
    /// `POST path` with a JSON body as the `ops` admin (see `admin_toml`).
    pub(crate) async fn admin_post(&self, path: &str, body: &Value) -> Answer {
        let bearer = self.jwt("admin:ops");
        let req = Request::post(path)
            .header("authorization", format!("Bearer {bearer}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.call(req, "127.0.0.1:5000").await
    }

    /// Stops this broker and starts a new one on the same folder at `unix` seconds.
    pub(crate) async fn restart_at(self, unix: u64) -> Self {
        let Self { dir, broker, .. } = self;
        drop(broker);
        let config = Config::load(&dir.path().join("broker.toml")).unwrap();
        let clock = Arc::new(ManualClock::at_unix(unix));
        let broker = start_with_clock(&config, Arc::clone(&clock) as Arc<dyn Clock>)
            .await
            .unwrap_or_else(|e| panic!("in-process broker restart: {e}"));
        Self {
            dir,
            broker,
            clock,
            key_ticks: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Sends `req` as from `peer`.
    pub(crate) async fn call_raw(&self, req: Request<Body>, peer: &str) -> Answer {
        self.call(req, peer).await
    }

    /// The broker's state (its services).
    pub(crate) fn state(&self) -> &crate::state::AppState {
        self.broker.state()
    }

    /// The dev folder.
    pub(crate) fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub(crate) async fn get(&self, path: &str) -> Answer {
        let req = Request::get(path).body(Body::empty()).unwrap();
        self.call(req, "127.0.0.1:5000").await
    }
}

/// RFC 8414 metadata against the router: every endpoint it names is served (a GET on a
/// POST-only endpoint is 405, not 404), and every OAuth endpoint the router serves is
/// named, so a new endpoint cannot be forgotten.
#[tokio::test]
async fn metadata_names_every_oauth_endpoint_the_router_serves() {
    let b = InProcess::start_at(BEFORE_EXPIRY - 60 * DAY, "").await;
    let r = b.get("/.well-known/oauth-authorization-server").await;
    assert_eq!(r.status, StatusCode::OK);
    let md = r.body;
    let issuer = md["issuer"]
        .as_str()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let mut named = Vec::new();
    for (k, v) in md.as_object().unwrap() {
        if k.ends_with("_endpoint") || k == "jwks_uri" {
            let path = v
                .as_str()
                .unwrap()
                .strip_prefix(&issuer)
                .unwrap()
                .to_owned();
            let probe = b.get(&path).await;
            assert_ne!(
                probe.status,
                StatusCode::NOT_FOUND,
                "{k} = {path} is not routed"
            );
            named.push(path);
        }
    }
    for path in [
        crate::api::TOKEN_PATH,
        crate::api::INTROSPECTION_PATH,
        crate::api::REVOCATION_PATH,
        crate::api::JWKS_PATH,
    ] {
        assert!(
            named.iter().any(|n| n == path),
            "{path} is missing from the metadata: {md:#}"
        );
    }
    assert_eq!(
        md["scopes_supported"],
        serde_json::json!(["demo:read", "demo:write"])
    );
    assert_eq!(
        md["introspection_endpoint_auth_methods_supported"],
        serde_json::json!(["tls_client_auth", "private_key_jwt"])
    );
    assert_eq!(
        md["access_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"]),
        "ES256 is the default"
    );

    // OIDC discovery: the same issuer and keys, and the fields OIDC Discovery 1.0 requires.
    let r = b.get("/.well-known/openid-configuration").await;
    assert_eq!(r.status, StatusCode::OK);
    let oidc = r.body;
    assert_eq!(oidc["issuer"], md["issuer"]);
    assert_eq!(oidc["jwks_uri"], md["jwks_uri"]);
    for required in [
        "response_types_supported",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
    ] {
        assert!(
            oidc[required].as_array().is_some_and(|a| !a.is_empty()),
            "{required}: {oidc:#}"
        );
    }
    let jwks = b.get(crate::api::JWKS_PATH).await;
    assert_eq!(jwks.status, StatusCode::OK);
    assert!(!jwks.body["keys"].as_array().unwrap().is_empty());
}

/// A per-audience signing algorithm: with `[[audience]] algorithm = "EdDSA"` that
/// audience's tokens are signed by the newest EdDSA key while the default stays ES256;
/// the JWKS and the metadata publish both; a named algorithm without a key stops the start.
#[tokio::test]
async fn an_audience_can_name_its_signing_algorithm() {
    use crate::mint::keys::{self, SigningAlgorithm};
    let b = InProcess::start_edited(BEFORE_EXPIRY - 60 * DAY, |dir, text| {
        keys::generate(&dir.join("keys"), SigningAlgorithm::EdDSA, 1).unwrap();
        let with = text.replace(
            "environment = \"dev\"\n",
            "environment = \"dev\"\nalgorithm = \"EdDSA\"\n",
        );
        assert_ne!(with, text);
        with
    })
    .await;
    let r = b.token("127.0.0.1:5000").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let token = r.body["access_token"].as_str().unwrap();
    let header = broker_client::jws::split(token, 8192).unwrap().header;
    let header: Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(header["alg"], "EdDSA", "the dev audience names EdDSA");
    let jwks = b.get("/.well-known/jwks.json").await.body;
    let kid_algs: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["alg"].as_str().unwrap())
        .collect();
    assert!(
        kid_algs.contains(&"EdDSA") && kid_algs.contains(&"ES256"),
        "{jwks}"
    );
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == header["kid"])
    );
    let md = b.get("/.well-known/oauth-authorization-server").await.body;
    assert_eq!(
        md["access_token_signing_alg_values_supported"],
        serde_json::json!(["ES256", "EdDSA"])
    );

    // An audience naming an algorithm the key directory has no key of: no start.
    let dir = tempfile::tempdir().unwrap();
    let path = crate::dev::prepare(
        dir.path(),
        "127.0.0.1:8080",
        crate::mint::keys::SigningAlgorithm::ES256,
    )
    .unwrap();
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "environment = \"dev\"\n",
        "environment = \"dev\"\nalgorithm = \"EdDSA\"\n",
    );
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let err = crate::server::start(&config).await.unwrap_err().to_string();
    assert!(
        err.contains("audience \"https://api.dev.example.org\" algorithm is EdDSA")
            && err.contains("broker keygen --alg EdDSA"),
        "{err}"
    );
}
