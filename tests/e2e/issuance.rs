//! Issuance: a workload JWT is exchanged for an access token that verifies with any JOSE
//! library from the broker's published JWKS, carries exactly the RFC 9068 claims the
//! policy grants, and has a matching `issued` audit record that holds no token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use broker_tests::{
    BROKER_ISSUER, CI_IDENTITY, CI_SUBJECT, EC_KID, IDENTITY, ISSUER, IssuerKey, Options,
    PROD_LEDGER, RSA_KID, Reply, SUBJECT, TASK, TASK_MAX_TTL, TASK_SCOPES, TOKEN_TYPE_ACCESS_TOKEN,
    TestBroker, TokenRequest, Verified, audit_bytes, ci_policy, contains_bytes, now_secs, sign,
    workload_claims,
};
use jsonwebtoken::Algorithm;
use serde_json::Value;

/// Asserts the token response shape and returns the access token.
fn token_of(reply: &Reply) -> &str {
    assert_eq!(reply.status, 200, "token exchange failed: {}", reply.text);
    assert_eq!(reply.body["token_type"], "Bearer");
    assert_eq!(reply.body["issued_token_type"], TOKEN_TYPE_ACCESS_TOKEN);
    assert!(
        reply.body["expires_in"].is_u64(),
        "expires_in: {}",
        reply.text
    );
    assert!(reply.body["scope"].is_string(), "scope: {}", reply.text);
    reply.access_token().expect("access_token")
}

/// The one `issued` record with `jti`.
fn issued_record(b: &TestBroker, jti: &str) -> Value {
    let mut found: Vec<Value> = b
        .records_of("issued")
        .into_iter()
        .filter(|r| r["jti"] == jti)
        .collect();
    assert_eq!(found.len(), 1, "exactly one issued record for jti {jti}");
    found.remove(0)
}

fn u64_claim(claims: &Value, name: &str) -> u64 {
    claims[name]
        .as_u64()
        .unwrap_or_else(|| panic!("claim {name} is not a NumericDate: {claims}"))
}

