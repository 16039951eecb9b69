//! NHI governance (issue 7): issuance rate limits, recertification, the inventory (API and
//! `broker inventory`), usage that survives restarts, and behavioural monitoring.
//!
//! Every test runs a broker with the registry of `broker_tests::governance`. Each anomaly
//! test drives [`WATCHED`] (action `alert`, the config's default) and [`GUARDED`]
//! (`anomaly_action = "deny"`) through the same trigger in one broker, with short
//! configured windows instead of long sleeps, and checks both outcomes: `alert` issues the
//! token and reports; `deny` refuses that request and every later one of the identity
//! until an admin acknowledges the anomaly, then traffic resumes. Each anomaly must show
//! up three ways: an `anomaly` audit record with its evidence, the
//! `broker_anomalies_total{kind}` counter, and a webhook event.

use std::ffi::OsStr;
use std::time::Duration;

use broker_tests::admin::{ADMIN, admin_bearer, auditor_bearer, jti_of, write_file};
use broker_tests::break_glass::{WebhookReceiver, eventually};
use broker_tests::governance::{
    ALERTING, ALERTING_SUBJECT, ALT_NETWORK, ALT_SOURCE, Answer, EXPIRING, EXPIRING_IN_DAYS,
    EXPIRING_OWNER, EXPIRING_SUBJECT, GUARDED, GUARDED_SUBJECT, GovOptions, SYNC_READ, SYNC_WRITE,
    WATCHED, WATCHED_SUBJECT, alerting_file, anomaly_events, anomaly_id, date_in_days, entry,
    gov_admin_bearer, governance_policies_with, guarded_file, listed_ids, next_window, strings,
    sync_task, wait_past, watched_file,
};
use broker_tests::sdk_support::{issued_record, write_atomically};
use broker_tests::{
    CmdOutput, EXPIRED_IDENTITY, EXPIRED_SUBJECT, IDENTITY, OFFICE_TASK, SUBJECT, TASK, TestBroker,
    TokenRequest, broker_command, insecure_claims, now_secs, rs256,
};
use serde_json::{Value, json};

/// The rule of a request refused because of an open `deny` anomaly.
const HELD: &str = "anomaly_unacknowledged";

// ---------------------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------------------

/// Checks an OAuth error answer: status, `error`, a description, no token.
fn assert_error(ans: &Answer, status: u16, error: &str, what: &str) {
    assert_eq!(ans.status, status, "{what}: status; body: {}", ans.text);
    assert_eq!(
        ans.error(),
        Some(error),
        "{what}: error; body: {}",
        ans.text
    );
    assert!(
        ans.body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{what}: an error_description: {}",
        ans.text
    );
    assert!(
        ans.access_token().is_none(),
        "{what}: no token: {}",
        ans.text
    );
}

fn description(ans: &Answer) -> &str {
    ans.body["error_description"].as_str().unwrap_or_default()
}

/// The fields every anomaly record has.
fn check_anomaly_record(rec: &Value, identity: &str, kind: &str, action: &str) {
    assert_eq!(rec["event"], "anomaly", "{rec}");
    assert_eq!(rec["rule"], kind, "{rec}");
    assert_eq!(rec["identity"], identity, "{rec}");
    assert_eq!(rec["detail"]["action"], action, "{rec}");
    assert!(
        anomaly_id(rec).starts_with("an-"),
        "an anomaly id an-…: {rec}"
    );
    assert!(
        rec["detail"]["evidence"]
            .as_object()
            .is_some_and(|e| !e.is_empty()),
        "the record carries the evidence: {rec}"
    );
    assert!(
        rec["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "a reason: {rec}"
    );
}

/// `alert`: the request that raised the anomaly got its token, and `identity` has exactly
/// one anomaly record, of `kind`. Returns the record.
fn assert_alerted(b: &TestBroker, ans: &Answer, identity: &str, kind: &str) -> Value {
    assert_eq!(
        ans.status, 200,
        "with action alert the request that raised {kind} is served: {}",
        ans.text
    );
    let recs = b.anomaly_records(identity, None);
    assert_eq!(
        recs.len(),
        1,
        "exactly one anomaly of {identity}, a {kind}: {recs:#?}"
    );
    check_anomaly_record(&recs[0], identity, kind, "alert");
    let issued = issued_record(b, &jti_of(ans.access_token().expect("a token")));
    assert_eq!(issued["identity"], identity, "{issued}");
    recs[0].clone()
}

/// `ans` is a refusal by the open anomaly `id` of `identity`, recorded as such.
fn assert_refused_by(b: &TestBroker, ans: &Answer, identity: &str, id: &str) {
    assert_error(ans, 403, "access_denied", "a request held by an anomaly");
    assert!(
        description(ans).contains(id),
        "the refusal names anomaly {id}: {}",
        ans.text
    );
    let denied = b.denied_of(identity, HELD);
    let rec = denied
        .last()
        .unwrap_or_else(|| panic!("a denied record with rule {HELD}: {:#?}", b.records()));
    assert_eq!(rec["decision"], "deny", "{rec}");
    assert_eq!(rec["error"], "access_denied", "{rec}");
    assert!(
        rec["reason"].as_str().is_some_and(|r| r.contains(id)),
        "the denied record names anomaly {id}: {rec}"
    );
}

/// `deny`: the request that raised the anomaly was refused, naming it, and `identity` has
/// exactly one anomaly record, of `kind`. Returns the record.
fn assert_held(b: &TestBroker, ans: &Answer, identity: &str, kind: &str) -> Value {
    let recs = b.anomaly_records(identity, None);
    assert_eq!(
        recs.len(),
        1,
        "exactly one anomaly of {identity}, a {kind}: {recs:#?}\nanswer: {}",
        ans.text
    );
    let rec = recs[0].clone();
    check_anomaly_record(&rec, identity, kind, "deny");
    assert_refused_by(b, ans, identity, &anomaly_id(&rec));
    rec
}

/// While anomaly `id` (`kind`) is open, every request of `identity` is refused, even for
/// what it used before (`again`: task and scope); the inventory lists the anomaly; only
/// an admin with the `revoke` role may acknowledge it (`anomaly_acknowledged` record);
/// after that `again` is issued and the inventory no longer lists it.
async fn ack_then_resume(
    b: &TestBroker,
    identity: &str,
    subject: &str,
    id: &str,
    kind: &str,
    again: (&str, Option<&str>),
) {
    let held_before = b.denied_of(identity, HELD).len();
    let r = b.ask(subject, again.0, again.1).await;
    assert_refused_by(b, &r, identity, id);
    assert_eq!(b.denied_of(identity, HELD).len(), held_before + 1);

    let e = b.inventory_entry(identity).await;
    let open = e["anomalies"]
        .as_array()
        .unwrap_or_else(|| panic!("the inventory lists open anomalies: {e}"));
    let listed = open
        .iter()
        .find(|a| a["id"] == id)
        .unwrap_or_else(|| panic!("the inventory lists open anomaly {id}: {e:#}"));
    assert_eq!(listed["kind"], kind, "{listed}");
    assert_eq!(listed["action"], "deny", "{listed}");

    // Who may acknowledge: not an auditor, not a workload (not even the held one), not
    // an anonymous caller; an unknown id is 404.
    let r = b.ack_with(Some(&auditor_bearer()), id).await;
    assert_eq!(r.status, 403, "an auditor acknowledges: {}", r.text);
    let r = b.ack_with(Some(&rs256(subject)), id).await;
    assert_eq!(r.status, 403, "the held workload acknowledges: {}", r.text);
    let denied = b.records_of("denied");
    assert_eq!(
        denied.last().map(|d| d["rule"].clone()),
        Some(json!("admin_required")),
        "{denied:#?}"
    );
    let r = b.ack_with(None, id).await;
    assert_eq!(r.status, 401, "an anonymous acknowledgement: {}", r.text);
    let r = b
        .ack_with(Some(&admin_bearer()), "an-00000000deadbeef")
        .await;
    assert_eq!(
        r.status, 404,
        "acknowledging an unknown anomaly: {}",
        r.text
    );
    let r = b.ask(subject, again.0, again.1).await;
    assert_refused_by(b, &r, identity, id);

    let r = b.ack_with(Some(&admin_bearer()), id).await;
    assert_eq!(r.status, 200, "the admin acknowledges {id}: {}", r.text);
    assert_eq!(r.body["id"], id, "{}", r.text);
    assert!(
        r.body["acknowledged_by"]
            .as_str()
            .is_some_and(|a| a.contains(ADMIN)),
        "the answer says who acknowledged: {}",
        r.text
    );
    let acks: Vec<Value> = b
        .records_of("anomaly_acknowledged")
        .into_iter()
        .filter(|r| r["detail"]["anomaly"] == id)
        .collect();
    assert_eq!(acks.len(), 1, "one anomaly_acknowledged record: {acks:#?}");
    assert_eq!(acks[0]["actor"], format!("admin:{ADMIN}"), "{}", acks[0]);
    assert_eq!(acks[0]["identity"], identity, "{}", acks[0]);
    assert_eq!(acks[0]["detail"]["kind"], kind, "{}", acks[0]);
    assert_eq!(acks[0]["decision"], "allow", "{}", acks[0]);

    let r = b.ask(subject, again.0, again.1).await;
    assert_eq!(
        r.status, 200,
        "traffic resumes after the acknowledgement: {}",
        r.text
    );
    let e = b.inventory_entry(identity).await;
    assert!(
        !e["anomalies"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["id"] == id)),
        "an acknowledged anomaly is no longer open: {e:#}"
    );
}

