//! Emergency break-glass access that revokes itself (issue 6).
//!
//! Every test runs a broker with `broker_tests::break_glass`'s setup: the revocation
//! tests' registry (its resource server judges "revoked" by introspection, and reads the
//! revocation feed) plus an on-call identity, two break-glass policies in
//! `policies/break-glass/` (the two-person [`BG_POLICY`] for `payments-api`, and a
//! self-service one), and admins who request ([`COMMANDER`]), approve ([`APPROVER`]),
//! revoke (`secops`) or only read (`auditor`). Webhook receivers are small axum servers
//! on loopback ports started by the test.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use broker_client::{Credential, Verifier, VerifyError};
use broker_tests::admin::{
    ADMIN, AUDITOR, BATCH_IDENTITY, BATCH_SUBJECT, BILLING_IDENTITY, RS_SUBJECT, admin_bearer,
    auditor_bearer, feed_entries, jti_of, write_file,
};
use broker_tests::break_glass::{
    APPROVER, BG_MAX_DURATION_SECS, BG_SCOPES, BG_TASK, BreakGlassOptions, COMMANDER,
    JUSTIFICATION, LIFECYCLE_EVENTS, ONCALL_IDENTITY, ONCALL_SUBJECT, SELF_SERVICE_TASK,
    SUPERVISOR, TICKET, TWO_PERSON_TASK, WebhookReceiver, actor_admin, approver_bearer,
    break_glass_policies, closed_port_webhook, commander_bearer, denied_with_rule, eventually,
    grant_body, grant_id, grant_records, hanging_webhook, ledger_emergency_file,
    ledger_emergency_policy, ledger_grant_body, supervisor_bearer, write_break_glass_files,
};
use broker_tests::{
    BROKER_ISSUER, CmdOutput, IDENTITY, PROD_LEDGER, Reply, SUBJECT, TASK, TestBroker,
    TokenRequest, broker_command, insecure_claims, lint, now_secs, rs256,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

/// Checks an error answer: status, `error`, a non-empty `error_description`.
fn assert_refused(reply: &Reply, status: u16, error: &str, what: &str) {
    assert_eq!(reply.status, status, "{what}: status; body: {}", reply.text);
    assert_eq!(
        reply.error(),
        Some(error),
        "{what}: error; body: {}",
        reply.text
    );
    assert!(
        reply.body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{what}: an error_description: {}",
        reply.text
    );
}

/// Checks that there are exactly `count` `denied` records with `rule`, that the newest
/// one was decided against `actor` (if given) with `error`, and returns it.
fn assert_denied_record(
    b: &TestBroker,
    rule: &str,
    count: usize,
    actor: Option<&str>,
    error: &str,
) -> Value {
    let recs = denied_with_rule(b, rule);
    assert_eq!(
        recs.len(),
        count,
        "{count} denied record(s) with rule {rule}; all records: {:#?}",
        b.records()
    );
    let rec = recs.last().cloned().unwrap();
    assert_eq!(rec["decision"], "deny", "{rec}");
    assert_eq!(rec["error"], error, "{rec}");
    assert_eq!(rec["source"], "127.0.0.1", "{rec}");
    if let Some(a) = actor {
        assert_eq!(rec["actor"], a, "{rec}");
    }
    assert!(
        rec["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "a reason: {rec}"
    );
    rec
}

/// A break-glass task request before approval (or after the end) is refused exactly like
/// a task the identity does not have: 400 `invalid_request`, rule `unknown_task`; checks
/// the `count`th such record.
async fn assert_bg_task_refused(b: &TestBroker, count: usize, what: &str) {
    let r = b.bg_token(&[]).await;
    assert_refused(&r, 400, "invalid_request", what);
    let rec = assert_denied_record(b, "unknown_task", count, None, "invalid_request");
    assert_eq!(rec["identity"], IDENTITY, "{rec}");
    assert_eq!(rec["task"], BG_TASK, "{rec}");
}

/// The feed entry of the revocation rule of grant `id` (`{"by":"grant","grant":id}`).
fn feed_grant_rule<'a>(feed: &'a Value, id: &str) -> Option<&'a Value> {
    feed_entries(feed)
        .iter()
        .find(|e| e["rule"]["by"] == "grant" && e["rule"]["grant"] == id)
}

/// The index of the first record of `event` about grant `id` in `records`.
fn position(records: &[Value], event: &str, id: &str) -> usize {
    records
        .iter()
        .position(|r| r["event"] == event && r["detail"]["grant"] == id)
        .unwrap_or_else(|| panic!("no {event} record for grant {id}: {records:#?}"))
}

fn u64_of(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is a number: {v}"))
}

/// Checks a break-glass token with the published JWKS: `bg` = grant, the break-glass
/// task's audience and `scope`, `exp` no later than the grant's end. Returns the claims.
async fn check_bg_token(b: &TestBroker, token: &str, id: &str, ends_at: u64, scope: &str) -> Value {
    let v = b.verify_access_token(token, PROD_LEDGER).await;
    let c = v.claims;
    assert_eq!(c["bg"], id, "the token carries bg = the grant id: {c}");
    assert_eq!(c["sub"], IDENTITY, "{c}");
    assert_eq!(c["client_id"], IDENTITY, "{c}");
    assert_eq!(c["task"], BG_TASK, "{c}");
    assert_eq!(c["aud"], PROD_LEDGER, "{c}");
    assert_eq!(c["scope"], scope, "{c}");
    let exp = u64_of(&c["exp"], "exp");
    assert!(
        exp <= ends_at,
        "the token (exp {exp}) never outlives the grant (ends_at {ends_at}): {c}"
    );
    c
}

/// The one `break_glass_token_issued` record of `jti`, checked against the grant.
fn check_token_record(b: &TestBroker, id: &str, claims: &Value) -> Value {
    let jti = claims["jti"].as_str().unwrap();
    let recs: Vec<Value> = grant_records(b, "break_glass_token_issued", id)
        .into_iter()
        .filter(|r| r["jti"] == jti)
        .collect();
    assert_eq!(
        recs.len(),
        1,
        "one break_glass_token_issued record for {jti}"
    );
    let rec = recs.into_iter().next().unwrap();
    assert_eq!(rec["decision"], "allow", "{rec}");
    assert_eq!(rec["exp"], claims["exp"], "{rec}");
    assert_eq!(rec["ticket"], TICKET, "{rec}");
    assert_eq!(rec["identity"], IDENTITY, "{rec}");
    assert_eq!(rec["task"], BG_TASK, "{rec}");
    assert_eq!(rec["audience"], PROD_LEDGER, "{rec}");
    assert_eq!(
        b.records_of("issued")
            .iter()
            .filter(|r| r["jti"] == jti)
            .count(),
        0,
        "a break-glass token is recorded as break_glass_token_issued, not issued"
    );
    rec
}

/// The grant's `ends_at`.
fn ends_at(grant: &Value) -> u64 {
    u64_of(&grant["ends_at"], "ends_at")
}

/// Time left until `t` (seconds since the epoch), plus `slack`.
fn until(t: u64, slack: Duration) -> Duration {
    Duration::from_secs(t.saturating_sub(now_secs())) + slack
}

// ---------------------------------------------------------------------------------------
// The lifecycle: two-person rule, bg tokens, expiry, webhook
// ---------------------------------------------------------------------------------------

