//! Trusted issuers' keys from the network: the broker fetches the workload issuer's JWKS
//! from a `jwks_uri`, or finds it by OIDC discovery, from a small HTTP issuer each test
//! runs on 127.0.0.1 (and stops when it ends). After a key rotation, a token with the new
//! `kid` is accepted (unknown `kid` → one refresh); a flood of unknown `kid`s right after
//! does not make the broker fetch again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use broker_tests::{
    EC_KID, ISSUER, IssuerKey, IssuerKeySource, Options, PROD_LEDGER, RSA_KID, SUBJECT, TASK,
    TestBroker, TokenRequest, default_policies, issuer_jwks, sign, sign_with_kid, workload_claims,
};
use serde_json::{Value, json};

const JWKS_PATH: &str = "/keys";
const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// Requests seen and documents served, by path.
#[derive(Default)]
struct Docs {
    served: HashMap<String, String>,
    hits: HashMap<String, usize>,
}

/// A workload issuer on a free loopback port; stopped when dropped.
struct HttpIssuer {
    addr: SocketAddr,
    docs: Arc<Mutex<Docs>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for HttpIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(State(docs): State<Arc<Mutex<Docs>>>, uri: Uri) -> Response {
    let mut d = docs.lock().unwrap();
    *d.hits.entry(uri.path().to_owned()).or_default() += 1;
    match d.served.get(uri.path()) {
        Some(body) => ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

impl HttpIssuer {
    async fn start() -> Self {
        let docs = Arc::new(Mutex::new(Docs::default()));
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&docs));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, docs, server }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn serve(&self, path: &str, body: &str) {
        let mut d = self.docs.lock().unwrap();
        d.served.insert(path.to_owned(), body.to_owned());
    }

    /// Publishes the fixture keys with these `kid`s as the JWKS.
    fn publish(&self, kids: &[&str]) {
        self.serve(JWKS_PATH, &fixture_jwks(kids));
    }

    fn hits(&self, path: &str) -> usize {
        let d = self.docs.lock().unwrap();
        d.hits.get(path).copied().unwrap_or(0)
    }
}

/// The fixture JWKS ([`issuer_jwks`]) reduced to the keys named.
fn fixture_jwks(kids: &[&str]) -> String {
    let all: Value = serde_json::from_str(issuer_jwks()).unwrap();
    let keys: Vec<Value> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
        .cloned()
        .collect();
    assert_eq!(keys.len(), kids.len(), "fixture keys {kids:?}");
    json!({ "keys": keys }).to_string()
}

/// Exchanges `token` for [`TASK`] and returns the access token, verified with the
/// broker's JWKS.
async fn exchange_ok(b: &TestBroker, token: &str) -> Value {
    let reply = b.token(&TokenRequest::exchange(token, TASK)).await;
    assert_eq!(reply.status, 200, "token exchange failed: {}", reply.text);
    let access = reply.access_token().expect("access_token");
    b.verify_access_token(access, PROD_LEDGER).await.claims
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_uri_keys_and_rotation_to_a_new_kid() {
    let issuer = HttpIssuer::start().await;
    issuer.publish(&[RSA_KID]);
    let b = TestBroker::start(Options {
        issuer_keys: IssuerKeySource::Uri(issuer.url(JWKS_PATH)),
        ..Options::default()
    });
    assert_eq!(issuer.hits(JWKS_PATH), 1, "keys are preloaded at start");

    let claims = exchange_ok(&b, &sign(IssuerKey::Rsa, &workload_claims(SUBJECT))).await;
    assert_eq!(claims["task"], TASK);
    assert_eq!(issuer.hits(JWKS_PATH), 1, "the key set is cached");

    // The issuer rotates: it now also publishes the EC key. A token signed with it names
    // a kid the broker has not seen, which makes it refresh once and accept the token.
    issuer.publish(&[RSA_KID, EC_KID]);
    exchange_ok(&b, &sign(IssuerKey::Ec, &workload_claims(SUBJECT))).await;
    assert_eq!(issuer.hits(JWKS_PATH), 2, "one refresh for the new kid");
    let issued = b.records_of("issued");
    assert_eq!(issued.len(), 2, "{issued:?}");
    assert_eq!(issued[1]["evidence"]["kid"], EC_KID, "{}", issued[1]);

    // Right after that refresh, unknown kids are refused without fetching again.
    for i in 0..10 {
        let t = sign_with_kid(
            IssuerKey::Rsa,
            &format!("random-{i}"),
            &workload_claims(SUBJECT),
        );
        let reply = b.token(&TokenRequest::exchange(&t, TASK)).await;
        assert_eq!(reply.status, 400, "{}", reply.text);
        assert_eq!(reply.error(), Some("invalid_grant"), "{}", reply.text);
    }
    let denied = b.records_of("denied");
    assert_eq!(denied.len(), 10);
    assert!(
        denied.iter().all(|r| r["rule"] == "unknown_kid"),
        "{denied:?}"
    );
    assert_eq!(
        issuer.hits(JWKS_PATH),
        2,
        "unknown-kid refreshes are rate-limited"
    );

    // The keys that were valid before still are.
    exchange_ok(&b, &sign(IssuerKey::Rsa, &workload_claims(SUBJECT))).await;
    exchange_ok(&b, &sign(IssuerKey::Ec, &workload_claims(SUBJECT))).await;
    assert_eq!(issuer.hits(JWKS_PATH), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn oidc_discovery_finds_the_jwks() {
    let issuer = HttpIssuer::start().await;
    let iss = issuer.url("");
    issuer.serve(
        DISCOVERY_PATH,
        &json!({
            "issuer": iss,
            "jwks_uri": issuer.url(JWKS_PATH),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        })
        .to_string(),
    );
    issuer.publish(&[RSA_KID, EC_KID]);
    // The identity is matched on this issuer instead of the default one.
    let policies = default_policies()
        .into_iter()
        .map(|(name, text)| (name, text.replace(ISSUER, &iss)))
        .collect();
    let b = TestBroker::start(Options {
        issuer_keys: IssuerKeySource::Discovery(iss.clone()),
        policies,
        ..Options::default()
    });
    assert_eq!(issuer.hits(DISCOVERY_PATH), 1);
    assert_eq!(issuer.hits(JWKS_PATH), 1);

    let mut claims = workload_claims(SUBJECT);
    claims["iss"] = json!(iss);
    for key in [IssuerKey::Rsa, IssuerKey::Ec] {
        let minted = exchange_ok(&b, &sign(key, &claims)).await;
        assert_eq!(minted["task"], TASK);
    }
    let issued = b.records_of("issued");
    assert_eq!(issued.len(), 2, "{issued:?}");
    assert_eq!(
        issued[0]["evidence"]["issuer"],
        iss.as_str(),
        "{}",
        issued[0]
    );
    assert_eq!(issuer.hits(DISCOVERY_PATH), 1, "the key set is cached");
    assert_eq!(issuer.hits(JWKS_PATH), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_jwks_is_503_and_not_refetched_per_request() {
    let issuer = HttpIssuer::start().await; // serves no JWKS yet: 404
    let b = TestBroker::start(Options {
        issuer_keys: IssuerKeySource::Uri(issuer.url(JWKS_PATH)),
        ..Options::default()
    });
    assert_eq!(
        issuer.hits(JWKS_PATH),
        1,
        "the broker starts; keys failed to preload"
    );

    issuer.publish(&[RSA_KID]);
    for _ in 0..5 {
        let t = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
        let reply = b.token(&TokenRequest::exchange(&t, TASK)).await;
        assert_eq!(reply.status, 503, "{}", reply.text);
        assert_eq!(
            reply.error(),
            Some("temporarily_unavailable"),
            "{}",
            reply.text
        );
        assert!(reply.access_token().is_none());
        assert_eq!(
            reply.retry_after.as_deref(),
            Some("10"),
            "Retry-After is when the keys are fetched again"
        );
        // The caller is told plainly; the broker's URLs and errors stay with the operator.
        let description = reply.body["error_description"].as_str().unwrap_or_default();
        assert!(
            description.contains("signing keys") && !description.contains("http"),
            "{description}"
        );
    }
    assert!(b.records_of("issued").is_empty());
    let denied = b.records_of("denied");
    assert_eq!(denied.len(), 5);
    assert!(
        denied
            .iter()
            .all(|r| r["rule"] == "issuer_keys_unavailable"),
        "{denied:?}"
    );
    assert!(
        denied
            .iter()
            .all(|r| r["reason"].as_str().is_some_and(|why| why.contains("http"))),
        "the audit record keeps what failed, for the operator: {denied:?}"
    );
    assert_eq!(
        issuer.hits(JWKS_PATH),
        1,
        "a failed load is retried at most once per refresh interval, not per request"
    );
}