/// The counter of `kind` counts exactly `recs`, and the webhook received one event per
/// record with the same id, identity, action and evidence.
async fn assert_reported(b: &TestBroker, hook: &WebhookReceiver, kind: &str, recs: &[&Value]) {
    let page = b.metrics_page().await;
    assert_eq!(
        broker_tests::governance::anomaly_metric_in(&page, kind),
        recs.len() as u64,
        "broker_anomalies_total{{kind=\"{kind}\"}}:\n{page}"
    );
    for rec in recs {
        let id = anomaly_id(rec);
        let arrived = eventually(Duration::from_secs(10), async || {
            !anomaly_events(hook, &id).is_empty()
        })
        .await;
        assert!(
            arrived,
            "the webhook received anomaly {id}; events: {:#?}",
            hook.events()
        );
        let events = anomaly_events(hook, &id);
        assert_eq!(events.len(), 1, "one event for {id}: {events:#?}");
        let a = &events[0]["anomaly"];
        assert_eq!(a["kind"], kind, "{a}");
        assert_eq!(a["identity"], rec["identity"], "{a}");
        assert_eq!(a["action"], rec["detail"]["action"], "{a}");
        assert_eq!(a["evidence"], rec["detail"]["evidence"], "{a}");
    }
}

// ---------------------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------------------

fn requests(subject: &str, task: &str, n: usize) -> Vec<TokenRequest> {
    (0..n)
        .map(|_| TokenRequest::exchange(&rs256(subject), task))
        .collect()
}

/// A 429 of the rate limiter: `temporarily_unavailable`, `Retry-After` (returned).
fn assert_rate_limited(ans: &Answer, what: &str) -> u64 {
    assert_error(ans, 429, "temporarily_unavailable", what);
    let ra = ans
        .header("retry-after")
        .unwrap_or_else(|| panic!("{what}: a Retry-After header: {:?}", ans.headers));
    ra.parse()
        .unwrap_or_else(|e| panic!("{what}: Retry-After {ra:?} is delta-seconds: {e}"))
}

/// Splits a burst's answers into (served, rate-limited); panics on anything else.
fn split_burst(answers: &[Answer], what: &str) -> (usize, Vec<u64>) {
    let mut ok = 0;
    let mut waits = Vec::new();
    for a in answers {
        match a.status {
            200 => ok += 1,
            _ => waits.push(assert_rate_limited(a, what)),
        }
    }
    (ok, waits)
}

/// The `denied` records of `identity` with rule `rate_limited`, checked.
fn rate_limited_records(b: &TestBroker, identity: &str) -> Vec<Value> {
    let recs = b.denied_of(identity, "rate_limited");
    for r in &recs {
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["error"], "temporarily_unavailable", "{r}");
        assert_eq!(r["source"], "127.0.0.1", "{r}");
        assert!(r["task"].is_string(), "the record names the task: {r}");
        assert!(
            r["reason"].as_str().is_some_and(|s| s.contains(identity)),
            "the reason names the identity: {r}"
        );
        assert!(r.get("jti").is_none(), "{r}");
    }
    recs
}

