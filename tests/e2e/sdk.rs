//! The client SDK (`broker-client`, issue 5) against the real broker binary.
//!
//! - `TokenSource`: first fetch; background renewal before expiry; single flight (100
//!   concurrent callers, one broker request, one `issued` record); a broker outage (cached
//!   token served, then a typed error after expiry without hanging, then recovery); a
//!   rotated credential file (JWT and client certificate); denials with the broker's words.
//! - `Verifier`: valid; expired; not yet valid; wrong audience; wrong issuer; missing scope;
//!   revoked through the feed (by `jti` and by rule, manual sync and the poller);
//!   bound to another certificate (a real mTLS broker); unknown `kid` after a key rotation
//!   (refetch, then pass).
//! - The axum extractor (RFC 6750 answers) and `AuthorizedClient` (401: one refresh, one
//!   retry).
//! - The `workload` and `resource_server` examples against `broker serve --dev`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use broker_client::axum_extract::Authenticated;
use broker_client::{
    AuthorizedClient, Credential, Error, Token, TokenSource, TokenSourceBuilder, Verifier,
    VerifierBuilder, VerifyError,
};
use broker_tests::admin::{
    BATCH_SUBJECT, BILLING_IDENTITY, BILLING_SUBJECT, READ_TASK, RS_SUBJECT, admin_bearer,
    forge_with_broker_key, revocation_options,
};
use broker_tests::mtls::mtls_broker;
use broker_tests::sdk_support::{
    cert_der, example_bin, free_port, issued_count, issued_record, rotate_signing_key, serve,
    start_on_fixed_port, write_atomically,
};
use broker_tests::{
    BROKER_ISSUER, DEV_LEDGER, EXPIRED_SUBJECT, IDENTITY, IssuerKey, OFFICE_TASK, Options,
    PROD_LEDGER, SUBJECT, TASK, TestBroker, TokenRequest, http_client, insecure_claims, now_secs,
    rs256, run_broker, sign, with_bad_signature, workload_claims,
};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A workload-JWT file (the "projected token") for `subject` in a fresh temp dir.
fn jwt_file(subject: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    write_atomically(&path, &rs256(subject));
    (dir, path)
}

/// A token source for [`TASK`] at `b` with the JWT in `file`.
fn source(b: &TestBroker, task: &str, file: &Path) -> TokenSourceBuilder {
    TokenSource::builder(b.base_url(), task).credential(Credential::jwt_file(file))
}

/// A verifier for [`PROD_LEDGER`] tokens of `b` (whose `iss` is [`BROKER_ISSUER`], not
/// its URL).
fn verifier(b: &TestBroker) -> VerifierBuilder {
    Verifier::builder(b.base_url(), PROD_LEDGER).issuer(BROKER_ISSUER)
}

fn claims(t: &Token) -> Value {
    insecure_claims(t.expose())
}

fn jti(t: &Token) -> String {
    claims(t)["jti"].as_str().unwrap().to_owned()
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// `source.token()`, bounded: the SDK must answer, not hang.
async fn token_within(source: &TokenSource, limit: Duration) -> Result<Token, Error> {
    tokio::time::timeout(limit, source.token())
        .await
        .unwrap_or_else(|_| panic!("token() did not answer within {limit:?}"))
}

// ---------------------------------------------------------------------------------------
// TokenSource
// ---------------------------------------------------------------------------------------

/// The first `token()` fetches from the broker; the token verifies with the published
/// JWKS and with the SDK's own verifier; the next calls are served from cache; `Debug`
/// never shows the token.
#[tokio::test(flavor = "multi_thread")]
async fn first_fetch_then_served_from_cache() {
    let b = TestBroker::start(Options::default());
    let (_d, file) = jwt_file(SUBJECT);
    let src = source(&b, TASK, &file).build().unwrap();
    assert_eq!(
        src.broker_requests(),
        0,
        "nothing is fetched before the first call"
    );

    let before = now_secs();
    let t = token_within(&src, Duration::from_secs(10)).await.unwrap();
    assert_eq!(src.broker_requests(), 1);
    let v = b.verify_access_token(t.expose(), PROD_LEDGER).await;
    assert_eq!(v.claims["sub"], IDENTITY);
    assert_eq!(v.claims["task"], TASK);
    assert_eq!(t.scope(), "ledger:read ledger:write");
    let exp = v.claims["exp"].as_u64().unwrap();
    assert!(
        t.expires_at().abs_diff(exp) <= 1,
        "expires_at {} vs exp {exp}",
        t.expires_at()
    );
    assert!(exp >= before + 599, "the task's max_ttl by default");
    let rec = issued_record(&b, &jti(&t));
    assert_eq!(rec["identity"], IDENTITY);
    assert_eq!(rec["evidence"]["subject"], SUBJECT);

    for _ in 0..10 {
        let again = src.token().await.unwrap();
        assert_eq!(again.expose(), t.expose(), "served from cache");
    }
    assert_eq!(
        src.broker_requests(),
        1,
        "no broker request for cached tokens"
    );
    assert_eq!(issued_count(&b), 1);

    let shown = format!("{t:?} {src:?}");
    assert!(
        !shown.contains(t.expose()),
        "Debug leaks the token: {shown}"
    );
    assert!(shown.contains("[redacted]"), "{shown}");

    let c = verifier(&b)
        .require_scope("ledger:write")
        .build()
        .unwrap()
        .verify(t.expose(), None)
        .await
        .unwrap();
    assert_eq!(c.jti, jti(&t));
    assert_eq!(c.sub, IDENTITY);
}

/// With a 4-second lifetime and `renew_at(0.5, 0.1)`, the background task renews at 1.6 to
/// 2.4 s: at 3 s a new token (another `jti`) is already in cache, so `token()` returns it
/// without waiting on the broker; and the renewals go on, so every call over several
/// lifetimes gets a valid token at once.
#[tokio::test(flavor = "multi_thread")]
async fn renews_in_the_background_before_expiry() {
    let b = TestBroker::start(Options::default());
    let (_d, file) = jwt_file(SUBJECT);
    let src = source(&b, TASK, &file)
        .ttl(4)
        .renew_at(0.5, 0.1)
        .build()
        .unwrap();
    let t0 = Instant::now();
    let first = src.token().await.unwrap();
    assert_eq!(
        claims(&first)["exp"],
        claims(&first)["iat"].as_u64().unwrap() + 4
    );

    tokio::time::sleep(Duration::from_secs(3).saturating_sub(t0.elapsed())).await;
    // (Up to 0.5 s more on a loaded machine: the broker's answer may take a moment.)
    while src.broker_requests() < 2 && t0.elapsed() < Duration::from_millis(3500) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        src.broker_requests(),
        2,
        "the background task renewed before anyone asked"
    );
    let started = Instant::now();
    let second = src.token().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(src.broker_requests(), 2, "the caller did not fetch");
    assert!(
        waited < Duration::from_millis(250),
        "served from cache: {waited:?}"
    );
    assert_ne!(jti(&second), jti(&first), "a new token");
    assert!(second.expires_at() > first.expires_at());
    assert!(
        now_secs() < claims(&first)["exp"].as_u64().unwrap(),
        "renewed before the first token expired"
    );

    // Keep calling for three more lifetimes: always a valid token, always at once.
    let mut seen = std::collections::HashSet::new();
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let started = Instant::now();
        let t = src.token().await.unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "a caller waited {:?}",
            started.elapsed()
        );
        assert!(t.expires_at() > now_secs(), "an expired token was served");
        seen.insert(jti(&t));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.len() >= 3, "renewals continued: {} tokens", seen.len());
    let (ok, failed) = src.renewal_stats();
    assert_eq!(failed, 0);
    assert_eq!(ok, src.broker_requests());
    assert_eq!(issued_count(&b) as u64, src.broker_requests());
}

