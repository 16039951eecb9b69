//! Several broker replicas on one PostgreSQL: two real `broker` processes sharing a real
//! PostgreSQL server that the test starts from the system's binaries (a fresh server per
//! test, stopped at the end). Without PostgreSQL the tests skip, and fail under `CI=true`.

use std::time::{Duration, Instant};

use broker_tests::admin::{
    BATCH_IDENTITY, BATCH_SUBJECT, BILLING_SUBJECT, READ_TASK, admin_bearer, feed_jti, feed_rule,
    jti_of, revocation_options,
};
use broker_tests::postgres::TestPostgres;
use broker_tests::{Reply, SUBJECT, TASK, TestBroker, TokenRequest, rs256};
use serde_json::json;

/// A replica named `id` whose `[store]` is the test server's database.
fn replica(pg: &TestPostgres, id: &str) -> TestBroker {
    let mut opts = revocation_options();
    opts.extra_toml.push_str(&format!(
        "\n[store]\nkind = \"postgres\"\nreplica_id = \"{id}\"\nurl = \"{}\"\nsslmode = \"disable\"\n",
        pg.url()
    ));
    TestBroker::start(opts)
}

/// Polls `check` every 5 ms until it holds; panics after 5 s. Returns how long it took.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{what}: not within 5 s");
}

async fn payments_token(b: &TestBroker) -> Reply {
    b.token(&TokenRequest::exchange(&rs256(SUBJECT), TASK))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn revocations_and_the_kill_switch_on_one_replica_bind_the_other() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let a = replica(&pg, "a");
    let b = replica(&pg, "b");

    // By jti: issued on A, revoked on B, inactive on A and in A's feed.
    let token = a.issue_payments().await;
    assert!(a.is_active(&token).await);
    let jti = jti_of(&token);
    b.admin_revoke(&json!({"jti": jti, "reason": "compromised"}))
        .await;
    eventually("A honours B's jti revocation", async || {
        !a.is_active(&token).await
    })
    .await;
    assert!(
        feed_jti(&a.feed(None).await, &jti).is_some(),
        "A's revocation feed lists the jti revoked on B"
    );

    // By rule.
    let batch = a.issue(BATCH_SUBJECT, READ_TASK, None).await;
    assert!(a.is_active(&batch).await);
    let rule = b
        .admin_revoke(&json!({"identity": BATCH_IDENTITY, "reason": "r"}))
        .await["rule"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually("A honours B's rule revocation", async || {
        !a.is_active(&batch).await
    })
    .await;
    assert!(feed_rule(&a.feed(None).await, &rule).is_some());

    // The kill switch and enable.
    let billing = || TokenRequest::exchange(&rs256(BILLING_SUBJECT), TASK);
    assert_eq!(a.token(&billing()).await.status, 200);
    let r = b
        .admin_post(
            Some(&admin_bearer()),
            "identities/billing-worker/disable",
            &json!({"reason": "incident"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    eventually("A refuses the identity disabled on B", async || {
        let r = a.token(&billing()).await;
        r.status == 403 && r.error() == Some("access_denied")
    })
    .await;
    let r = b
        .admin_post(
            Some(&admin_bearer()),
            "identities/billing-worker/enable",
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    eventually("A issues again to the identity enabled on B", async || {
        a.token(&billing()).await.status == 200
    })
    .await;

    // And the other way round: revoked on A, honoured on B for B's own token.
    let on_b = b.issue_payments().await;
    a.admin_revoke(&json!({"jti": jti_of(&on_b), "reason": "r"}))
        .await;
    eventually("B honours A's jti revocation", async || {
        !b.is_active(&on_b).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_refuses_while_the_database_is_away_and_recovers_by_itself() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let mut a = replica(&pg, "a");
    let b = replica(&pg, "b");
    let revoked = a.issue_payments().await;
    b.admin_revoke(&json!({"jti": jti_of(&revoked), "reason": "before the outage"}))
        .await;
    eventually("A honours the revocation", async || {
        !a.is_active(&revoked).await
    })
    .await;
    assert_eq!(payments_token(&a).await.status, 200);

    pg.stop();
    eventually("A refuses to issue on a stale view", async || {
        let r = payments_token(&a).await;
        r.status == 503 && r.error() == Some("temporarily_unavailable")
    })
    .await;
    let r = payments_token(&a).await;
    assert!(r.access_token().is_none(), "no token on a stale view");
    let ready = a
        .client()
        .get(format!("{}/readyz", a.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "readyz says not ready while stale");
    let intro = a.introspect_with(Some(&admin_bearer()), &revoked).await;
    assert_eq!(intro.status, 503, "no introspection answer on a stale view");

    pg.start_again();
    eventually("A serves again once the database is back", async || {
        payments_token(&a).await.status == 200
    })
    .await;
    assert!(
        !a.is_active(&revoked).await,
        "the revocation made before the outage still holds"
    );

    // A replica restarted after the outage loads everything from the database.
    let _ = a.stop();
    a.launch().unwrap_or_else(|e| panic!("relaunch: {e}"));
    assert!(!a.is_active(&revoked).await, "after a restart too");
    let refused = a.records_of("denied");
    assert!(
        refused.is_empty() || refused.iter().all(|r| r["rule"] == "state_stale"),
        "only stale-view refusals while the database was away"
    );
}

/// The propagation benchmark of `bench/replicas.sh` (not run in CI: `--ignored`): 1,000
/// tokens issued on A, each revoked on B; the time from B's acknowledgement of the
/// revocation until A's introspection says inactive, polled every 0.5 ms. Prints
/// p50/p99/max; asserts only that every revocation arrived.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run by bench/replicas.sh"]
async fn bench_revocation_propagation() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let a = replica(&pg, "a");
    let b = replica(&pg, "b");
    let n: usize = std::env::var("PROPAGATION_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut tokens = Vec::with_capacity(n);
    for _ in 0..n {
        tokens.push(a.issue_payments().await);
    }
    let mut delays = Vec::with_capacity(n);
    for t in &tokens {
        b.admin_revoke(&json!({"jti": jti_of(t), "reason": "bench"}))
            .await;
        let acked = Instant::now();
        loop {
            if !a.is_active(t).await {
                delays.push(acked.elapsed());
                break;
            }
            assert!(acked.elapsed() < Duration::from_secs(5), "not propagated");
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    delays.sort();
    let pct = |p: f64| delays[((delays.len() as f64 * p) as usize).min(delays.len() - 1)];
    println!(
        "revocation propagation B -> A over {n} revocations: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        delays[delays.len() - 1].as_secs_f64() * 1e3
    );
}