/// `identity_rate_limit = "2/s"`: a burst of five gets two tokens and three 429s with
/// `Retry-After: 1` and `denied` records; the bucket covers every task of the identity,
/// not other identities (the refill after `Retry-After`: in process, on the broker's clock).
#[tokio::test(flavor = "multi_thread")]
async fn the_identity_rate_limit_answers_429_with_retry_after_and_recovers() {
    let b = GovOptions::with(r#"identity_rate_limit = "2/s""#).start();
    let answers = b.token_burst(requests(WATCHED_SUBJECT, SYNC_READ, 5)).await;
    let (ok, waits) = split_burst(&answers, "a burst over the identity limit");
    assert_eq!(ok, 2, "the bucket holds 2 (burst = count)");
    assert_eq!(waits, vec![1, 1, 1], "Retry-After of a 2/s bucket");
    let desc = answers
        .iter()
        .find(|a| a.status == 429)
        .map(description)
        .unwrap_or_default()
        .to_owned();
    assert!(
        desc.contains(WATCHED) && desc.contains("rate limit"),
        "the description says which limit: {desc}"
    );

    // The identity's bucket is empty for every task...
    let r = b.ask(WATCHED_SUBJECT, SYNC_WRITE, None).await;
    assert_rate_limited(&r, "another task of the limited identity");
    // ...but not for another identity.
    b.ask_ok(GUARDED_SUBJECT, SYNC_READ, None).await;
    b.ask_ok(GUARDED_SUBJECT, SYNC_READ, None).await;

    let recs = rate_limited_records(&b, WATCHED);
    assert_eq!(recs.len(), 4, "one denied record per 429: {recs:#?}");
    assert_eq!(recs[3]["task"], SYNC_WRITE, "{}", recs[3]);
    assert_eq!(
        b.issued_of(WATCHED).len(),
        2,
        "nothing issued beyond the burst"
    );

    // That tokens come back after Retry-After is shown on the broker's clock by
    // api::in_process_governance::the_identity_rate_limit_refills_after_retry_after_on_the_brokers_clock.
}

/// `rate_limit` on a task (policy): a bucket per identity and task. A `2/s` task refuses
/// the third of a burst with `Retry-After: 1` (its recovery: in process); another task of the same
/// identity and the same task of another identity have buckets of their own; a `1/m`
/// task says to wait about a minute. `identity_rate_limit` in `/h` is accepted.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_rate_limit_from_the_policy_is_per_identity_and_task() {
    let tasks = [
        sync_task(SYNC_READ, &["ledger:read"], "5m", Some("1/m")),
        sync_task(
            SYNC_WRITE,
            &["ledger:read", "ledger:write"],
            "10m",
            Some("2/s"),
        ),
    ];
    let b = GovOptions::with(r#"identity_rate_limit = "1000/h""#)
        .policies(governance_policies_with(&tasks))
        .start();

    let answers = b
        .token_burst(requests(WATCHED_SUBJECT, SYNC_WRITE, 4))
        .await;
    let (ok, waits) = split_burst(&answers, "a burst over the task limit");
    assert_eq!(ok, 2, "the task bucket holds 2");
    assert_eq!(waits, vec![1, 1], "Retry-After of a 2/s bucket");
    let desc = answers
        .iter()
        .find(|a| a.status == 429)
        .map(description)
        .unwrap_or_default()
        .to_owned();
    assert!(
        desc.contains(SYNC_WRITE),
        "the description names the task: {desc}"
    );

    // The same identity's other task, and the same task of another identity, are not
    // limited by that bucket.
    b.ask_ok(WATCHED_SUBJECT, SYNC_READ, None).await;
    b.ask_ok(GUARDED_SUBJECT, SYNC_WRITE, None).await;
    b.ask_ok(GUARDED_SUBJECT, SYNC_WRITE, None).await;

    // A 1/m task: the second request waits about a minute.
    let r = b.ask(WATCHED_SUBJECT, SYNC_READ, None).await;
    let wait = assert_rate_limited(&r, "the second request of a 1/m task");
    assert!(
        (58..=60).contains(&wait),
        "Retry-After of a 1/m bucket just emptied: {wait}"
    );
    assert!(description(&r).contains(SYNC_READ), "{}", r.text);

    let recs = rate_limited_records(&b, WATCHED);
    assert_eq!(recs.len(), 3, "one denied record per 429: {recs:#?}");
    assert!(b.denied_of(GUARDED, "rate_limited").is_empty());

    // The 2/s task recovering a second later while the 1/m task has not refilled is shown
    // on the broker's clock by
    // api::in_process_governance::a_task_rate_limit_refills_at_its_own_rate_on_the_brokers_clock.
}

// ---------------------------------------------------------------------------------------
// Recertification
// ---------------------------------------------------------------------------------------

/// An expired registration is refused (403 `access_denied`, rule `registration_expired`)
/// with a reason that tells the owner what to do: when it expired, that it needs
/// recertifying, and whose it is.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_registration_is_refused_with_what_to_do() {
    let b = GovOptions::default().start();
    let r = b.ask(EXPIRED_SUBJECT, "ledger-read", None).await;
    assert_error(&r, 403, "access_denied", "an expired registration");
    let desc = description(&r);
    for want in [EXPIRED_IDENTITY, "2020-01-01", "recertify", "team-legacy"] {
        assert!(desc.contains(want), "the description says {want:?}: {desc}");
    }
    assert!(r.header("registration-expires").is_none());
    let recs = b.denied_of(EXPIRED_IDENTITY, "registration_expired");
    assert_eq!(recs.len(), 1, "{:#?}", b.records());
    assert_eq!(recs[0]["reason"], desc, "{}", recs[0]);
    assert_eq!(recs[0]["error"], "access_denied", "{}", recs[0]);
    assert!(b.issued_of(EXPIRED_IDENTITY).is_empty());
}