/// 100 concurrent `token()` calls on a fresh source share one broker request.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn hundred_concurrent_callers_cause_one_broker_request() {
    let b = TestBroker::start(Options::default());
    let (_d, file) = jwt_file(SUBJECT);
    let src = source(&b, TASK, &file).build().unwrap();
    let before = issued_count(&b);

    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let src = src.clone();
        let barrier = Arc::clone(&barrier);
        set.spawn(async move {
            barrier.wait().await;
            src.token().await.map(|t| t.expose().to_owned())
        });
    }
    let mut tokens = std::collections::HashSet::new();
    while let Some(r) = set.join_next().await {
        tokens.insert(r.unwrap().unwrap());
    }
    assert_eq!(tokens.len(), 1, "every caller got the same token");
    assert_eq!(src.broker_requests(), 1, "one broker request");
    assert_eq!(issued_count(&b) - before, 1, "one issued record");
}

/// The broker stops mid-lifetime: the cached token is still served; once it expires,
/// `token()` fails fast with `Error::TokenExpired`; when the broker is back (same port),
/// a fresh token is served.
#[tokio::test(flavor = "multi_thread")]
async fn broker_outage_serves_the_cache_then_a_typed_error_then_recovers() {
    let mut b = start_on_fixed_port(Options::default());
    let (_d, file) = jwt_file(SUBJECT);
    let src = source(&b, TASK, &file)
        .ttl(4)
        .renew_at(0.5, 0.0)
        .timeout(Duration::from_secs(2))
        .max_backoff(Duration::from_secs(1))
        .build()
        .unwrap();
    let t1 = src.token().await.unwrap();
    assert!(b.stop().success(), "graceful stop: {}", b.stderr());

    // Still valid: served from cache, at once, although renewals now fail.
    let mut served = 0;
    while now_secs() + 1 < t1.expires_at() {
        let t = token_within(&src, Duration::from_millis(500))
            .await
            .unwrap();
        assert_eq!(t.expose(), t1.expose(), "the cached token");
        served += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(served >= 1, "served from cache {served} times");
    while now_secs() < t1.expires_at() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, failures) = src.renewal_stats();
    assert!(
        failures >= 1,
        "the renewer tried and failed while the broker was down"
    );

    // Expired, broker down: a typed, retryable error, quickly.
    let started = Instant::now();
    let err = token_within(&src, Duration::from_secs(5))
        .await
        .expect_err("no valid token while the broker is down");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "failed fast: {:?}",
        started.elapsed()
    );
    match &err {
        Error::TokenExpired { last_error } => {
            assert!(last_error.contains("broker unavailable"), "{last_error}")
        }
        other => panic!("expected TokenExpired, got {other:?}"),
    }
    assert!(err.is_retryable());

    // The broker is back on the same port: a fresh token.
    b.launch().unwrap();
    let t2 = token_within(&src, Duration::from_secs(10)).await.unwrap();
    assert_ne!(jti(&t2), jti(&t1));
    assert!(t2.expires_at() > now_secs());
    b.verify_access_token(t2.expose(), PROD_LEDGER).await;
    issued_record(&b, &jti(&t2));
}

