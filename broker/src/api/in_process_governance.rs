//! Rate limits on the broker's clock: buckets refill with [`crate::clock::Clock::monotonic`],
//! so a [`crate::clock::ManualClock`] moved by a second refills a `2/s` bucket without a
//! wall-clock sleep (moved from the e2e governance tests, which slept for `Retry-After`).

use std::time::Duration;

use axum::http::StatusCode;

use super::in_process::{Answer, InProcess};
use crate::dev::{DEV_SUBJECT, DEV_TASK};

/// 2098-10-01T00:00:00Z, well inside the dev registration.
const START: u64 = 4_070_908_800 - 92 * 86_400;
const PEER: &str = "127.0.0.1:5000";

/// The `Retry-After` of a 429 answer, seconds.
fn retry_after(r: &Answer) -> u64 {
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    r.headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After on a 429: {:?}", r.headers))
}

/// A token-exchange form for the dev workload's `task`, at the broker's time.
async fn ask(b: &InProcess, task: &str) -> Answer {
    let jwt = b.jwt(DEV_SUBJECT);
    let form = [
        (
            "grant_type",
            broker_client::types::GRANT_TYPE_TOKEN_EXCHANGE,
        ),
        ("subject_token_type", broker_client::types::TOKEN_TYPE_JWT),
        ("subject_token", jwt.as_str()),
        ("task", task),
    ];
    b.token_form(&form, PEER).await
}

/// `identity_rate_limit = "2/s"`: the burst is two, the third is 429 with
/// `Retry-After: 1`, and after `Retry-After` seconds on the broker's clock tokens come
/// back.
#[tokio::test]
async fn the_identity_rate_limit_refills_after_retry_after_on_the_brokers_clock() {
    let b = InProcess::start_at(START, "\n[governance]\nidentity_rate_limit = \"2/s\"\n").await;
    for _ in 0..2 {
        assert_eq!(b.token(PEER).await.status, StatusCode::OK);
    }
    let wait = retry_after(&b.token(PEER).await);
    assert_eq!(wait, 1, "Retry-After of a 2/s bucket");
    assert_eq!(b.last_denial()["rule"], "rate_limited");
    b.clock.advance(Duration::from_secs(wait));
    let r = b.token(PEER).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "tokens come back after Retry-After: {}",
        r.body
    );
}

/// A second task of the dev workload, limited to one a minute.
const SLOW_TASK: &str = "demo-slow";

/// Task rate limits from the policy: a `2/s` task recovers a second later on the broker's
/// clock, while a `1/m` task emptied at the same time has not refilled yet.
#[tokio::test]
async fn a_task_rate_limit_refills_at_its_own_rate_on_the_brokers_clock() {
    let b = InProcess::start_edited(START, |dir, text| {
        let path = dir.join("policies").join("demo-workload.toml");
        let policy = std::fs::read_to_string(&path).unwrap().replace(
            "max_ttl      = \"10m\"\n",
            "max_ttl      = \"10m\"\nrate_limit   = \"2/s\"\n",
        );
        let slow = format!(
            "\n[[task]]\nname         = \"{SLOW_TASK}\"\naudience     = \"https://api.dev.example.org\"\nscopes       = [\"demo:read\"]\nmax_ttl      = \"5m\"\nsource_cidrs = [\"127.0.0.0/8\"]\nrate_limit   = \"1/m\"\n"
        );
        std::fs::write(&path, format!("{policy}{slow}")).unwrap();
        text
    })
    .await;
    for _ in 0..2 {
        let r = ask(&b, DEV_TASK).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    assert_eq!(
        retry_after(&ask(&b, DEV_TASK).await),
        1,
        "a 2/s task bucket"
    );
    assert_eq!(ask(&b, SLOW_TASK).await.status, StatusCode::OK);
    let wait = retry_after(&ask(&b, SLOW_TASK).await);
    assert!(
        (58..=60).contains(&wait),
        "a 1/m bucket just emptied: {wait}"
    );

    b.clock.advance(Duration::from_secs(1));
    let r = ask(&b, DEV_TASK).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the 2/s task recovers: {}",
        r.body
    );
    retry_after(&ask(&b, SLOW_TASK).await);
}
