//! Signing-key changes recorded first ([`crate::admin_changes::keys`]): a rotation, a
//! retirement and a scheduled lifecycle step whose record cannot be written are not
//! made (503 for the admin calls; the keys, the JWKS, the key directory and the state
//! journal unchanged, and the key made for it destroyed), and are made, with records
//! naming their actor, once the log takes records again. The audit log's failure is
//! injected at its write call ([`crate::audit::AuditLog::hooks`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::in_process::InProcess;
use super::in_process_keys::{T0, start_rotating};
use super::in_process_record_first::{assert_fails_closed, fail_next_audit_write};
use crate::admin_changes::keys::{self as key_changes, KeyChangeError};
use crate::mint::lifecycle::{KeyInfo, KeyState};

/// What a failed key change must leave exactly as it was: the keys and their states,
/// the JWKS, the key directory's files, and the state journal.
#[derive(Debug, PartialEq)]
struct KeySnapshot {
    keys: Vec<(String, KeyState)>,
    jwks: Value,
    key_files: Vec<String>,
    journal: String,
}

async fn snapshot(b: &InProcess) -> KeySnapshot {
    let jwks = b.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.status, StatusCode::OK);
    let mut key_files: Vec<String> = std::fs::read_dir(b.dir().join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    key_files.sort();
    KeySnapshot {
        keys: keys(b).into_iter().map(|k| (k.kid, k.state)).collect(),
        jwks: jwks.body,
        key_files,
        journal: std::fs::read_to_string(b.dir().join("state").join("changes.jsonl"))
            .unwrap_or_default(),
    }
}

/// `POST path` with `body` while the audit log's next write fails: answered 503, and
/// nothing about the keys changed (`what`: what must still hold).
async fn assert_not_made(b: &InProcess, path: &str, body: &Value, what: &str) {
    let before = snapshot(b).await;
    fail_next_audit_write(b);
    assert_fails_closed(&b.admin_post(path, body).await);
    assert_eq!(snapshot(b).await, before, "{what}");
}

fn keys(b: &InProcess) -> Vec<KeyInfo> {
    b.state().keys.list()
}

/// The records of `event` that a change made after start-up wrote (start-up's
/// reconciliation of the key directory names no actor).
fn changes_of(b: &InProcess, event: &str) -> Vec<Value> {
    b.records_of(event)
        .into_iter()
        .filter(|r| !r["actor"].is_null())
        .collect()
}

/// The one active key.
fn active(b: &InProcess) -> String {
    let active: Vec<KeyInfo> = keys(b)
        .into_iter()
        .filter(|k| k.state == KeyState::Active)
        .collect();
    assert_eq!(active.len(), 1, "{active:?}");
    active[0].kid.clone()
}

#[tokio::test]
async fn a_rotation_whose_record_fails_is_not_made() {
    let b = start_rotating(T0).await;
    assert_not_made(
        &b,
        "/v1/admin/keys/rotate",
        &json!({}),
        "no key prepared, published or left on disk",
    )
    .await;
    assert!(changes_of(&b, "key_prepared").is_empty());

    let r = b.admin_post("/v1/admin/keys/rotate", &json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let prepared: Vec<KeyInfo> = keys(&b)
        .into_iter()
        .filter(|k| k.state == KeyState::Prepared)
        .collect();
    assert_eq!(prepared.len(), 1, "{prepared:?}");
    let recs = changes_of(&b, "key_prepared");
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["kid"], prepared[0].kid.as_str());
    assert_eq!(recs[0]["actor"], "admin:ops", "the admin who rotated");
    assert_eq!(recs[0]["decision"], "allow");
}

#[tokio::test]
async fn retiring_an_active_key_whose_record_fails_changes_nothing() {
    let b = start_rotating(T0).await;
    let k1 = active(&b);
    let path = format!("/v1/admin/keys/{k1}/retire");
    assert_not_made(&b, &path, &json!({}), "k1 still signs; no successor").await;
    let t = b.token("127.0.0.1:5000").await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);

    let r = b.admin_post(&path, &json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let k2 = active(&b);
    assert_ne!(k2, k1);
    let state = |kid: &str| keys(&b).into_iter().find(|k| k.kid == kid).unwrap().state;
    assert_eq!(state(&k1), KeyState::Retiring);
    // Every record of the change names the admin, and they come before its answer.
    for (event, kid) in [
        ("key_prepared", &k2),
        ("key_activated", &k2),
        ("key_retiring", &k1),
    ] {
        let recs = changes_of(&b, event);
        assert_eq!(recs.len(), 1, "{event}: {recs:?}");
        assert_eq!(recs[0]["kid"], kid.as_str(), "{event}");
        assert_eq!(recs[0]["actor"], "admin:ops", "{event}");
    }
}

