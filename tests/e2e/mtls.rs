//! mTLS issuance (issue 3): the real `curl` presents a client certificate made by the
//! `openssl` CLI; the broker issues a token bound to it (`cnf.x5t#S256`, RFC 8705) that
//! verifies with the published JWKS, and records the certificate's SPIFFE ID and SHA-256
//! fingerprint (never its key). Also: identities proved by subject CN and DNS SAN, the
//! token-exchange grant over mTLS, `require_binding` tasks and the RFC 8705 metadata.
//!
//! Every test needs `openssl` and `curl`: skipped with a note when they are missing,
//! failed when `CI=true`.

use broker_tests::curl::CurlReply;
use broker_tests::mtls::{
    BOUND_TASK, CORP_CA, INVENTORY_IDENTITY, INVENTORY_TASK, PAYMENTS_CN, PAYMENTS_SPIFFE_ID,
    PROD_CA, REPORTS_AUDIENCE, REPORTS_CN, REPORTS_IDENTITY, REPORTS_TASK, mtls_broker,
};
use broker_tests::pki::Leaf;
use broker_tests::{
    BROKER_ISSUER, IDENTITY, ISSUER, IssuerKey, PROD_LEDGER, SUBJECT, TASK, TASK_MAX_TTL,
    TASK_SCOPES, TOKEN_TYPE_ACCESS_TOKEN, TestBroker, TokenRequest, Verified, audit_bytes,
    contains_bytes, now_secs, sign, workload_claims,
};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

/// The token endpoint.
pub(crate) const TOKEN: &str = "/oauth2/token";

/// `POST /oauth2/token` with `req` over TLS, presenting `cert` (or no certificate).
pub(crate) fn curl_token(b: &TestBroker, cert: Option<&Leaf>, req: &TokenRequest) -> CurlReply {
    let c = b.curl(TOKEN).form(&req.params);
    match cert {
        Some(leaf) => c.client_cert(leaf),
        None => c.no_client_cert(),
    }
    .run()
}

/// Asserts a successful token response and returns the access token.
fn token_of(r: &CurlReply) -> String {
    assert_eq!(r.exit, Some(0), "curl failed: {r}");
    assert_eq!(r.status, 200, "token request failed: {r}");
    assert_eq!(r.body["token_type"], "Bearer", "{r}");
    assert_eq!(r.body["issued_token_type"], TOKEN_TYPE_ACCESS_TOKEN, "{r}");
    assert!(r.body["expires_in"].is_u64(), "expires_in: {r}");
    r.access_token()
        .unwrap_or_else(|| panic!("no access_token: {r}"))
        .to_owned()
}

/// The one `issued` record of `jti`.
fn issued_record(b: &TestBroker, jti: &str) -> Value {
    let found: Vec<Value> = b
        .records_of("issued")
        .into_iter()
        .filter(|r| r["jti"] == jti)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one issued record for {jti}: {found:?}"
    );
    found.into_iter().next().unwrap()
}

/// The `cnf` claim of a certificate-bound token for `leaf`, its thumbprint computed by the
/// openssl CLI.
fn assert_bound_to(v: &Verified, leaf: &Leaf) {
    let x5t = leaf.x5t_s256();
    assert_eq!(
        v.claims["cnf"],
        json!({ "x5t#S256": x5t }),
        "cnf is exactly the RFC 8705 thumbprint `openssl x509 -outform der | openssl dgst -sha256` gives"
    );
}

/// mTLS evidence of a record: which CA, the leaf's CN and SPIFFE ID, the sha256sum of the
/// DER leaf.
pub(crate) fn assert_mtls_evidence(
    rec: &Value,
    kind: &str,
    ca: &str,
    cn: &str,
    spiffe_id: Option<&str>,
    leaf: &Leaf,
) {
    let e = &rec["evidence"];
    assert_eq!(e["kind"], kind, "evidence kind: {rec}");
    if kind == "mtls" {
        assert_eq!(
            e["issuer"], ca,
            "evidence issuer is the client_ca name: {rec}"
        );
        assert_eq!(e["subject"], cn, "evidence subject is the CN: {rec}");
    }
    match spiffe_id {
        Some(id) => assert_eq!(e["spiffe_id"], id, "evidence spiffe_id: {rec}"),
        None => assert!(
            e.get("spiffe_id").is_none_or(Value::is_null),
            "no spiffe_id for a certificate without one: {rec}"
        ),
    }
    assert_eq!(
        e["cert_sha256"],
        leaf.sha256_hex(),
        "evidence cert_sha256 = `openssl x509 -outform der | sha256sum`: {rec}"
    );
}