/// One required approver: unusable until approved, self-approval refused, a second admin
/// activates it; its tokens carry `bg` and never outlive it; at its end every such token
/// is inactive and covered in the revocation feed (a normal token is untouched); the
/// webhook receives every event kind of the lifecycle and the audit log has them in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_grant_needs_a_second_person_and_its_tokens_die_with_it() {
    let hook = WebhookReceiver::start().await;
    let b = BreakGlassOptions::webhook(hook.url()).start();
    let normal = b.issue_payments().await;

    // Request: pending.
    let before = now_secs();
    let r = b
        .request_grant(Some(&commander_bearer()), &ledger_grant_body("5s"))
        .await;
    assert_eq!(r.status, 201, "requesting: {}", r.text);
    let g = r.body;
    let id = grant_id(&g);
    assert!(id.starts_with("bg-"), "grant id {id}");
    assert_eq!(g["status"], "pending", "{g}");
    assert_eq!(g["identity"], IDENTITY, "{g}");
    assert_eq!(g["task"], BG_TASK, "{g}");
    assert_eq!(g["justification"], JUSTIFICATION, "{g}");
    assert_eq!(g["ticket"], TICKET, "{g}");
    assert_eq!(g["approvals"], json!([]), "{g}");
    let rec = grant_records(&b, "break_glass_requested", &id);
    assert_eq!(rec.len(), 1, "one break_glass_requested record");
    assert_eq!(rec[0]["actor"], actor_admin(COMMANDER), "{}", rec[0]);
    assert_eq!(rec[0]["ticket"], TICKET, "{}", rec[0]);

    // Unusable until approved.
    assert_bg_task_refused(&b, 1, "before approval").await;

    // The requester cannot approve their own grant.
    let r = b.approve_grant(Some(&commander_bearer()), &id).await;
    assert_refused(&r, 403, "access_denied", "self-approval");
    assert_denied_record(
        &b,
        "self_approval",
        1,
        Some(&actor_admin(COMMANDER)),
        "access_denied",
    );
    let report = b.report_of(&id).await;
    assert_eq!(report["status"], "pending", "{report}");
    assert_eq!(report["approvals"], json!([]), "{report}");
    assert_bg_task_refused(&b, 2, "after a refused self-approval").await;

    // A second person approves: active.
    let r = b.approve_grant(Some(&approver_bearer()), &id).await;
    assert_eq!(r.status, 200, "approval: {}", r.text);
    let g = r.body;
    assert_eq!(g["status"], "active", "{g}");
    let approvals = g["approvals"].as_array().expect("approvals");
    assert_eq!(approvals.len(), 1, "{g}");
    assert_eq!(approvals[0]["approver"], actor_admin(APPROVER), "{g}");
    let end = ends_at(&g);
    let report = b.report_of(&id).await;
    let opened = u64_of(&report["opened_at"], "opened_at");
    assert!(opened >= before && opened <= now_secs(), "{report}");
    assert_eq!(end, opened + 5, "ends_at = opened_at + duration: {report}");
    let approved = grant_records(&b, "break_glass_approved", &id);
    assert_eq!(approved.len(), 1);
    assert_eq!(
        approved[0]["approved_by"],
        actor_admin(APPROVER),
        "{}",
        approved[0]
    );
    assert_eq!(approved[0]["ticket"], TICKET, "{}", approved[0]);

    // Tokens under the grant: bg, exp <= end, audited as break_glass_token_issued.
    let full = b.issue_bg().await;
    let narrow = {
        let r = b.bg_token(&[("scope", "ledger:admin")]).await;
        assert_eq!(r.status, 200, "a narrowed break-glass token: {}", r.text);
        r.access_token().unwrap().to_owned()
    };
    let full_claims = check_bg_token(&b, &full, &id, end, &BG_SCOPES.join(" ")).await;
    let narrow_claims = check_bg_token(&b, &narrow, &id, end, "ledger:admin").await;
    check_token_record(&b, &id, &full_claims);
    check_token_record(&b, &id, &narrow_claims);
    let body = b.introspect(&full).await;
    assert_eq!(body["active"], true, "active while the grant is: {body}");
    assert_eq!(
        body["bg"],
        id.as_str(),
        "introspection shows the grant: {body}"
    );
    assert!(b.is_active(&narrow).await, "active while the grant is");
    assert!(
        insecure_claims(&normal).get("bg").is_none(),
        "a normal token has no bg"
    );

    // The grant's end: closed by the broker, tokens revoked and in the feed.
    let closed = eventually(until(end, Duration::from_secs(6)), async || {
        b.report_of(&id).await["status"] == "closed"
    })
    .await;
    assert!(closed, "the grant closed within 6 s of its end ({end})");
    let report = b.report_of(&id).await;
    assert_eq!(report["closed_by"], "broker", "{report}");
    assert!(
        u64_of(&report["closed_at"], "closed_at") >= end,
        "not closed before its end: {report}"
    );
    assert!(!b.is_active(&full).await, "inactive after the grant's end");
    assert!(
        !b.is_active(&narrow).await,
        "inactive after the grant's end"
    );
    let feed = b.feed(None).await;
    let entry = feed_grant_rule(&feed, &id)
        .unwrap_or_else(|| panic!("the feed lists a rule for grant {id}: {feed}"));
    let cutoff = u64_of(&entry["rule"]["issued_before"], "issued_before");
    for c in [&full_claims, &narrow_claims] {
        assert!(
            u64_of(&c["iat"], "iat") <= cutoff,
            "the rule covers every token of the grant: {entry} vs {c}"
        );
    }
    let expired = grant_records(&b, "break_glass_expired", &id);
    assert_eq!(expired.len(), 1, "one break_glass_expired record");
    assert_eq!(expired[0]["detail"]["tokens_revoked"], 2, "{}", expired[0]);
    assert!(
        b.is_active(&normal).await,
        "a token not issued under the grant stays active"
    );
    assert_bg_task_refused(&b, 3, "after the grant's end").await;

    // The audit log has every step, in order.
    let records = b.records();
    let order: Vec<usize> = LIFECYCLE_EVENTS
        .iter()
        .map(|e| position(&records, e, &id))
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "audit order {LIFECYCLE_EVENTS:?}: {order:?}"
    );

    // The webhook received every event kind.
    let events = hook
        .wait_for_kinds(&id, LIFECYCLE_EVENTS, Duration::from_secs(10))
        .await;
    for kind in LIFECYCLE_EVENTS {
        assert!(
            events.iter().any(|e| e["event"] == *kind),
            "the webhook received {kind}; got {events:#?}"
        );
    }
    let hooked: BTreeSet<&str> = events
        .iter()
        .filter(|e| e["event"] == "break_glass_token_issued")
        .filter_map(|e| e["jti"].as_str())
        .collect();
    let issued: BTreeSet<&str> = [&full_claims, &narrow_claims]
        .iter()
        .map(|c| c["jti"].as_str().unwrap())
        .collect();
    assert_eq!(
        hooked, issued,
        "one token_issued event per token, with its jti"
    );
    // Every event carries the grant object, token_issued included.
    for e in &events {
        assert_eq!(
            e["grant"]["id"],
            id.as_str(),
            "the grant object in {}: {e}",
            e["event"]
        );
    }
}