/// Within `expiring_window` (default 30 days) of `expires`, tokens are still issued, and
/// the answer (`Registration-Expires`) and the `issued` record (`registration_expires`,
/// `recertify`) carry the deadline. A registration far from expiry carries neither.
#[tokio::test(flavor = "multi_thread")]
async fn a_registration_in_its_warning_window_is_issued_with_the_deadline() {
    let b = GovOptions::default().start();
    let deadline = date_in_days(EXPIRING_IN_DAYS);
    let r = b.ask_ok(EXPIRING_SUBJECT, SYNC_READ, None).await;
    assert_eq!(
        r.header("registration-expires"),
        Some(deadline.as_str()),
        "the response header says the deadline; headers: {:?}",
        r.headers
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let rec = issued_record(&b, &jti_of(r.access_token().unwrap()));
    assert_eq!(rec["identity"], EXPIRING, "{rec}");
    assert_eq!(rec["detail"]["registration_expires"], deadline, "{rec}");
    let recertify = rec["detail"]["recertify"].as_str().unwrap_or_default();
    for want in [EXPIRING, deadline.as_str(), EXPIRING_OWNER, "recertify"] {
        assert!(
            recertify.contains(want),
            "the record's recertify says {want:?}: {rec}"
        );
    }

    let r = b.ask_ok(WATCHED_SUBJECT, SYNC_READ, None).await;
    assert!(
        r.header("registration-expires").is_none(),
        "no deadline for a registration valid until 2099: {:?}",
        r.headers
    );
    let rec = issued_record(&b, &jti_of(r.access_token().unwrap()));
    assert!(
        rec["detail"].get("registration_expires").is_none()
            && rec["detail"].get("recertify").is_none(),
        "{rec}"
    );
}

/// `expiring_window = "5d"`: a registration 10 days from expiry is outside the window: no
/// header, no deadline in the record, status not `expiring`; `?due=` still finds it with
/// a wide enough window.
#[tokio::test(flavor = "multi_thread")]
async fn the_warning_window_is_configurable() {
    let b = GovOptions::with(r#"expiring_window = "5d""#).start();
    let r = b.ask_ok(EXPIRING_SUBJECT, SYNC_READ, None).await;
    assert!(
        r.header("registration-expires").is_none(),
        "{:?}",
        r.headers
    );
    let rec = issued_record(&b, &jti_of(r.access_token().unwrap()));
    assert!(rec["detail"].get("registration_expires").is_none(), "{rec}");
    let e = b.inventory_entry(EXPIRING).await;
    assert_eq!(e["status"], "active", "{e}");
    let due = b.inventory("?due=30d").await;
    assert_eq!(listed_ids(&due), due_ids());
    let due = b.inventory("?due=5d").await;
    assert_eq!(listed_ids(&due), vec![EXPIRED_IDENTITY.to_owned()]);
}

// ---------------------------------------------------------------------------------------
// The inventory
// ---------------------------------------------------------------------------------------

/// What `?due=30d` lists (sorted): the expired and the expiring registration.
fn due_ids() -> Vec<String> {
    let mut ids = vec![EXPIRED_IDENTITY.to_owned(), EXPIRING.to_owned()];
    ids.sort();
    ids
}

fn all_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        IDENTITY,
        EXPIRED_IDENTITY,
        WATCHED,
        GUARDED,
        ALERTING,
        EXPIRING,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    ids.sort();
    ids
}

fn status_of(inv: &Value, id: &str) -> String {
    entry(inv, id).unwrap_or_else(|| panic!("the inventory lists {id}: {inv:#}"))["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Every status: `active` (issued recently), `dormant` (never issued, or idle for
/// `dormant_after`), `expiring`, `expired`, `disabled` (the kill switch, which wins over
/// `expired` and `active`); every field of an entry; who may read it.
#[tokio::test(flavor = "multi_thread")]
async fn the_inventory_shows_every_status_and_the_usage() {
    let b = GovOptions::with(r#"dormant_after = "3s""#).start();
    let before = now_secs();
    b.ask_ok(SUBJECT, TASK, Some("ledger:read")).await;
    let last = b.ask_ok(SUBJECT, TASK, Some("ledger:read")).await;
    let last_iat = insecure_claims(last.access_token().unwrap())["iat"]
        .as_u64()
        .unwrap();
    b.ask_ok(GUARDED_SUBJECT, SYNC_READ, None).await;
    for id in [GUARDED, EXPIRED_IDENTITY] {
        let r = b
            .admin_post(
                Some(&admin_bearer()),
                &format!("identities/{id}/disable"),
                &json!({"reason": "governance test"}),
            )
            .await;
        assert_eq!(r.status, 200, "disable {id}: {}", r.text);
    }

    let inv = b.inventory("").await;
    let after = now_secs();
    assert!(
        inv["now"]
            .as_u64()
            .is_some_and(|n| (before..=after).contains(&n)),
        "now: {inv}"
    );
    assert_eq!(listed_ids(&inv), all_ids(), "every registered identity");
    for (id, status) in [
        (IDENTITY, "active"),
        (GUARDED, "disabled"),
        (EXPIRED_IDENTITY, "disabled"),
        (EXPIRING, "expiring"),
        (WATCHED, "dormant"),
        (ALERTING, "dormant"),
    ] {
        assert_eq!(status_of(&inv, id), status, "{id}: {inv:#}");
    }

    let e = entry(&inv, IDENTITY).unwrap();
    for (k, v) in [
        ("owner", json!("team-payments")),
        ("steward", json!("alice@example.com")),
        ("purpose", json!("Charge cards through the ledger API")),
        ("environment", json!("prod")),
        ("third_party", json!(false)),
        ("ticket", json!("CHG-1234")),
        ("expires", json!("2099-01-01")),
        ("last_issued", json!(last_iat)),
        ("tasks_used", json!([TASK])),
        ("tasks_never_used", json!([OFFICE_TASK])),
        ("anomalies", json!([])),
    ] {
        assert_eq!(e[k], v, "{IDENTITY}.{k}: {e:#}");
    }
    assert_eq!(e["tokens_24h"], 2, "two tokens issued: {e:#}");
    assert!(e.get("unused_tasks").is_none(), "only with ?unused: {e}");

    let e = entry(&inv, EXPIRING).unwrap();
    assert_eq!(e["third_party"], true, "{e}");
    assert_eq!(e["expires"], date_in_days(EXPIRING_IN_DAYS), "{e}");
    assert_eq!(e["owner"], EXPIRING_OWNER, "{e}");

    let e = entry(&inv, WATCHED).unwrap();
    assert_eq!(e["last_issued"], Value::Null, "{e}");
    assert_eq!(e["tokens_24h"], 0, "{e}");
    assert_eq!(e["tasks_used"], json!([]), "{e}");
    assert_eq!(e["tasks_never_used"], json!([SYNC_READ, SYNC_WRITE]), "{e}");

    // Without the kill switch the expired identity is `expired`.
    let r = b
        .admin_post(
            Some(&admin_bearer()),
            &format!("identities/{EXPIRED_IDENTITY}/enable"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "enable: {}", r.text);
    assert_eq!(
        status_of(&b.inventory("").await, EXPIRED_IDENTITY),
        "expired"
    );

    // Idle for dormant_after (active → dormant) is shown on the broker's clock by the
    // in-process test api::in_process::an_idle_identity_becomes_dormant_in_the_inventory.

    // Who may read it: read_audit or admin; not `revoke` alone, not a workload, not
    // anonymous.
    let r = b.inventory_with(Some(&gov_admin_bearer()), "").await;
    assert_eq!(r.status, 200, "an admin with the admin role: {}", r.text);
    let r = b.inventory_with(Some(&admin_bearer()), "").await;
    assert_eq!(r.status, 403, "an admin with revoke only: {}", r.text);
    assert_eq!(
        b.records_of("denied").last().unwrap()["rule"],
        "role_required"
    );
    let r = b.inventory_with(Some(&rs256(SUBJECT)), "").await;
    assert_eq!(r.status, 403, "a workload: {}", r.text);
    assert_eq!(r.body["error"], "access_denied", "{}", r.text);
    let rec = b.records_of("denied").last().unwrap().clone();
    assert_eq!(rec["rule"], "admin_required", "{rec}");
    assert_eq!(rec["actor"], format!("identity:{IDENTITY}"), "{rec}");
    let r = b.inventory_with(None, "").await;
    assert_eq!(r.status, 401, "anonymous: {}", r.text);
}

/// `?due=` keeps registrations expiring within the window (expired ones included);
/// `?unused=` adds the tasks and scopes granted but not used within the window.
#[tokio::test(flavor = "multi_thread")]
async fn the_due_and_unused_filters() {
    let b = GovOptions::default().start();
    b.ask_ok(SUBJECT, TASK, Some("ledger:read")).await;

    let due = b.inventory("?due=30d").await;
    assert_eq!(listed_ids(&due), due_ids(), "{due:#}");
    assert_eq!(status_of(&due, EXPIRED_IDENTITY), "expired");
    assert_eq!(status_of(&due, EXPIRING), "expiring");
    let due = b.inventory("?due=5d").await;
    assert_eq!(listed_ids(&due), vec![EXPIRED_IDENTITY.to_owned()]);
    let r = b
        .inventory_with(Some(&auditor_bearer()), "?due=banana")
        .await;
    assert_eq!(r.status, 400, "a malformed window: {}", r.text);
    assert_eq!(r.body["error"], "invalid_request", "{}", r.text);

    let inv = b.inventory("?unused=30d").await;
    assert_eq!(listed_ids(&inv), all_ids(), "?unused filters nothing out");
    let e = entry(&inv, IDENTITY).unwrap();
    assert_eq!(strings(&e["unused_tasks"]), vec![OFFICE_TASK], "{e:#}");
    assert_eq!(strings(&e["unused_scopes"]), vec!["ledger:write"], "{e:#}");
    assert_eq!(e["status"], "active", "the other fields stay: {e:#}");
    let e = entry(&inv, WATCHED).unwrap();
    assert_eq!(
        strings(&e["unused_tasks"]),
        vec![SYNC_READ, SYNC_WRITE],
        "{e:#}"
    );
    assert_eq!(
        strings(&e["unused_scopes"]),
        vec!["ledger:read", "ledger:write"],
        "{e:#}"
    );

    let both = b.inventory("?due=30d&unused=30d").await;
    assert_eq!(listed_ids(&both), due_ids());
    assert_eq!(
        strings(&entry(&both, EXPIRING).unwrap()["unused_tasks"]),
        vec![SYNC_READ]
    );

    // A window shorter than the time since the last use (everything unused) is shown on
    // the broker's clock by api::in_process::a_window_shorter_than_the_idle_time_lists_everything_unused.
}

/// The usage fields of an entry (what must survive a restart).
fn usage_of(e: &Value) -> Value {
    json!({
        "status": e["status"], "last_issued": e["last_issued"], "tokens_24h": e["tokens_24h"],
        "tasks_used": e["tasks_used"], "tasks_never_used": e["tasks_never_used"],
    })
}

async fn usage_survives(sigkill: bool) {
    let mut b = GovOptions::default().start();
    for _ in 0..3 {
        b.ask_ok(SUBJECT, TASK, None).await;
    }
    b.ask_ok(WATCHED_SUBJECT, SYNC_READ, Some("ledger:read"))
        .await;
    let before = b.inventory("?unused=30d").await;
    let p = entry(&before, IDENTITY).unwrap();
    let counted = p["tokens_24h"].as_u64().unwrap_or(0);
    assert!(counted > 0, "tokens counted: {p:#}");
    assert_eq!(p["status"], "active", "{p:#}");

    if sigkill {
        // The snapshot is taken every 5 s: wait until one holds the usage above, then
        // kill without warning.
        let snapshot = b.dir().join("state").join("usage.json");
        let holds_the_usage = || {
            let Ok(bytes) = std::fs::read(&snapshot) else {
                return false;
            };
            let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let tokens: u64 = v[IDENTITY]["hourly"]
                .as_array()
                .map(|hours| hours.iter().filter_map(|h| h[1].as_u64()).sum())
                .unwrap_or(0);
            tokens == counted && v[WATCHED]["tasks"].get(SYNC_READ).is_some()
        };
        assert!(
            eventually(Duration::from_secs(15), async || holds_the_usage()).await,
            "no usage snapshot with {counted} tokens of {IDENTITY} in 15 s"
        );
        let st = b.sigkill();
        assert!(!st.success(), "killed: {st}");
    } else {
        let st = b.stop();
        assert!(st.success(), "graceful stop: {st}\n{}", b.stderr());
    }
    assert!(
        b.dir().join("state").join("usage.json").is_file(),
        "usage is snapshotted to <state dir>/usage.json"
    );
    b.launch().unwrap_or_else(|e| panic!("{e}"));

    let after = b.inventory("?unused=30d").await;
    for id in [IDENTITY, WATCHED, GUARDED] {
        let (x, y) = (entry(&before, id).unwrap(), entry(&after, id).unwrap());
        assert_eq!(
            usage_of(y),
            usage_of(x),
            "{id}'s usage after the restart (left) and before (right)"
        );
        assert_eq!(y["unused_tasks"], x["unused_tasks"], "{id}");
        assert_eq!(y["unused_scopes"], x["unused_scopes"], "{id}");
    }
    assert_eq!(
        strings(&entry(&after, WATCHED).unwrap()["unused_scopes"]),
        vec!["ledger:write"]
    );
    // And it keeps counting from there (how much one token counts is checked by
    // `the_inventory_shows_every_status_and_the_usage`).
    b.ask_ok(SUBJECT, TASK, None).await;
    let e = b.inventory_entry(IDENTITY).await;
    assert_eq!(e["tokens_24h"], counted + counted / 3, "{e:#}");
}

/// Usage figures (last issuance, tokens in 24 h, tasks and scopes used) survive a
/// graceful restart (SIGTERM).
#[tokio::test(flavor = "multi_thread")]
async fn usage_survives_a_graceful_restart() {
    usage_survives(false).await;
}

/// After a periodic snapshot, usage survives even a SIGKILL.
#[tokio::test(flavor = "multi_thread")]
async fn usage_survives_a_sigkill_after_a_snapshot() {
    usage_survives(true).await;
}

/// A request refused by a `deny` anomaly issued nothing: it is no issuance, no token of
/// the last 24 h and no use of its task.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_request_is_not_usage() {
    let b = GovOptions::default().start();
    let r = b
        .ask_ok(GUARDED_SUBJECT, SYNC_WRITE, Some("ledger:read"))
        .await;
    let iat = insecure_claims(r.access_token().unwrap())["iat"]
        .as_u64()
        .unwrap();
    wait_past(iat).await;
    let r = b.ask(GUARDED_SUBJECT, SYNC_READ, None).await;
    assert_held(&b, &r, GUARDED, "new_task");
    let e = b.inventory_entry(GUARDED).await;
    assert_eq!(
        e["tasks_used"],
        json!([SYNC_WRITE]),
        "a refused task is not used: {e:#}"
    );
    assert_eq!(
        e["last_issued"], iat,
        "the last issuance is the last token: {e:#}"
    );
    assert_eq!(e["tokens_24h"], 1, "one token was issued: {e:#}");
}

// ---------------------------------------------------------------------------------------
// `broker inventory`
// ---------------------------------------------------------------------------------------

fn cli(args: &[&OsStr]) -> CmdOutput {
    CmdOutput::of(&mut broker_command(args))
}

/// The table rows (after the header) by id, split on whitespace.
fn table_rows(out: &CmdOutput) -> Vec<Vec<String>> {
    let mut lines = out.stdout.lines();
    let header = lines.next().unwrap_or_default();
    for col in ["ID", "OWNER", "ENV", "STATUS", "EXPIRES", "TOKENS24H"] {
        assert!(header.contains(col), "the header has {col}: {out}");
    }
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

fn row<'a>(rows: &'a [Vec<String>], id: &str) -> &'a [String] {
    rows.iter()
        .find(|r| r[0] == id)
        .unwrap_or_else(|| panic!("a row for {id}: {rows:#?}"))
}

/// `broker inventory`: a table with a row per identity (id, owner, environment, status,
/// expiry, tokens in 24 h, unused), `--json` with exactly the API's entries, `--due` and
/// `--unused`; a workload's credential is refused.
#[tokio::test(flavor = "multi_thread")]
async fn the_inventory_cli_prints_a_table_and_json() {
    let b = GovOptions::default().start();
    b.ask_ok(SUBJECT, TASK, Some("ledger:read")).await;
    let files = tempfile::tempdir().unwrap();
    let auditor = write_file(
        files.path(),
        "auditor.jwt",
        &format!("{}\n", auditor_bearer()),
    );
    let workload = write_file(files.path(), "workload.jwt", &rs256(SUBJECT));
    let url = b.base_url().to_owned();
    let run = |bearer: &std::path::Path, extra: &[&str]| -> CmdOutput {
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("inventory"),
            OsStr::new("--url"),
            OsStr::new(&url),
            OsStr::new("--bearer-file"),
            bearer.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        cli(&args)
    };

    // --json: the API's answer.
    let out = run(&auditor, &["--json"]);
    assert!(out.success(), "{out}");
    let printed: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("--json prints JSON ({e}): {out}"));
    let api = b.inventory("").await;
    assert_eq!(
        printed["identities"], api["identities"],
        "--json prints the API's entries"
    );

    // The table.
    let out = run(&auditor, &[]);
    assert!(out.success(), "{out}");
    let rows = table_rows(&out);
    let mut ids: Vec<String> = rows.iter().map(|r| r[0].clone()).collect();
    ids.sort();
    assert_eq!(ids, all_ids(), "one row per identity: {out}");
    let p = row(&rows, IDENTITY);
    let tokens = entry(&api, IDENTITY).unwrap()["tokens_24h"].to_string();
    assert_eq!(
        &p[..6],
        [
            "payments-api",
            "team-payments",
            "prod",
            "active",
            "2099-01-01",
            tokens.as_str()
        ],
        "{out}"
    );
    assert_eq!(p.get(6).map(String::as_str), Some(OFFICE_TASK), "{out}");
    assert_eq!(row(&rows, EXPIRED_IDENTITY)[3], "expired", "{out}");
    assert_eq!(row(&rows, EXPIRING)[3], "expiring", "{out}");
    assert_eq!(row(&rows, WATCHED)[3], "dormant", "{out}");

    // --due 30d: what needs review.
    let out = run(&auditor, &["--due", "30d"]);
    assert!(out.success(), "{out}");
    let rows = table_rows(&out);
    let mut ids: Vec<String> = rows.iter().map(|r| r[0].clone()).collect();
    ids.sort();
    assert_eq!(ids, due_ids(), "{out}");
    assert_eq!(row(&rows, EXPIRING)[4], date_in_days(EXPIRING_IN_DAYS));

    // --unused 30d: the least-privilege report.
    let out = run(&auditor, &["--unused", "30d", "--json"]);
    assert!(out.success(), "{out}");
    let printed: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let e = entry(&printed, IDENTITY).unwrap();
    assert_eq!(strings(&e["unused_tasks"]), vec![OFFICE_TASK], "{e:#}");
    assert_eq!(strings(&e["unused_scopes"]), vec!["ledger:write"], "{e:#}");
    let out = run(&auditor, &["--unused", "30d"]);
    assert!(out.success(), "{out}");
    let rows = table_rows(&out);
    assert!(
        row(&rows, IDENTITY)
            .last()
            .is_some_and(|u| u.contains("ledger:write")),
        "the table shows the unused scopes: {out}"
    );

    // A workload may not read the inventory.
    let out = run(&workload, &[]);
    assert!(!out.success(), "a workload's credential: {out}");
    assert!(
        out.stdout.contains("access_denied") || out.stderr.contains("403"),
        "the CLI says why: {out}"
    );
}

// ---------------------------------------------------------------------------------------
// Anomalies
// ---------------------------------------------------------------------------------------

/// A task the identity never requested before: `new_task`.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_task_is_alerted_or_held_until_acknowledged() {
    let hook = WebhookReceiver::start().await;
    let b = GovOptions::default().webhook(&hook).start();
    for s in [WATCHED_SUBJECT, GUARDED_SUBJECT] {
        b.ask_ok(s, SYNC_WRITE, Some("ledger:read")).await;
    }
    assert!(
        b.records_of("anomaly").is_empty(),
        "a first issuance has no history to differ from: {:#?}",
        b.records_of("anomaly")
    );

    let r = b.ask(WATCHED_SUBJECT, SYNC_READ, None).await;
    let alert = assert_alerted(&b, &r, WATCHED, "new_task");
    assert_eq!(alert["detail"]["evidence"]["task"], SYNC_READ, "{alert}");
    assert_eq!(alert["task"], SYNC_READ, "{alert}");
    b.ask_ok(WATCHED_SUBJECT, SYNC_READ, None).await;
    assert_eq!(b.anomaly_records(WATCHED, None).len(), 1, "known now");

    let r = b.ask(GUARDED_SUBJECT, SYNC_READ, None).await;
    let held = assert_held(&b, &r, GUARDED, "new_task");
    assert_eq!(held["detail"]["evidence"]["task"], SYNC_READ, "{held}");
    ack_then_resume(
        &b,
        GUARDED,
        GUARDED_SUBJECT,
        &anomaly_id(&held),
        "new_task",
        (SYNC_WRITE, Some("ledger:read")),
    )
    .await;
    b.ask_ok(GUARDED_SUBJECT, SYNC_READ, None).await;
    assert_eq!(b.anomaly_records(GUARDED, None).len(), 1, "known now");

    assert_reported(&b, &hook, "new_task", &[&alert, &held]).await;
}

/// A scope the identity never requested before (of a task it did use): `new_scope`.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_scope_is_alerted_or_held_until_acknowledged() {
    let hook = WebhookReceiver::start().await;
    let b = GovOptions::default().webhook(&hook).start();
    for s in [WATCHED_SUBJECT, GUARDED_SUBJECT] {
        b.ask_ok(s, SYNC_WRITE, Some("ledger:read")).await;
    }
    let r = b.ask(WATCHED_SUBJECT, SYNC_WRITE, None).await;
    let alert = assert_alerted(&b, &r, WATCHED, "new_scope");
    assert_eq!(
        alert["detail"]["evidence"]["scopes"],
        json!(["ledger:write"]),
        "{alert}"
    );
    assert_eq!(alert["detail"]["evidence"]["task"], SYNC_WRITE, "{alert}");

    let r = b.ask(GUARDED_SUBJECT, SYNC_WRITE, None).await;
    let held = assert_held(&b, &r, GUARDED, "new_scope");
    assert_eq!(
        held["detail"]["evidence"]["scopes"],
        json!(["ledger:write"]),
        "{held}"
    );
    ack_then_resume(
        &b,
        GUARDED,
        GUARDED_SUBJECT,
        &anomaly_id(&held),
        "new_scope",
        (SYNC_WRITE, Some("ledger:read")),
    )
    .await;
    b.ask_ok(GUARDED_SUBJECT, SYNC_WRITE, None).await;
    assert_eq!(b.anomaly_records(GUARDED, None).len(), 1, "known now");

    assert_reported(&b, &hook, "new_scope", &[&alert, &held]).await;
}

