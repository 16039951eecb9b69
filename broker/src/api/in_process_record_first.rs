//! Record-first admin steps in process (docs/audit-log.md, "Admin changes: the record
//! comes first"): a break-glass approval, activation and close, the expiry sweep and an
//! anomaly acknowledgement whose record cannot be written are not made (503, the state
//! and the journal unchanged), and are made once the log takes records again. The audit
//! log's failure is injected at its write call ([`crate::audit::AuditLog::hooks`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};

use super::in_process::{Answer, InProcess, admin_toml};
use crate::anomaly::AnomalyAction;
use crate::audit::event::{AuditEvent, EventKind};
use crate::breakglass::GrantStatus;
use crate::clock::Clock as _;
use crate::grant_lifecycle::{self, StepError};
use crate::store::GrantChange;

/// 2098-10-01T00:00:00Z, well inside the dev registration.
const START: u64 = 4_070_908_800 - 92 * 86_400;

/// A break-glass policy for the dev workload: one approval, up to 10 minutes.
fn policy() -> &'static str {
    r#"[break_glass]
name         = "demo-emergency"
identities   = ["demo-workload"]
max_duration = "10m"
approvals    = 1

[[break_glass.task]]
name     = "demo-admin"
audience = "https://api.dev.example.org"
scopes   = ["demo:admin"]
max_ttl  = "5m"
"#
}

/// The dev broker with the `ops` admin (every role), the `lead` admin
/// (`break_glass_approve`) and [`policy`].
async fn broker() -> InProcess {
    InProcess::start_edited(START, |dir, text| {
        let bg = dir.join("policies").join("break-glass");
        std::fs::create_dir_all(&bg).unwrap();
        std::fs::write(bg.join("demo-emergency.toml"), policy()).unwrap();
        format!(
            "{text}{}\n[[admin]]\nname = \"lead\"\nroles = [\"break_glass_approve\"]\nissuer = \"{}\"\nsubject = \"admin:lead\"\n",
            admin_toml(),
            crate::dev::DEV_ISSUER
        )
    })
    .await
}

/// `POST path` with a JSON `body` as the dev-issuer subject `as_subject`.
async fn post(b: &InProcess, path: &str, as_subject: &str, body: &Value) -> Answer {
    let req = Request::post(path)
        .header("authorization", format!("Bearer {}", b.jwt(as_subject)))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    b.call_raw(req, "127.0.0.1:5000").await
}

