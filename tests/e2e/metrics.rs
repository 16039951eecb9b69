//! `/metrics` (issue 15): the `prometheus-client` histograms exist and move under real
//! traffic (issuance by outcome, introspection, audit commit, log and anchor syncs, batch
//! sizes, state-store calls), the counters the other groups read keep their names, and
//! the real `promtool check metrics` accepts the page. OpenMetrics is served when asked
//! for.

use broker_tests::admin::{READ_TASK, RS_SUBJECT, revocation_options};
use broker_tests::prom::{check_metrics, promtool_present, sample, sample_of};
use broker_tests::{SUBJECT, TestBroker, TokenRequest, rs256};

/// The series the test reads, before and after traffic.
const MOVING: [&str; 7] = [
    "broker_token_request_duration_seconds_count{outcome=\"issued\"}",
    "broker_token_request_duration_seconds_count{outcome=\"denied\"}",
    "broker_introspection_duration_seconds_count",
    "broker_audit_commit_duration_seconds_count",
    "broker_audit_log_sync_duration_seconds_count",
    "broker_audit_anchor_sync_duration_seconds_count",
    "broker_audit_batch_records_count",
];

async fn scrape(b: &TestBroker, accept: Option<&str>) -> (String, String) {
    let mut rb = b.client().get(format!("{}/metrics", b.base_url()));
    if let Some(a) = accept {
        rb = rb.header("accept", a);
    }
    let res = rb.send().await.expect("GET /metrics");
    assert_eq!(res.status().as_u16(), 200);
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (ct, res.text().await.expect("reading /metrics"))
}

#[tokio::test(flavor = "multi_thread")]
async fn histograms_move_under_traffic_and_promtool_accepts_the_page() {
    let b = TestBroker::start(revocation_options());
    let (ct, before) = scrape(&b, None).await;
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    // Every histogram series is there before any request (children made at start).
    for s in MOVING {
        assert!(
            sample(&before, s).is_some(),
            "{s} before traffic:\n{before}"
        );
    }
    assert!(
        sample_of(
            &before,
            "broker_store_operation_duration_seconds_count{op=\"load\"}"
        ) >= 1.0,
        "the state store is loaded at start"
    );

    // Traffic: 3 issuances, 1 denial, 2 introspections.
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(b.issue_payments().await);
    }
    let denied = b
        .token(&TokenRequest::exchange(&rs256(SUBJECT), "no-such-task"))
        .await;
    assert!((400..500).contains(&denied.status), "{}", denied.text);
    assert!(b.is_active(&tokens[0]).await);
    assert!(
        b.is_active(&b.issue(RS_SUBJECT, READ_TASK, None).await)
            .await
    );

    let (_, after) = scrape(&b, None).await;
    let grew = |s: &str| sample_of(&after, s) - sample_of(&before, s);
    assert_eq!(
        grew("broker_token_request_duration_seconds_count{outcome=\"issued\"}"),
        4.0
    );
    assert_eq!(
        grew("broker_token_request_duration_seconds_count{outcome=\"denied\"}"),
        1.0
    );
    assert_eq!(grew("broker_introspection_duration_seconds_count"), 2.0);
    assert_eq!(grew("broker_tokens_issued_total"), 4.0);
    // One `issued` or `denied` record per token request, each a durable append.
    assert!(
        grew("broker_audit_commit_duration_seconds_count") >= 5.0,
        "{after}"
    );
    assert!(grew("broker_audit_batch_records_sum") >= 5.0, "{after}");
    for s in [
        "broker_audit_log_sync_duration_seconds_count",
        "broker_audit_anchor_sync_duration_seconds_count",
        "broker_audit_batch_records_count",
    ] {
        assert!(grew(s) >= 1.0, "{s} moved:\n{after}");
    }
    // The +Inf bucket of a histogram is its count.
    assert_eq!(
        sample_of(
            &after,
            "broker_introspection_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        sample_of(&after, "broker_introspection_duration_seconds_count")
    );
    // The counters the other groups read keep their names.
    for s in [
        "broker_audit_batches_total",
        "broker_audit_records_total",
        "broker_audit_write_failing",
        "broker_audit_failures_total",
        "broker_state_store_stale",
    ] {
        assert!(sample(&after, s).is_some(), "{s}:\n{after}");
    }
    assert!(
        after
            .lines()
            .any(|l| l.starts_with("broker_requests_denied_total{rule=")),
        "{after}"
    );
    println!(
        "scrape size: {} bytes, {} lines",
        after.len(),
        after.lines().count()
    );

    if promtool_present("histograms_move_under_traffic_and_promtool_accepts_the_page") {
        let out = check_metrics(&after);
        assert!(out.success(), "promtool check metrics: {out}\n{after}");
    }

    // A scraper asking for OpenMetrics gets it.
    let (ct, om) = scrape(
        &b,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    )
    .await;
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE broker_tokens_issued counter\n"), "{om}");
}
