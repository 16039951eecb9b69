//! In-process tests of the signing-key lifecycle on a manual clock: a whole scheduled
//! rotation (prepared → active → retiring → retired) in which a verifier holding a
//! JWKS fetched at any moment verifies every token it gets, `exp` never passes the
//! key's publication; a restart in the middle resumes the rotation; an emergency
//! revocation removes the key at once and revokes its tokens through the feed.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::in_process::{InProcess, admin_toml};
use crate::clock::Clock;
use crate::mint::keys::Jwks;
use crate::mint::lifecycle::{KeyState, RETIRED_KEYS_FILE};

/// 2098-10-01: inside the dev registration, outside its recertification window.
pub(crate) const T0: u64 = 4_070_908_800 - 92 * 86_400;
const ISSUER: &str = "http://127.0.0.1:8080";
const PEER: &str = "127.0.0.1:5000";

/// Rotation every hour, published 10 minutes ahead, JWKS cached 5 minutes, tokens
/// (dev max_ttl 10m) and retiring keys covered by a 15-minute lease.
fn rotation_config(text: &str) -> String {
    let with = text.replace(
        "algorithm = \"ES256\"\n",
        "algorithm = \"ES256\"\nrotate_every = \"1h\"\nprepublish = \"10m\"\njwks_max_age = \"5m\"\nkey_lease = \"15m\"\n",
    );
    assert_ne!(with, text);
    format!("{with}{}", admin_toml())
}

async fn start(unix: u64) -> InProcess {
    start_rotating(unix).await
}

/// The dev broker with hourly rotation (see [`rotation_config`]) and the `ops` admin.
pub(crate) async fn start_rotating(unix: u64) -> InProcess {
    InProcess::start_edited(unix, |_, text| rotation_config(&text)).await
}

/// The rotation broker with its signing keys in a PKCS#11 token: `pkcs11_line` is the
/// `[signing] pkcs11 = { .. }` line; the key file `dev` made is removed first.
pub(crate) async fn start_in_token(unix: u64, pkcs11_line: &str) -> InProcess {
    InProcess::start_edited(unix, |dir, text| {
        for f in crate::mint::keys::key_files(&dir.join("keys")).unwrap() {
            std::fs::remove_file(f).unwrap();
        }
        let with = text.replace(
            "key_dir = \"keys\"\n",
            &format!("key_dir = \"keys\"\n{pkcs11_line}\n"),
        );
        assert_ne!(with, text);
        rotation_config(&with)
    })
    .await
}

async fn jwks(b: &InProcess) -> Jwks {
    let r = b.get("/.well-known/jwks.json").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers.get("cache-control").and_then(|v| v.to_str().ok()),
        Some("public, max-age=300"),
        "max-age is jwks_max_age, at most prepublish"
    );
    serde_json::from_value(r.body).unwrap()
}

/// A token, with its `kid` and `exp`.
async fn token(b: &InProcess) -> (String, String, u64) {
    let r = b.token(PEER).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let t = r.body["access_token"].as_str().unwrap().to_owned();
    let parts = broker_client::jws::split(&t, 8192).unwrap();
    let header: Value = serde_json::from_slice(&parts.header).unwrap();
    let claims: Value = serde_json::from_slice(&parts.payload).unwrap();
    (
        t,
        header["kid"].as_str().unwrap().to_owned(),
        claims["exp"].as_u64().unwrap(),
    )
}

async fn tick(b: &InProcess) {
    crate::admin_changes::keys::tick(b.state()).await.unwrap();
}

fn state_of(b: &InProcess, kid: &str) -> KeyState {
    b.state()
        .keys
        .list()
        .into_iter()
        .find(|k| k.kid == kid)
        .unwrap_or_else(|| panic!("no key {kid}"))
        .state
}

/// The `kid` that signed the audit log's head anchor on disk.
fn head_kid(b: &InProcess) -> String {
    let head: Value =
        serde_json::from_slice(&std::fs::read(b.dir().join("audit").join("head.json")).unwrap())
            .unwrap();
    head["kid"].as_str().unwrap().to_owned()
}

