//! Signing-key lifecycle (issue 12) through the real binary and its CLI: `broker keys
//! list`, `rotate --now` and `revoke` against the admin API; the SDK verifier (with the
//! revocation feed) and introspection across each transition; `audit verify` afterwards.

use std::time::Duration;

use broker_client::{Credential, Verifier, VerifyError};
use broker_tests::admin::{RS_SUBJECT, admin_bearer, auditor_bearer, revocation_options};
use broker_tests::{
    BROKER_ISSUER, ISSUER, PROD_LEDGER, SUBJECT, TASK, TestBroker, insecure_claims, rs256,
    run_broker, verify_audit, verify_with_jwks,
};

/// An admin with the `admin` role (rotation and retirement), beside the test's `secops`
/// (`revoke`) and `auditor` (`read_audit`).
fn key_admin_toml() -> String {
    format!(
        "\n[[admin]]\nname = \"keyadmin\"\nroles = [\"admin\"]\nissuer = \"{ISSUER}\"\nsubject = \"admin:keys\"\n"
    )
}

fn kid(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let bytes =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

/// Runs `broker keys ARGS --url ... --bearer-file <bearer>`; returns stdout.
fn keys_cli(b: &TestBroker, bearer: &str, args: &[&str]) -> String {
    let file = b.dir().join(format!("bearer-{}.jwt", args[0]));
    std::fs::write(&file, bearer).unwrap();
    let mut all: Vec<std::ffi::OsString> = vec!["keys".into()];
    all.extend(args.iter().map(Into::into));
    all.extend(["--url".into(), b.base_url().into(), "--bearer-file".into()]);
    all.push(file.into_os_string());
    let out = run_broker(all);
    assert!(out.success(), "broker keys {args:?}: {out}");
    out.stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_and_emergency_revocation_through_the_cli() {
    let mut opts = revocation_options();
    opts.extra_toml.push_str(&key_admin_toml());
    let b = TestBroker::start(opts);
    let old = b.issue(SUBJECT, TASK, None).await;
    let k1 = kid(&old);
    let v = Verifier::builder(b.base_url(), PROD_LEDGER)
        .issuer(BROKER_ISSUER)
        .revocation_feed(
            Credential::provider(|| Ok(rs256(RS_SUBJECT))),
            Duration::from_secs(3600),
        )
        .build()
        .unwrap();
    v.verify(&old, None).await.unwrap();

    let listed = keys_cli(&b, &auditor_bearer(), &["list"]);
    assert!(
        listed.contains(&k1) && listed.contains("active"),
        "{listed}"
    );

    // Rotate now: a new key signs; the old one is retiring, still published, so its
    // tokens still verify everywhere.
    let rotated = keys_cli(&b, &rs256("admin:keys"), &["rotate", "--now"]);
    assert!(rotated.contains("retiring"), "{rotated}");
    let new = b.issue(SUBJECT, TASK, None).await;
    let k2 = kid(&new);
    assert_ne!(k1, k2);
    let jwks = b.jwks().await;
    assert!(jwks.find(&k1).is_some() && jwks.find(&k2).is_some());
    // (`--now` skips the prepublication, so the verifier learns the new key by a refetch
    // on its unknown kid, which is rate-limited: force it here.)
    v.refetch_keys(true).await.unwrap();
    v.verify(&new, None).await.unwrap();
    v.verify(&old, None).await.unwrap();
    assert!(b.is_active(&old).await);

    // The old key leaked: revoke it.
    keys_cli(
        &b,
        &admin_bearer(),
        &["revoke", &k1, "--reason", "key file copied off host"],
    );
    assert!(
        b.jwks().await.find(&k1).is_none(),
        "gone from the JWKS at once"
    );
    assert!(!b.is_active(&old).await, "introspection refuses it");
    // The verifier still caches k1; the feed rule by kid refuses its tokens.
    v.sync_revocations().await.unwrap();
    assert_eq!(v.verify(&old, None).await, Err(VerifyError::Revoked));
    v.verify(&new, None).await.unwrap();
    assert_eq!(insecure_claims(&new)["sub"], insecure_claims(&old)["sub"]);

    let rec = b
        .records_of("key_revoked")
        .pop()
        .expect("a key_revoked record");
    assert_eq!(rec["kid"], k1.as_str());
    assert_eq!(rec["actor"], "admin:secops");
    assert!(!b.records_of("key_activated").is_empty());
    // The anchors still verify (the revoked key's public half is kept).
    let out = verify_audit(&b.audit_dir(), &b.key_dir());
    assert!(out.success(), "{out}");
}

/// The keys as `GET /v1/admin/keys` lists them (as the auditor).
async fn listed_keys(b: &TestBroker) -> Vec<serde_json::Value> {
    let r = b
        .client()
        .get(format!("{}/v1/admin/keys", b.base_url()))
        .bearer_auth(auditor_bearer())
        .send()
        .await
        .expect("GET /v1/admin/keys");
    assert_eq!(r.status(), 200);
    r.json().await.expect("a JSON list")
}

/// Scheduled rotation through the real binary with short periods (a new key every 4 s,
/// published 2 s ahead, JWKS cached 2 s, a 3 s key lease): for 13 s a token is issued
/// every quarter second, and each one verifies with every JWKS fetched within the cache
/// age (what any verifier may hold), its `exp` never passes its key's lease, every
/// unexpired token still verifies with the JWKS served now, keys are retired once their
/// tokens are gone, and the audit log verifies.
#[tokio::test(flavor = "multi_thread")]
async fn scheduled_rotations_never_break_a_verifier() {
    let mut b = TestBroker::prepare(revocation_options());
    let config = std::fs::read_to_string(b.config_path()).expect("the config");
    let from = "key_dir = \"keys\"\n";
    assert!(config.contains(from), "{config}");
    std::fs::write(
        b.config_path(),
        config.replacen(
            from,
            "key_dir = \"keys\"\nrotate_every = \"4s\"\nprepublish = \"2s\"\njwks_max_age = \"2s\"\nkey_lease = \"3s\"\n",
            1,
        ),
    )
    .expect("the config");
    if let Err(e) = b.launch() {
        panic!("{e}");
    }
    let max_age = Duration::from_secs(2);
    let r = b
        .client()
        .get(format!("{}/.well-known/jwks.json", b.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("public, max-age=2")
    );
    let started = std::time::Instant::now();
    let mut fetched: Vec<(std::time::Instant, jsonwebtoken::jwk::JwkSet)> = Vec::new();
    let mut tokens: Vec<(String, String, u64)> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    while started.elapsed() < Duration::from_secs(13) {
        fetched.push((std::time::Instant::now(), b.jwks().await));
        let t = b.issue(SUBJECT, TASK, None).await;
        let now = std::time::Instant::now();
        let k = kid(&t);
        let exp = insecure_claims(&t)["exp"].as_u64().expect("exp");
        if !seen.contains(&k) {
            seen.push(k.clone());
        }
        let lease = listed_keys(&b)
            .await
            .into_iter()
            .find(|x| x["kid"] == k.as_str())
            // Active: its lease; retiring since the token was issued: its end, the
            // lease it had.
            .and_then(|x| x["lease_until"].as_u64().or(x["retire_at"].as_u64()))
            .unwrap_or_else(|| panic!("{k} is active with a lease, or retiring"));
        assert!(exp <= lease, "exp {exp} passes the lease {lease} of {k}");
        for (at, jwks) in &fetched {
            if now.duration_since(*at) <= max_age
                && let Err(e) = verify_with_jwks(&t, jwks, PROD_LEDGER, Some(BROKER_ISSUER))
            {
                panic!(
                    "a token of {k} does not verify with a JWKS fetched {:?} before: {e}",
                    now.duration_since(*at)
                );
            }
        }
        let current = &fetched.last().expect("a JWKS").1;
        let unix = broker_tests::now_secs();
        for (old, old_kid, old_exp) in &tokens {
            if *old_exp > unix + 1 {
                assert!(
                    current.find(old_kid).is_some(),
                    "an unexpired token's key {old_kid} is still published"
                );
                verify_with_jwks(old, current, PROD_LEDGER, Some(BROKER_ISSUER))
                    .unwrap_or_else(|e| panic!("an unexpired token of {old_kid}: {e}"));
            }
        }
        tokens.push((t, k, exp));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        seen.len() >= 3,
        "at least two scheduled rotations in 13 s: {seen:?}"
    );
    let retired: Vec<String> = b
        .records_of("key_retired")
        .iter()
        .filter_map(|r| r["kid"].as_str().map(str::to_owned))
        .collect();
    assert!(retired.contains(&seen[0]), "{retired:?}");
    assert!(
        b.jwks().await.find(&seen[0]).is_none(),
        "retired: unpublished"
    );
    for event in ["key_prepared", "key_activated", "key_retiring"] {
        assert!(!b.records_of(event).is_empty(), "{event} recorded");
    }
    assert!(b.stop().success());
    let out = verify_audit(&b.audit_dir(), &b.key_dir());
    assert!(out.success(), "{out}");
}