/// Nothing secret of `leaf` (its private key) and no PEM block at all in the audit log
/// or the broker's own logs.
pub(crate) fn assert_no_key_material(b: &TestBroker, leaves: &[&Leaf]) {
    let log = audit_bytes(&b.audit_dir());
    let stderr = b.stderr();
    for (what, bytes) in [
        ("audit log", &log[..]),
        ("broker stderr", stderr.as_bytes()),
    ] {
        assert!(
            !contains_bytes(bytes, b"-----BEGIN"),
            "a PEM block is in the {what}"
        );
        assert!(
            !contains_bytes(bytes, b"PRIVATE KEY"),
            "private key material is in the {what}"
        );
        for leaf in leaves {
            for line in leaf.key_pem().lines().filter(|l| !l.starts_with("-----")) {
                assert!(
                    !contains_bytes(bytes, line.as_bytes()),
                    "a line of {}'s private key is in the {what}",
                    leaf.name
                );
            }
        }
    }
}

fn u64_claim(c: &Value, name: &str) -> u64 {
    c[name]
        .as_u64()
        .unwrap_or_else(|| panic!("claim {name} is not a NumericDate: {c}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_over_mtls_issues_a_certificate_bound_token() {
    let Some((m, b)) = mtls_broker("client_credentials_over_mtls_issues_a_certificate_bound_token")
    else {
        return;
    };
    let leaf = m.payments_client();

    let before = now_secs();
    let r = curl_token(&b, Some(&leaf), &TokenRequest::client_credentials(TASK));
    let after = now_secs();
    let token = token_of(&r);
    let scope = TASK_SCOPES.join(" ");
    assert_eq!(r.body["scope"], scope.as_str(), "{r}");
    assert_eq!(r.body["expires_in"], TASK_MAX_TTL, "{r}");

    // Verifies with the published JWKS (fetched over TLS, trusting only the test server CA).
    let v = b.verify_access_token(&token, PROD_LEDGER).await;
    assert_eq!(v.header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(v.header.alg, Algorithm::EdDSA);
    let c = &v.claims;
    assert_eq!(c["iss"], BROKER_ISSUER);
    assert_eq!(c["sub"], IDENTITY);
    assert_eq!(c["client_id"], IDENTITY);
    assert_eq!(c["aud"], PROD_LEDGER);
    assert_eq!(c["scope"], scope.as_str());
    assert_eq!(c["task"], TASK);
    assert_eq!(c["env"], "prod");
    let iat = u64_claim(c, "iat");
    assert!(
        (before.saturating_sub(2)..=after + 2).contains(&iat),
        "iat {iat} is now"
    );
    assert_eq!(u64_claim(c, "exp"), iat + TASK_MAX_TTL);
    assert_bound_to(&v, &leaf);

    // The issued record names the certificate, by fingerprint.
    let rec = issued_record(&b, c["jti"].as_str().unwrap());
    assert_eq!(rec["decision"], "allow", "{rec}");
    assert_eq!(rec["identity"], IDENTITY, "{rec}");
    assert_eq!(rec["task"], TASK, "{rec}");
    assert_eq!(rec["audience"], PROD_LEDGER, "{rec}");
    assert_eq!(rec["exp"], c["exp"], "{rec}");
    assert_eq!(rec["source"], "127.0.0.1", "{rec}");
    assert_mtls_evidence(
        &rec,
        "mtls",
        PROD_CA,
        PAYMENTS_CN,
        Some(PAYMENTS_SPIFFE_ID),
        &leaf,
    );

    // `client_id`, when sent, must name the identity the certificate proves (it does).
    let r = curl_token(
        &b,
        Some(&leaf),
        &TokenRequest::client_credentials(TASK).param("client_id", IDENTITY),
    );
    let token2 = token_of(&r);

    // Never a token or key material in the logs.
    let log = audit_bytes(&b.audit_dir());
    for t in [&token, &token2] {
        assert!(!contains_bytes(&log, t.as_bytes()), "a token is in the log");
    }
    assert_no_key_material(&b, &[&leaf]);
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_requests_are_narrowed_by_the_same_policy() {
    let Some((m, b)) = mtls_broker("mtls_requests_are_narrowed_by_the_same_policy") else {
        return;
    };
    let leaf = m.payments_client();
    let r = curl_token(
        &b,
        Some(&leaf),
        &TokenRequest::client_credentials(TASK)
            .audience(PROD_LEDGER)
            .scope("ledger:read")
            .ttl(60),
    );
    let token = token_of(&r);
    assert_eq!(r.body["scope"], "ledger:read", "{r}");
    assert_eq!(r.body["expires_in"], 60, "{r}");
    let v = b.verify_access_token(&token, PROD_LEDGER).await;
    assert_eq!(v.claims["scope"], "ledger:read");
    assert_eq!(
        u64_claim(&v.claims, "exp"),
        u64_claim(&v.claims, "iat") + 60
    );
    assert_bound_to(&v, &leaf);

    // Asking for more than the task allows is an error, never a silent widening.
    let r = curl_token(
        &b,
        Some(&leaf),
        &TokenRequest::client_credentials(TASK).scope("ledger:read ledger:admin"),
    );
    assert_eq!(r.status, 400, "{r}");
    assert_eq!(r.error(), Some("invalid_scope"), "{r}");
    let r = curl_token(
        &b,
        Some(&leaf),
        &TokenRequest::client_credentials(TASK).ttl(TASK_MAX_TTL + 1),
    );
    assert_eq!(r.status, 400, "{r}");
    assert_eq!(r.error(), Some("invalid_request"), "{r}");
    let denied = b.records_of("denied");
    let rules: Vec<&Value> = denied.iter().map(|d| &d["rule"]).collect();
    assert_eq!(
        rules,
        [&json!("scope_not_allowed"), &json!("ttl_too_long")],
        "{denied:?}"
    );
    for d in &denied {
        assert_eq!(d["identity"], IDENTITY, "{d}");
        assert_mtls_evidence(
            d,
            "mtls",
            PROD_CA,
            PAYMENTS_CN,
            Some(PAYMENTS_SPIFFE_ID),
            &leaf,
        );
    }

    // Another certificate of the same workload: same identity, its own binding.
    let other = m.payments_client_named("payments-second");
    let r = curl_token(&b, Some(&other), &TokenRequest::client_credentials(TASK));
    let v2 = b.verify_access_token(&token_of(&r), PROD_LEDGER).await;
    assert_eq!(v2.claims["sub"], IDENTITY);
    assert_bound_to(&v2, &other);
    assert_ne!(
        v.claims["cnf"], v2.claims["cnf"],
        "each certificate its own cnf"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn company_certificates_prove_identities_by_subject_cn_and_dns_san() {
    let Some((m, b)) =
        mtls_broker("company_certificates_prove_identities_by_subject_cn_and_dns_san")
    else {
        return;
    };

    // Subject CN → reports-batch.
    let reports = m.reports_client();
    let r = curl_token(
        &b,
        Some(&reports),
        &TokenRequest::client_credentials(REPORTS_TASK),
    );
    let v = b.verify_access_token(&token_of(&r), REPORTS_AUDIENCE).await;
    assert_eq!(v.claims["sub"], REPORTS_IDENTITY);
    assert_eq!(v.claims["scope"], "reports:read");
    assert_bound_to(&v, &reports);
    let rec = issued_record(&b, v.claims["jti"].as_str().unwrap());
    assert_eq!(rec["identity"], REPORTS_IDENTITY);
    assert_mtls_evidence(&rec, "mtls", CORP_CA, REPORTS_CN, None, &reports);

    // DNS SAN → inventory-svc.
    let inventory = m.inventory_client();
    let r = curl_token(
        &b,
        Some(&inventory),
        &TokenRequest::client_credentials(INVENTORY_TASK),
    );
    let v = b.verify_access_token(&token_of(&r), PROD_LEDGER).await;
    assert_eq!(v.claims["sub"], INVENTORY_IDENTITY);
    assert_bound_to(&v, &inventory);
    let rec = issued_record(&b, v.claims["jti"].as_str().unwrap());
    assert_eq!(rec["identity"], INVENTORY_IDENTITY);
    assert_mtls_evidence(&rec, "mtls", CORP_CA, "inventory", None, &inventory);

    // A certificate proves only its own identity's tasks.
    let r = curl_token(&b, Some(&reports), &TokenRequest::client_credentials(TASK));
    assert_eq!(r.status, 400, "{r}");
    assert_eq!(r.error(), Some("invalid_request"), "{r}");
    assert_no_key_material(&b, &[&reports, &inventory]);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_exchange_over_mtls_is_bound_to_the_certificate() {
    let Some((m, b)) = mtls_broker("token_exchange_over_mtls_is_bound_to_the_certificate") else {
        return;
    };
    let leaf = m.payments_client();
    let jwt = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));

    // Over mTLS: the JWT and the certificate prove the same identity → bound token.
    let r = curl_token(&b, Some(&leaf), &TokenRequest::exchange(&jwt, TASK));
    let v = b.verify_access_token(&token_of(&r), PROD_LEDGER).await;
    assert_eq!(v.claims["sub"], IDENTITY);
    assert_bound_to(&v, &leaf);
    let rec = issued_record(&b, v.claims["jti"].as_str().unwrap());
    assert_eq!(rec["evidence"]["kind"], "jwt+mtls", "{rec}");
    assert_eq!(rec["evidence"]["issuer"], ISSUER, "the JWT's issuer: {rec}");
    assert_eq!(rec["evidence"]["subject"], SUBJECT, "{rec}");
    assert_mtls_evidence(
        &rec,
        "jwt+mtls",
        PROD_CA,
        PAYMENTS_CN,
        Some(PAYMENTS_SPIFFE_ID),
        &leaf,
    );

    // Over TLS without a client certificate: the JWT path still works, as a bearer token.
    let r = curl_token(&b, None, &TokenRequest::exchange(&jwt, TASK));
    let v = b.verify_access_token(&token_of(&r), PROD_LEDGER).await;
    assert!(
        v.claims.get("cnf").is_none(),
        "no cnf without a certificate: {}",
        v.claims
    );
    let rec = issued_record(&b, v.claims["jti"].as_str().unwrap());
    assert_eq!(rec["evidence"]["kind"], "jwt", "{rec}");
    assert_no_key_material(&b, &[&leaf]);
}

#[tokio::test(flavor = "multi_thread")]
async fn require_binding_task_is_issued_over_mtls() {
    let Some((m, b)) = mtls_broker("require_binding_task_is_issued_over_mtls") else {
        return;
    };
    let leaf = m.payments_client();
    // client_credentials over mTLS.
    let r = curl_token(
        &b,
        Some(&leaf),
        &TokenRequest::client_credentials(BOUND_TASK),
    );
    let v = b.verify_access_token(&token_of(&r), PROD_LEDGER).await;
    assert_eq!(v.claims["task"], BOUND_TASK);
    assert_bound_to(&v, &leaf);
    // The JWT path over mTLS is bound too, so it may have the task.
    let jwt = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
    let r = curl_token(&b, Some(&leaf), &TokenRequest::exchange(&jwt, BOUND_TASK));
    let v = b.verify_access_token(&token_of(&r), PROD_LEDGER).await;
    assert_bound_to(&v, &leaf);
    assert!(
        b.records_of("denied").is_empty(),
        "{:?}",
        b.records_of("denied")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_advertises_certificate_bound_tokens() {
    let Some((_m, b)) = mtls_broker("metadata_advertises_certificate_bound_tokens") else {
        return;
    };
    let r = b.curl("/.well-known/oauth-authorization-server").run();
    assert_eq!(r.status, 200, "{r}");
    let md = &r.body;
    assert_eq!(
        md["tls_client_certificate_bound_access_tokens"],
        json!(true),
        "RFC 8705 §3.3: {md}"
    );
    let methods = md["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap_or_else(|| panic!("token_endpoint_auth_methods_supported: {md}"));
    assert!(
        methods.contains(&json!("tls_client_auth")),
        "RFC 8705 §2.1.1 tls_client_auth: {md}"
    );
    let grants = md["grant_types_supported"]
        .as_array()
        .unwrap_or_else(|| panic!("grant_types_supported: {md}"));
    assert!(grants.contains(&json!("client_credentials")), "{md}");
    assert_eq!(md["issuer"], BROKER_ISSUER, "{md}");
}

/// A `cert_subject` matcher bound to a CA (`ca = "corp-ca"`) is proved only by a
/// certificate of that CA: the same subject CN from the other configured CA is refused
/// (without `ca`, any configured CA could vouch for the name).
#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_matcher_bound_to_a_ca_refuses_the_same_name_from_another_ca() {
    use broker_tests::pki::LeafSpec;
    if !broker_tests::pki::tools_present(
        "a_certificate_matcher_bound_to_a_ca_refuses_the_same_name_from_another_ca",
        &["openssl", "curl"],
    ) {
        return;
    }
    let m = broker_tests::mtls::Mtls::new();
    let mut options = m.options();
    for (name, text) in &mut options.policies {
        if name == "reports-batch.toml" {
            let bound = text.replace(
                &format!("cert_subject = \"{REPORTS_CN}\""),
                &format!("cert_subject = \"{REPORTS_CN}\"\nca = \"{CORP_CA}\""),
            );
            assert_ne!(&bound, text, "test setup: the matcher is in the policy");
            *text = bound;
        }
    }
    let b = TestBroker::start(options);

    // The genuine company certificate proves the identity.
    let reports = m.reports_client();
    let r = curl_token(
        &b,
        Some(&reports),
        &TokenRequest::client_credentials(REPORTS_TASK),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let v = b.verify_access_token(&token_of(&r), REPORTS_AUDIENCE).await;
    assert_eq!(v.claims["sub"], REPORTS_IDENTITY);

    // The same CN from the SPIFFE CA (trusted by the broker, but not named) does not.
    let impostor = m
        .prod_ca
        .issue(&LeafSpec::client("reports-impostor", REPORTS_CN));
    let r = curl_token(
        &b,
        Some(&impostor),
        &TokenRequest::client_credentials(REPORTS_TASK),
    );
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.body["error"], "unauthorized_client", "{}", r.text);
    let denied = b.records_of("denied");
    let last = denied.last().expect("a denied record");
    assert_eq!(last["rule"], "unknown_identity", "{last}");
    assert!(
        last["reason"].as_str().unwrap().contains(PROD_CA),
        "the reason names the CA: {last}"
    );
}

/// An RFC 7523 client assertion for the workload's own identity (`aud` = the broker's
/// issuer, a fresh `jti`) over mTLS with that workload's certificate: `client_credentials`
/// issues a token bound to the certificate, recorded with both credentials.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_assertion_and_certificate_of_one_identity_issue_a_bound_token() {
    let Some((m, b)) =
        mtls_broker("a_client_assertion_and_certificate_of_one_identity_issue_a_bound_token")
    else {
        return;
    };
    let leaf = m.payments_client();
    let mut claims = workload_claims(SUBJECT);
    claims["aud"] = json!(BROKER_ISSUER);
    claims["jti"] = json!("assertion-mtls-1");
    let assertion = sign(IssuerKey::Rsa, &claims);
    let req = TokenRequest::client_credentials(TASK)
        .param(
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        )
        .param("client_assertion", &assertion);
    let r = curl_token(&b, Some(&leaf), &req);
    let token = token_of(&r);
    let v = b.verify_access_token(&token, PROD_LEDGER).await;
    assert_eq!(v.claims["sub"], IDENTITY);
    assert_bound_to(&v, &leaf);
    let issued = b.records_of("issued");
    assert_eq!(issued[0]["evidence"]["kind"], "jwt+mtls", "{}", issued[0]);
    assert_eq!(issued[0]["evidence"]["subject"], SUBJECT);
    // The same assertion again: single-use.
    let r = curl_token(&b, Some(&leaf), &req);
    assert_eq!(r.status, 401, "{r}");
    assert_eq!(r.error(), Some("invalid_client"), "{r}");
    assert_eq!(
        b.records_of("denied").last().unwrap()["rule"],
        "token_replayed"
    );
}