/// The rotation invariant, from the verifier's side: `token` verifies with `jwks`.
fn verifies(token: &str, jwks: &Jwks) -> bool {
    crate::mint::verify::verify_signature(token, jwks, ISSUER).is_ok()
}

/// Steps the clock a minute at a time through a whole rotation; every minute a token
/// is issued and checked against every JWKS fetched within the last `jwks_max_age`
/// (what a verifier may still hold). Every step of the key's life is seen, audited, and
/// no token's `exp` passes its key's lease.
#[tokio::test]
async fn a_scheduled_rotation_never_breaks_a_verifier() {
    let b = start(T0).await;
    let (k1, _) = scheduled_rotation_cycle(&b).await;
    // The retired key's private file is gone.
    let ring = crate::mint::keys::KeyRing::load_dir(&b.dir().join("keys")).unwrap();
    assert!(!ring.signers().any(|s| s.kid() == k1));
}

/// The body of [`a_scheduled_rotation_never_breaks_a_verifier`], wherever the keys
/// live; returns the first key and its successor.
pub(crate) async fn scheduled_rotation_cycle(b: &InProcess) -> (String, String) {
    let (_, k1, _) = token(b).await;
    assert_eq!(state_of(b, &k1), KeyState::Active);
    let mut fetched: Vec<(u64, Jwks)> = Vec::new();
    let mut tokens: Vec<(String, String, u64)> = Vec::new();
    let mut k2 = None;
    for _minute in 0..(60 + 30) {
        b.clock.advance(Duration::from_secs(60));
        tick(b).await;
        let now = b.clock.unix_secs();
        fetched.push((now, jwks(b).await));
        let (t, kid, exp) = token(b).await;
        // The lease of the key that signed it covers its exp.
        let info = b
            .state()
            .keys
            .list()
            .into_iter()
            .find(|k| k.kid == kid)
            .unwrap();
        assert_eq!(info.state, KeyState::Active);
        assert!(
            exp <= info.lease_until.unwrap(),
            "exp {exp} within the lease"
        );
        for (at, j) in &fetched {
            if now - at <= 300 {
                assert!(
                    verifies(&t, j),
                    "a JWKS fetched at {at} verifies a token of {now}"
                );
            }
        }
        if kid != k1 {
            k2.get_or_insert(kid.clone());
        }
        tokens.push((t, kid, exp));
        // Every unexpired token still verifies with the JWKS served now.
        let current = jwks(b).await;
        for (t, kid, exp) in &tokens {
            if *exp > now {
                assert!(
                    verifies(t, &current),
                    "unexpired token of {kid} verifies now"
                );
            }
        }
    }
    let k2 = k2.expect("the scheduled rotation activated a new key within the hour");
    assert_eq!(
        state_of(b, &k1),
        KeyState::Retired,
        "k1 retired after its lease"
    );
    assert!(!jwks(b).await.keys.iter().any(|k| k.kid == k1));
    assert_eq!(state_of(b, &k2), KeyState::Active);
    assert_eq!(
        head_kid(b),
        k2,
        "the head anchor is signed by the active key"
    );
    // The retired key's private half is gone; its public half is kept for audit verify.
    let retired = crate::mint::lifecycle::retired_public_keys(&b.dir().join("keys"));
    assert!(retired.keys.iter().any(|k| k.kid == k1));
    assert!(b.dir().join("keys").join(RETIRED_KEYS_FILE).exists());
    // Each transition is in the audit log, in order.
    let events: Vec<String> = b
        .records()
        .iter()
        .filter(|r| r["event"].as_str().is_some_and(|e| e.starts_with("key_")))
        .map(|r| {
            format!(
                "{} {}",
                r["event"].as_str().unwrap(),
                r["kid"].as_str().unwrap()
            )
        })
        .collect();
    let k2_prepared = events
        .iter()
        .position(|e| *e == format!("key_prepared {k2}"));
    let k2_active = events
        .iter()
        .position(|e| *e == format!("key_activated {k2}"));
    let k1_retiring = events
        .iter()
        .position(|e| *e == format!("key_retiring {k1}"));
    let k1_retired = events
        .iter()
        .position(|e| *e == format!("key_retired {k1}"));
    assert!(
        k2_prepared < k2_active && k2_active <= k1_retiring && k1_retiring < k1_retired,
        "{events:#?}"
    );
    assert!(k2_prepared.is_some() && k1_retired.is_some(), "{events:#?}");
    // The successor was published prepublish (10 min) before it signed.
    let prepared_at = b
        .state()
        .keys
        .list()
        .into_iter()
        .find(|k| k.kid == k2)
        .unwrap();
    assert!(prepared_at.activate_at >= prepared_at.prepared_at + 600);
    (k1, k2)
}