/// Checks the header and every claim of a token minted for [`IDENTITY`] / [`TASK`].
async fn check_token(b: &TestBroker, v: &Verified, scope: &str, ttl: u64, before: u64, after: u64) {
    // Header.
    assert_eq!(v.header.typ.as_deref(), Some("at+jwt"), "typ");
    assert_eq!(v.header.alg, Algorithm::EdDSA, "alg");
    let kid = v.header.kid.clone().expect("kid");
    let jwks = b.jwks().await;
    assert!(
        jwks.keys
            .iter()
            .any(|k| k.common.key_id.as_deref() == Some(kid.as_str())),
        "kid {kid} in the JWKS"
    );

    // Claims.
    let c = &v.claims;
    assert_eq!(c["iss"], BROKER_ISSUER);
    assert_eq!(c["sub"], IDENTITY);
    assert_eq!(c["client_id"], IDENTITY);
    assert!(
        c["aud"].is_string(),
        "aud is exactly one string, got {}",
        c["aud"]
    );
    assert_eq!(c["aud"], PROD_LEDGER);
    assert_eq!(c["scope"], scope);
    assert_eq!(c["task"], TASK);
    assert_eq!(c["env"], "prod");
    let jti = c["jti"].as_str().expect("jti");
    let raw = URL_SAFE_NO_PAD
        .decode(jti)
        .unwrap_or_else(|e| panic!("jti {jti} is not base64url: {e}"));
    assert_eq!(raw.len(), 16, "jti is 128 bits");
    let iat = u64_claim(c, "iat");
    let nbf = u64_claim(c, "nbf");
    let exp = u64_claim(c, "exp");
    assert!(
        (before.saturating_sub(2)..=after + 2).contains(&iat),
        "iat {iat} is now ({before}..{after})"
    );
    assert!(nbf <= iat, "nbf {nbf} <= iat {iat}");
    assert!(
        nbf + 5 >= iat,
        "nbf {nbf} is at issuance, not back-dated (iat {iat})"
    );
    assert!(
        exp <= iat + TASK_MAX_TTL,
        "exp {exp} within max_ttl of iat {iat}"
    );
    assert_eq!(exp, iat + ttl, "exp = iat + granted ttl");
    assert!(
        c.get("cnf").is_none(),
        "no cnf on a bearer token from a JWT exchange"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rs256_workload_jwt_is_exchanged_for_a_verifiable_token() {
    let b = TestBroker::start(Options::default());
    let subject_token = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));

    // With a requested TTL: exp is exactly iat + requested_ttl.
    let before = now_secs();
    let reply = b
        .token(&TokenRequest::exchange(&subject_token, TASK).ttl(120))
        .await;
    let after = now_secs();
    let token = token_of(&reply).to_owned();
    assert_eq!(reply.body["expires_in"], 120);
    let scope = TASK_SCOPES.join(" ");
    assert_eq!(reply.body["scope"], scope.as_str());
    let v = b.verify_access_token(&token, PROD_LEDGER).await;
    check_token(&b, &v, &scope, 120, before, after).await;

    // The issued record: everything needed to prove the issuance, and no token.
    let jti = v.claims["jti"].as_str().unwrap();
    let rec = issued_record(&b, jti);
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["exp"], v.claims["exp"]);
    assert_eq!(rec["identity"], IDENTITY);
    assert_eq!(rec["task"], TASK);
    assert_eq!(rec["audience"], PROD_LEDGER);
    assert_eq!(rec["scopes"], serde_json::json!(TASK_SCOPES));
    assert_eq!(rec["source"], "127.0.0.1");
    assert_eq!(rec["evidence"]["kind"], "jwt");
    assert_eq!(rec["evidence"]["issuer"], ISSUER);
    assert_eq!(rec["evidence"]["subject"], SUBJECT);
    assert_eq!(rec["evidence"]["kid"], RSA_KID);
    for f in ["seq", "ts", "prev", "hash"] {
        assert!(rec.get(f).is_some(), "issued record has {f}: {rec}");
    }

    // Without a TTL: the task's max_ttl.
    let before = now_secs();
    let reply = b.token(&TokenRequest::exchange(&subject_token, TASK)).await;
    let after = now_secs();
    let token2 = token_of(&reply).to_owned();
    assert_eq!(reply.body["expires_in"], TASK_MAX_TTL);
    let v2 = b.verify_access_token(&token2, PROD_LEDGER).await;
    check_token(&b, &v2, &scope, TASK_MAX_TTL, before, after).await;
    assert_ne!(
        v.claims["jti"], v2.claims["jti"],
        "every token has its own jti"
    );

    // Never a token (theirs or ours) in the audit files.
    let log = audit_bytes(&b.audit_dir());
    for secret in [&token, &token2, &subject_token] {
        assert!(
            !contains_bytes(&log, secret.as_bytes()),
            "a token is in the audit log"
        );
        let sig = secret.rsplit('.').next().unwrap();
        assert!(
            !contains_bytes(&log, sig.as_bytes()),
            "a token signature is in the audit log"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn es256_workload_jwt_is_accepted() {
    let b = TestBroker::start(Options::default());
    let subject_token = sign(IssuerKey::Ec, &workload_claims(SUBJECT));
    let before = now_secs();
    let reply = b.token(&TokenRequest::exchange(&subject_token, TASK)).await;
    let after = now_secs();
    let token = token_of(&reply).to_owned();
    let v = b.verify_access_token(&token, PROD_LEDGER).await;
    check_token(&b, &v, &TASK_SCOPES.join(" "), TASK_MAX_TTL, before, after).await;
    let rec = issued_record(&b, v.claims["jti"].as_str().unwrap());
    assert_eq!(rec["evidence"]["kid"], EC_KID);
    assert_eq!(rec["evidence"]["subject"], SUBJECT);
}

#[tokio::test(flavor = "multi_thread")]
async fn narrowing_gets_exactly_the_subset_asked_for() {
    let b = TestBroker::start(Options::default());
    let subject_token = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
    // The audience via `audience`, a subset of the scopes, a shorter TTL.
    let before = now_secs();
    let reply = b
        .token(
            &TokenRequest::exchange(&subject_token, TASK)
                .audience(PROD_LEDGER)
                .scope("ledger:read")
                .ttl(60),
        )
        .await;
    let after = now_secs();
    let token = token_of(&reply).to_owned();
    assert_eq!(reply.body["scope"], "ledger:read");
    assert_eq!(reply.body["expires_in"], 60);
    let v = b.verify_access_token(&token, PROD_LEDGER).await;
    check_token(&b, &v, "ledger:read", 60, before, after).await;
    let rec = issued_record(&b, v.claims["jti"].as_str().unwrap());
    assert_eq!(rec["scopes"], serde_json::json!(["ledger:read"]));
    assert_eq!(rec["audience"], PROD_LEDGER);

    // The other scope alone, and the audience named as an RFC 8707 `resource`.
    let reply = b
        .token(
            &TokenRequest::exchange(&subject_token, TASK)
                .param("resource", PROD_LEDGER)
                .scope("ledger:write"),
        )
        .await;
    let token = token_of(&reply).to_owned();
    assert_eq!(reply.body["scope"], "ledger:write");
    let v = b.verify_access_token(&token, PROD_LEDGER).await;
    assert_eq!(v.claims["scope"], "ledger:write");
    assert_eq!(v.claims["aud"], PROD_LEDGER);
}

#[tokio::test(flavor = "multi_thread")]
async fn ci_token_proves_an_identity_only_with_its_exact_claims() {
    let mut opts = Options::default();
    opts.policies.push(("payments-ci.toml".into(), ci_policy()));
    let b = TestBroker::start(opts);
    let ci_claims = |r#ref: &str| {
        let mut c = workload_claims(CI_SUBJECT);
        c["repository"] = "acme/payments".into();
        c["ref"] = r#ref.into();
        c
    };

    let good = sign(IssuerKey::Rsa, &ci_claims("refs/heads/main"));
    let reply = b.token(&TokenRequest::exchange(&good, "deploy")).await;
    let token = token_of(&reply).to_owned();
    let v = b.verify_access_token(&token, PROD_LEDGER).await;
    assert_eq!(v.claims["sub"], CI_IDENTITY);
    assert_eq!(v.claims["task"], "deploy");
    let rec = issued_record(&b, v.claims["jti"].as_str().unwrap());
    assert_eq!(rec["identity"], CI_IDENTITY);

    // Another branch, or no claims at all: the same issuer and subject prove nothing.
    let other = ci_claims("refs/heads/feature");
    let bare = workload_claims(CI_SUBJECT);
    for jwt in [sign(IssuerKey::Rsa, &other), sign(IssuerKey::Rsa, &bare)] {
        let reply = b.token(&TokenRequest::exchange(&jwt, "deploy")).await;
        assert_eq!(reply.status, 403, "{}", reply.text);
        assert_eq!(reply.error(), Some("unauthorized_client"), "{}", reply.text);
        assert!(reply.access_token().is_none());
    }
    let denied = b.records_of("denied");
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert!(
        denied.iter().all(|r| r["rule"] == "unknown_identity"),
        "{denied:?}"
    );
    assert_eq!(b.records_of("issued").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn es256_signing_key_mints_es256_tokens_that_verify_from_the_jwks() {
    let mut b = TestBroker::prepare(Options::default());
    // Replace the EdDSA key `prepare` made with one of keygen's default algorithm, ES256.
    let keys = b.key_dir();
    for f in std::fs::read_dir(&keys).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let out = broker_tests::run_broker(["keygen".as_ref(), "--dir".as_ref(), keys.as_os_str()]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout.contains("generated ES256 key"),
        "ES256 is the default: {out}"
    );
    b.launch().unwrap();

    let subject_token = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
    let reply = b.token(&TokenRequest::exchange(&subject_token, TASK)).await;
    let token = token_of(&reply).to_owned();

    // Verify with jsonwebtoken, from the published JWKS alone.
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let jwks = b.jwks().await;
    let kid = header.kid.expect("kid");
    let jwk = jwks.find(&kid).expect("the token's kid is published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
    v.set_audience(&[PROD_LEDGER]);
    v.set_issuer(&[BROKER_ISSUER]);
    v.set_required_spec_claims(&["iss", "sub", "aud", "exp", "nbf", "iat"]);
    let data = jsonwebtoken::decode::<Value>(&token, &key, &v).expect("verifies");
    assert_eq!(data.claims["sub"], IDENTITY);
    assert!(u64_claim(&data.claims, "exp") <= u64_claim(&data.claims, "iat") + TASK_MAX_TTL);
    // An EdDSA-only verifier refuses it: the algorithm is the key's, not the token's say.
    let ed = jsonwebtoken::Validation::new(Algorithm::EdDSA);
    assert!(jsonwebtoken::decode::<Value>(&token, &key, &ed).is_err());
}

/// `[signing] algorithm`, when set, needs a key of it: none stops the start with a message
/// naming the algorithm and the command that makes one; the key's own algorithm starts.
#[tokio::test(flavor = "multi_thread")]
async fn a_signing_algorithm_that_is_not_the_keys_stops_the_start() {
    let mut b = broker_tests::TestBroker::prepare(broker_tests::Options::default());
    let config = std::fs::read_to_string(b.config_path()).unwrap();
    let with = |alg: &str| {
        config.replace(
            "key_dir = \"keys\"",
            &format!("key_dir = \"keys\"\nalgorithm = \"{alg}\""),
        )
    };
    std::fs::write(b.config_path(), with("ES256")).unwrap();
    let err = b.launch().expect_err("ES256 configured, EdDSA key");
    assert!(
        err.stderr
            .contains("signing.algorithm is ES256 but the key directory")
            && err.stderr.contains("broker keygen --alg ES256"),
        "{err}"
    );
    std::fs::write(b.config_path(), with("EdDSA")).unwrap();
    b.launch().unwrap_or_else(|e| panic!("{e}"));
}