/// Closing early through the endpoint revokes every token of the grant at once (no
/// waiting: the very next introspection says inactive), even tokens valid for minutes.
#[tokio::test(flavor = "multi_thread")]
async fn closing_a_grant_early_revokes_its_tokens_at_once() {
    let b = BreakGlassOptions::default().start();
    let normal = b.issue_payments().await;
    let g = b.open_grant("10m").await;
    let id = grant_id(&g);
    let end = ends_at(&g);
    let short = {
        let r = b.bg_token(&[("requested_ttl", "120")]).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.access_token().unwrap().to_owned()
    };
    let long = b.issue_bg().await;
    let long_exp = check_bg_token(&b, &long, &id, end, &BG_SCOPES.join(" ")).await["exp"]
        .as_u64()
        .unwrap();
    assert!(long_exp > now_secs() + 120, "a token valid for minutes");
    assert!(b.is_active(&long).await);
    // An offline verifier (the SDK) that follows the revocation feed accepts it too.
    let verifier = Verifier::builder(b.base_url(), PROD_LEDGER)
        .issuer(BROKER_ISSUER)
        .revocation_feed(
            Credential::provider(|| Ok(rs256(RS_SUBJECT))),
            Duration::from_secs(3600),
        )
        .build()
        .unwrap();
    verifier.sync_revocations().await.unwrap();
    let c = verifier.verify(&long, None).await.unwrap();
    assert_eq!(c.bg.as_deref(), Some(id.as_str()));

    // An admin who may neither revoke nor approve cannot close it.
    let r = b.close_grant(Some(&auditor_bearer()), &id).await;
    assert_refused(&r, 403, "access_denied", "close by a read_audit admin");
    assert_denied_record(
        &b,
        "role_required",
        1,
        Some(&actor_admin(AUDITOR)),
        "access_denied",
    );
    assert!(b.is_active(&long).await, "a refused close changes nothing");

    // An admin with `revoke` closes it.
    let r = b.close_grant(Some(&admin_bearer()), &id).await;
    assert_eq!(r.status, 200, "close: {}", r.text);
    assert_eq!(r.body["status"], "closed", "{}", r.text);
    assert!(!b.is_active(&long).await, "revoked at once by the close");
    assert!(!b.is_active(&short).await, "revoked at once by the close");
    assert!(b.is_active(&normal).await, "a normal token stays active");
    let feed = b.feed(None).await;
    assert!(
        feed_grant_rule(&feed, &id).is_some(),
        "the feed lists the grant's rule: {feed}"
    );
    verifier.sync_revocations().await.unwrap();
    for t in [&long, &short] {
        assert_eq!(
            verifier.verify(t, None).await,
            Err(VerifyError::Revoked),
            "the offline verifier refuses the grant's tokens after a feed sync"
        );
    }
    verifier.verify(&normal, None).await.unwrap();
    let closed = grant_records(&b, "break_glass_closed", &id);
    assert_eq!(closed.len(), 1, "one break_glass_closed record");
    assert_eq!(closed[0]["actor"], actor_admin(ADMIN), "{}", closed[0]);
    assert_eq!(closed[0]["detail"]["tokens_revoked"], 2, "{}", closed[0]);
    assert!(
        grant_records(&b, "break_glass_expired", &id).is_empty(),
        "closed, not expired"
    );
    let report = b.report_of(&id).await;
    assert_eq!(report["status"], "closed", "{report}");
    assert_eq!(report["closed_by"], actor_admin(ADMIN), "{report}");
    assert!(
        report["close_reason"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{report}"
    );
    assert_bg_task_refused(&b, 1, "after the close").await;
}

// ---------------------------------------------------------------------------------------
// Restart
// ---------------------------------------------------------------------------------------

/// SIGKILL while a grant is active, start again after its end: the broker closes the grant
/// and revokes its tokens before it serves the first request, and the log says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_grant_that_ended_while_the_broker_was_down_is_closed_before_serving() {
    let mut b = BreakGlassOptions::default().start();
    let g = b.open_grant("3s").await;
    let id = grant_id(&g);
    let end = ends_at(&g);
    let token = b.issue_bg().await;
    check_bg_token(&b, &token, &id, end, &BG_SCOPES.join(" ")).await;
    let status = b.sigkill();
    assert!(!status.success(), "killed: {status}");
    assert!(
        grant_records(&b, "break_glass_expired", &id).is_empty(),
        "killed before the grant's end (the test machine was too slow): {:#?}",
        b.records()
    );
    while now_secs() <= end + 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    b.launch().unwrap_or_else(|e| panic!("relaunch: {e}"));
    // The first request after start: the break-glass task is refused...
    assert_bg_task_refused(&b, 1, "the first request after the restart").await;
    // ...and the grant was closed before it was served.
    let records = b.records();
    let expired_at = position(&records, "break_glass_expired", &id);
    let first_request = records
        .iter()
        .position(|r| r["event"] == "denied" && r["rule"] == "unknown_task")
        .unwrap();
    assert!(
        expired_at < first_request,
        "break_glass_expired (record {expired_at}) comes before the first request's record ({first_request})"
    );
    let rec = &records[expired_at];
    assert_eq!(rec["actor"], "broker", "{rec}");
    assert_eq!(rec["detail"]["tokens_revoked"], 1, "{rec}");
    assert!(
        rec.to_string().contains("while the broker was down"),
        "the record says the grant ended while the broker was down: {rec}"
    );
    assert!(!b.is_active(&token).await, "inactive after the restart");
    let feed = b.feed(None).await;
    assert!(
        feed_grant_rule(&feed, &id).is_some(),
        "the feed lists the grant's rule: {feed}"
    );
    let report = b.report_of(&id).await;
    assert_eq!(report["status"], "closed", "{report}");
    assert_eq!(report["closed_by"], "broker", "{report}");
    assert!(
        report["close_reason"]
            .as_str()
            .is_some_and(|r| r.contains("while the broker was down")),
        "{report}"
    );
    assert!(
        b.stderr().to_lowercase().contains("break-glass"),
        "the broker's log mentions the overdue grant it closed:\n{}",
        b.stderr()
    );
}

// ---------------------------------------------------------------------------------------
// Denials
// ---------------------------------------------------------------------------------------