/// A broker restarted while its successor key is prepared resumes the rotation: the
/// prepared key is still published and activates at its time.
#[tokio::test]
async fn a_restart_in_the_middle_of_a_rotation_resumes_it() {
    restart_mid_rotation(start(T0).await).await;
}

/// The body of [`a_restart_in_the_middle_of_a_rotation_resumes_it`], wherever the keys
/// live.
pub(crate) async fn restart_mid_rotation(b: InProcess) {
    let (_, k1, _) = token(&b).await;
    b.clock.advance(Duration::from_secs(52 * 60));
    tick(&b).await;
    let prepared: Vec<String> = b
        .state()
        .keys
        .list()
        .into_iter()
        .filter(|k| k.state == KeyState::Prepared)
        .map(|k| k.kid)
        .collect();
    assert_eq!(
        prepared.len(),
        1,
        "a successor is prepared 10 min before the hour"
    );
    let k2 = prepared[0].clone();
    let now = b.clock.unix_secs();

    // The same folder, a new process (on the same clock).
    let b = b.restart_at(now + 60).await;
    assert_eq!(
        state_of(&b, &k2),
        KeyState::Prepared,
        "survives the restart"
    );
    assert!(jwks(&b).await.keys.iter().any(|k| k.kid == k2));
    assert_eq!(token(&b).await.1, k1, "k1 still signs");
    b.clock.advance(Duration::from_secs(10 * 60));
    tick(&b).await;
    assert_eq!(state_of(&b, &k2), KeyState::Active);
    assert_eq!(state_of(&b, &k1), KeyState::Retiring);
    assert_eq!(
        token(&b).await.1,
        k2,
        "the successor signs after its prepublication"
    );
}

/// `POST /v1/admin/keys/{kid}/revoke`: the key leaves the JWKS at once, its tokens are
/// inactive at introspection and covered by a feed rule by `kid`, a new key signs at
/// once, and `key_revoked` is recorded with who and why.
#[tokio::test]
async fn an_emergency_key_revocation_takes_effect_at_once() {
    let b = start(T0).await;
    let k1 = emergency_revocation(&b).await;
    // The private key file is destroyed.
    let ring = crate::mint::keys::KeyRing::load_dir(&b.dir().join("keys")).unwrap();
    assert!(!ring.signers().any(|s| s.kid() == k1));
}