/// A source network (/24) the identity never used before: `new_source_network`. The
/// second connection comes from 127.0.1.1, another /24 than 127.0.0.1. An identity's
/// first issuance from anywhere is no anomaly.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_source_network_is_alerted_or_held_until_acknowledged() {
    let hook = WebhookReceiver::start().await;
    let b = GovOptions::default().webhook(&hook).start();
    for s in [WATCHED_SUBJECT, GUARDED_SUBJECT] {
        b.ask_ok(s, SYNC_READ, None).await;
    }
    let r = b
        .ask_from(Some(ALT_SOURCE), ALERTING_SUBJECT, SYNC_READ, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        b.anomaly_records(ALERTING, None).is_empty(),
        "a first issuance from anywhere is no anomaly"
    );

    let r = b
        .ask_from(Some(ALT_SOURCE), WATCHED_SUBJECT, SYNC_READ, None)
        .await;
    let alert = assert_alerted(&b, &r, WATCHED, "new_source_network");
    assert_eq!(
        alert["detail"]["evidence"]["network"], ALT_NETWORK,
        "{alert}"
    );
    assert_eq!(alert["source"], ALT_SOURCE.to_string(), "{alert}");
    let r = b
        .ask_from(Some(ALT_SOURCE), WATCHED_SUBJECT, SYNC_READ, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    b.ask_ok(WATCHED_SUBJECT, SYNC_READ, None).await;
    assert_eq!(b.anomaly_records(WATCHED, None).len(), 1, "both known now");

    let r = b
        .ask_from(Some(ALT_SOURCE), GUARDED_SUBJECT, SYNC_READ, None)
        .await;
    let held = assert_held(&b, &r, GUARDED, "new_source_network");
    assert_eq!(held["detail"]["evidence"]["network"], ALT_NETWORK, "{held}");
    ack_then_resume(
        &b,
        GUARDED,
        GUARDED_SUBJECT,
        &anomaly_id(&held),
        "new_source_network",
        (SYNC_READ, None),
    )
    .await;
    let r = b
        .ask_from(Some(ALT_SOURCE), GUARDED_SUBJECT, SYNC_READ, None)
        .await;
    assert_eq!(r.status, 200, "the new network after the ack: {}", r.text);
    assert_eq!(b.anomaly_records(GUARDED, None).len(), 1, "known now");

    assert_reported(&b, &hook, "new_source_network", &[&alert, &held]).await;
}

