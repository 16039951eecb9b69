//! The revocation feed on the broker's clock (moved from the e2e feed test, which slept
//! until a token's `exp` had passed): the feed is the typed
//! [`broker_client::types::RevocationFeed`], and a `jti` entry drops out once its token's
//! `exp` has passed while a longer-lived one stays.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use broker_client::types::RevocationFeed;

use super::in_process::InProcess;
use crate::dev::{DEV_SUBJECT, DEV_TASK};

/// 2098-10-01T00:00:00Z, well inside the dev registration.
const START: u64 = 4_070_908_800 - 92 * 86_400;
const PEER: &str = "127.0.0.1:5000";

/// A token for the dev workload living `ttl` seconds.
async fn token(b: &InProcess, ttl: &str) -> String {
    let jwt = b.jwt(DEV_SUBJECT);
    let form = [
        (
            "grant_type",
            broker_client::types::GRANT_TYPE_TOKEN_EXCHANGE,
        ),
        ("subject_token_type", broker_client::types::TOKEN_TYPE_JWT),
        ("subject_token", jwt.as_str()),
        ("task", DEV_TASK),
        ("requested_ttl", ttl),
    ];
    let r = b.token_form(&form, PEER).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["access_token"].as_str().unwrap().to_owned()
}

/// `GET /v1/revocations` as the dev workload (which may introspect here).
async fn feed(b: &InProcess) -> RevocationFeed {
    let req = Request::get("/v1/revocations")
        .header("authorization", format!("Bearer {}", b.jwt(DEV_SUBJECT)))
        .body(Body::empty())
        .unwrap();
    let r = b.call_raw(req, PEER).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    serde_json::from_value(r.body).unwrap()
}

fn jti_of(token: &str) -> String {
    let c = broker_client::jws::split(token, 64 * 1024).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&c.payload).unwrap();
    claims["jti"].as_str().unwrap().to_owned()
}

/// A jti entry drops out once its token's `exp` has passed; a longer-lived one stays.
#[tokio::test]
async fn feed_entries_vanish_after_the_tokens_exp() {
    let b = InProcess::start_edited(START, |dir, text| {
        let path = dir.join("policies").join("demo-workload.toml");
        let policy = std::fs::read_to_string(&path).unwrap().replace(
            "ticket      = \"DEV-1\"\n",
            "ticket      = \"DEV-1\"\nmay_introspect = true\n",
        );
        std::fs::write(&path, policy).unwrap();
        text
    })
    .await;
    let short = token(&b, "2").await;
    let long = token(&b, "600").await;
    for t in [&short, &long] {
        let req = Request::post("/oauth2/revoke")
            .header("authorization", format!("Bearer {}", b.jwt(DEV_SUBJECT)))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(format!("token={t}")))
            .unwrap();
        let r = b.call_raw(req, PEER).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let listed = |f: &RevocationFeed, jti: &str| {
        f.entries
            .iter()
            .find(|e| e.jti.as_deref() == Some(jti))
            .cloned()
    };
    let f = feed(&b).await;
    let e = listed(&f, &jti_of(&short)).unwrap_or_else(|| panic!("listed: {f:?}"));
    assert_eq!(e.until, START + 2, "{e:?}");
    assert!(listed(&f, &jti_of(&long)).is_some(), "{f:?}");

    b.clock.advance(Duration::from_secs(3));
    let f = feed(&b).await;
    assert!(
        listed(&f, &jti_of(&short)).is_none(),
        "the expired token's entry is gone: {f:?}"
    );
    assert!(
        listed(&f, &jti_of(&long)).is_some(),
        "the live token's entry stays: {f:?}"
    );
    assert!(f.now > START + 2);
}