/// No justification, no ticket, a duration over the maximum, an identity or task no
/// break-glass policy covers: each refused with its rule and a `denied` record, and no
/// grant is created.
#[tokio::test(flavor = "multi_thread")]
async fn requests_without_justification_or_ticket_or_cover_are_refused() {
    let b = BreakGlassOptions::default().start();
    let commander = commander_bearer();
    let actor = actor_admin(COMMANDER);
    let without = |field: &str| {
        let mut body = ledger_grant_body("10m");
        body.as_object_mut().unwrap().remove(field);
        body
    };
    let with = |field: &str, value: &str| {
        let mut body = ledger_grant_body("10m");
        body[field] = json!(value);
        body
    };
    let over = format!("{}s", BG_MAX_DURATION_SECS + 1);
    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            "no justification",
            without("justification"),
            400,
            "invalid_request",
            "justification_required",
        ),
        (
            "a blank justification",
            with("justification", "   "),
            400,
            "invalid_request",
            "justification_required",
        ),
        (
            "no ticket",
            without("ticket"),
            400,
            "invalid_request",
            "ticket_required",
        ),
        (
            "an empty ticket",
            with("ticket", ""),
            400,
            "invalid_request",
            "ticket_required",
        ),
        (
            "a duration over the maximum",
            with("duration", &over),
            400,
            "invalid_request",
            "duration_exceeds_max",
        ),
        (
            "a duration far over the maximum",
            with("duration", "2h"),
            400,
            "invalid_request",
            "duration_exceeds_max",
        ),
        (
            "an identity no break-glass policy covers",
            grant_body(BILLING_IDENTITY, BG_TASK, "10m"),
            403,
            "access_denied",
            "no_break_glass_policy",
        ),
        (
            "another policy's task",
            grant_body(IDENTITY, SELF_SERVICE_TASK, "10m"),
            403,
            "access_denied",
            "no_break_glass_policy",
        ),
        (
            "a normal task",
            grant_body(IDENTITY, TASK, "10m"),
            403,
            "access_denied",
            "no_break_glass_policy",
        ),
    ];
    let mut seen: Vec<&str> = Vec::new();
    for (what, body, status, error, rule) in &cases {
        let r = b.request_grant(Some(&commander), body).await;
        assert_refused(&r, *status, error, what);
        seen.push(rule);
        let count = seen.iter().filter(|s| *s == rule).count();
        assert_denied_record(&b, rule, count, Some(&actor), error);
    }
    // Exactly at the maximum is allowed.
    let r = b
        .request_grant(
            Some(&commander),
            &ledger_grant_body(&format!("{BG_MAX_DURATION_SECS}s")),
        )
        .await;
    assert_eq!(r.status, 201, "the maximum duration itself: {}", r.text);
    assert_eq!(
        b.records_of("break_glass_requested").len(),
        1,
        "only the valid request created a grant"
    );
}

/// Who may request: admins and the policy's on-call `requesters`, not other workloads
/// (not even the target) and not anonymous callers. Who may approve: admins with
/// `break_glass_approve`, not `revoke` or `read_audit` admins and not the on-call
/// requester. The on-call requester may read and close its own grant.
#[tokio::test(flavor = "multi_thread")]
async fn only_admins_and_on_call_request_and_only_approvers_approve() {
    let b = BreakGlassOptions::default().start();
    let body = ledger_grant_body("10m");

    // Workloads not named in `requesters`.
    for (subject, identity, n) in [(SUBJECT, IDENTITY, 1), (BATCH_SUBJECT, BATCH_IDENTITY, 2)] {
        let r = b.request_grant(Some(&rs256(subject)), &body).await;
        assert_refused(&r, 403, "access_denied", &format!("request by {identity}"));
        assert_denied_record(
            &b,
            "requester_not_allowed",
            n,
            Some(&format!("identity:{identity}")),
            "access_denied",
        );
    }
    // Anonymous.
    let r = b.request_grant(None, &body).await;
    assert_eq!(r.status, 401, "an anonymous request: {}", r.text);
    assert!(b.records_of("break_glass_requested").is_empty());

    // The on-call identity may request.
    let r = b.request_grant(Some(&rs256(ONCALL_SUBJECT)), &body).await;
    assert_eq!(r.status, 201, "request by the on-call identity: {}", r.text);
    assert_eq!(r.body["status"], "pending", "{}", r.text);
    let id = grant_id(&r.body);
    let oncall_actor = format!("identity:{ONCALL_IDENTITY}");
    assert_eq!(
        grant_records(&b, "break_glass_requested", &id)[0]["actor"],
        oncall_actor
    );

    // Approvers without the role, including the (workload) requester itself.
    let mut n = 0;
    for (bearer, actor) in [
        (rs256(ONCALL_SUBJECT), oncall_actor.clone()),
        (admin_bearer(), actor_admin(ADMIN)),
        (auditor_bearer(), actor_admin(AUDITOR)),
    ] {
        let r = b.approve_grant(Some(&bearer), &id).await;
        assert_refused(&r, 403, "access_denied", &format!("approval by {actor}"));
        n += 1;
        assert_denied_record(&b, "role_required", n, Some(&actor), "access_denied");
    }
    let r = b
        .approve_grant(Some(&approver_bearer()), "bg-0000000000000000")
        .await;
    assert_eq!(r.status, 404, "approving an unknown grant: {}", r.text);
    assert!(grant_records(&b, "break_glass_approved", &id).is_empty());
    assert_eq!(b.report_of(&id).await["status"], "pending");
    assert_bg_task_refused(&b, 1, "after refused approvals").await;

    // An approver activates it.
    let r = b.approve_grant(Some(&approver_bearer()), &id).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "active", "{}", r.text);
    let token = b.issue_bg().await;

    // The on-call requester reads its grant's report; another workload may not.
    let r = b.grant_report(Some(&rs256(ONCALL_SUBJECT)), &id).await;
    assert_eq!(r.status, 200, "the requester reads the report: {}", r.text);
    assert_eq!(r.body["requested_by"], oncall_actor, "{}", r.text);
    let r = b.grant_report(Some(&rs256(SUBJECT)), &id).await;
    assert_refused(
        &r,
        403,
        "access_denied",
        "a report read by the target workload",
    );

    // ...and closes it.
    let r = b.close_grant(Some(&rs256(ONCALL_SUBJECT)), &id).await;
    assert_eq!(r.status, 200, "the requester closes: {}", r.text);
    assert_eq!(r.body["status"], "closed", "{}", r.text);
    assert!(!b.is_active(&token).await);
    assert_eq!(
        grant_records(&b, "break_glass_closed", &id)[0]["actor"],
        oncall_actor
    );
}

// ---------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------