/// First issuance after `dormant_after` (3 s here) of inactivity: `dormant_reactivated`.
#[tokio::test(flavor = "multi_thread")]
async fn dormant_reactivation_is_alerted_or_held_until_acknowledged() {
    let hook = WebhookReceiver::start().await;
    let b = GovOptions::with(r#"dormant_after = "3s""#)
        .webhook(&hook)
        .start();
    let mut last = 0;
    for s in [WATCHED_SUBJECT, GUARDED_SUBJECT] {
        b.ask_ok(s, SYNC_READ, None).await;
        b.ask_ok(s, SYNC_READ, None).await;
        last = now_secs();
    }
    assert!(b.records_of("anomaly").is_empty(), "active, not dormant");
    wait_past(last + 3).await;

    let r = b.ask(WATCHED_SUBJECT, SYNC_READ, None).await;
    let alert = assert_alerted(&b, &r, WATCHED, "dormant_reactivated");
    let ev = &alert["detail"]["evidence"];
    assert!(ev["idle_secs"].as_u64().is_some_and(|s| s >= 3), "{alert}");
    assert_eq!(ev["dormant_after_secs"], 3, "{alert}");

    let r = b.ask(GUARDED_SUBJECT, SYNC_READ, None).await;
    let held = assert_held(&b, &r, GUARDED, "dormant_reactivated");
    ack_then_resume(
        &b,
        GUARDED,
        GUARDED_SUBJECT,
        &anomaly_id(&held),
        "dormant_reactivated",
        (SYNC_READ, None),
    )
    .await;

    assert_reported(&b, &hook, "dormant_reactivated", &[&alert, &held]).await;
}

/// Call volume far above the identity's own baseline: `volume_spike`. With
/// `volume_window = "3s"`, `volume_floor = 5`, `volume_factor = 3`: two requests in each
/// of two windows make a baseline of 2, so the 7th request of the next window (> 5 and
/// > 3 × 2) is the spike; it is reported once per window.
#[tokio::test(flavor = "multi_thread")]
async fn a_volume_spike_is_alerted_or_held_until_acknowledged() {
    let hook = WebhookReceiver::start().await;
    let b = GovOptions::with("volume_window = \"3s\"\nvolume_floor = 5\nvolume_factor = 3.0")
        .webhook(&hook)
        .start();
    for _ in 0..2 {
        next_window(3).await;
        for s in [WATCHED_SUBJECT, GUARDED_SUBJECT] {
            b.ask_ok(s, SYNC_READ, None).await;
            b.ask_ok(s, SYNC_READ, None).await;
        }
    }
    assert!(
        b.records_of("anomaly").is_empty(),
        "the baseline is no spike"
    );
    next_window(3).await;
    let window = now_secs() / 3;

    // alert: every request is served, the 7th is reported, once.
    let mut answers = Vec::new();
    for _ in 0..12 {
        answers.push(b.ask(WATCHED_SUBJECT, SYNC_READ, None).await);
    }
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.status, 200, "request {} of the burst: {}", i + 1, a.text);
    }
    let recs = b.anomaly_records(WATCHED, None);
    assert_eq!(recs.len(), 1, "one spike per window: {recs:#?}");
    let alert = recs[0].clone();
    check_anomaly_record(&alert, WATCHED, "volume_spike", "alert");
    let ev = &alert["detail"]["evidence"];
    assert_eq!(ev["requests_this_window"], 7, "{alert}");
    assert_eq!(ev["window_secs"], 3, "{alert}");
    assert!(
        ev["baseline"]
            .as_f64()
            .is_some_and(|x| (x - 2.0).abs() < 1e-6),
        "the baseline is 2 requests per window: {alert}"
    );

    // deny: six are served, the 7th and every later one is refused.
    for i in 0..6 {
        let r = b.ask(GUARDED_SUBJECT, SYNC_READ, None).await;
        assert_eq!(r.status, 200, "request {} of the burst: {}", i + 1, r.text);
    }
    let r = b.ask(GUARDED_SUBJECT, SYNC_READ, None).await;
    let held = assert_held(&b, &r, GUARDED, "volume_spike");
    assert_eq!(held["detail"]["evidence"]["requests_this_window"], 7);
    assert_eq!(
        now_secs() / 3,
        window,
        "the burst fit in one volume window (the machine is too slow for this test)"
    );
    ack_then_resume(
        &b,
        GUARDED,
        GUARDED_SUBJECT,
        &anomaly_id(&held),
        "volume_spike",
        (SYNC_READ, None),
    )
    .await;

    assert_reported(&b, &hook, "volume_spike", &[&alert, &held]).await;
}