/// A broker that accepts connections and never answers: with no cached token, `token()`
/// fails with `BrokerUnavailable` after the configured request timeout instead of hanging.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_broker_gives_a_typed_error_not_a_hang() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            keep.lock().unwrap().push(sock); // read nothing, answer nothing
        }
    });
    let (_d, file) = jwt_file(SUBJECT);
    let src = TokenSource::builder(&url, TASK)
        .credential(Credential::jwt_file(&file))
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = token_within(&src, Duration::from_secs(5))
        .await
        .expect_err("a silent broker gives no token");
    assert!(
        matches!(err, Error::BrokerUnavailable { .. }),
        "expected BrokerUnavailable, got {err:?}"
    );
    assert!(err.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the request timeout: {:?}",
        started.elapsed()
    );
}

/// The platform rotates the projected token file (here: to a JWT of another workload
/// identity that has the same task): the next renewal presents the new JWT, as the token's
/// `sub` and the `issued` record's evidence show.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_jwt_file_is_picked_up() {
    let b = TestBroker::start(revocation_options());
    let (_d, file) = jwt_file(SUBJECT);
    let src = source(&b, TASK, &file)
        .ttl(3)
        .renew_at(0.5, 0.0)
        .build()
        .unwrap();
    let t1 = src.token().await.unwrap();
    assert_eq!(claims(&t1)["sub"], IDENTITY);

    write_atomically(&file, &rs256(BILLING_SUBJECT));
    let deadline = Instant::now() + Duration::from_secs(6);
    let t2 = loop {
        let t = src.token().await.unwrap();
        if jti(&t) != jti(&t1) {
            break t;
        }
        assert!(Instant::now() < deadline, "no renewal within 6 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(claims(&t2)["sub"], BILLING_IDENTITY, "the new JWT was used");
    let rec = issued_record(&b, &jti(&t2));
    assert_eq!(rec["identity"], BILLING_IDENTITY);
    assert_eq!(rec["evidence"]["subject"], BILLING_SUBJECT);
    assert_eq!(issued_record(&b, &jti(&t1))["evidence"]["subject"], SUBJECT);
}

/// A JWT file that holds an expired JWT is never sent (the workload credential is not used
/// past its own `exp`), and a missing file is a typed error naming the path.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_or_missing_credential_is_a_typed_error() {
    let b = TestBroker::start(Options::default());
    let (_d, file) = jwt_file(SUBJECT);
    let mut c = workload_claims(SUBJECT);
    let now = now_secs();
    c["iat"] = json!(now - 120);
    c["nbf"] = json!(now - 120);
    c["exp"] = json!(now - 60);
    write_atomically(&file, &sign(IssuerKey::Rsa, &c));
    let src = source(&b, TASK, &file).build().unwrap();
    match src.token().await {
        Err(Error::CredentialExpired { exp }) => assert_eq!(exp, now - 60),
        other => panic!("expected CredentialExpired, got {other:?}"),
    }
    assert_eq!(
        src.broker_requests(),
        0,
        "an expired credential is not sent"
    );

    let missing = file.with_file_name("no-such-token");
    let src = source(&b, TASK, &missing).build().unwrap();
    match src.token().await {
        Err(Error::CredentialUnreadable { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected CredentialUnreadable, got {other:?}"),
    }
    assert_eq!(issued_count(&b), 0);
}

/// Denials carry the broker's own error code and description, are not retryable, and
/// cost one broker request each.
#[tokio::test(flavor = "multi_thread")]
async fn a_denial_surfaces_the_brokers_reason() {
    let b = TestBroker::start(Options::default());

    // (task / subject / extra scope) → what the broker itself answers to the same request.
    let cases: [(&str, &str, Option<&str>, u16, &str); 3] = [
        (OFFICE_TASK, SUBJECT, None, 403, "access_denied"),
        ("ledger-read", EXPIRED_SUBJECT, None, 403, "access_denied"),
        (TASK, SUBJECT, Some("ledger:admin"), 400, "invalid_scope"),
    ];
    for (task, subject, scope, status, code) in cases {
        let (_d, file) = jwt_file(subject);
        let mut builder = source(&b, task, &file);
        let mut direct = TokenRequest::exchange(&rs256(subject), task);
        if let Some(s) = scope {
            builder = builder.scope(s);
            direct = direct.scope(s);
        }
        let src = builder.build().unwrap();
        let err = token_within(&src, Duration::from_secs(10))
            .await
            .expect_err("denied");
        let reply = b.token(&direct).await;
        assert_eq!(reply.status, status, "{}", reply.text);
        match &err {
            Error::Denied {
                status: s,
                error,
                description,
            } => {
                assert_eq!(*s, status, "{err}");
                assert_eq!(error, code, "{err}");
                assert_eq!(
                    Some(description.as_str()),
                    reply.body["error_description"].as_str(),
                    "the broker's words"
                );
                assert!(!description.is_empty());
                assert!(err.to_string().contains(description.as_str()), "{err}");
            }
            other => panic!("{task}/{subject}: expected Denied, got {other:?}"),
        }
        assert!(!err.is_retryable());
        assert_eq!(src.broker_requests(), 1);
    }
    assert_eq!(issued_count(&b), 0);
}

// ---------------------------------------------------------------------------------------
// Verifier
// ---------------------------------------------------------------------------------------

/// A valid token passes with its claims; tampered and foreign tokens do not.
#[tokio::test(flavor = "multi_thread")]
async fn verifier_accepts_a_valid_token_and_refuses_malformed_ones() {
    let b = TestBroker::start(Options::default());
    let token = b.issue(SUBJECT, TASK, None).await;
    let v = verifier(&b)
        .require_scope("ledger:read")
        .require_scope("ledger:write")
        .build()
        .unwrap();
    let c = v.verify(&token, None).await.unwrap();
    let reference = b.verify_access_token(&token, PROD_LEDGER).await.claims;
    assert_eq!(serde_json::to_value(&c).unwrap(), reference, "every claim");

    assert_eq!(
        v.verify(&with_bad_signature(&token), None).await,
        Err(VerifyError::BadSignature)
    );
    for bad in ["", "abc", "a.b.c", &rs256(SUBJECT)] {
        let r = v.verify(bad, None).await;
        assert!(
            matches!(r, Err(VerifyError::Malformed(_))),
            "{bad:?}: expected Malformed, got {r:?}"
        );
    }
}

/// Past `exp` (beyond the leeway): `Expired`; within the leeway it still passes. Before
/// `nbf` (beyond the leeway): `NotYetValid`.
#[tokio::test(flavor = "multi_thread")]
async fn verifier_refuses_expired_and_not_yet_valid_tokens() {
    let b = TestBroker::start(Options::default());
    let token = b.issue(SUBJECT, TASK, Some(2)).await;
    let exp = insecure_claims(&token)["exp"].as_u64().unwrap();
    let strict = verifier(&b).leeway(0).build().unwrap();
    let lenient = verifier(&b).leeway(30).build().unwrap();
    strict.verify(&token, None).await.unwrap();
    while now_secs() < exp {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(strict.verify(&token, None).await, Err(VerifyError::Expired));
    lenient.verify(&token, None).await.unwrap();

    let mut c = insecure_claims(&token);
    let now = now_secs();
    c["nbf"] = json!(now + 120);
    c["iat"] = json!(now + 120);
    c["exp"] = json!(now + 300);
    let future = forge_with_broker_key(&b, &token, &c);
    assert_eq!(
        lenient.verify(&future, None).await,
        Err(VerifyError::NotYetValid)
    );
}

/// A token for another audience, from another issuer, or without a required scope.
#[tokio::test(flavor = "multi_thread")]
async fn verifier_refuses_wrong_audience_issuer_and_missing_scope() {
    let b = TestBroker::start(Options::default());
    let token = b.issue(SUBJECT, TASK, None).await;

    let other_audience = Verifier::builder(b.base_url(), DEV_LEDGER)
        .issuer(BROKER_ISSUER)
        .build()
        .unwrap();
    assert_eq!(
        other_audience.verify(&token, None).await,
        Err(VerifyError::WrongAudience(PROD_LEDGER.to_owned()))
    );

    // Default expected issuer: the broker URL, which is not this broker's `issuer`.
    let default_issuer = Verifier::builder(b.base_url(), PROD_LEDGER)
        .build()
        .unwrap();
    assert_eq!(
        default_issuer.verify(&token, None).await,
        Err(VerifyError::WrongIssuer(BROKER_ISSUER.to_owned()))
    );
    let other_issuer = Verifier::builder(b.base_url(), PROD_LEDGER)
        .issuer("https://other-broker.test")
        .build()
        .unwrap();
    assert_eq!(
        other_issuer.verify(&token, None).await,
        Err(VerifyError::WrongIssuer(BROKER_ISSUER.to_owned()))
    );

    // A reader token against a server that needs ledger:write.
    let (_d, file) = jwt_file(SUBJECT);
    let reader = source(&b, TASK, &file)
        .scope("ledger:read")
        .build()
        .unwrap()
        .token()
        .await
        .unwrap();
    assert_eq!(reader.scope(), "ledger:read");
    let writer_only = verifier(&b).require_scope("ledger:write").build().unwrap();
    assert_eq!(
        writer_only.verify(reader.expose(), None).await,
        Err(VerifyError::MissingScope("ledger:write".to_owned()))
    );
    writer_only.verify(&token, None).await.unwrap();
}

/// Revocation through the feed: a token revoked by its owner (RFC 7009) and the tokens
/// covered by an admin rule fail with `Revoked` once the feed is synced; other tokens, and
/// tokens issued after the rule, still pass. The background poller gets there alone.
#[tokio::test(flavor = "multi_thread")]
async fn verifier_honours_the_revocation_feed() {
    let b = TestBroker::start(revocation_options());
    let feed = || Credential::provider(|| Ok(rs256(RS_SUBJECT)));
    let manual = verifier(&b)
        .revocation_feed(feed(), Duration::from_secs(3600))
        .build()
        .unwrap();
    let polled = verifier(&b)
        .revocation_feed(feed(), Duration::from_millis(200))
        .build()
        .unwrap();

    let t1 = b.issue(SUBJECT, TASK, None).await;
    let t2 = b.issue(SUBJECT, TASK, None).await;
    let other = b.issue(BATCH_SUBJECT, READ_TASK, None).await;
    for t in [&t1, &t2, &other] {
        manual.verify(t, None).await.unwrap();
    }

    // The owner revokes t1.
    let r = b.revoke_with(Some(&rs256(SUBJECT)), &t1).await;
    assert_eq!(r.status, 200, "{}", r.text);
    manual.verify(&t1, None).await.unwrap(); // offline: not yet synced
    manual.sync_revocations().await.unwrap();
    assert_eq!(manual.verify(&t1, None).await, Err(VerifyError::Revoked));
    manual.verify(&t2, None).await.unwrap();

    // An admin revokes every token of the identity.
    b.admin_revoke(&json!({"identity": IDENTITY, "reason": "compromised host"}))
        .await;
    let after = b.issue(SUBJECT, TASK, None).await;
    manual.sync_revocations().await.unwrap();
    assert_eq!(manual.verify(&t2, None).await, Err(VerifyError::Revoked));
    manual.verify(&other, None).await.unwrap();
    manual.verify(&after, None).await.unwrap();

    // The poller picks both up without help.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r1 = polled.verify(&t1, None).await;
        let r2 = polled.verify(&t2, None).await;
        if r1 == Err(VerifyError::Revoked) && r2 == Err(VerifyError::Revoked) {
            break;
        }
        assert!(Instant::now() < deadline, "poller: {r1:?} {r2:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    polled.verify(&after, None).await.unwrap();

    // A feed credential without may_introspect is refused, with the broker's words.
    let denied = verifier(&b)
        .revocation_feed(
            Credential::provider(|| Ok(rs256(SUBJECT))),
            Duration::from_secs(3600),
        )
        .build()
        .unwrap();
    let direct = b.feed_with(Some(&rs256(SUBJECT)), None).await;
    assert_eq!(direct.status, 403, "{}", direct.text);
    match denied.sync_revocations().await {
        Err(Error::Denied {
            status,
            error,
            description,
        }) => {
            assert_eq!(status, 403);
            assert_eq!(Some(error.as_str()), direct.error(), "the OAuth error code");
            assert_eq!(
                Some(description.as_str()),
                direct.body["error_description"].as_str(),
                "the broker's words"
            );
            assert!(description.contains("may_introspect"), "{description}");
        }
        other => panic!("expected Denied, got {other:?}"),
    }
}

/// Over a real mTLS broker, with a client-certificate credential: the token is bound to
/// the certificate (`cnf.x5t#S256`); it verifies with that certificate and fails with
/// `CertificateMismatch` with another one or none. When the certificate files rotate, the
/// next token is bound to the new certificate.
#[tokio::test(flavor = "multi_thread")]
async fn verifier_refuses_a_token_bound_to_another_certificate() {
    let Some((m, b)) = mtls_broker("verifier_refuses_a_token_bound_to_another_certificate") else {
        return;
    };
    let leaf = m.payments_client();
    let other = m.payments_client_named("payments-2");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("svid.pem"), dir.path().join("svid.key"));
    std::fs::copy(&leaf.cert, &cert).unwrap();
    std::fs::copy(&leaf.key, &key).unwrap();

    let src = TokenSource::builder(b.base_url(), TASK)
        .credential(Credential::client_cert(&cert, &key))
        .ca_file(m.server_ca_file())
        .build()
        .unwrap();
    let t = token_within(&src, Duration::from_secs(10)).await.unwrap();
    assert_eq!(claims(&t)["sub"], IDENTITY);
    assert_eq!(claims(&t)["cnf"]["x5t#S256"], leaf.x5t_s256());

    let v = Verifier::builder(b.base_url(), PROD_LEDGER)
        .issuer(BROKER_ISSUER)
        .ca_file(m.server_ca_file())
        .build()
        .unwrap();
    let c = v
        .verify(t.expose(), Some(&cert_der(&leaf.cert)))
        .await
        .unwrap();
    assert_eq!(c.cnf.unwrap().x5t_s256, leaf.x5t_s256());
    assert_eq!(
        v.verify(t.expose(), Some(&cert_der(&other.cert))).await,
        Err(VerifyError::CertificateMismatch)
    );
    assert_eq!(
        v.verify(t.expose(), None).await,
        Err(VerifyError::CertificateMismatch)
    );

    // The platform rotates the SVID files: the next token is bound to the new certificate.
    std::fs::copy(&other.key, &key).unwrap();
    std::fs::copy(&other.cert, &cert).unwrap();
    let t2 = src.refresh(Some(&t)).await.unwrap();
    assert_ne!(jti(&t2), jti(&t));
    assert_eq!(claims(&t2)["cnf"]["x5t#S256"], other.x5t_s256());
    v.verify(t2.expose(), Some(&cert_der(&other.cert)))
        .await
        .unwrap();
    assert_eq!(
        v.verify(t2.expose(), Some(&cert_der(&leaf.cert))).await,
        Err(VerifyError::CertificateMismatch)
    );
}

/// The broker rotates its signing key (keygen + restart). A verifier that cached the old
/// JWKS moments ago does not refetch again within its rate limit (`UnknownKey`), passes
/// after `refetch_keys`, and a verifier whose rate-limit window has passed refetches by
/// itself on the unknown `kid` and passes. Old tokens keep verifying.
#[tokio::test(flavor = "multi_thread")]
async fn verifier_refetches_keys_after_a_rotation() {
    let mut b = start_on_fixed_port(Options::default());
    let old = b.issue(SUBJECT, TASK, None).await;
    let eager = verifier(&b).build().unwrap();
    let patient = verifier(&b).build().unwrap();
    eager.verify(&old, None).await.unwrap();
    patient.verify(&old, None).await.unwrap();
    let fetched = Instant::now();

    rotate_signing_key(&mut b, false);
    let new = b.issue(SUBJECT, TASK, None).await;
    assert_ne!(kid(&new), kid(&old), "the new key signs");

    let r = eager.verify(&new, None).await;
    if fetched.elapsed() < Duration::from_secs(4) {
        // Inside the 5 s refetch rate limit: the cached JWKS has no such key.
        assert_eq!(r, Err(VerifyError::UnknownKey(kid(&new))));
    } else {
        eprintln!(
            "note: the rotation took {:?}; the rate-limit check is skipped",
            fetched.elapsed()
        );
    }
    eager.refetch_keys(true).await.unwrap();
    eager.verify(&new, None).await.unwrap();
    eager.verify(&old, None).await.unwrap();

    tokio::time::sleep(Duration::from_secs(5).saturating_sub(fetched.elapsed())).await;
    patient.verify(&new, None).await.unwrap();
    patient.verify(&old, None).await.unwrap();
}

/// Rotates, then takes the old key out of the JWKS at once: an emergency revocation
/// (`POST /v1/admin/keys/{kid}/revoke`, what `broker keys revoke` calls). A rotation alone
/// keeps the old key published until the last token it signed has expired.
async fn rotate_and_revoke_old_key(b: &mut TestBroker, old_token: &str) {
    rotate_signing_key(b, false);
    let r = b
        .admin_post(
            Some(&admin_bearer()),
            &format!("keys/{}/revoke", kid(old_token)),
            &json!({ "reason": "test: withdraw the old key" }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// The broker withdraws a key (rotation, then the old key revoked): tokens signed with it
/// stop verifying: at once at a fresh verifier, and at a verifier that cached the old key
/// as soon as it refetches the JWKS for the new key's `kid` (the whole key set is
/// replaced).
#[tokio::test(flavor = "multi_thread")]
async fn verifier_drops_a_key_the_broker_no_longer_publishes() {
    let mut b = start_on_fixed_port(revocation_options());
    let old = b.issue(SUBJECT, TASK, None).await;
    let cached = verifier(&b).build().unwrap();
    cached.verify(&old, None).await.unwrap();

    rotate_and_revoke_old_key(&mut b, &old).await;
    let new = b.issue(SUBJECT, TASK, None).await;
    let jwks = b.jwks().await;
    assert!(jwks.find(&kid(&old)).is_none(), "the old key is retired");

    let fresh = verifier(&b).build().unwrap();
    assert_eq!(
        fresh.verify(&old, None).await,
        Err(VerifyError::UnknownKey(kid(&old)))
    );
    fresh.verify(&new, None).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // (`new` may be refused for a moment: the refetch on its unknown kid is
        // rate-limited.)
        let new_ok = cached.verify(&new, None).await.is_ok();
        match cached.verify(&old, None).await {
            Err(VerifyError::UnknownKey(k)) if new_ok => {
                assert_eq!(k, kid(&old));
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "a verifier that cached the retired key still says {other:?} after 15 s \
                 (new token ok: {new_ok})"
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A verifier that only ever sees tokens of a key the broker has since retired (say,
/// presented by someone holding the withdrawn key) stops accepting them once its JWKS is
/// older than its max age, without any token with a new `kid` arriving.
#[tokio::test(flavor = "multi_thread")]
async fn verifier_drops_a_retired_key_after_the_jwks_max_age() {
    let mut b = start_on_fixed_port(revocation_options());
    let old = b.issue(SUBJECT, TASK, None).await;
    let cached = verifier(&b)
        .jwks_max_age(Duration::from_secs(2))
        .build()
        .unwrap();
    cached.verify(&old, None).await.unwrap();
    let fetched = Instant::now();

    rotate_and_revoke_old_key(&mut b, &old).await;
    if fetched.elapsed() < Duration::from_secs(2) {
        // Within the max age the cached key still verifies (no refetch yet).
        cached.verify(&old, None).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match cached.verify(&old, None).await {
            Err(VerifyError::UnknownKey(k)) => {
                assert_eq!(k, kid(&old));
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "the retired key still verifies ({other:?}) 15 s after the rotation"
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        fetched.elapsed() >= Duration::from_secs(2),
        "dropped only once the max age had passed"
    );
}

/// The broker's revocation state is reset (its state dir is lost; or a fresh instance
/// takes over the URL): feed cursors start again from 1. A verifier that had read up to a
/// higher cursor must still see the new revocations.
#[tokio::test(flavor = "multi_thread")]
async fn verifier_follows_the_feed_across_a_broker_state_reset() {
    let mut b = start_on_fixed_port(revocation_options());
    let v = verifier(&b)
        .revocation_feed(
            Credential::provider(|| Ok(rs256(RS_SUBJECT))),
            Duration::from_secs(3600),
        )
        .build()
        .unwrap();
    let t1 = b.issue(SUBJECT, TASK, None).await;
    let t2 = b.issue(SUBJECT, TASK, None).await;
    let t3 = b.issue(SUBJECT, TASK, None).await;
    // Cursors count every change in the state journal (signing-key changes too).
    let base = b.feed(None).await["cursor"].as_u64().unwrap();
    for t in [&t1, &t2] {
        let r = b.revoke_with(Some(&rs256(SUBJECT)), t).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    v.sync_revocations().await.unwrap();
    assert_eq!(v.verify(&t2, None).await, Err(VerifyError::Revoked));
    let before_reset = b.feed(None).await["cursor"].as_u64().unwrap();
    assert!(before_reset >= base + 2, "{base} -> {before_reset}");

    assert!(b.stop().success());
    std::fs::remove_dir_all(b.dir().join("state")).unwrap();
    b.launch().unwrap();
    let r = b.revoke_with(Some(&rs256(SUBJECT)), &t3).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let after_reset = b.feed(None).await["cursor"].as_u64().unwrap();
    assert!(
        after_reset < before_reset,
        "the feed started again: {after_reset}"
    );

    v.sync_revocations().await.unwrap();
    assert_eq!(
        v.verify(&t3, None).await,
        Err(VerifyError::Revoked),
        "a revocation made after the reset"
    );
    assert_eq!(
        v.verify(&t1, None).await,
        Err(VerifyError::Revoked),
        "what the verifier knew stays revoked"
    );
}

// ---------------------------------------------------------------------------------------
// The axum extractor and the reqwest integration
// ---------------------------------------------------------------------------------------

async fn ledger(Authenticated(c): Authenticated) -> String {
    c.sub
}

/// RFC 6750 answers: no token → 401 `Bearer realm=...` without an error; a bad token →
/// 401 `invalid_token`; a missing scope → 403 `insufficient_scope`; a good one → 200.
#[tokio::test(flavor = "multi_thread")]
async fn axum_extractor_answers_with_rfc6750_challenges() {
    let b = TestBroker::start(Options::default());
    let v = verifier(&b).require_scope("ledger:write").build().unwrap();
    let app = Router::new().route("/ledger", get(ledger)).with_state(v);
    let url = format!("{}/ledger", serve(app).await);
    let client = http_client();
    let call = |auth: Option<String>| {
        let mut rb = client.get(&url);
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        async move {
            let res = rb.send().await.unwrap();
            let status = res.status().as_u16();
            let challenge = res
                .headers()
                .get("www-authenticate")
                .map(|h| h.to_str().unwrap().to_owned());
            (status, challenge, res.text().await.unwrap())
        }
    };

    let good = b.issue(SUBJECT, TASK, None).await;
    let (_d, file) = jwt_file(SUBJECT);
    let reader = source(&b, TASK, &file)
        .scope("ledger:read")
        .build()
        .unwrap()
        .token()
        .await
        .unwrap();

    for auth in [None, Some("Basic Zm9vOmJhcg==".to_owned())] {
        let (status, challenge, _) = call(auth.clone()).await;
        assert_eq!(status, 401, "{auth:?}");
        let challenge = challenge.expect("a WWW-Authenticate header");
        assert!(challenge.starts_with("Bearer realm="), "{challenge}");
        assert!(
            !challenge.contains("error="),
            "no error without a token: {challenge}"
        );
    }
    for bad in [
        with_bad_signature(&good),
        "garbage".to_owned(),
        rs256(SUBJECT),
    ] {
        let (status, challenge, _) = call(Some(format!("Bearer {bad}"))).await;
        assert_eq!(status, 401);
        let challenge = challenge.expect("a WWW-Authenticate header");
        assert!(challenge.starts_with("Bearer realm="), "{challenge}");
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    }
    let (status, challenge, _) = call(Some(format!("Bearer {}", reader.expose()))).await;
    assert_eq!(status, 403);
    let challenge = challenge.expect("a WWW-Authenticate header");
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\"ledger:write\""), "{challenge}");

    let (status, challenge, body) = call(Some(format!("Bearer {good}"))).await;
    assert_eq!(status, 200, "{challenge:?} {body}");
    assert_eq!(body, IDENTITY);
    // The auth scheme is case-insensitive (RFC 7235 §2.1).
    for scheme in ["bearer", "BEARER"] {
        let (status, challenge, body) = call(Some(format!("{scheme} {good}"))).await;
        assert_eq!(status, 200, "{scheme}: {challenge:?} {body}");
    }
}

/// When the broker's JWKS cannot be fetched the extractor cannot judge the token: 503
/// with `Retry-After`, not a 401 (which would tell the client its token is bad).
#[tokio::test(flavor = "multi_thread")]
async fn axum_extractor_answers_503_when_the_keys_are_unavailable() {
    let mut b = TestBroker::start(Options::default());
    let good = b.issue(SUBJECT, TASK, None).await;
    let v = verifier(&b).build().unwrap();
    assert!(b.stop().success(), "graceful stop: {}", b.stderr());
    let app = Router::new().route("/ledger", get(ledger)).with_state(v);
    let url = format!("{}/ledger", serve(app).await);
    let res = http_client()
        .get(&url)
        .header("authorization", format!("Bearer {good}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 503);
    assert_eq!(
        res.headers()
            .get("retry-after")
            .map(|h| h.to_str().unwrap()),
        Some("5")
    );
    assert!(res.headers().get("www-authenticate").is_none());
}

/// A resource server that records the bearer token of every request and refuses the
/// first `refuse` requests (or every request bearing a token in `refused`).
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<(String, String)>>>,
    calls: Arc<AtomicUsize>,
    refused: Arc<Mutex<Vec<String>>>,
}

fn bearer(h: &HeaderMap) -> String {
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned()
}

/// 401 on the first request, 200 after.
async fn first_refused(State(r): State<Recorder>, h: HeaderMap, body: String) -> StatusCode {
    r.seen.lock().unwrap().push((bearer(&h), body));
    if r.calls.fetch_add(1, Ordering::SeqCst) == 0 {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    }
}

/// 401 always.
async fn always_refused(State(r): State<Recorder>, h: HeaderMap, body: String) -> StatusCode {
    r.seen.lock().unwrap().push((bearer(&h), body));
    r.calls.fetch_add(1, Ordering::SeqCst);
    StatusCode::UNAUTHORIZED
}

/// 401 for the tokens in `refused`, 200 otherwise.
async fn refuse_listed(State(r): State<Recorder>, h: HeaderMap) -> StatusCode {
    let t = bearer(&h);
    r.calls.fetch_add(1, Ordering::SeqCst);
    if r.refused.lock().unwrap().contains(&t) {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    }
}

/// `AuthorizedClient::execute`: a 401 causes exactly one refresh and one retry with the
/// new token (and the same body); a second 401 is returned, not retried again; a burst of
/// 401s for the same stale token causes one refresh between them.
#[tokio::test(flavor = "multi_thread")]
async fn authorized_client_refreshes_once_and_retries_once_on_401() {
    let b = TestBroker::start(Options::default());
    let (_d, file) = jwt_file(SUBJECT);
    let src = source(&b, TASK, &file).build().unwrap();
    let rec = Recorder::default();
    let app = Router::new()
        .route("/first", post(first_refused))
        .route("/always", post(always_refused))
        .route("/listed", get(refuse_listed))
        .with_state(rec.clone());
    let base = serve(app).await;
    let client = AuthorizedClient::new(http_client(), src.clone());

    // 401, one refresh, one retry → 200.
    let req = client
        .client()
        .post(format!("{base}/first"))
        .body("payload")
        .build()
        .unwrap();
    let res = client.execute(req).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let seen = rec.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one request and one retry");
    assert_ne!(seen[0].0, seen[1].0, "the retry carries a fresh token");
    assert!(!seen[0].0.is_empty() && !seen[1].0.is_empty());
    assert_eq!(seen[1].1, "payload", "the retry carries the same body");
    assert_eq!(src.broker_requests(), 2, "the first fetch and one refresh");
    assert_eq!(issued_count(&b), 2);
    assert_eq!(
        src.token().await.unwrap().expose(),
        seen[1].0,
        "the fresh one is cached"
    );

    // Next call: cached token, no broker request.
    let req = client
        .client()
        .post(format!("{base}/first"))
        .build()
        .unwrap();
    assert_eq!(client.execute(req).await.unwrap().status().as_u16(), 200);
    assert_eq!(src.broker_requests(), 2);

    // Refused again after the retry: the 401 is returned, no second retry.
    rec.seen.lock().unwrap().clear();
    let req = client
        .client()
        .post(format!("{base}/always"))
        .body("x")
        .build()
        .unwrap();
    assert_eq!(client.execute(req).await.unwrap().status().as_u16(), 401);
    assert_eq!(rec.seen.lock().unwrap().len(), 2, "exactly one retry");
    assert_eq!(src.broker_requests(), 3, "exactly one refresh");

    // Ten concurrent calls all refused for the same stale token: one refresh in total.
    let stale = src.token().await.unwrap();
    rec.refused.lock().unwrap().push(stale.expose().to_owned());
    rec.calls.store(0, Ordering::SeqCst);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let client = client.clone();
        let url = format!("{base}/listed");
        set.spawn(async move {
            let req = client.client().get(url).build().unwrap();
            client.execute(req).await.unwrap().status().as_u16()
        });
    }
    while let Some(s) = set.join_next().await {
        assert_eq!(s.unwrap(), 200);
    }
    assert_eq!(
        rec.calls.load(Ordering::SeqCst),
        20,
        "ten requests, ten retries"
    );
    assert_eq!(src.broker_requests(), 4, "one shared refresh");
    assert_eq!(issued_count(&b), 4);
}

// ---------------------------------------------------------------------------------------
// The examples
// ---------------------------------------------------------------------------------------

/// `resource_server` and `workload` against `broker serve --dev`: three calls, each 200;
/// the server names the caller; no token is ever printed.
#[tokio::test(flavor = "multi_thread")]
async fn examples_run_against_a_dev_broker() {
    let (Some(workload), Some(resource_server)) =
        (example_bin("workload"), example_bin("resource_server"))
    else {
        assert!(
            !broker_tests::pki::is_ci(),
            "the example binaries could not be built"
        );
        return;
    };
    let b = TestBroker::start_dev();
    let dev_dir = b.dir().join("dev");
    let out = run_broker([
        "dev".as_ref(),
        "token".as_ref(),
        "--dir".as_ref(),
        dev_dir.as_os_str(),
    ]);
    assert!(out.success(), "broker dev token: {out}");
    let jwt = out.stdout.trim().to_owned();
    let jwt_path = dev_dir.join("workload.jwt");
    write_atomically(&jwt_path, &jwt);
    let meta: Value = http_client()
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            b.base_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let issuer = meta["issuer"].as_str().unwrap().to_owned();

    let rs_port = free_port();
    let mut rs = tokio::process::Command::new(&resource_server)
        .args(["--broker", b.base_url(), "--issuer", &issuer])
        .args(["--listen", &format!("127.0.0.1:{rs_port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut rs_out = tokio::io::BufReader::new(rs.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(20), rs_out.read_line(&mut line))
        .await
        .expect("resource_server starts")
        .unwrap();
    assert!(line.starts_with("listening on http://"), "{line}");

    let run = tokio::process::Command::new(&workload)
        .args(["--broker", b.base_url(), "--task", "demo"])
        .arg("--jwt-file")
        .arg(&jwt_path)
        .args(["--resource", &format!("http://127.0.0.1:{rs_port}/hello")])
        .args(["--every", "200ms", "--count", "3"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("workload finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "workload: {stdout}\n{stderr}");
    assert_eq!(
        stdout.lines().filter(|l| l.contains(": 200 OK")).count(),
        3,
        "{stdout}"
    );
    assert!(stdout.contains("hello demo-workload"), "{stdout}");

    rs.start_kill().unwrap();
    let mut rest = String::new();
    rs_out.read_to_string(&mut rest).await.unwrap();
    let mut rs_err = String::new();
    rs.stderr
        .take()
        .unwrap()
        .read_to_string(&mut rs_err)
        .await
        .unwrap();
    let _ = rs.wait().await;
    assert_eq!(
        rest.lines()
            .filter(|l| l.contains("accepted: sub=demo-workload task=demo"))
            .count(),
        3,
        "{rest}"
    );
    let all = format!("{stdout}{stderr}{line}{rest}{rs_err}");
    assert!(!all.contains("eyJ"), "a token was printed: {all}");
    assert!(!all.contains(&jwt), "the workload JWT was printed");
}