/// The report says who asked, why, who approved, when it opened and closed, and lists
/// exactly the tokens issued under the grant (not normal tokens, not another grant's).
#[tokio::test(flavor = "multi_thread")]
async fn the_report_lists_exactly_the_tokens_issued_under_the_grant() {
    let b = BreakGlassOptions::default().start();
    let before = now_secs();
    let g = b.open_grant("10m").await;
    let id = grant_id(&g);
    let end = ends_at(&g);

    let first = b.issue_bg().await;
    let _normal = b.issue_payments().await;
    let second = {
        let r = b
            .bg_token(&[("scope", "ledger:read"), ("requested_ttl", "60")])
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.access_token().unwrap().to_owned()
    };
    // Another grant (self-service, another identity) and its token.
    let r = b
        .request_grant(
            Some(&admin_bearer()),
            &grant_body(BATCH_IDENTITY, SELF_SERVICE_TASK, "5m"),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let other = grant_id(&r.body);
    let other_token = b.issue(BATCH_SUBJECT, SELF_SERVICE_TASK, None).await;
    assert_eq!(insecure_claims(&other_token)["bg"], other.as_str());

    let check_tokens = |report: &Value| {
        let tokens = report["tokens"].as_array().expect("tokens");
        let listed: BTreeSet<&str> = tokens.iter().filter_map(|t| t["jti"].as_str()).collect();
        let expected: BTreeSet<String> = [&first, &second].iter().map(|t| jti_of(t)).collect();
        assert_eq!(tokens.len(), 2, "exactly two tokens: {report}");
        assert_eq!(
            listed,
            expected.iter().map(String::as_str).collect(),
            "the report's jtis are the grant's tokens: {report}"
        );
        for t in [&first, &second] {
            let c = insecure_claims(t);
            let entry = tokens.iter().find(|e| e["jti"] == c["jti"]).unwrap();
            assert_eq!(entry["audience"], PROD_LEDGER, "{entry}");
            let scopes: Vec<&str> = c["scope"].as_str().unwrap().split(' ').collect();
            assert_eq!(entry["scopes"], json!(scopes), "{entry}");
            assert_eq!(entry["exp"], c["exp"], "{entry}");
            assert_eq!(entry["issued_at"], c["iat"], "{entry}");
        }
    };

    let report = b.report_of(&id).await;
    check_tokens(&report);
    assert_eq!(report["grant"], id.as_str(), "{report}");
    assert_eq!(report["identity"], IDENTITY, "{report}");
    assert_eq!(report["task"], BG_TASK, "{report}");
    assert_eq!(report["requested_by"], actor_admin(COMMANDER), "{report}");
    let requested_at = u64_of(&report["requested_at"], "requested_at");
    assert!((before..=now_secs()).contains(&requested_at), "{report}");
    assert_eq!(report["justification"], JUSTIFICATION, "{report}");
    assert_eq!(report["ticket"], TICKET, "{report}");
    let approvals = report["approvals"].as_array().expect("approvals");
    assert_eq!(approvals.len(), 1, "{report}");
    assert_eq!(approvals[0]["approver"], actor_admin(APPROVER), "{report}");
    let approved_at = u64_of(&approvals[0]["at"], "approvals[0].at");
    assert!(approved_at >= requested_at, "{report}");
    assert_eq!(report["status"], "active", "{report}");
    let opened = u64_of(&report["opened_at"], "opened_at");
    assert!(opened >= approved_at, "{report}");
    assert_eq!(report["ends_at"], end, "{report}");
    assert_eq!(end, opened + 600, "{report}");
    for k in ["closed_at", "closed_by", "close_reason"] {
        assert!(report[k].is_null(), "{k} is empty while active: {report}");
    }

    // Who may read it.
    let r = b.grant_report(Some(&auditor_bearer()), &id).await;
    assert_eq!(r.status, 200, "an auditor reads the report: {}", r.text);
    let r = b.grant_report(Some(&rs256(SUBJECT)), &id).await;
    assert_refused(
        &r,
        403,
        "access_denied",
        "the target workload reads the report",
    );
    let r = b.grant_report(None, &id).await;
    assert_eq!(r.status, 401, "anonymous: {}", r.text);
    let r = b
        .grant_report(Some(&commander_bearer()), "bg-0000000000000000")
        .await;
    assert_eq!(r.status, 404, "an unknown grant: {}", r.text);

    // Closed: the same tokens, and who closed it, when and why.
    let r = b.close_grant(Some(&approver_bearer()), &id).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let report = b.report_of(&id).await;
    check_tokens(&report);
    assert_eq!(report["status"], "closed", "{report}");
    assert_eq!(report["closed_by"], actor_admin(APPROVER), "{report}");
    let closed_at = u64_of(&report["closed_at"], "closed_at");
    assert!(closed_at >= opened && closed_at <= now_secs(), "{report}");
    assert!(
        report["close_reason"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{report}"
    );
    let other_report = b.report_of(&other).await;
    let other_tokens = other_report["tokens"].as_array().unwrap();
    assert_eq!(other_tokens.len(), 1, "{other_report}");
    assert_eq!(other_tokens[0]["jti"], jti_of(&other_token));
    assert!(
        b.is_active(&other_token).await,
        "the other grant is untouched"
    );
}

// ---------------------------------------------------------------------------------------
// Self-service and pending expiry
// ---------------------------------------------------------------------------------------

/// `approvals = 0`: active at once, but loud: audited and sent to the webhook, which gets
/// every event even though it refuses the first deliveries (retries).
#[tokio::test(flavor = "multi_thread")]
async fn a_self_service_grant_is_active_at_once_and_loud() {
    let hook = WebhookReceiver::refusing_first(2).await;
    let b = BreakGlassOptions::webhook(hook.url()).start();
    let r = b
        .request_grant(
            Some(&admin_bearer()),
            &grant_body(BATCH_IDENTITY, SELF_SERVICE_TASK, "5m"),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let g = r.body;
    let id = grant_id(&g);
    assert_eq!(g["status"], "active", "no approval needed: {g}");
    assert_eq!(g["approvals"], json!([]), "{g}");
    let end = ends_at(&g);
    assert!(end > now_secs() + 200 && end <= now_secs() + 300, "{g}");
    let token = b.issue(BATCH_SUBJECT, SELF_SERVICE_TASK, None).await;
    let c = b.verify_access_token(&token, PROD_LEDGER).await.claims;
    assert_eq!(c["bg"], id.as_str(), "{c}");
    assert!(u64_of(&c["exp"], "exp") <= end, "{c}");
    assert_eq!(c["scope"], "ledger:read ledger:write", "{c}");
    for kind in [
        "break_glass_requested",
        "break_glass_activated",
        "break_glass_token_issued",
    ] {
        assert_eq!(
            grant_records(&b, kind, &id).len(),
            1,
            "one {kind} record for a self-service grant"
        );
    }
    assert!(grant_records(&b, "break_glass_approved", &id).is_empty());
    let kinds = [
        "break_glass_requested",
        "break_glass_activated",
        "break_glass_token_issued",
    ];
    let events = hook
        .wait_for_kinds(&id, &kinds, Duration::from_secs(15))
        .await;
    for kind in kinds {
        assert!(
            events.iter().any(|e| e["event"] == kind),
            "the webhook got {kind} after retries; got {events:#?} ({} attempts)",
            hook.attempts()
        );
    }
    assert!(
        hook.attempts() >= events.len() + 2,
        "the refused deliveries were retried: {} attempts for {} events",
        hook.attempts(),
        events.len()
    );
}

/// A grant nobody approves expires by itself after `pending_ttl`: closed by the broker,
/// audited, and an approval after that is refused.
#[tokio::test(flavor = "multi_thread")]
async fn an_unapproved_grant_expires_by_itself() {
    let b = BreakGlassOptions {
        pending_ttl: Some("2s".into()),
        ..BreakGlassOptions::default()
    }
    .start();
    let r = b
        .request_grant(Some(&commander_bearer()), &ledger_grant_body("10m"))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = grant_id(&r.body);
    let closed = eventually(Duration::from_secs(8), async || {
        b.report_of(&id).await["status"] == "closed"
    })
    .await;
    assert!(
        closed,
        "the unapproved grant expired: {}",
        b.report_of(&id).await
    );
    let report = b.report_of(&id).await;
    assert_eq!(report["closed_by"], "broker", "{report}");
    assert!(report["opened_at"].is_null(), "never opened: {report}");
    let expired = grant_records(&b, "break_glass_expired", &id);
    assert_eq!(expired.len(), 1, "one break_glass_expired record");
    assert!(grant_records(&b, "break_glass_activated", &id).is_empty());

    let r = b.approve_grant(Some(&approver_bearer()), &id).await;
    assert_refused(&r, 409, "invalid_request", "approving an expired grant");
    assert_denied_record(
        &b,
        "grant_not_pending",
        1,
        Some(&actor_admin(APPROVER)),
        "invalid_request",
    );
    assert_bg_task_refused(&b, 1, "an expired, never approved grant").await;
}

/// The kill switch wins over an active grant: disabling the identity revokes its
/// break-glass tokens too and refuses new ones while the grant is still active.
#[tokio::test(flavor = "multi_thread")]
async fn the_kill_switch_beats_an_active_grant() {
    let b = BreakGlassOptions::default().start();
    let g = b.open_grant("10m").await;
    let id = grant_id(&g);
    let token = b.issue_bg().await;
    let r = b
        .admin_post(
            Some(&admin_bearer()),
            &format!("identities/{IDENTITY}/disable"),
            &json!({"reason": "host compromised during the incident"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        !b.is_active(&token).await,
        "the kill switch revokes bg tokens"
    );
    let r = b.bg_token(&[]).await;
    assert_refused(
        &r,
        403,
        "access_denied",
        "a disabled identity under a grant",
    );
    assert_denied_record(&b, "identity_disabled", 1, None, "access_denied");
    assert_eq!(b.report_of(&id).await["status"], "active");
    assert_eq!(
        b.report_of(&id).await["tokens"].as_array().map(Vec::len),
        Some(1),
        "no token was issued while disabled"
    );
}

/// `approvals = 2`: two distinct approvers, neither the requester; one approval leaves it
/// pending, the same approver twice is refused, an `admin`-role admin may approve.
#[tokio::test(flavor = "multi_thread")]
async fn two_approvals_need_two_distinct_approvers() {
    let b = BreakGlassOptions::default().start();
    let r = b
        .request_grant(
            Some(&commander_bearer()),
            &grant_body(IDENTITY, TWO_PERSON_TASK, "10m"),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = grant_id(&r.body);
    assert_eq!(r.body["status"], "pending", "{}", r.text);

    let r = b.approve_grant(Some(&approver_bearer()), &id).await;
    assert_eq!(r.status, 200, "the first approval: {}", r.text);
    assert_eq!(
        r.body["status"], "pending",
        "one of two approvals: {}",
        r.text
    );
    let r = b
        .token(&TokenRequest::exchange(&rs256(SUBJECT), TWO_PERSON_TASK))
        .await;
    assert_refused(&r, 400, "invalid_request", "with one of two approvals");

    let r = b.approve_grant(Some(&approver_bearer()), &id).await;
    assert_eq!(r.status, 409, "the same approver twice: {}", r.text);
    assert_denied_record(
        &b,
        "duplicate_approval",
        1,
        Some(&actor_admin(APPROVER)),
        "invalid_request",
    );
    let r = b.approve_grant(Some(&commander_bearer()), &id).await;
    assert_refused(&r, 403, "access_denied", "self-approval");
    assert_eq!(b.report_of(&id).await["status"], "pending");

    let r = b.approve_grant(Some(&supervisor_bearer()), &id).await;
    assert_eq!(r.status, 200, "the second approval: {}", r.text);
    assert_eq!(r.body["status"], "active", "{}", r.text);
    let approvers: Vec<&str> = r.body["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["approver"].as_str())
        .collect();
    assert_eq!(
        approvers,
        [actor_admin(APPROVER), actor_admin(SUPERVISOR)],
        "{}",
        r.text
    );
    assert_eq!(grant_records(&b, "break_glass_approved", &id).len(), 2);
    assert_eq!(grant_records(&b, "break_glass_activated", &id).len(), 1);
    let r = b
        .token(&TokenRequest::exchange(&rs256(SUBJECT), TWO_PERSON_TASK))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let c = insecure_claims(r.access_token().unwrap());
    assert_eq!(c["bg"], id.as_str(), "{c}");
    assert_eq!(c["scope"], "ledger:admin", "{c}");
    // That grant is for its own task only.
    assert_bg_task_refused(&b, 2, "another break-glass task").await;
}

/// A grant and the tokens issued under it survive a SIGKILL restart while it is active:
/// still active after the restart, the report still lists the token, and closing it then
/// revokes that token too.
#[tokio::test(flavor = "multi_thread")]
async fn an_active_grant_survives_a_restart() {
    let mut b = BreakGlassOptions::default().start();
    let g = b.open_grant("10m").await;
    let id = grant_id(&g);
    let before = b.issue_bg().await;
    assert!(!b.sigkill().success());
    b.launch().unwrap_or_else(|e| panic!("relaunch: {e}"));

    let report = b.report_of(&id).await;
    assert_eq!(report["status"], "active", "{report}");
    assert_eq!(report["ends_at"], g["ends_at"], "{report}");
    assert!(b.is_active(&before).await, "its token survives the restart");
    let after = b.issue_bg().await;
    assert_eq!(insecure_claims(&after)["bg"], id.as_str());
    let listed: BTreeSet<String> = b.report_of(&id).await["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["jti"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        listed,
        BTreeSet::from([jti_of(&before), jti_of(&after)]),
        "the report keeps the token issued before the restart"
    );
    let r = b.close_grant(Some(&approver_bearer()), &id).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(!b.is_active(&before).await, "revoked by the close");
    assert!(!b.is_active(&after).await, "revoked by the close");
    assert_eq!(
        grant_records(&b, "break_glass_closed", &id)[0]["detail"]["tokens_revoked"],
        2
    );
}

// ---------------------------------------------------------------------------------------
// Failing webhooks
// ---------------------------------------------------------------------------------------

/// Longest a break-glass call may take with a broken webhook. A broker that waited for
/// the webhook's four attempts (200 + 400 + 800 + 1600 ms backoff) would take over 3 s.
const NOT_BLOCKED: Duration = Duration::from_secs(2);

/// Times one call.
async fn timed<T>(what: &str, f: impl AsyncFnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f().await;
    let took = start.elapsed();
    assert!(
        took < NOT_BLOCKED,
        "{what} took {took:?} with a failing webhook: the webhook blocks it"
    );
    out
}

/// With `webhook_url` failing, every step answers promptly, the close revokes at once and
/// a grant still expires on time.
async fn a_failing_webhook_never_blocks(b: &TestBroker) {
    let r = timed("the request", async || {
        b.request_grant(Some(&commander_bearer()), &ledger_grant_body("10m"))
            .await
    })
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = grant_id(&r.body);
    let r = timed("the approval", async || {
        b.approve_grant(Some(&approver_bearer()), &id).await
    })
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let token = timed("the token", async || b.issue_bg().await).await;
    let r = timed("the close", async || {
        b.close_grant(Some(&admin_bearer()), &id).await
    })
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "closed", "{}", r.text);
    assert!(!b.is_active(&token).await, "revoked at once");
    assert!(feed_grant_rule(&b.feed(None).await, &id).is_some());
    assert_eq!(grant_records(b, "break_glass_closed", &id).len(), 1);

    // Expiry by time is not held up either.
    let g = b.open_grant("3s").await;
    let id = grant_id(&g);
    let end = ends_at(&g);
    let token = b.issue_bg().await;
    let closed = eventually(until(end, Duration::from_secs(6)), async || {
        b.report_of(&id).await["status"] == "closed"
    })
    .await;
    assert!(closed, "the grant expired on time despite the webhook");
    assert!(!b.is_active(&token).await);
    assert!(feed_grant_rule(&b.feed(None).await, &id).is_some());
    assert_eq!(grant_records(b, "break_glass_expired", &id).len(), 1);
}

/// The webhook URL is a closed port (connection refused).
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_on_a_closed_port_never_blocks_the_close_or_the_revoke() {
    let b = BreakGlassOptions::webhook(&closed_port_webhook()).start();
    a_failing_webhook_never_blocks(&b).await;
    let logged = eventually(Duration::from_secs(5), async || {
        b.stderr().to_lowercase().contains("webhook")
    })
    .await;
    assert!(
        logged,
        "the broker logs the failing webhook:\n{}",
        b.stderr()
    );
}

/// The webhook accepts connections and never answers.
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_that_never_answers_never_blocks_the_close_or_the_revoke() {
    let (url, accepted) = hanging_webhook().await;
    let b = BreakGlassOptions::webhook(&url).start();
    a_failing_webhook_never_blocks(&b).await;
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the broker did call the webhook"
    );
}

// ---------------------------------------------------------------------------------------
// Policy validation
// ---------------------------------------------------------------------------------------

/// A break-glass policy without `max_duration` stops `broker serve` at start (naming the
/// file and the field) and fails `broker policy lint`; the valid set lints clean.
#[tokio::test(flavor = "multi_thread")]
async fn a_break_glass_policy_without_max_duration_is_refused() {
    let mut no_max = ledger_emergency_file();
    no_max.break_glass.max_duration = None;
    let bad = no_max.render();
    assert_ne!(bad, ledger_emergency_policy());
    let opts = BreakGlassOptions {
        files: vec![("no-max.toml".into(), bad)],
        ..BreakGlassOptions::default()
    };
    let mut b = opts.prepare();
    let policies = b.dir().join("policies");
    let err = match b.launch() {
        Ok(()) => panic!("the broker started with a break-glass policy without max_duration"),
        Err(e) => e,
    };
    assert!(
        err.status.is_some_and(|s| !s.success()),
        "serve exits non-zero: {err}"
    );
    assert!(
        err.stderr.contains("no-max.toml") && err.stderr.contains("max_duration"),
        "the startup error names the file and max_duration: {err}"
    );

    let out = lint(&policies, Some(b.config_path()));
    assert_eq!(out.code, Some(1), "lint refuses it: {out}");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.lines()
            .any(|l| l.contains("no-max.toml") && l.contains("max_duration")),
        "lint names the file and max_duration on one line: {out}"
    );

    // The valid policies lint clean.
    std::fs::remove_file(policies.join("break-glass").join("no-max.toml")).unwrap();
    write_break_glass_files(&policies, &break_glass_policies());
    let out = lint(&policies, Some(b.config_path()));
    assert!(out.success(), "the valid set lints clean: {out}");
    b.launch()
        .unwrap_or_else(|e| panic!("the valid set starts: {e}"));
    let g = b.open_grant("1m").await;
    assert_eq!(g["status"], "active");
    assert_eq!(b.report_of(&grant_id(&g)).await["task"], BG_TASK);
}

/// Break-glass files are reloaded like the registry: a new file without `max_duration`
/// is rejected (a `policy_reload_failed` record names it) and the previous set stays live;
/// a valid new policy becomes requestable without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn break_glass_policies_reload_and_a_broken_one_keeps_the_old_set() {
    let b = BreakGlassOptions::default().start();
    let bg_dir = b.dir().join("policies").join("break-glass");
    let mut billing_file = ledger_emergency_file();
    billing_file.break_glass.name = "billing-emergency".to_owned();
    billing_file.break_glass.identities = vec![BILLING_IDENTITY.to_owned()];
    let billing = billing_file.render();
    assert_ne!(billing, ledger_emergency_policy());
    billing_file.break_glass.max_duration = None;
    let broken = billing_file.render();
    std::fs::write(bg_dir.join("billing.toml"), &broken).unwrap();
    let failed = b
        .wait_for_record(Duration::from_secs(10), |r| {
            r["event"] == "policy_reload_failed"
                && r["detail"].to_string().contains("billing.toml")
                && r["detail"].to_string().contains("max_duration")
        })
        .await;
    assert!(
        failed.is_some(),
        "a policy_reload_failed record names billing.toml and max_duration: {:#?}",
        b.records_of("policy_reload_failed")
    );
    // The old set stays live: the existing policy works, the broken one does not exist.
    let r = b
        .request_grant(
            Some(&commander_bearer()),
            &grant_body(BILLING_IDENTITY, BG_TASK, "10m"),
        )
        .await;
    assert_refused(&r, 403, "access_denied", "the rejected policy is not live");
    let r = b
        .request_grant(Some(&commander_bearer()), &ledger_grant_body("10m"))
        .await;
    assert_eq!(r.status, 201, "the previous set stays live: {}", r.text);

    // Fixed: the new policy is live without a restart.
    let reloads = b.records_of("policy_reloaded").len();
    std::fs::write(bg_dir.join("billing.toml"), &billing).unwrap();
    let reloaded = eventually(Duration::from_secs(10), async || {
        b.records_of("policy_reloaded").len() > reloads
    })
    .await;
    assert!(reloaded, "the fixed file is reloaded");
    let r = b
        .request_grant(
            Some(&commander_bearer()),
            &grant_body(BILLING_IDENTITY, BG_TASK, "10m"),
        )
        .await;
    assert_eq!(r.status, 201, "the new policy is live: {}", r.text);
}

// ---------------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------------

/// `broker break-glass ARGS --url URL --bearer-file BEARER`.
fn bg_cli(url: &str, bearer: &Path, args: &[&str]) -> CmdOutput {
    let mut all: Vec<OsString> = vec!["break-glass".into()];
    all.extend(args.iter().map(OsString::from));
    all.extend([
        "--url".into(),
        url.into(),
        "--bearer-file".into(),
        bearer.as_os_str().to_owned(),
    ]);
    CmdOutput::of(&mut broker_command(&all))
}

fn cli_json(out: &CmdOutput) -> Value {
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("the CLI prints the JSON answer ({e}): {out}"))
}

/// `broker break-glass request|approve|report|close` against a running broker.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_requests_approves_reports_and_closes() {
    let b = BreakGlassOptions::default().start();
    let files = tempfile::tempdir().unwrap();
    let commander = write_file(
        files.path(),
        "commander.jwt",
        &format!("{}\n", commander_bearer()),
    );
    let approver = write_file(files.path(), "approver.jwt", &approver_bearer());
    let url = b.base_url().to_owned();
    let run = |args: &[&str], bearer: &Path| bg_cli(&url, bearer, args);
    let request = |duration: &'static str| -> Vec<&'static str> {
        vec![
            "request",
            "--identity",
            IDENTITY,
            "--task",
            BG_TASK,
            "--duration",
            duration,
            "--justification",
            JUSTIFICATION,
            "--ticket",
            TICKET,
        ]
    };

    // request
    let out = run(&request("10m"), &commander);
    assert!(out.success(), "request: {out}");
    let g = cli_json(&out);
    let id = grant_id(&g);
    assert_eq!(g["status"], "pending", "{g}");
    assert_eq!(
        grant_records(&b, "break_glass_requested", &id)[0]["actor"],
        actor_admin(COMMANDER)
    );

    // approve: not by the requester, then by the approver
    let out = run(&["approve", &id], &commander);
    assert_eq!(out.code, Some(1), "self-approval exits 1: {out}");
    assert_eq!(cli_json(&out)["error"], "access_denied", "{out}");
    let out = run(&["approve", &id], &approver);
    assert!(out.success(), "approve: {out}");
    assert_eq!(cli_json(&out)["status"], "active", "{out}");

    let token = b.issue_bg().await;

    // report
    let out = run(&["report", &id], &commander);
    assert!(out.success(), "report: {out}");
    let report = cli_json(&out);
    assert_eq!(report["grant"], id.as_str(), "{report}");
    assert_eq!(report["status"], "active", "{report}");
    assert_eq!(
        report["tokens"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_eq!(report["tokens"][0]["jti"], jti_of(&token), "{report}");

    // close
    let out = run(&["close", &id], &commander);
    assert!(out.success(), "close by the requester: {out}");
    assert_eq!(cli_json(&out)["status"], "closed", "{out}");
    assert!(!b.is_active(&token).await, "revoked by the CLI close");
    let out = run(&["report", &id], &approver);
    assert!(out.success(), "report: {out}");
    let report = cli_json(&out);
    assert_eq!(report["status"], "closed", "{report}");
    assert_eq!(report["closed_by"], actor_admin(COMMANDER), "{report}");

    // Refusals exit 1 with the error; a missing required flag never reaches the broker.
    let out = run(&request("2h"), &commander);
    assert_eq!(out.code, Some(1), "a duration over the maximum: {out}");
    assert_eq!(cli_json(&out)["error"], "invalid_request", "{out}");
    let mut no_ticket = request("10m");
    no_ticket.truncate(no_ticket.len() - 2);
    let out = run(&no_ticket, &commander);
    assert!(!out.success(), "--ticket is required: {out}");
    assert!(out.stderr.contains("--ticket"), "{out}");
    assert_eq!(
        b.records_of("break_glass_requested").len(),
        1,
        "only the first request created a grant"
    );
    let out = run(&["report", "bg-0000000000000000"], &commander);
    assert_eq!(out.code, Some(1), "an unknown grant: {out}");
}

/// Normal tasks are untouched by an active grant (no `bg`), and a break-glass token is
/// never widened beyond the break-glass task's scopes or audience.
#[tokio::test(flavor = "multi_thread")]
async fn normal_tasks_are_unaffected_by_an_active_grant() {
    let b = BreakGlassOptions::default().start();
    let g = b.open_grant("10m").await;
    let id = grant_id(&g);
    let r = b
        .token(&TokenRequest::exchange(&rs256(SUBJECT), TASK))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let c = insecure_claims(r.access_token().unwrap());
    assert!(c.get("bg").is_none(), "a normal token has no bg: {c}");
    assert_eq!(c["task"], TASK, "{c}");
    // A break-glass token cannot be widened beyond the break-glass task.
    let r = b.bg_token(&[("scope", "ledger:read ledger:delete")]).await;
    assert_refused(
        &r,
        400,
        "invalid_scope",
        "a scope the break-glass task lacks",
    );
    let r = b
        .bg_token(&[("audience", "https://reports.prod.example.org")])
        .await;
    assert_refused(&r, 400, "invalid_target", "another audience");
    // Only the grant's identity: another workload asking for the task is refused.
    let r = b
        .token(&TokenRequest::exchange(&rs256(BATCH_SUBJECT), BG_TASK))
        .await;
    assert_refused(
        &r,
        400,
        "invalid_request",
        "another identity under the grant",
    );
    let r = b.close_grant(Some(&commander_bearer()), &id).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

// ---------------------------------------------------------------------------------------
// Races
// ---------------------------------------------------------------------------------------

/// How many times each race is run (each run is a fresh grant).
const RACE_ROUNDS: usize = 20;

/// The two-person rule holds under concurrency: one approver sending two approvals of a
/// two-approval grant at once counts once (one 200, one 409 `duplicate_approval`), and the
/// grant stays pending.
#[tokio::test(flavor = "multi_thread")]
async fn one_approver_racing_twice_counts_once() {
    let b = BreakGlassOptions::default().start();
    let (commander, approver) = (commander_bearer(), approver_bearer());
    for round in 0..RACE_ROUNDS {
        let r = b
            .request_grant(
                Some(&commander),
                &grant_body(IDENTITY, TWO_PERSON_TASK, "10m"),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let id = grant_id(&r.body);
        let (x, y) = tokio::join!(
            b.approve_grant(Some(&approver), &id),
            b.approve_grant(Some(&approver), &id)
        );
        let mut statuses = [x.status, y.status];
        statuses.sort_unstable();
        let report = b.report_of(&id).await;
        assert_eq!(
            (
                statuses,
                &report["status"],
                report["approvals"].as_array().map(Vec::len)
            ),
            ([200, 409], &json!("pending"), Some(1)),
            "round {round}: one person approving twice at once must count once: {report}"
        );
        let r = b.close_grant(Some(&approver), &id).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
}

/// Two approvers racing on a one-approval grant: it is activated once (one
/// `break_glass_activated` record), with the one approval it needed; the other gets 409.
#[tokio::test(flavor = "multi_thread")]
async fn racing_approvers_activate_a_grant_once() {
    let b = BreakGlassOptions::default().start();
    let (commander, approver, supervisor) =
        (commander_bearer(), approver_bearer(), supervisor_bearer());
    for round in 0..RACE_ROUNDS {
        let r = b
            .request_grant(Some(&commander), &ledger_grant_body("10m"))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let id = grant_id(&r.body);
        let (x, y) = tokio::join!(
            b.approve_grant(Some(&approver), &id),
            b.approve_grant(Some(&supervisor), &id)
        );
        let mut statuses = [x.status, y.status];
        statuses.sort_unstable();
        let report = b.report_of(&id).await;
        assert_eq!(report["status"], "active", "{report}");
        assert_eq!(
            (
                statuses,
                report["approvals"].as_array().map(Vec::len),
                grant_records(&b, "break_glass_activated", &id).len()
            ),
            ([200, 409], Some(1), 1),
            "round {round}: activated once, with the one approval it needed: {report}"
        );
        let r = b.close_grant(Some(&approver), &id).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
}

/// Two closes racing: the grant is closed once (one `break_glass_closed` record) and its
/// tokens are revoked.
#[tokio::test(flavor = "multi_thread")]
async fn racing_closes_close_a_grant_once() {
    let b = BreakGlassOptions::default().start();
    let (approver, admin) = (approver_bearer(), admin_bearer());
    for round in 0..RACE_ROUNDS {
        let g = b.open_grant("10m").await;
        let id = grant_id(&g);
        let token = b.issue_bg().await;
        let (x, y) = tokio::join!(
            b.close_grant(Some(&approver), &id),
            b.close_grant(Some(&admin), &id)
        );
        assert_eq!((x.status, y.status), (200, 200), "{} {}", x.text, y.text);
        assert!(!b.is_active(&token).await, "round {round}: revoked");
        assert_eq!(
            grant_records(&b, "break_glass_closed", &id).len(),
            1,
            "round {round}: closed once; records: {:#?}",
            grant_records(&b, "break_glass_closed", &id)
        );
    }
}