/// A policy reload that widens an existing identity's grant (a new task, a new scope, a
/// longer `max_ttl`): `policy_widened`, always `alert` (nothing asked, nothing to refuse),
/// even for a `deny` identity; using the widened grant is then a `new_task` like any other.
/// Narrowing is no anomaly; acknowledging closes an alert anomaly too.
#[tokio::test(flavor = "multi_thread")]
async fn a_widening_policy_reload_is_reported() {
    let hook = WebhookReceiver::start().await;
    let b = GovOptions::default().webhook(&hook).start();
    for s in [WATCHED_SUBJECT, GUARDED_SUBJECT] {
        b.ask_ok(s, SYNC_READ, None).await;
    }
    let widened = [
        sync_task(SYNC_READ, &["ledger:read", "ledger:audit"], "5m", None),
        sync_task(SYNC_WRITE, &["ledger:read", "ledger:write"], "30m", None),
        sync_task("sync-admin", &["ledger:read"], "5m", None),
    ];
    let narrowed = [sync_task(SYNC_READ, &["ledger:read"], "5m", None)];
    let dir = b.dir().join("policies");
    for file in [
        watched_file(&widened),
        guarded_file(&widened),
        alerting_file(&narrowed),
    ] {
        let (name, text) = file.entry();
        write_atomically(&dir.join(name), &text);
    }

    let mut recs = Vec::new();
    for id in [WATCHED, GUARDED] {
        let rec = b
            .wait_for_anomaly(id, "policy_widened", Duration::from_secs(15))
            .await;
        check_anomaly_record(&rec, id, "policy_widened", "alert");
        let added = strings(&rec["detail"]["evidence"]["added"]);
        for want in [
            "task sync-admin",
            "scope ledger:audit in task sync-read",
            "max_ttl of task sync-write from 600s to 1800s",
        ] {
            assert!(
                added.iter().any(|a| a == want),
                "the evidence lists {want:?}: {rec}"
            );
        }
        recs.push(rec);
    }
    // Let every reload land (the files may have been picked up by more than one).
    let reloaded = eventually(Duration::from_secs(10), async || {
        !b.records_of("policy_reloaded").is_empty()
            && b.inventory_entry(ALERTING).await["tasks_never_used"] == json!([SYNC_READ])
    })
    .await;
    assert!(reloaded, "the reload took: {:#?}", b.records());
    assert!(
        b.anomaly_records(ALERTING, None).is_empty(),
        "narrowing is no anomaly"
    );
    assert_eq!(b.anomaly_records(WATCHED, None).len(), 1);
    assert_eq!(b.anomaly_records(GUARDED, None).len(), 1);

    // The deny identity is not held by the widening...
    b.ask_ok(GUARDED_SUBJECT, SYNC_READ, Some("ledger:read"))
        .await;
    // ...but its first use of the new task is held like any new task.
    let r = b.ask(GUARDED_SUBJECT, "sync-admin", None).await;
    assert_error(&r, 403, "access_denied", "first use of the widened grant");
    let new_task = b.anomaly_records(GUARDED, Some("new_task"));
    assert_eq!(new_task.len(), 1, "{new_task:#?}");
    check_anomaly_record(&new_task[0], GUARDED, "new_task", "deny");
    let r = b
        .ack_with(Some(&admin_bearer()), &anomaly_id(&new_task[0]))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    b.ask_ok(GUARDED_SUBJECT, "sync-admin", None).await;

    // The widening is open in the inventory until acknowledged.
    let widened_id = anomaly_id(&recs[0]);
    let e = b.inventory_entry(WATCHED).await;
    assert!(
        e["anomalies"].as_array().is_some_and(|a| a
            .iter()
            .any(|a| a["id"] == widened_id.as_str() && a["kind"] == "policy_widened")),
        "{e:#}"
    );
    let r = b.ack_with(Some(&gov_admin_bearer()), &widened_id).await;
    assert_eq!(
        r.status, 200,
        "an admin with the admin role acks: {}",
        r.text
    );
    let e = b.inventory_entry(WATCHED).await;
    assert_eq!(e["anomalies"], json!([]), "{e:#}");

    assert_reported(&b, &hook, "policy_widened", &[&recs[0], &recs[1]]).await;
}