/// The key loop's step (here the scheduled rotation's successor, due 50 minutes in)
/// whose record fails is not made, and is made at the next tick.
#[tokio::test]
async fn a_scheduled_step_whose_record_fails_is_made_at_the_next_tick() {
    let b = start_rotating(T0).await;
    // The test drives the lifecycle by hand.
    b.key_ticks.store(false, Ordering::Relaxed);
    b.clock.advance(Duration::from_secs(50 * 60 + 1));
    let before = snapshot(&b).await;
    fail_next_audit_write(&b);
    match key_changes::tick(b.state()).await {
        Err(KeyChangeError::Failed(e)) => assert_eq!(e.code, "temporarily_unavailable"),
        other => panic!("{other:?}"),
    }
    assert_eq!(snapshot(&b).await, before, "no successor prepared");

    assert!(
        key_changes::tick(b.state()).await.unwrap(),
        "the step was due"
    );
    let recs = changes_of(&b, "key_prepared");
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["actor"], "broker");
    assert!(
        keys(&b).iter().any(|k| k.state == KeyState::Prepared),
        "{:?}",
        keys(&b)
    );
    assert!(
        !key_changes::tick(b.state()).await.unwrap(),
        "nothing due after"
    );
}

/// An emergency revocation is one change with its successor: if its `key_revoked`
/// record fails nothing is revoked and the key still signs; made, the successor's
/// records follow the revocation's, all before the answer.
#[tokio::test]
async fn a_key_revocation_whose_record_fails_is_not_made() {
    let b = start_rotating(T0).await;
    let k1 = active(&b);
    let path = format!("/v1/admin/keys/{k1}/revoke");
    let body = json!({ "reason": "key file leaked" });
    assert_not_made(&b, &path, &body, "k1 not revoked, no successor").await;
    assert!(b.records_of("key_revoked").is_empty());

    let r = b.admin_post(&path, &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let k2 = active(&b);
    assert_ne!(k2, k1);
    let seq_of = |event: &str| -> u64 {
        let recs = changes_of(&b, event);
        assert_eq!(recs.len(), 1, "{event}: {recs:?}");
        assert_eq!(recs[0]["actor"], "admin:ops", "{event}");
        recs[0]["seq"].as_u64().unwrap()
    };
    let revoked = seq_of("key_revoked");
    assert!(revoked < seq_of("key_prepared") && revoked < seq_of("key_activated"));
    let ring = crate::mint::keys::KeyRing::load_dir(&b.dir().join("keys")).unwrap();
    assert!(
        !ring.signers().any(|s| s.kid() == k1),
        "k1's private key file is destroyed"
    );
    assert!(ring.signers().any(|s| s.kid() == k2));
}

/// A compromised key is revoked even when no successor can be made (here the key
/// directory is gone, replaced by a file): the key leaves the JWKS, and this replica
/// issues nothing rather than signing with it, until the lifecycle's next tick after the
/// directory works again makes a key that signs at once.
#[tokio::test]
async fn a_key_is_revoked_even_when_no_successor_can_be_made() {
    let b = start_rotating(T0).await;
    let k1 = active(&b);
    let dir = b.dir().join("keys");
    std::fs::rename(&dir, b.dir().join("keys.moved")).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let path = format!("/v1/admin/keys/{k1}/revoke");
    let r = b
        .admin_post(&path, &json!({ "reason": "key file leaked" }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let state = keys(&b).into_iter().find(|k| k.kid == k1).unwrap().state;
    assert_eq!(state, KeyState::Revoked);
    assert!(keys(&b).iter().all(|k| k.state != KeyState::Active));
    let jwks = b.get("/.well-known/jwks.json").await;
    assert!(!jwks.body.to_string().contains(&k1), "{}", jwks.body);
    let t = b.token("127.0.0.1:5000").await;
    assert_ne!(t.status, StatusCode::OK, "no key signs: {}", t.body);
    assert_eq!(changes_of(&b, "key_revoked").len(), 1);
    assert!(changes_of(&b, "key_prepared").is_empty());

    // The lifecycle's tick tries again; while the directory is broken nothing changes.
    assert!(matches!(
        key_changes::tick(b.state()).await,
        Err(KeyChangeError::Refused(_))
    ));
    assert!(keys(&b).iter().all(|k| k.state != KeyState::Active));
    assert!(changes_of(&b, "key_prepared").is_empty());

    // Once it works again, the next tick makes a key that signs at once, recorded first
    // with `broker` as its actor, and tokens are issued again.
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(b.dir().join("keys.moved"), &dir).unwrap();
    assert!(key_changes::tick(b.state()).await.unwrap());
    let k2 = active(&b);
    assert_ne!(k2, k1);
    for event in ["key_prepared", "key_activated"] {
        let recs = changes_of(&b, event);
        assert_eq!(recs.len(), 1, "{event}: {recs:?}");
        assert_eq!(recs[0]["kid"], k2.as_str(), "{event}");
        assert_eq!(recs[0]["actor"], "broker", "{event}");
    }
    let t = b.token("127.0.0.1:5000").await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);
    let jwks = b.get("/.well-known/jwks.json").await;
    assert!(jwks.body.to_string().contains(&k2), "{}", jwks.body);
    assert!(
        !key_changes::tick(b.state()).await.unwrap(),
        "nothing more is due: one key signs again"
    );
}
