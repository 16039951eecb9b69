//! Denials: one test per refusal rule of issue 2. Each asserts the HTTP status, the OAuth
//! error code, that no token came back, and a `denied` audit record naming the rule, the
//! error and the caller's source address, with no token in the log.

use broker_tests::{
    DEV_LEDGER, EXPIRED_IDENTITY, EXPIRED_SUBJECT, IDENTITY, ISSUER, IssuerKey, OFFICE_TASK,
    Options, RSA_KID, Reply, SUBJECT, TASK, TestBroker, TokenRequest, UNKNOWN_SUBJECT, audit_bytes,
    contains_bytes, hs256_with_issuer_public_key, now_secs, sign, sign_with_kid, unsigned,
    with_bad_signature, workload_claims,
};
use serde_json::{Value, json};

/// The checks every denial shares; returns the `denied` record.
fn assert_denied(b: &TestBroker, reply: &Reply, status: u16, error: &str, rule: &str) -> Value {
    assert_eq!(reply.status, status, "HTTP status; body: {}", reply.text);
    assert_eq!(
        reply.error(),
        Some(error),
        "OAuth error; body: {}",
        reply.text
    );
    assert!(
        reply.access_token().is_none(),
        "no token on a denial: {}",
        reply.text
    );
    assert!(
        reply.body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "an error_description: {}",
        reply.text
    );
    assert!(b.records_of("issued").is_empty(), "nothing was issued");
    let denied = b.records_of("denied");
    assert_eq!(denied.len(), 1, "exactly one denied record: {denied:?}");
    let rec = denied.into_iter().next().unwrap();
    assert_eq!(rec["decision"], "deny", "{rec}");
    assert_eq!(rec["rule"], rule, "audit rule: {rec}");
    assert_eq!(rec["error"], error, "audit error: {rec}");
    assert_eq!(rec["source"], "127.0.0.1", "audit source: {rec}");
    assert!(rec.get("jti").is_none(), "a denial has no jti: {rec}");
    assert!(
        rec["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "audit reason: {rec}"
    );
    rec
}

/// Exchanges `subject_token` for [`TASK`] and checks a JWT-authentication refusal
/// (400 `invalid_grant`), and that the rejected token is neither echoed nor logged.
async fn assert_bad_subject_token(subject_token: &str, rule: &str) -> Value {
    let b = TestBroker::start(Options::default());
    let reply = b.token(&TokenRequest::exchange(subject_token, TASK)).await;
    let rec = assert_denied(&b, &reply, 400, "invalid_grant", rule);
    assert!(
        !reply.text.contains(subject_token),
        "the error echoes the subject token"
    );
    let log = audit_bytes(&b.audit_dir());
    assert!(
        !contains_bytes(&log, subject_token.as_bytes()),
        "the subject token is in the audit log"
    );
    if let Some(sig) = subject_token.rsplit('.').next().filter(|s| s.len() > 10) {
        assert!(
            !contains_bytes(&log, sig.as_bytes()),
            "a signature is in the audit log"
        );
    }
    rec
}

/// A policy-stage refusal for a valid workload JWT of `subject`.
async fn policy_denial(
    subject: &str,
    req: impl FnOnce(TokenRequest) -> TokenRequest,
) -> (TestBroker, Reply) {
    let b = TestBroker::start(Options::default());
    let token = sign(IssuerKey::Rsa, &workload_claims(subject));
    let reply = b.token(&req(TokenRequest::exchange(&token, TASK))).await;
    (b, reply)
}

fn assert_jwt_evidence(rec: &Value, subject: &str) {
    assert_eq!(rec["evidence"]["kind"], "jwt", "{rec}");
    assert_eq!(rec["evidence"]["issuer"], ISSUER, "{rec}");
    assert_eq!(rec["evidence"]["subject"], subject, "{rec}");
    assert_eq!(rec["evidence"]["kid"], RSA_KID, "{rec}");
}

// --- the subject token ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_alg_none_is_rejected() {
    assert_bad_subject_token(
        &unsigned(&workload_claims(SUBJECT)),
        "algorithm_not_allowed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hs256_signed_with_the_issuers_public_key_is_rejected() {
    let t = hs256_with_issuer_public_key(&workload_claims(SUBJECT));
    assert_bad_subject_token(&t, "algorithm_not_allowed").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_signature_is_rejected() {
    let t = with_bad_signature(&sign(IssuerKey::Rsa, &workload_claims(SUBJECT)));
    assert_bad_subject_token(&t, "bad_signature").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_subject_token_is_rejected() {
    let now = now_secs();
    let mut c = workload_claims(SUBJECT);
    c["iat"] = json!(now - 7200);
    c["nbf"] = json!(now - 7200);
    c["exp"] = json!(now - 600); // far beyond the issuer's 5 s leeway
    assert_bad_subject_token(&sign(IssuerKey::Rsa, &c), "token_expired").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn subject_token_not_yet_valid_is_rejected() {
    let now = now_secs();
    let mut c = workload_claims(SUBJECT);
    c["nbf"] = json!(now + 600);
    c["exp"] = json!(now + 1200);
    assert_bad_subject_token(&sign(IssuerKey::Rsa, &c), "token_not_yet_valid").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_issuer_is_rejected() {
    let mut c = workload_claims(SUBJECT);
    c["iss"] = json!("https://evil.example.org");
    assert_bad_subject_token(&sign(IssuerKey::Rsa, &c), "untrusted_issuer").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_audience_is_rejected() {
    let mut c = workload_claims(SUBJECT);
    c["aud"] = json!(["some-other-service"]);
    assert_bad_subject_token(&sign(IssuerKey::Rsa, &c), "wrong_audience").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_kid_is_rejected() {
    let t = sign_with_kid(IssuerKey::Rsa, "no-such-kid", &workload_claims(SUBJECT));
    assert_bad_subject_token(&t, "unknown_kid").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_subject_token_is_rejected() {
    // Three base64url parts, but the "header" is not JSON.
    let t = format!(
        "bm90LWpzb24.{}.c2ln",
        sign(IssuerKey::Rsa, &workload_claims(SUBJECT))
            .split('.')
            .nth(1)
            .unwrap()
    );
    assert_bad_subject_token(&t, "token_malformed").await;
}

// --- the registry and the task policy ---------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn unknown_subject_is_rejected() {
    let (b, reply) = policy_denial(UNKNOWN_SUBJECT, |r| r).await;
    let rec = assert_denied(&b, &reply, 403, "unauthorized_client", "unknown_identity");
    assert_jwt_evidence(&rec, UNKNOWN_SUBJECT);
    assert!(
        rec.get("identity").is_none(),
        "no identity was matched: {rec}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_registration_is_rejected() {
    let b = TestBroker::start(Options::default());
    let token = sign(IssuerKey::Rsa, &workload_claims(EXPIRED_SUBJECT));
    let reply = b
        .token(&TokenRequest::exchange(&token, "ledger-read"))
        .await;
    let rec = assert_denied(&b, &reply, 403, "access_denied", "registration_expired");
    assert_eq!(rec["identity"], EXPIRED_IDENTITY);
    assert_jwt_evidence(&rec, EXPIRED_SUBJECT);
    let desc = reply.body["error_description"].as_str().unwrap();
    assert!(
        desc.contains("2020-01-01"),
        "the description says when it expired: {desc}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_task_is_rejected() {
    let b = TestBroker::start(Options::default());
    let token = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
    let reply = b
        .token(&TokenRequest::exchange(&token, "no-such-task"))
        .await;
    let rec = assert_denied(&b, &reply, 400, "invalid_request", "unknown_task");
    assert_eq!(rec["identity"], IDENTITY);
    assert_eq!(rec["task"], "no-such-task");
}

#[tokio::test(flavor = "multi_thread")]
async fn scope_beyond_the_task_is_rejected() {
    let (b, reply) = policy_denial(SUBJECT, |r| r.scope("ledger:read ledger:admin")).await;
    let rec = assert_denied(&b, &reply, 400, "invalid_scope", "scope_not_allowed");
    assert_eq!(rec["identity"], IDENTITY);
    assert_eq!(rec["task"], TASK);
}

#[tokio::test(flavor = "multi_thread")]
async fn ttl_beyond_max_ttl_is_rejected() {
    let (b, reply) = policy_denial(SUBJECT, |r| r.ttl(601)).await;
    let rec = assert_denied(&b, &reply, 400, "invalid_request", "ttl_too_long");
    assert_eq!(rec["identity"], IDENTITY);
}

#[tokio::test(flavor = "multi_thread")]
async fn audience_of_another_environment_is_rejected() {
    let (b, reply) = policy_denial(SUBJECT, |r| r.audience(DEV_LEDGER)).await;
    let rec = assert_denied(&b, &reply, 400, "invalid_target", "audience_environment");
    assert_eq!(rec["identity"], IDENTITY);
    assert_eq!(rec["audience"], DEV_LEDGER);
}

#[tokio::test(flavor = "multi_thread")]
async fn source_outside_source_cidrs_is_rejected() {
    let b = TestBroker::start(Options::default());
    let token = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
    let reply = b.token(&TokenRequest::exchange(&token, OFFICE_TASK)).await;
    let rec = assert_denied(&b, &reply, 403, "access_denied", "source_not_allowed");
    assert_eq!(rec["identity"], IDENTITY);
    assert_eq!(rec["task"], OFFICE_TASK);
}

// --- the request itself -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn oversized_body_is_rejected() {
    let b = TestBroker::start(Options {
        max_body_bytes: Some(4096),
        ..Options::default()
    });
    let token = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
    let req = TokenRequest::exchange(&token, TASK).param("padding", &"x".repeat(8192));
    let reply = b.token(&req).await;
    assert_denied(&b, &reply, 413, "invalid_request", "body_too_large");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_form_data_is_rejected() {
    let b = TestBroker::start(Options::default());
    let token = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
    let form = "application/x-www-form-urlencoded";
    let good = serde_urlencoded_pairs(&TokenRequest::exchange(&token, TASK).params);
    let cases: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        (
            "a repeated parameter",
            Some(form),
            format!("{good}&task=other").into_bytes(),
        ),
        (
            "not a form at all",
            Some(form),
            b"\x00\xff\xfe{{{%%%".to_vec(),
        ),
        (
            "JSON instead of a form",
            Some("application/json"),
            json!({"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange"})
                .to_string()
                .into_bytes(),
        ),
        ("no content type", None, good.clone().into_bytes()),
        (
            "no subject_token",
            Some(form),
            format!(
                "grant_type={}&subject_token_type={}&task={TASK}",
                enc(broker_tests::GRANT_TOKEN_EXCHANGE),
                enc(broker_tests::TOKEN_TYPE_JWT)
            )
            .into_bytes(),
        ),
    ];
    let n = cases.len();
    for (i, (what, ct, body)) in cases.into_iter().enumerate() {
        let reply = b.token_raw(ct, body).await;
        assert_eq!(reply.status, 400, "{what}: status; body {}", reply.text);
        assert_eq!(
            reply.error(),
            Some("invalid_request"),
            "{what}: {}",
            reply.text
        );
        assert!(reply.access_token().is_none(), "{what}: no token");
        let denied = b.records_of("denied");
        assert_eq!(denied.len(), i + 1, "{what}: one denied record per request");
        let rec = denied.last().unwrap();
        assert_eq!(rec["rule"], "malformed_request", "{what}: {rec}");
        assert_eq!(rec["error"], "invalid_request", "{what}: {rec}");
        assert_eq!(rec["source"], "127.0.0.1", "{what}: {rec}");
    }
    assert!(b.records_of("issued").is_empty());
    assert_eq!(b.records_of("denied").len(), n);
    assert!(!contains_bytes(
        &audit_bytes(&b.audit_dir()),
        token.as_bytes()
    ));
}

/// Percent-encodes a form value (RFC 3986 unreserved characters kept).
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn serde_urlencoded_pairs(params: &[(String, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}