/// The body of [`an_emergency_key_revocation_takes_effect_at_once`], wherever the keys
/// live; returns the revoked key's id.
pub(crate) async fn emergency_revocation(b: &InProcess) -> String {
    let (old_token, k1, _) = token(b).await;
    let k1_signer = b
        .state()
        .minter
        .signer_for_alg(None)
        .map(|a| std::sync::Arc::downgrade(&a.signer))
        .expect("an active key");
    assert_eq!(
        k1_signer.upgrade().map(|s| s.kid().to_owned()),
        Some(k1.clone())
    );
    let r = b
        .admin_post(
            &format!("/v1/admin/keys/{k1}/revoke"),
            &json!({ "reason": "key file leaked" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Its private half is freed in memory too: nothing holds the key loaded at start.
    assert!(
        k1_signer.upgrade().is_none(),
        "the revoked key {k1} is still held in memory"
    );
    assert_eq!(state_of(b, &k1), KeyState::Revoked);
    let served = jwks(b).await;
    assert!(
        !served.keys.iter().any(|k| k.kid == k1),
        "gone from the JWKS"
    );
    assert!(!verifies(&old_token, &served));
    // A new key signs at once, tokens and the audit log's head anchors alike.
    let (new_token, k2, _) = token(b).await;
    assert_ne!(k2, k1);
    // The successor is a change of its own, recorded first in the revoking admin's name.
    for event in ["key_prepared", "key_activated"] {
        assert!(
            b.records_of(event)
                .iter()
                .any(|r| r["kid"] == k2.as_str() && r["actor"] == "admin:ops"),
            "{event} of {k2}"
        );
    }
    assert!(verifies(&new_token, &jwks(b).await));
    assert_eq!(
        b.state().audit.anchor_kid(),
        k2,
        "the revoked key signs no anchor"
    );
    assert_eq!(head_kid(b), k2);
    // The feed carries a rule by kid for offline verifiers, covering every token the key
    // signed: its cut-off is no earlier than the end of the key's lease (no token it signed
    // has a later `iat`), not the second the revocation was planned.
    let feed = b.state().revocations.feed(0, b.clock.unix_secs()).0;
    let rule = feed
        .iter()
        .filter_map(|e| e.rule.as_ref().map(|r| (r, e.until)))
        .find(|(r, _)| r.selector == crate::store::Selector::Key { kid: k1.clone() });
    let Some((rule, until)) = rule else {
        panic!("no key rule in {feed:?}")
    };
    let claims: Value =
        serde_json::from_slice(&broker_client::jws::split(&old_token, 8192).unwrap().payload)
            .unwrap();
    let old_exp = claims["exp"].as_u64().unwrap();
    assert!(
        rule.issued_before >= old_exp,
        "{rule:?} against exp {old_exp}"
    );
    assert_eq!(rule.issued_before, until, "{rule:?}");
    // Introspection: inactive (as the ops admin).
    let bearer = b.jwt("admin:ops");
    let req = axum::http::Request::post("/oauth2/introspect")
        .header("authorization", format!("Bearer {bearer}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(format!("token={old_token}")))
        .unwrap();
    let r = b.call_raw(req, PEER).await;
    assert_eq!(r.body, json!({"active": false}), "{}", r.body);
    // The record says who and why.
    let rec = b
        .records_of("key_revoked")
        .pop()
        .expect("a key_revoked record");
    assert_eq!(rec["kid"], k1.as_str());
    assert_eq!(rec["actor"], "admin:ops");
    assert_eq!(rec["reason"], "key file leaked");
    // Revoking again: a conflict, nothing recorded twice.
    let r = b
        .admin_post(
            &format!("/v1/admin/keys/{k1}/revoke"),
            &json!({ "reason": "again" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(b.records_of("key_revoked").len(), 1);
    k1
}

/// The invariant at mint: with a lease shorter than the task's `max_ttl`, tokens are
/// cut to the lease, and a key whose lease ran out (the store could not extend it)
/// signs nothing: 500-free refusal, no token.
#[tokio::test]
async fn no_token_outlives_its_keys_lease() {
    let b = InProcess::start_edited(T0, |_, text| {
        text.replace(
            "algorithm = \"ES256\"\n",
            "algorithm = \"ES256\"\nprepublish = \"1m\"\njwks_max_age = \"1m\"\nkey_lease = \"2m\"\n",
        )
    })
    .await;
    let (_, kid, exp) = token(&b).await;
    let lease = b
        .state()
        .keys
        .list()
        .into_iter()
        .find(|k| k.kid == kid)
        .unwrap()
        .lease_until
        .unwrap();
    assert!(exp <= lease, "exp {exp} <= lease {lease}");
    assert!(exp < b.clock.unix_secs() + 600, "cut below the 10m max_ttl");
    // Without ticks (no lease extension) the lease runs out: no token.
    b.key_ticks
        .store(false, std::sync::atomic::Ordering::Relaxed);
    b.clock
        .advance(Duration::from_secs(lease - b.clock.unix_secs() + 1));
    let r = b.token(PEER).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.body.get("access_token").is_none());
    // The lifecycle extends the lease and issuance resumes.
    tick(&b).await;
    token(&b).await;
}