/// `[governance] anomaly_action = "deny"` makes `deny` the default; an identity's own
/// `anomaly_action = "alert"` overrides it.
#[tokio::test(flavor = "multi_thread")]
async fn the_config_default_action_and_the_identity_override() {
    let b = GovOptions::with(r#"anomaly_action = "deny""#).start();
    for s in [WATCHED_SUBJECT, ALERTING_SUBJECT] {
        b.ask_ok(s, SYNC_WRITE, Some("ledger:read")).await;
    }
    let r = b.ask(WATCHED_SUBJECT, SYNC_READ, None).await;
    let held = assert_held(&b, &r, WATCHED, "new_task");
    let r = b.ask(ALERTING_SUBJECT, SYNC_READ, None).await;
    assert_alerted(&b, &r, ALERTING, "new_task");
    ack_then_resume(
        &b,
        WATCHED,
        WATCHED_SUBJECT,
        &anomaly_id(&held),
        "new_task",
        (SYNC_READ, None),
    )
    .await;
}

/// A restart is not an acknowledgement: an identity held by an open `deny` anomaly is
/// still held after the broker restarts, and the inventory still lists the anomaly.
#[tokio::test(flavor = "multi_thread")]
async fn a_held_identity_stays_held_across_a_restart() {
    let mut b = GovOptions::default().start();
    b.ask_ok(GUARDED_SUBJECT, SYNC_WRITE, Some("ledger:read"))
        .await;
    let r = b.ask(GUARDED_SUBJECT, SYNC_READ, None).await;
    let held = assert_held(&b, &r, GUARDED, "new_task");
    let id = anomaly_id(&held);
    let st = b.stop();
    assert!(st.success(), "graceful stop: {st}");
    b.launch().unwrap_or_else(|e| panic!("{e}"));

    let r = b
        .ask(GUARDED_SUBJECT, SYNC_WRITE, Some("ledger:read"))
        .await;
    assert_refused_by(&b, &r, GUARDED, &id);
    let e = b.inventory_entry(GUARDED).await;
    assert!(
        e["anomalies"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["id"] == id.as_str())),
        "the open anomaly {id} is still listed after the restart: {e:#}"
    );
}
