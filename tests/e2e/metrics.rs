//! `/metrics` (issue 15): the `prometheus-client` histograms exist and move under real
//! traffic (issuance by outcome, introspection, audit commit, log and anchor syncs, batch
//! sizes, state-store calls), the counters the other groups read keep their names, and
//! the real `promtool check metrics` accepts the page. OpenMetrics is served when asked
//! for. The token path answers with a W3C `traceparent`, keeps a valid incoming trace id
//! and logs it as `trace_id` in the JSON logs. The docs' alert rules pass `promtool check
//! rules`, and the docs' dashboard and rules name only series the broker serves.

use broker_tests::admin::{READ_TASK, RS_SUBJECT, revocation_options};
use broker_tests::prom::{
    check_metrics, check_rules, docs_dir, families, promtool_present, sample, sample_of,
};
use std::time::{Duration, Instant};

use broker_tests::{SUBJECT, TASK, TestBroker, TokenRequest, rs256};
use serde_json::Value;

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

/// A valid incoming `traceparent` (the W3C specification's example).
const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// `POST /oauth2/token` with an optional `traceparent`: status, response `traceparent`,
/// body.
async fn token_traced(b: &TestBroker, traceparent: Option<&str>) -> (u16, String, Value) {
    let req = TokenRequest::exchange(&rs256(SUBJECT), TASK);
    let mut rb = b
        .client()
        .post(format!("{}/oauth2/token", b.base_url()))
        .form(&req.params);
    if let Some(t) = traceparent {
        rb = rb.header("traceparent", t);
    }
    let res = rb.send().await.expect("POST /oauth2/token");
    let status = res.status().as_u16();
    let tp = res
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no traceparent on the token response ({status})"))
        .to_owned();
    (status, tp, res.json().await.unwrap_or(Value::Null))
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, ids not all zero: the trace id and span id.
fn well_formed(tp: &str) -> (String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    for (p, len) in parts[1..].iter().zip([32, 16, 2]) {
        assert_eq!(p.len(), len, "{tp}");
        assert!(
            p.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
            "{tp}"
        );
    }
    assert!(parts[1].bytes().any(|c| c != b'0') && parts[2].bytes().any(|c| c != b'0'));
    (parts[1].to_owned(), parts[2].to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_path_keeps_a_valid_traceparent_and_logs_its_trace_id() {
    let mut opts = revocation_options();
    // The `issued` line of the token path is at debug.
    opts.env
        .push(("RUST_LOG".into(), "info,broker::issuance=debug".into()));
    let mut b = TestBroker::prepare(opts);
    b.serve_arg("--log-format").serve_arg("json");
    b.launch().unwrap_or_else(|e| panic!("{e}"));

    // A valid parent: its trace id is kept, the broker's span id is new, sampled is kept.
    let (status, tp, body) = token_traced(&b, Some(PARENT)).await;
    assert_eq!(status, 200, "{body}");
    let (trace, span) = well_formed(&tp);
    assert_eq!(trace, PARENT_TRACE);
    assert_ne!(span, "00f067aa0ba902b7");
    assert!(tp.ends_with("-01"), "{tp}");
    let token = body["access_token"].as_str().expect("a token").to_owned();

    // The JSON log line of that issuance carries the trace id at the top level.
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let logs = b.stderr();
        let found = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["trace_id"] == PARENT_TRACE && v["fields"]["message"] == "issued");
        if let Some(v) = found {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no `issued` log line with trace_id {PARENT_TRACE}:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(line["fields"]["jti"].is_string(), "{line}");
    let logs = b.stderr();
    assert!(!logs.contains(&token), "a token in the logs:\n{logs}");

    // No parent, or an invalid one (uppercase hex, all-zero trace id, too long, two
    // headers' worth of text): a fresh trace each time, never the offered id.
    let mut seen = Vec::new();
    for bad in [
        None,
        Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"),
        Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        Some(&*format!("{PARENT}-{}", "a".repeat(300))),
        Some(&*format!("{PARENT},{PARENT}")),
    ] {
        let (status, tp, body) = token_traced(&b, bad).await;
        assert_eq!(status, 200, "{body}");
        let (trace, _) = well_formed(&tp);
        assert_ne!(trace, PARENT_TRACE, "{bad:?} was not refused");
        assert!(tp.ends_with("-00"), "a new trace is not sampled: {tp}");
        assert!(!seen.contains(&trace), "trace ids repeat: {trace}");
        seen.push(trace);
    }

    // Refusals and introspection carry one too.
    let denied = b
        .client()
        .post(format!("{}/oauth2/token", b.base_url()))
        .form(&TokenRequest::exchange(&rs256(SUBJECT), "no-such-task").params)
        .header("traceparent", PARENT)
        .send()
        .await
        .unwrap();
    assert!(denied.status().is_client_error());
    let tp = denied.headers()["traceparent"].to_str().unwrap().to_owned();
    assert_eq!(well_formed(&tp).0, PARENT_TRACE);
    let intro = b
        .client()
        .post(format!("{}/oauth2/introspect", b.base_url()))
        .bearer_auth(rs256(RS_SUBJECT))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(intro.status().as_u16(), 200);
    well_formed(intro.headers()["traceparent"].to_str().unwrap());
}

/// The `broker_…` identifiers in `text`.
fn broker_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("broker_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // Only whole identifiers (not e.g. `jit-broker_x` or a path segment).
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '/' || c == '.') {
            names.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_and_alert_rules_name_real_series_and_promtool_accepts_the_rules() {
    let b = TestBroker::start(revocation_options());
    // A denial, so that the per-rule family has a child (rules are not known up front).
    let denied = b
        .token(&TokenRequest::exchange(&rs256(SUBJECT), "no-such-task"))
        .await;
    assert!((400..500).contains(&denied.status), "{}", denied.text);
    let (_, page) = scrape(&b, None).await;
    let mut served = Vec::new();
    for f in families(&page) {
        let histogram = page.contains(&format!("# TYPE {f} histogram\n"));
        if histogram {
            for suffix in ["_bucket", "_count", "_sum"] {
                served.push(format!("{f}{suffix}"));
            }
        }
        served.push(f);
    }

    let dashboard_text = std::fs::read_to_string(docs_dir().join("grafana-dashboard.json"))
        .expect("reading docs/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&dashboard_text).expect("dashboard is JSON");
    assert!(dashboard["title"].is_string() && dashboard["schemaVersion"].is_u64());
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let mut exprs = String::new();
    for p in panels {
        assert!(p["title"].is_string() && p["type"].is_string() && p["gridPos"].is_object());
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            exprs.push_str(t["expr"].as_str().expect("a PromQL expr"));
            exprs.push('\n');
        }
    }
    let rules = docs_dir().join("prometheus-alerts.yml");
    let rules_text = std::fs::read_to_string(&rules).expect("reading the alert rules");
    for (what, text) in [("dashboard", &exprs), ("alert rules", &rules_text)] {
        let names = broker_names(text);
        assert!(names.len() >= 8, "{what}: {names:?}");
        for n in names {
            assert!(
                served.contains(&n),
                "{what} names {n}, which /metrics does not serve"
            );
        }
    }
    // What the issue asks the dashboard and the rules to show.
    for needle in [
        "broker_tokens_issued_total",
        "broker_token_request_duration_seconds_bucket",
        "broker_requests_denied_total",
        "broker_audit_failures_total",
        "broker_audit_log_sync_duration_seconds_bucket",
        "broker_audit_anchor_sync_duration_seconds_bucket",
        "broker_audit_batch_records",
        "broker_anomalies_total",
        "broker_state_store_stale",
    ] {
        assert!(exprs.contains(needle), "the dashboard shows {needle}");
    }
    for needle in [
        "broker_audit_failures_total",
        "broker_audit_write_failing",
        "broker_state_store_stale",
        "broker_anomalies_total",
        "> 0.005",
    ] {
        assert!(rules_text.contains(needle), "the alert rules use {needle}");
    }

    if promtool_present(
        "the_dashboard_and_alert_rules_name_real_series_and_promtool_accepts_the_rules",
    ) {
        let out = check_rules(&rules);
        assert!(out.success(), "promtool check rules: {out}");
        assert!(out.stdout.contains("SUCCESS"), "{out}");
    }
}
