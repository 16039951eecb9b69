//! mTLS refusals (issue 3), one test each. A certificate the TLS layer cannot accept
//! (unknown CA, expired, not yet valid, no client-auth usage) fails the handshake: `curl`
//! exits non-zero with no HTTP answer. Everything else is an HTTP status with an OAuth
//! error. Either way there is exactly one `denied` audit record naming the rule and the
//! source address, and nothing is issued.

use std::time::Duration;

use broker_tests::curl::CurlReply;
use broker_tests::mtls::{
    BOUND_TASK, CORP_CA, PAYMENTS_CN, PAYMENTS_SPIFFE_ID, PROD_CA, mtls_broker,
};
use broker_tests::pki::{DAY, Leaf, LeafSpec};
use broker_tests::{
    IDENTITY, ISSUER, IssuerKey, SUBJECT, TASK, TestBroker, TokenRequest, now_secs, sign,
    workload_claims,
};
use serde_json::Value;

use crate::mtls::{assert_mtls_evidence, assert_no_key_material, curl_token};

/// How long a handshake refusal may take to reach the audit log after curl gave up.
const RECORD_WAIT: Duration = Duration::from_secs(5);

/// The checks every HTTP refusal shares; returns the one `denied` record.
fn assert_http_denial(
    b: &TestBroker,
    r: &CurlReply,
    status: u16,
    error: &str,
    rule: &str,
) -> Value {
    assert_eq!(r.exit, Some(0), "an HTTP answer, not a TLS failure: {r}");
    assert_eq!(r.status, status, "HTTP status: {r}");
    assert_eq!(r.error(), Some(error), "OAuth error: {r}");
    assert!(r.access_token().is_none(), "no token on a refusal: {r}");
    assert!(
        r.body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "an error_description: {r}"
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
        rec["reason"].as_str().is_some_and(|s| !s.is_empty()),
        "audit reason: {rec}"
    );
    rec
}

/// The checks every handshake refusal shares: no HTTP answer, then (asynchronously) one
/// `denied` record, rule `client_certificate_rejected`, whose reason mentions `gist` and
/// whose evidence names the presented certificate `leaf` by its SHA-256 (as openssl
/// computes it). Afterwards the listener still serves a connection without a certificate.
async fn assert_handshake_refused(b: &TestBroker, r: &CurlReply, leaf: &Leaf, gist: &str) -> Value {
    assert!(
        r.no_http_answer(),
        "the TLS handshake should fail (curl exit 35/56, http 000): {r}"
    );
    let rec = b
        .wait_for_record(RECORD_WAIT, |r| r["event"] == "denied")
        .await
        .unwrap_or_else(|| {
            panic!(
                "no denied record within {RECORD_WAIT:?} of a refused handshake; records: {:?}\n--- broker stderr ---\n{}",
                b.records(),
                b.stderr()
            )
        });
    assert_eq!(rec["decision"], "deny", "{rec}");
    assert_eq!(rec["rule"], "client_certificate_rejected", "{rec}");
    assert_eq!(rec["source"], "127.0.0.1", "audit source: {rec}");
    assert_eq!(rec["evidence"]["kind"], "mtls", "{rec}");
    assert_eq!(
        rec["evidence"]["cert_sha256"].as_str(),
        Some(leaf.sha256_hex().as_str()),
        "the refused certificate's fingerprint: {rec}"
    );
    let reason = rec["reason"].as_str().unwrap_or_default();
    assert!(
        reason.to_lowercase().contains(&gist.to_lowercase()),
        "the reason says {gist:?}: {rec}"
    );
    assert!(rec.get("jti").is_none(), "{rec}");

    // The listener is fine; after that round trip, still one record only, nothing issued.
    let ok = b.curl("/healthz").run();
    assert_eq!(ok.status, 200, "the listener still serves: {ok}");
    assert_eq!(
        b.records_of("denied").len(),
        1,
        "{:?}",
        b.records_of("denied")
    );
    assert!(b.records_of("issued").is_empty());
    rec
}