/// A pending grant requested by `ops`; its id.
async fn pending_grant(b: &InProcess) -> String {
    let r = post(
        b,
        "/v1/break-glass",
        "admin:ops",
        &json!({"identity": "demo-workload", "task": "demo-admin", "duration": "5m",
                "justification": "INC-1: stuck", "ticket": "INC-1"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["status"], "pending", "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

/// An active grant (requested by `ops`, approved by `lead`); its id.
async fn active_grant(b: &InProcess) -> String {
    let id = pending_grant(b).await;
    let r = post(
        b,
        &format!("/v1/break-glass/{id}/approve"),
        "admin:lead",
        &json!({}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "active", "{}", r.body);
    id
}

/// The next write of the audit log fails (as a full disk would).
pub(crate) fn fail_next_audit_write(b: &InProcess) {
    b.state()
        .audit
        .hooks()
        .fail_writes
        .store(1, Ordering::SeqCst);
}

/// The state journal as text.
fn journal(b: &InProcess) -> String {
    std::fs::read_to_string(b.dir().join("state").join("changes.jsonl")).unwrap_or_default()
}

pub(crate) fn assert_fails_closed(r: &Answer) {
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(r.body["error"], "temporarily_unavailable", "{}", r.body);
}

/// An approval (here the one completing the quorum, so also the activation) whose record
/// fails is not made: the grant stays pending with no approval, the journal has neither
/// change; the same approval succeeds once the log takes records.
#[tokio::test]
async fn an_approval_whose_record_fails_is_not_made() {
    let b = broker().await;
    let id = pending_grant(&b).await;
    let before = journal(&b);
    fail_next_audit_write(&b);
    let path = format!("/v1/break-glass/{id}/approve");
    assert_fails_closed(&post(&b, &path, "admin:lead", &json!({})).await);
    let g = b.state().break_glass.grants.get(&id).unwrap();
    assert_eq!((g.status, g.approvals.len()), (GrantStatus::Pending, 0));
    assert_eq!(journal(&b), before, "nothing appended");
    assert!(b.records_of("break_glass_approved").is_empty());

    let r = post(&b, &path, "admin:lead", &json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(b.records_of("break_glass_approved").len(), 1);
    assert_eq!(b.records_of("break_glass_activated").len(), 1);
    let approved = &b.records_of("break_glass_approved")[0];
    assert_eq!(approved["approved_by"], "admin:lead", "{approved}");
    assert_eq!(
        approved["detail"]["status"], "active",
        "the record says what it made"
    );
}

/// An activation whose record fails is not made: a pending grant with its quorum met
/// stays pending; activated once the log takes records.
#[tokio::test]
async fn an_activation_whose_record_fails_is_not_made() {
    let b = broker().await;
    let st = b.state();
    let now = b.clock.unix_secs();
    let change = GrantChange::Requested {
        id: "bg-selfservice".into(),
        identity: "demo-workload".into(),
        task: "demo-admin".into(),
        policy: "demo-emergency".into(),
        duration: 300,
        justification: "INC-2".into(),
        ticket: "INC-2".into(),
        requester: "admin:ops".into(),
        approvals_needed: 0,
        at: now,
        pending_until: now + 900,
    };
    st.break_glass.grants.commit(change).unwrap();
    let ev = AuditEvent::new(EventKind::BreakGlassActivated);
    fail_next_audit_write(&b);
    let r = grant_lifecycle::activate_if_ready(st, "bg-selfservice", &ev).await;
    assert!(matches!(r, Err(StepError::Failed(_))), "{r:?}");
    let g = st.break_glass.grants.get("bg-selfservice").unwrap();
    assert_eq!(g.status, GrantStatus::Pending);
    assert!(
        !journal(&b).contains("\"grant_change\":\"activated\""),
        "{}",
        journal(&b)
    );

    let g = grant_lifecycle::activate_if_ready(st, "bg-selfservice", &ev)
        .await
        .unwrap();
    assert_eq!(g.status, GrantStatus::Active);
    assert_eq!(b.records_of("break_glass_activated").len(), 1);
}

/// A close whose record fails is not made: the grant stays active and no rule revokes
/// its tokens; closed (with its rule) once the log takes records.
#[tokio::test]
async fn a_close_whose_record_fails_is_not_made() {
    let b = broker().await;
    let id = active_grant(&b).await;
    fail_next_audit_write(&b);
    let path = format!("/v1/break-glass/{id}/close");
    assert_fails_closed(&post(&b, &path, "admin:ops", &json!({})).await);
    let g = b.state().break_glass.grants.get(&id).unwrap();
    assert_eq!(g.status, GrantStatus::Active);
    assert!(!journal(&b).contains(&format!("rev-{id}")), "no rule");

    let r = post(&b, &path, "admin:ops", &json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "closed", "{}", r.body);
    assert!(journal(&b).contains(&format!("rev-{id}")), "the rule");
    let closed = b.records_of("break_glass_closed");
    assert_eq!(closed.len(), 1, "{closed:#?}");
    assert_eq!(closed[0]["detail"]["close_reason"], "closed by request");
}

/// The expiry sweep on the broker's clock: a grant past its end whose expiry record
/// fails stays open (its tokens expire at its end anyway) and is closed on the next run.
#[tokio::test]
async fn the_expiry_sweep_closes_a_grant_only_with_its_record() {
    let b = broker().await;
    let id = active_grant(&b).await;
    b.clock.advance(Duration::from_secs(301));
    fail_next_audit_write(&b);
    assert_eq!(grant_lifecycle::close_due(b.state(), false).await, 1);
    let g = b.state().break_glass.grants.get(&id).unwrap();
    assert_eq!(
        g.status,
        GrantStatus::Active,
        "not closed without its record"
    );
    assert!(b.records_of("break_glass_expired").is_empty());

    assert_eq!(grant_lifecycle::close_due(b.state(), false).await, 1);
    let g = b.state().break_glass.grants.get(&id).unwrap();
    assert_eq!(g.status, GrantStatus::Closed);
    let expired = b.records_of("break_glass_expired");
    assert_eq!(expired.len(), 1, "{expired:#?}");
    assert_eq!(expired[0]["actor"], "broker");
    assert_eq!(grant_lifecycle::close_due(b.state(), false).await, 0);
}

/// An acknowledgement whose record fails is not made: the `deny` anomaly keeps holding
/// the identity; acknowledged once the log takes records.
#[tokio::test]
async fn an_anomaly_acknowledgement_whose_record_fails_is_not_made() {
    let b = broker().await;
    let monitor = &b.state().governance.monitor;
    let a = monitor
        .raise(
            "demo-workload",
            "policy_widened",
            json!({}),
            START,
            AnomalyAction::Deny,
        )
        .unwrap();
    let path = format!("/v1/admin/anomalies/{}/ack", a.id);
    fail_next_audit_write(&b);
    assert_fails_closed(&post(&b, &path, "admin:ops", &json!({})).await);
    assert!(monitor.blocking("demo-workload").is_some(), "still held");
    assert!(!journal(&b).contains("\"acknowledged\""), "{}", journal(&b));

    let r = post(&b, &path, "admin:ops", &json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["acknowledged_by"], "admin:ops", "{}", r.body);
    assert!(monitor.blocking("demo-workload").is_none());
    let acked = b.records_of("anomaly_acknowledged");
    assert_eq!(acked.len(), 1, "{acked:#?}");
    assert_eq!(acked[0]["identity"], "demo-workload");
    assert_eq!(acked[0]["detail"]["anomaly"], a.id);
}

/// The report of a grant is the typed [`broker_client::types::GrantReport`].
#[tokio::test]
async fn a_grant_report_reads_back_as_the_shared_type() {
    let b = broker().await;
    let id = active_grant(&b).await;
    let req = Request::get(format!("/v1/break-glass/{id}/report"))
        .header("authorization", format!("Bearer {}", b.jwt("admin:ops")))
        .body(Body::empty())
        .unwrap();
    let r = b.call_raw(req, "127.0.0.1:5000").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let report: broker_client::types::GrantReport = serde_json::from_value(r.body).unwrap();
    assert_eq!(
        (report.grant.as_str(), report.status.as_str()),
        (id.as_str(), "active")
    );
    assert_eq!(report.approvals[0].approver, "admin:lead");
    assert_eq!(report.opened_at, Some(START));
    assert_eq!(report.ends_at, Some(START + 300));
    assert_eq!(report.closed_at, None);
}