// --- refused at the TLS handshake -------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn certificate_from_an_unknown_ca_fails_the_handshake() {
    let Some((m, b)) = mtls_broker("certificate_from_an_unknown_ca_fails_the_handshake") else {
        return;
    };
    // A CA nobody configured issues a perfectly formed SVID for a registered SPIFFE ID.
    let rogue = m.pki.ca("rogue-ca", "E2E Rogue CA");
    let leaf = rogue.issue(&LeafSpec::client("impostor", PAYMENTS_CN).uri(PAYMENTS_SPIFFE_ID));
    let r = curl_token(&b, Some(&leaf), &TokenRequest::client_credentials(TASK));
    assert_handshake_refused(&b, &r, &leaf, "does not chain to a configured client_ca").await;
    assert_no_key_material(&b, &[&leaf]);
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_certificate_fails_the_handshake() {
    let Some((m, b)) = mtls_broker("expired_certificate_fails_the_handshake") else {
        return;
    };
    let now = now_secs();
    let leaf = m.prod_ca.issue(
        &LeafSpec::client("expired", PAYMENTS_CN)
            .uri(PAYMENTS_SPIFFE_ID)
            .valid(now - 2 * DAY, now - DAY),
    );
    let r = curl_token(&b, Some(&leaf), &TokenRequest::client_credentials(TASK));
    assert_handshake_refused(&b, &r, &leaf, "expired").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn not_yet_valid_certificate_fails_the_handshake() {
    let Some((m, b)) = mtls_broker("not_yet_valid_certificate_fails_the_handshake") else {
        return;
    };
    let now = now_secs();
    let leaf = m.prod_ca.issue(
        &LeafSpec::client("future", PAYMENTS_CN)
            .uri(PAYMENTS_SPIFFE_ID)
            .valid(now + DAY, now + 2 * DAY),
    );
    let r = curl_token(&b, Some(&leaf), &TokenRequest::client_credentials(TASK));
    assert_handshake_refused(&b, &r, &leaf, "not valid yet").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_without_client_auth_usage_fails_the_handshake() {
    let Some((m, b)) = mtls_broker("certificate_without_client_auth_usage_fails_the_handshake")
    else {
        return;
    };
    // An EKU that names only serverAuth: not a client certificate.
    let leaf = m.prod_ca.issue(
        &LeafSpec::client("server-only", PAYMENTS_CN)
            .uri(PAYMENTS_SPIFFE_ID)
            .eku(Some("serverAuth")),
    );
    let r = curl_token(&b, Some(&leaf), &TokenRequest::client_credentials(TASK));
    assert_handshake_refused(&b, &r, &leaf, "client authentication").await;
}

// --- refused with an HTTP answer --------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_without_a_certificate_is_refused() {
    let Some((_m, b)) = mtls_broker("client_credentials_without_a_certificate_is_refused") else {
        return;
    };
    let r = curl_token(&b, None, &TokenRequest::client_credentials(TASK));
    let rec = assert_http_denial(&b, &r, 401, "invalid_client", "client_certificate_required");
    assert!(
        rec.get("identity").is_none(),
        "nobody was identified: {rec}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn spiffe_id_outside_the_cas_trust_domain_is_refused() {
    let Some((m, b)) = mtls_broker("spiffe_id_outside_the_cas_trust_domain_is_refused") else {
        return;
    };
    // The prod CA (trust domain prod.example.org) signs an SVID of another trust domain.
    let foreign = "spiffe://evil.example.org/ns/payments/sa/api";
    let leaf = m
        .prod_ca
        .issue(&LeafSpec::client("foreign", PAYMENTS_CN).uri(foreign));
    let r = curl_token(&b, Some(&leaf), &TokenRequest::client_credentials(TASK));
    let rec = assert_http_denial(
        &b,
        &r,
        401,
        "invalid_client",
        "spiffe_id_outside_trust_domain",
    );
    assert_mtls_evidence(&rec, "mtls", PROD_CA, PAYMENTS_CN, Some(foreign), &leaf);
    assert!(rec.get("identity").is_none(), "{rec}");
    let desc = r.body["error_description"].as_str().unwrap();
    assert!(
        desc.contains("prod.example.org"),
        "names the trust domain: {desc}"
    );
    assert_no_key_material(&b, &[&leaf]);
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_with_two_spiffe_ids_is_refused() {
    let Some((m, b)) = mtls_broker("certificate_with_two_spiffe_ids_is_refused") else {
        return;
    };
    let leaf = m.prod_ca.issue(
        &LeafSpec::client("two-ids", PAYMENTS_CN)
            .uri(PAYMENTS_SPIFFE_ID)
            .uri("spiffe://prod.example.org/ns/payments/sa/other"),
    );
    let r = curl_token(&b, Some(&leaf), &TokenRequest::client_credentials(TASK));
    let rec = assert_http_denial(&b, &r, 401, "invalid_client", "multiple_spiffe_ids");
    assert!(rec.get("identity").is_none(), "{rec}");
    assert_eq!(rec["evidence"]["cert_sha256"], leaf.sha256_hex(), "{rec}");
    assert_eq!(rec["evidence"]["issuer"], PROD_CA, "{rec}");
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_identity_not_in_the_registry_is_refused() {
    let Some((m, b)) = mtls_broker("certificate_identity_not_in_the_registry_is_refused") else {
        return;
    };
    let stranger = "spiffe://prod.example.org/ns/nobody/sa/stranger";
    let leaf = m
        .prod_ca
        .issue(&LeafSpec::client("stranger", "stranger").uri(stranger));
    let r = curl_token(&b, Some(&leaf), &TokenRequest::client_credentials(TASK));
    let rec = assert_http_denial(&b, &r, 403, "unauthorized_client", "unknown_identity");
    assert_mtls_evidence(&rec, "mtls", PROD_CA, "stranger", Some(stranger), &leaf);
    assert!(rec.get("identity").is_none(), "{rec}");
}

#[tokio::test(flavor = "multi_thread")]
async fn company_certificate_with_an_unregistered_cn_is_refused() {
    let Some((m, b)) = mtls_broker("company_certificate_with_an_unregistered_cn_is_refused") else {
        return;
    };
    let leaf = m
        .corp_ca
        .issue(&LeafSpec::client("unregistered", "stranger.corp").dns("stranger.corp.example.org"));
    let r = curl_token(&b, Some(&leaf), &TokenRequest::client_credentials(TASK));
    let rec = assert_http_denial(&b, &r, 403, "unauthorized_client", "unknown_identity");
    assert_mtls_evidence(&rec, "mtls", CORP_CA, "stranger.corp", None, &leaf);
}

#[tokio::test(flavor = "multi_thread")]
async fn require_binding_task_over_the_jwt_path_without_a_certificate_is_refused() {
    let Some((_m, b)) =
        mtls_broker("require_binding_task_over_the_jwt_path_without_a_certificate_is_refused")
    else {
        return;
    };
    let jwt = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
    let r = curl_token(&b, None, &TokenRequest::exchange(&jwt, BOUND_TASK));
    let rec = assert_http_denial(&b, &r, 403, "access_denied", "binding_required");
    assert_eq!(rec["identity"], IDENTITY, "{rec}");
    assert_eq!(rec["task"], BOUND_TASK, "{rec}");
    assert_eq!(rec["evidence"]["kind"], "jwt", "{rec}");
    assert_eq!(rec["evidence"]["issuer"], ISSUER, "{rec}");
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_identity_different_from_the_certificate_identity_is_refused() {
    let Some((m, b)) =
        mtls_broker("jwt_identity_different_from_the_certificate_identity_is_refused")
    else {
        return;
    };
    // payments-api's workload JWT, presented over a connection authenticated as reports-batch.
    let reports = m.reports_client();
    let jwt = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
    let r = curl_token(&b, Some(&reports), &TokenRequest::exchange(&jwt, TASK));
    let rec = assert_http_denial(&b, &r, 403, "access_denied", "identity_mismatch");
    assert_eq!(rec["evidence"]["kind"], "jwt+mtls", "{rec}");
    assert_eq!(rec["evidence"]["subject"], SUBJECT, "{rec}");
    assert_eq!(
        rec["evidence"]["cert_sha256"],
        reports.sha256_hex(),
        "{rec}"
    );
    assert!(
        !r.text.contains(&jwt),
        "the error does not echo the subject token: {r}"
    );
    assert_no_key_material(&b, &[&reports]);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_id_naming_another_identity_is_refused() {
    let Some((m, b)) = mtls_broker("client_id_naming_another_identity_is_refused") else {
        return;
    };
    let leaf: Leaf = m.payments_client();
    let r = curl_token(
        &b,
        Some(&leaf),
        &TokenRequest::client_credentials(TASK).param("client_id", "reports-batch"),
    );
    assert_http_denial(&b, &r, 401, "invalid_client", "client_id_mismatch");
}

/// A client assertion proving payments-api over a connection whose certificate proves
/// reports-batch: two client credentials naming different identities are `invalid_client`.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_assertion_and_certificate_naming_different_identities_are_refused() {
    let Some((m, b)) =
        mtls_broker("a_client_assertion_and_certificate_naming_different_identities_are_refused")
    else {
        return;
    };
    let reports = m.reports_client();
    let mut claims = workload_claims(SUBJECT);
    claims["aud"] = serde_json::json!(broker_tests::BROKER_ISSUER);
    claims["jti"] = serde_json::json!("assertion-mismatch-1");
    let assertion = sign(IssuerKey::Rsa, &claims);
    let req = TokenRequest::client_credentials(TASK)
        .param(
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        )
        .param("client_assertion", &assertion);
    let r = curl_token(&b, Some(&reports), &req);
    let rec = assert_http_denial(&b, &r, 401, "invalid_client", "client_auth_mismatch");
    assert_eq!(rec["evidence"]["kind"], "jwt+mtls", "{rec}");
    assert_eq!(rec["evidence"]["subject"], SUBJECT, "{rec}");
    assert!(
        !r.text.contains(&assertion),
        "the assertion is not echoed: {r}"
    );
    assert_no_key_material(&b, &[&reports]);
}
