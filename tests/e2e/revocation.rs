//! Revocation, introspection, the kill switch and the admin API (issue 4).
//!
//! Every test runs a broker with [`revocation_options`]: the default registry plus a second
//! identity of the payments owner, an identity of another owner, a resource server
//! (`may_introspect = true`), an admin with the `revoke` role and one without it (see
//! `broker_tests::admin`). Introspection is the judge of "revoked": it is asked as the
//! resource server, and an inactive answer must be exactly `{"active":false}`.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use broker_tests::admin::{
    ADMIN, AUDITOR, BATCH_IDENTITY, BATCH_SUBJECT, BILLING_IDENTITY, BILLING_OWNER,
    BILLING_SUBJECT, PAYMENTS_OWNER, READ_TASK, RS_IDENTITY, RS_SUBJECT, admin_bearer,
    auditor_bearer, feed_entries, feed_jti, feed_rule, forge_with_broker_key, jti_of,
    revocation_options, sign_with_broker_key, write_file,
};
use broker_tests::{
    BROKER_ISSUER, CmdOutput, IDENTITY, PROD_LEDGER, Reply, SUBJECT, TASK, TestBroker,
    TokenRequest, broker_command, insecure_claims, now_secs, rs256, with_bad_signature,
};
use serde_json::{Value, json};

fn start() -> TestBroker {
    TestBroker::start(revocation_options())
}

fn actor_admin() -> String {
    format!("admin:{ADMIN}")
}

fn actor_identity(id: &str) -> String {
    format!("identity:{id}")
}

/// Waits until the system clock (the broker's clock too) has reached `exp`, so that a
/// token with that `exp` has expired.
async fn wait_until_expired(exp: u64) {
    while now_secs() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the start of the next wall-clock second.
async fn next_second() {
    let s = now_secs();
    while now_secs() == s {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn exp_of(token: &str) -> u64 {
    insecure_claims(token)["exp"].as_u64().expect("exp")
}

/// The one `denied` record with `rule` and `actor` (the caller), checked for the shared
/// fields; returns it.
fn denied_record(b: &TestBroker, rule: &str, actor: Option<&str>, error: &str) -> Value {
    let found: Vec<Value> = b
        .records_of("denied")
        .into_iter()
        .filter(|r| r["rule"] == rule && actor.is_none_or(|a| r["actor"] == a))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one denied record with rule {rule} and actor {actor:?}; all records: {:#?}",
        b.records()
    );
    let rec = found.into_iter().next().unwrap();
    assert_eq!(rec["decision"], "deny", "{rec}");
    assert_eq!(rec["error"], error, "{rec}");
    assert_eq!(rec["source"], "127.0.0.1", "{rec}");
    assert!(
        rec["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "a reason: {rec}"
    );
    rec
}

/// Checks an OAuth error answer.
fn assert_error(reply: &Reply, status: u16, error: &str, what: &str) {
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

/// The `revoked` records (allowed) with `pred`.
fn revoked_records(b: &TestBroker, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    b.records_of("revoked")
        .into_iter()
        .filter(|r| r["decision"] == "allow" && pred(r))
        .collect()
}

/// Checks a rule answer of `POST /v1/admin/revocations` and returns the rule id.
fn check_rule_answer(ans: &Value, selector: &Value, covered: u64, before: u64) -> String {
    assert_eq!(ans["revoked"], "rule", "{ans}");
    let id = ans["rule"].as_str().expect("a rule id").to_owned();
    assert!(id.starts_with("rev-"), "rule id {id}");
    assert_eq!(&ans["selector"], selector, "selector echoed: {ans}");
    let ib = ans["issued_before"].as_u64().expect("issued_before");
    assert!(
        (before..=now_secs()).contains(&ib),
        "issued_before {ib} is the time of the call ({before}..now): {ans}"
    );
    assert_eq!(
        ans["live_tokens_covered"], covered,
        "live_tokens_covered: {ans}"
    );
    id
}

/// Checks that the feed lists rule `id` with `selector` and `issued_before`.
fn check_feed_rule(feed: &Value, id: &str, selector: &Value, issued_before: &Value) {
    let e = feed_rule(feed, id).unwrap_or_else(|| panic!("the feed lists rule {id}: {feed}"));
    let rule = &e["rule"];
    for (k, v) in selector.as_object().expect("selector object") {
        assert_eq!(&rule[k], v, "feed rule field {k}: {e}");
    }
    assert_eq!(&rule["issued_before"], issued_before, "{e}");
    assert!(e["cursor"].as_u64().is_some_and(|c| c > 0), "cursor: {e}");
    assert!(
        e["until"].as_u64().is_some_and(|u| u > now_secs()),
        "until: {e}"
    );
}

/// The one allowed `revoked` record of rule `id`, made by the admin with `reason`.
fn check_rule_record(b: &TestBroker, id: &str, reason: &str) -> Value {
    let recs = revoked_records(b, |r| r["detail"]["rule"] == id);
    assert_eq!(recs.len(), 1, "one revoked record for rule {id}: {recs:?}");
    let rec = recs.into_iter().next().unwrap();
    assert_eq!(rec["actor"], actor_admin(), "{rec}");
    assert_eq!(rec["reason"], reason, "{rec}");
    assert_eq!(rec["source"], "127.0.0.1", "{rec}");
    rec
}

// ---------------------------------------------------------------------------------------
// Introspection
// ---------------------------------------------------------------------------------------

/// An active answer carries the token's claims; resource servers and admins may ask,
/// workloads may not, and unauthenticated callers are refused.
#[tokio::test(flavor = "multi_thread")]
async fn introspection_answers_resource_servers_with_the_claims() {
    let b = start();
    let token = b.issue_payments().await;
    let claims = insecure_claims(&token);

    let body = b.introspect(&token).await;
    assert_eq!(body["active"], true, "{body}");
    assert_eq!(body["token_type"], "Bearer", "{body}");
    for k in [
        "iss",
        "sub",
        "client_id",
        "aud",
        "scope",
        "jti",
        "iat",
        "nbf",
        "exp",
        "task",
        "env",
    ] {
        assert!(!body[k].is_null(), "introspection lacks {k}: {body}");
        assert_eq!(body[k], claims[k], "claim {k}: {body}");
    }
    assert_eq!(body["iss"], BROKER_ISSUER);
    assert_eq!(body["sub"], IDENTITY);
    assert_eq!(body["client_id"], IDENTITY);
    assert_eq!(body["aud"], PROD_LEDGER);
    assert_eq!(body["task"], TASK);
    assert_eq!(body["env"], "prod");
    assert_eq!(body["scope"], "ledger:read ledger:write");

    // An admin may introspect (any role).
    let r = b.introspect_with(Some(&auditor_bearer()), &token).await;
    assert_eq!(r.status, 200, "an admin introspects: {}", r.text);
    assert_eq!(r.body["active"], true, "{}", r.text);

    // A workload without may_introspect may not.
    let r = b.introspect_with(Some(&rs256(SUBJECT)), &token).await;
    assert_error(
        &r,
        403,
        "access_denied",
        "introspection by a plain workload",
    );
    assert!(
        r.body.get("active").is_none(),
        "no answer leaks: {}",
        r.text
    );
    denied_record(
        &b,
        "introspection_not_allowed",
        Some(&actor_identity(IDENTITY)),
        "access_denied",
    );

    // Nobody unauthenticated.
    let r = b.introspect_with(None, &token).await;
    assert_error(
        &r,
        401,
        "invalid_client",
        "introspection without credentials",
    );
    denied_record(&b, "no_credentials", None, "invalid_client");

    // A bearer that is not from a trusted issuer (the broker's own access token) is no
    // credential, nor is a resource server's JWT with a broken signature.
    let r = b.introspect_with(Some(&token), &token).await;
    assert_error(&r, 401, "invalid_client", "an access token as the bearer");
    let r = b
        .introspect_with(Some(&with_bad_signature(&rs256(RS_SUBJECT))), &token)
        .await;
    assert_error(&r, 401, "invalid_client", "a tampered resource-server JWT");
}

/// `active:false` for expired, not-yet-valid, foreign, tampered and garbage tokens.
#[tokio::test(flavor = "multi_thread")]
async fn introspection_says_inactive_for_expired_not_yet_valid_and_foreign_tokens() {
    let b = start();
    let short = b.issue(SUBJECT, TASK, Some(1)).await;
    let live = b.issue_payments().await;

    // Not yet valid: signed with the broker's own key, nbf an hour ahead. A control token
    // forged the same way but valid now proves the forgery itself is accepted.
    let now = now_secs();
    let mut claims = insecure_claims(&live);
    claims["jti"] = json!("forged-control-0001");
    claims["nbf"] = json!(now);
    claims["iat"] = json!(now);
    claims["exp"] = json!(now + 300);
    let control = forge_with_broker_key(&b, &live, &claims);
    assert!(
        b.is_active(&control).await,
        "a token signed with the broker's key, valid now, is active"
    );
    claims["jti"] = json!("forged-future-0002");
    claims["nbf"] = json!(now + 3600);
    claims["exp"] = json!(now + 3900);
    let future = forge_with_broker_key(&b, &live, &claims);
    assert!(!b.is_active(&future).await, "a not-yet-valid token");

    // Foreign: a JWT of the (trusted) workload issuer is not a broker token.
    assert!(!b.is_active(&rs256(SUBJECT)).await, "a workload JWT");
    assert!(!b.is_active(&with_bad_signature(&live)).await, "tampered");
    assert!(!b.is_active("not-a-jwt").await, "garbage");
    let mut other_iss = insecure_claims(&live);
    other_iss["jti"] = json!("forged-iss-0003");
    other_iss["iss"] = json!("https://another-broker.test");
    let other = sign_with_broker_key(&b, &live, &other_iss);
    assert!(
        !b.is_active(&other).await,
        "a token of another issuer signed with the same key"
    );

    // Expired.
    wait_until_expired(exp_of(&short)).await;
    assert!(!b.is_active(&short).await, "an expired token");
    assert!(
        b.is_active(&live).await,
        "the 10-minute token is still active"
    );
}

// ---------------------------------------------------------------------------------------
// Revocation by each selector
// ---------------------------------------------------------------------------------------

/// `{"jti"}` through the admin API: that token only.
#[tokio::test(flavor = "multi_thread")]
async fn admin_revokes_one_token_by_jti() {
    let b = start();
    let target = b.issue_payments().await;
    let sibling = b.issue_payments().await;
    let other = b.issue(BILLING_SUBJECT, TASK, None).await;
    let jti = jti_of(&target);
    assert!(b.is_active(&target).await);

    let ans = b
        .admin_revoke(&json!({"jti": jti, "reason": "leaked in a CI log"}))
        .await;
    assert_eq!(ans, json!({"revoked": "jti", "jti": jti}), "answer");

    assert!(!b.is_active(&target).await, "the revoked token");
    assert!(
        b.is_active(&sibling).await,
        "another token of the same identity"
    );
    assert!(b.is_active(&other).await, "a token of another identity");

    let feed = b.feed(None).await;
    let e = feed_jti(&feed, &jti).unwrap_or_else(|| panic!("the feed lists {jti}: {feed}"));
    assert!(e["cursor"].as_u64().is_some_and(|c| c > 0), "{e}");
    assert!(e["until"].as_u64().is_some_and(|u| u > now_secs()), "{e}");
    assert!(feed_jti(&feed, &jti_of(&sibling)).is_none(), "{feed}");

    let recs = revoked_records(&b, |r| r["jti"] == jti);
    assert_eq!(recs.len(), 1, "one revoked record: {recs:?}");
    assert_eq!(recs[0]["actor"], actor_admin(), "{}", recs[0]);
    assert_eq!(recs[0]["reason"], "leaked in a CI log", "{}", recs[0]);
}

/// RFC 7009 by the token's owner: that token only; the record says who and what happened.
/// Unknown and expired tokens answer 200, and the log says why nothing was revoked.
#[tokio::test(flavor = "multi_thread")]
async fn a_workload_revokes_its_own_token_through_oauth2_revoke() {
    let b = start();
    let target = b.issue_payments().await;
    let sibling = b.issue_payments().await;
    let other = b.issue(BILLING_SUBJECT, TASK, None).await;
    let short = b.issue(SUBJECT, TASK, Some(1)).await;
    let jti = jti_of(&target);

    let r = b.revoke_with(Some(&rs256(SUBJECT)), &target).await;
    assert_eq!(r.status, 200, "revoking its own token: {}", r.text);
    assert!(!b.is_active(&target).await, "the revoked token");
    assert!(b.is_active(&sibling).await, "its other token");
    assert!(b.is_active(&other).await, "another identity's token");

    let feed = b.feed(None).await;
    let e = feed_jti(&feed, &jti).unwrap_or_else(|| panic!("the feed lists {jti}: {feed}"));
    assert_eq!(e["until"], exp_of(&target), "until is the token's exp: {e}");

    let recs = revoked_records(&b, |r| r["jti"] == jti);
    assert_eq!(recs.len(), 1, "one revoked record: {recs:?}");
    let rec = &recs[0];
    assert_eq!(rec["detail"]["outcome"], "revoked", "{rec}");
    assert_eq!(rec["actor"], actor_identity(IDENTITY), "{rec}");
    assert_eq!(rec["identity"], IDENTITY, "{rec}");
    assert_eq!(rec["exp"], exp_of(&target), "{rec}");
    let log = broker_tests::audit_bytes(&b.audit_dir());
    assert!(
        !broker_tests::contains_bytes(&log, target.as_bytes()),
        "the revoked token is in the audit log"
    );

    // Again: still 200, still revoked.
    let r = b.revoke_with(Some(&rs256(SUBJECT)), &target).await;
    assert_eq!(r.status, 200, "revoking twice: {}", r.text);
    assert!(!b.is_active(&target).await);

    // Unknown token: 200, outcome unknown_token.
    let r = b.revoke_with(Some(&rs256(SUBJECT)), "not-a-token").await;
    assert_eq!(r.status, 200, "an unknown token: {}", r.text);
    let unknown = revoked_records(&b, |r| r["detail"]["outcome"] == "unknown_token");
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert_eq!(unknown[0]["actor"], actor_identity(IDENTITY));

    // Expired token: 200, outcome already_expired, and no feed entry.
    wait_until_expired(exp_of(&short)).await;
    let r = b.revoke_with(Some(&rs256(SUBJECT)), &short).await;
    assert_eq!(r.status, 200, "an expired token: {}", r.text);
    let expired = revoked_records(&b, |r| r["detail"]["outcome"] == "already_expired");
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0]["jti"], jti_of(&short));
    assert!(feed_jti(&b.feed(None).await, &jti_of(&short)).is_none());

    // An admin with `revoke` may revoke anyone's token through RFC 7009.
    let r = b.revoke_with(Some(&admin_bearer()), &other).await;
    assert_eq!(
        r.status, 200,
        "admin revokes via /oauth2/revoke: {}",
        r.text
    );
    assert!(!b.is_active(&other).await);
    let recs = revoked_records(&b, |r| r["jti"] == jti_of(&other));
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["actor"], actor_admin());
    assert_eq!(recs[0]["detail"]["outcome"], "revoked");
}

/// `{"identity"}`: every token of the identity issued before the call, none of another
/// identity's, and not the identity's tokens issued after it.
#[tokio::test(flavor = "multi_thread")]
async fn admin_revokes_every_token_of_an_identity() {
    let b = start();
    let a1 = b.issue_payments().await;
    let a2 = b.issue_payments().await;
    let other = b.issue(BATCH_SUBJECT, READ_TASK, None).await;
    let before = now_secs();

    let ans = b
        .admin_revoke(&json!({"identity": IDENTITY, "reason": "compromised host"}))
        .await;
    let selector = json!({"by": "identity", "identity": IDENTITY});
    let rule = check_rule_answer(&ans, &selector, 2, before);

    assert!(!b.is_active(&a1).await, "first token");
    assert!(!b.is_active(&a2).await, "second token");
    assert!(
        b.is_active(&other).await,
        "another identity (same owner) stays active"
    );
    // Issued right after the rule (usually within the same second): not covered.
    let after = b.issue_payments().await;
    assert!(
        b.is_active(&after).await,
        "a token issued after the rule is active"
    );

    let feed = b.feed(None).await;
    check_feed_rule(&feed, &rule, &selector, &ans["issued_before"]);
    let rec = check_rule_record(&b, &rule, "compromised host");
    assert_eq!(rec["identity"], IDENTITY, "{rec}");
}

/// `{"task"}` covers that task of every identity; `{"task","identity"}` of one identity.
#[tokio::test(flavor = "multi_thread")]
async fn admin_revokes_by_task_with_and_without_identity() {
    let b = start();
    let pay_write = b.issue_payments().await;
    let batch_read = b.issue(BATCH_SUBJECT, READ_TASK, None).await;
    let billing_write = b.issue(BILLING_SUBJECT, TASK, None).await;
    let billing_read = b.issue(BILLING_SUBJECT, READ_TASK, None).await;
    let before = now_secs();

    let ans = b
        .admin_revoke(&json!({"task": READ_TASK, "reason": "reader key exposed"}))
        .await;
    let sel = json!({"by": "task", "task": READ_TASK});
    let rule = check_rule_answer(&ans, &sel, 2, before);
    assert!(
        !b.is_active(&batch_read).await,
        "{READ_TASK} of {BATCH_IDENTITY}"
    );
    assert!(
        !b.is_active(&billing_read).await,
        "{READ_TASK} of {BILLING_IDENTITY}"
    );
    assert!(b.is_active(&pay_write).await, "{TASK} of {IDENTITY}");
    assert!(
        b.is_active(&billing_write).await,
        "{TASK} of {BILLING_IDENTITY}"
    );
    check_feed_rule(&b.feed(None).await, &rule, &sel, &ans["issued_before"]);
    check_rule_record(&b, &rule, "reader key exposed");

    let ans = b
        .admin_revoke(&json!({"task": TASK, "identity": IDENTITY, "reason": "one writer"}))
        .await;
    let sel = json!({"by": "task", "task": TASK, "identity": IDENTITY});
    let rule = check_rule_answer(&ans, &sel, 1, before);
    assert!(!b.is_active(&pay_write).await, "{TASK} of {IDENTITY}");
    assert!(
        b.is_active(&billing_write).await,
        "the same task name of another identity stays active"
    );
    check_feed_rule(&b.feed(None).await, &rule, &sel, &ans["issued_before"]);
    check_rule_record(&b, &rule, "one writer");
}

/// `{"owner"}`: every identity of the owner; another owner's tokens stay active; an
/// unknown owner is a 400.
#[tokio::test(flavor = "multi_thread")]
async fn admin_revokes_everything_an_owner_holds() {
    let b = start();
    let pay = b.issue_payments().await;
    let batch = b.issue(BATCH_SUBJECT, READ_TASK, None).await;
    let billing = b.issue(BILLING_SUBJECT, TASK, None).await;
    let before = now_secs();

    let ans = b
        .admin_revoke(&json!({"owner": PAYMENTS_OWNER, "reason": "team offboarded"}))
        .await;
    let sel = json!({"by": "owner", "owner": PAYMENTS_OWNER});
    let rule = check_rule_answer(&ans, &sel, 2, before);
    assert!(!b.is_active(&pay).await, "{IDENTITY}");
    assert!(!b.is_active(&batch).await, "{BATCH_IDENTITY}");
    assert!(b.is_active(&billing).await, "{BILLING_OWNER}'s token");
    check_feed_rule(&b.feed(None).await, &rule, &sel, &ans["issued_before"]);
    check_rule_record(&b, &rule, "team offboarded");

    let r = b
        .admin_post(
            Some(&admin_bearer()),
            "revocations",
            &json!({"owner": "team-nobody", "reason": "typo"}),
        )
        .await;
    assert_error(&r, 400, "invalid_request", "an unknown owner");
    assert!(b.is_active(&billing).await);
}

// ---------------------------------------------------------------------------------------
// Who may revoke
// ---------------------------------------------------------------------------------------

/// A workload cannot revoke another workload's token through RFC 7009.
#[tokio::test(flavor = "multi_thread")]
async fn a_workload_cannot_revoke_another_workloads_token() {
    let b = start();
    let victim = b.issue_payments().await;

    let r = b.revoke_with(Some(&rs256(BILLING_SUBJECT)), &victim).await;
    assert_error(&r, 403, "unauthorized_client", "revoking a foreign token");
    let rec = denied_record(
        &b,
        "not_token_owner",
        Some(&actor_identity(BILLING_IDENTITY)),
        "unauthorized_client",
    );
    assert_eq!(rec["jti"], jti_of(&victim), "{rec}");
    // Even a resource server may not.
    let r = b.revoke_with(Some(&rs256(RS_SUBJECT)), &victim).await;
    assert_error(&r, 403, "unauthorized_client", "a resource server revoking");
    assert!(b.is_active(&victim).await, "the token is still active");
    assert!(revoked_records(&b, |_| true).is_empty(), "nothing revoked");
    assert!(feed_entries(&b.feed(None).await).is_empty());

    // And nobody without credentials.
    let r = b.revoke_with(None, &victim).await;
    assert_error(&r, 401, "invalid_client", "revoking without credentials");
    denied_record(&b, "no_credentials", None, "invalid_client");
    assert!(b.is_active(&victim).await);
}

/// No workload, not even a resource server, reaches any admin endpoint: 403 and a `denied`
/// record with rule `admin_required` naming the caller.
#[tokio::test(flavor = "multi_thread")]
async fn a_workload_cannot_reach_any_admin_endpoint() {
    let b = start();
    let own = b.issue_payments().await;
    let calls: Vec<(&str, Value)> = vec![
        (
            "revocations",
            json!({"jti": jti_of(&own), "reason": "mine"}),
        ),
        (
            "revocations",
            json!({"identity": BILLING_IDENTITY, "reason": "theirs"}),
        ),
        (
            "revocations",
            json!({"owner": BILLING_OWNER, "reason": "theirs"}),
        ),
        (
            "identities/billing-worker/disable",
            json!({"reason": "rival"}),
        ),
        ("identities/payments-api/disable", json!({"reason": "self"})),
        ("identities/payments-api/enable", json!({})),
    ];
    for (who, subject, id) in [
        ("payments", SUBJECT, IDENTITY),
        ("resource server", RS_SUBJECT, RS_IDENTITY),
    ] {
        for (path, body) in &calls {
            let before = b.records_of("denied").len();
            let r = b.admin_post(Some(&rs256(subject)), path, body).await;
            assert_error(
                &r,
                403,
                "access_denied",
                &format!("{who} POST /v1/admin/{path}"),
            );
            let denied = b.records_of("denied");
            assert_eq!(
                denied.len(),
                before + 1,
                "one denied record for {who} {path}"
            );
            let rec = denied.last().unwrap();
            assert_eq!(rec["rule"], "admin_required", "{who} {path}: {rec}");
            assert_eq!(rec["actor"], actor_identity(id), "{rec}");
            assert_eq!(rec["error"], "access_denied", "{rec}");
        }
    }
    // Unauthenticated: 401.
    let r = b
        .admin_post(
            None,
            "revocations",
            &json!({"identity": IDENTITY, "reason": "x"}),
        )
        .await;
    assert_error(&r, 401, "invalid_client", "admin API without credentials");
    // An admin subject with a broken signature is no admin.
    let r = b
        .admin_post(
            Some(&with_bad_signature(&admin_bearer())),
            "revocations",
            &json!({"identity": IDENTITY, "reason": "x"}),
        )
        .await;
    assert_error(&r, 401, "invalid_client", "a tampered admin JWT");

    assert!(b.is_active(&own).await, "nothing was revoked");
    assert!(revoked_records(&b, |_| true).is_empty());
    assert!(b.records_of("identity_disabled").is_empty());
    assert!(b.records_of("identity_enabled").is_empty());
    b.issue(BILLING_SUBJECT, TASK, None).await; // not disabled
}

/// An admin without the `revoke` role cannot revoke, disable or enable.
#[tokio::test(flavor = "multi_thread")]
async fn an_admin_without_the_revoke_role_cannot_revoke() {
    let b = start();
    let token = b.issue_payments().await;
    let actor = format!("admin:{AUDITOR}");
    for (path, body) in [
        ("revocations", json!({"jti": jti_of(&token), "reason": "x"})),
        ("revocations", json!({"identity": IDENTITY, "reason": "x"})),
        ("identities/payments-api/disable", json!({"reason": "x"})),
        ("identities/payments-api/enable", json!({})),
    ] {
        let before = b.records_of("denied").len();
        let r = b.admin_post(Some(&auditor_bearer()), path, &body).await;
        assert_error(&r, 403, "access_denied", &format!("auditor {path}"));
        let denied = b.records_of("denied");
        assert_eq!(denied.len(), before + 1, "a denied record for {path}");
        let rec = denied.last().unwrap();
        assert_eq!(rec["rule"], "role_required", "{path}: {rec}");
        assert_eq!(rec["actor"], actor, "{rec}");
    }
    let r = b.revoke_with(Some(&auditor_bearer()), &token).await;
    assert_error(&r, 403, "unauthorized_client", "auditor via /oauth2/revoke");
    denied_record(&b, "not_token_owner", Some(&actor), "unauthorized_client");

    assert!(b.is_active(&token).await, "nothing was revoked");
    assert!(revoked_records(&b, |_| true).is_empty());
    b.issue_payments().await; // not disabled
}

// ---------------------------------------------------------------------------------------
// The kill switch
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_kill_switch_disables_an_identity_and_enable_lets_it_back() {
    let b = start();
    let old1 = b.issue_payments().await;
    let old2 = b.issue_payments().await;
    let other = b.issue(BILLING_SUBJECT, TASK, None).await;

    let r = b
        .admin_post(
            Some(&admin_bearer()),
            "identities/payments-api/disable",
            &json!({"reason": "incident INC-42"}),
        )
        .await;
    assert_eq!(r.status, 200, "disable: {}", r.text);
    assert_eq!(r.body["identity"], IDENTITY, "{}", r.text);
    assert_eq!(r.body["disabled"], true, "{}", r.text);
    assert_eq!(r.body["live_tokens_revoked"], 2, "{}", r.text);
    let rule = r.body["rule"].as_str().expect("rule").to_owned();

    // No new tokens, with a denied record.
    let reply = b
        .token(&TokenRequest::exchange(&rs256(SUBJECT), TASK))
        .await;
    assert_error(
        &reply,
        403,
        "access_denied",
        "a token for a disabled identity",
    );
    assert!(reply.access_token().is_none());
    let rec = denied_record(&b, "identity_disabled", None, "access_denied");
    assert_eq!(rec["identity"], IDENTITY, "{rec}");
    // Every token issued before is inactive; another identity's is not.
    assert!(!b.is_active(&old1).await, "old token 1");
    assert!(!b.is_active(&old2).await, "old token 2");
    assert!(b.is_active(&other).await, "another identity");
    let feed = b.feed(None).await;
    assert!(
        feed_rule(&feed, &rule)
            .is_some_and(|e| e["rule"]["by"] == "identity" && e["rule"]["identity"] == IDENTITY),
        "the feed lists the kill switch's rule {rule}: {feed}"
    );
    let recs = b.records_of("identity_disabled");
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["actor"], actor_admin(), "{}", recs[0]);
    assert_eq!(recs[0]["identity"], IDENTITY, "{}", recs[0]);
    assert_eq!(recs[0]["reason"], "incident INC-42", "{}", recs[0]);

    // Unknown identities: 404.
    let r = b
        .admin_post(
            Some(&admin_bearer()),
            "identities/no-such-id/disable",
            &json!({"reason": "x"}),
        )
        .await;
    assert_eq!(r.status, 404, "disable an unknown identity: {}", r.text);

    // Enable: new tokens again (right away, in the same second as the rule), old ones stay
    // revoked.
    let r = b
        .admin_post(
            Some(&admin_bearer()),
            "identities/payments-api/enable",
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "enable: {}", r.text);
    let fresh = b.issue_payments().await;
    assert!(b.is_active(&fresh).await, "a token issued after enable");
    assert!(!b.is_active(&old1).await, "old token 1 stays revoked");
    assert!(!b.is_active(&old2).await, "old token 2 stays revoked");
    let recs = b.records_of("identity_enabled");
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["actor"], actor_admin(), "{}", recs[0]);
    assert_eq!(recs[0]["identity"], IDENTITY, "{}", recs[0]);
}

/// After a rule made at second T, the broker mints the covered identity's tokens with
/// `iat = T + 1` so that the rule does not cover them. A second rule made in that same
/// second (here the kill switch) must still cover every token issued before it.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_rule_in_the_same_second_covers_tokens_issued_after_the_first() {
    let b = start();
    // Whatever second each call falls in, every token issued before the kill switch
    // must be inactive after it. Repeat to hit the same-second case at least once.
    for _ in 0..3 {
        next_second().await;
        b.admin_revoke(&json!({"task": TASK, "identity": IDENTITY, "reason": "first"}))
            .await;
        let between = b.issue_payments().await;
        assert!(b.is_active(&between).await, "issued after the first rule");
        let r = b
            .admin_post(
                Some(&admin_bearer()),
                "identities/payments-api/disable",
                &json!({"reason": "second"}),
            )
            .await;
        assert_eq!(r.status, 200, "disable: {}", r.text);
        let iat = insecure_claims(&between)["iat"].as_u64().unwrap();
        assert!(
            !b.is_active(&between).await,
            "a token issued before the kill switch (iat {iat}) is still active"
        );
        let r = b
            .admin_post(
                Some(&admin_bearer()),
                "identities/payments-api/enable",
                &json!({}),
            )
            .await;
        assert_eq!(r.status, 200, "enable: {}", r.text);
    }
}

/// `enable` of an identity that is not registered is a 404, like `disable`.
#[tokio::test(flavor = "multi_thread")]
async fn enabling_an_unknown_identity_is_not_found() {
    let b = start();
    let r = b
        .admin_post(
            Some(&admin_bearer()),
            "identities/no-such-id/enable",
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 404, "enable an unknown identity: {}", r.text);
}

// ---------------------------------------------------------------------------------------
// Restarts
// ---------------------------------------------------------------------------------------

/// Revokes by jti (owner), by rule (identity) and by the kill switch, restarts the broker
/// with `restart`, and checks that all of it still holds and the feed is unchanged.
async fn revocations_survive(restart: impl FnOnce(&mut TestBroker)) {
    let mut b = start();
    let by_jti = b.issue_payments().await;
    let keep = b.issue_payments().await;
    let by_rule = b.issue(BATCH_SUBJECT, READ_TASK, None).await;
    let by_kill = b.issue(BILLING_SUBJECT, TASK, None).await;

    let r = b.revoke_with(Some(&rs256(SUBJECT)), &by_jti).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rule = b
        .admin_revoke(&json!({"identity": BATCH_IDENTITY, "reason": "r"}))
        .await["rule"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = b
        .admin_post(
            Some(&admin_bearer()),
            "identities/billing-worker/disable",
            &json!({"reason": "k"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let kill_rule = r.body["rule"].as_str().unwrap().to_owned();
    let feed_before = b.feed(None).await;
    assert_eq!(feed_entries(&feed_before).len(), 3, "{feed_before}");

    restart(&mut b);
    b.launch().unwrap_or_else(|e| panic!("relaunch: {e}"));

    assert!(!b.is_active(&by_jti).await, "jti revocation after restart");
    assert!(
        !b.is_active(&by_rule).await,
        "rule revocation after restart"
    );
    assert!(!b.is_active(&by_kill).await, "kill switch after restart");
    assert!(b.is_active(&keep).await, "an unrevoked token stays active");
    let reply = b
        .token(&TokenRequest::exchange(&rs256(BILLING_SUBJECT), TASK))
        .await;
    assert_error(
        &reply,
        403,
        "access_denied",
        "the disabled identity after restart",
    );
    assert_eq!(
        b.records_of("denied")
            .iter()
            .filter(|r| r["rule"] == "identity_disabled")
            .count(),
        1
    );

    let feed_after = b.feed(None).await;
    assert_eq!(
        feed_entries(&feed_after),
        feed_entries(&feed_before),
        "the same feed entries, cursors included"
    );
    assert_eq!(feed_after["cursor"], feed_before["cursor"]);
    assert!(feed_jti(&feed_after, &jti_of(&by_jti)).is_some());
    assert!(feed_rule(&feed_after, &rule).is_some());
    assert!(feed_rule(&feed_after, &kill_rule).is_some());

    // A revocation after the restart gets a newer cursor (clients polling with `since`
    // must see it).
    let old_cursor = feed_before["cursor"].as_u64().unwrap();
    let r = b.revoke_with(Some(&rs256(SUBJECT)), &keep).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let delta = b.feed(Some(old_cursor)).await;
    let entries = feed_entries(&delta);
    assert_eq!(entries.len(), 1, "only the new entry: {delta}");
    assert_eq!(entries[0]["jti"], jti_of(&keep), "{delta}");
}

#[tokio::test(flavor = "multi_thread")]
async fn revocations_survive_a_sigterm_restart() {
    revocations_survive(|b| {
        let status = b.stop();
        assert!(status.success(), "graceful stop: {status}\n{}", b.stderr());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revocations_survive_a_sigkill_restart() {
    revocations_survive(|b| {
        let status = b.sigkill();
        assert!(!status.success(), "killed: {status}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// The feed
// ---------------------------------------------------------------------------------------

// A jti entry dropping out once its token's `exp` has passed (a longer-lived one staying)
// is shown on the broker's clock by api::in_process_feed::feed_entries_vanish_after_the_tokens_exp.

/// `since` returns only entries with a larger cursor; the cursor only grows.
#[tokio::test(flavor = "multi_thread")]
async fn feed_since_returns_only_newer_entries() {
    let b = start();
    let first = b.issue_payments().await;
    let second = b.issue_payments().await;

    let empty = b.feed(None).await;
    assert!(feed_entries(&empty).is_empty(), "{empty}");
    let c0 = empty["cursor"].as_u64().expect("cursor");
    assert!(empty["now"].as_u64().is_some(), "{empty}");

    assert_eq!(
        b.revoke_with(Some(&rs256(SUBJECT)), &first).await.status,
        200
    );
    let f1 = b.feed(Some(c0)).await;
    let c1 = f1["cursor"].as_u64().unwrap();
    assert!(c1 > c0, "{f1}");
    assert_eq!(feed_entries(&f1).len(), 1, "{f1}");
    assert_eq!(feed_entries(&f1)[0]["jti"], jti_of(&first));

    assert_eq!(
        b.revoke_with(Some(&rs256(SUBJECT)), &second).await.status,
        200
    );
    let f2 = b.feed(Some(c1)).await;
    let c2 = f2["cursor"].as_u64().unwrap();
    assert!(c2 > c1, "{f2}");
    let e2 = feed_entries(&f2);
    assert_eq!(e2.len(), 1, "only the newer entry: {f2}");
    assert_eq!(e2[0]["jti"], jti_of(&second));
    assert!(e2[0]["cursor"].as_u64().unwrap() > c1);

    let rule = b
        .admin_revoke(&json!({"identity": BILLING_IDENTITY, "reason": "r"}))
        .await["rule"]
        .as_str()
        .unwrap()
        .to_owned();
    let f3 = b.feed(Some(c2)).await;
    let c3 = f3["cursor"].as_u64().unwrap();
    let e3 = feed_entries(&f3);
    assert_eq!(e3.len(), 1, "only the rule: {f3}");
    assert_eq!(e3[0]["rule"]["id"], rule.as_str());
    assert!(e3[0]["cursor"].as_u64().unwrap() > c2);

    let none = b.feed(Some(c3)).await;
    assert!(feed_entries(&none).is_empty(), "nothing newer: {none}");
    assert_eq!(none["cursor"], c3);

    let all = b.feed(None).await;
    let cursors: Vec<u64> = feed_entries(&all)
        .iter()
        .map(|e| e["cursor"].as_u64().unwrap())
        .collect();
    assert_eq!(cursors.len(), 3, "{all}");
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "ascending: {all}");
    assert_eq!(b.feed(Some(0)).await["entries"], all["entries"]);

    // Who may read it: resource servers and admins; not plain workloads, not anonymous.
    let r = b.feed_with(Some(&auditor_bearer()), None).await;
    assert_eq!(r.status, 200, "an admin reads the feed: {}", r.text);
    let r = b.feed_with(Some(&rs256(SUBJECT)), None).await;
    assert_error(&r, 403, "access_denied", "a plain workload reads the feed");
    let r = b.feed_with(None, None).await;
    assert_error(&r, 401, "invalid_client", "an anonymous feed read");
}

// ---------------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------------

fn cli(args: &[&OsStr]) -> CmdOutput {
    CmdOutput::of(&mut broker_command(args))
}

fn cli_json(out: &CmdOutput) -> Value {
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("the CLI prints the JSON answer ({e}): {out}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_revokes_and_flips_the_kill_switch() {
    let b = start();
    let files = tempfile::tempdir().unwrap();
    let admin_file = write_file(files.path(), "admin.jwt", &format!("{}\n", admin_bearer()));
    let workload_file = write_file(files.path(), "workload.jwt", &rs256(SUBJECT));
    let url = b.base_url().to_owned();
    let auth = |f: &Path| -> Vec<std::ffi::OsString> {
        vec![
            "--url".into(),
            url.clone().into(),
            "--bearer-file".into(),
            f.as_os_str().to_owned(),
        ]
    };
    let run = |args: &[&str], f: &Path| -> CmdOutput {
        let mut all: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        all.extend(auth(f));
        let refs: Vec<&OsStr> = all.iter().map(|s| s.as_os_str()).collect();
        cli(&refs)
    };

    // --jti
    let t = b.issue_payments().await;
    let jti = jti_of(&t);
    let out = run(
        &["revoke", "--jti", &jti, "--reason", "cli jti"],
        &admin_file,
    );
    assert!(out.success(), "{out}");
    assert_eq!(cli_json(&out), json!({"revoked": "jti", "jti": jti}));
    assert!(!b.is_active(&t).await);

    // --identity
    let billing = b.issue(BILLING_SUBJECT, TASK, None).await;
    let out = run(
        &[
            "revoke",
            "--identity",
            BILLING_IDENTITY,
            "--reason",
            "cli identity",
        ],
        &admin_file,
    );
    assert!(out.success(), "{out}");
    let ans = cli_json(&out);
    assert_eq!(ans["revoked"], "rule", "{ans}");
    assert_eq!(
        ans["selector"],
        json!({"by": "identity", "identity": BILLING_IDENTITY})
    );
    assert_eq!(ans["live_tokens_covered"], 1, "{ans}");
    assert!(!b.is_active(&billing).await);

    // --task with --identity
    let batch = b.issue(BATCH_SUBJECT, READ_TASK, None).await;
    let out = run(
        &[
            "revoke",
            "--task",
            READ_TASK,
            "--identity",
            BATCH_IDENTITY,
            "--reason",
            "cli task",
        ],
        &admin_file,
    );
    assert!(out.success(), "{out}");
    assert_eq!(
        cli_json(&out)["selector"],
        json!({"by": "task", "task": READ_TASK, "identity": BATCH_IDENTITY})
    );
    assert!(!b.is_active(&batch).await);

    // --owner
    let pay = b.issue_payments().await;
    let out = run(
        &["revoke", "--owner", PAYMENTS_OWNER, "--reason", "cli owner"],
        &admin_file,
    );
    assert!(out.success(), "{out}");
    assert_eq!(
        cli_json(&out)["selector"],
        json!({"by": "owner", "owner": PAYMENTS_OWNER})
    );
    assert!(!b.is_active(&pay).await);

    // Refusals exit 1 and print the error.
    let out = run(
        &["revoke", "--owner", "team-nobody", "--reason", "typo"],
        &admin_file,
    );
    assert_eq!(out.code, Some(1), "unknown owner: {out}");
    assert_eq!(cli_json(&out)["error"], "invalid_request", "{out}");
    let out = run(
        &["revoke", "--identity", IDENTITY, "--reason", "x"],
        &workload_file,
    );
    assert_eq!(out.code, Some(1), "a workload's bearer: {out}");
    assert_eq!(cli_json(&out)["error"], "access_denied", "{out}");

    // identity disable / enable
    // In a new second: a token issued in the same second as the owner rule above carries
    // iat = rule + 1 and escapes a kill switch made in that second too (see
    // a_second_rule_in_the_same_second_covers_tokens_issued_after_the_first).
    next_second().await;
    let before = b.issue_payments().await;
    let out = run(
        &["identity", "disable", IDENTITY, "--reason", "cli kill"],
        &admin_file,
    );
    assert!(out.success(), "{out}");
    let ans = cli_json(&out);
    assert_eq!(ans["identity"], IDENTITY, "{ans}");
    assert_eq!(ans["disabled"], true, "{ans}");
    // The count is of unexpired tokens issued since start, including the two this test
    // already revoked (by jti and by owner): at least the one still live.
    assert!(
        ans["live_tokens_revoked"].as_u64().is_some_and(|n| n >= 1),
        "{ans}"
    );
    let reply = b
        .token(&TokenRequest::exchange(&rs256(SUBJECT), TASK))
        .await;
    assert_error(&reply, 403, "access_denied", "after CLI disable");
    assert!(!b.is_active(&before).await);
    let out = run(&["identity", "enable", IDENTITY], &admin_file);
    assert!(out.success(), "{out}");
    let fresh = b.issue_payments().await;
    assert!(b.is_active(&fresh).await, "issued again after CLI enable");
    assert!(!b.is_active(&before).await, "still revoked");
    let out = run(
        &["identity", "disable", "no-such-id", "--reason", "x"],
        &admin_file,
    );
    assert_eq!(out.code, Some(1), "unknown identity: {out}");

    // Every admin action is in the log with the admin as actor.
    for reason in ["cli jti", "cli identity", "cli task", "cli owner"] {
        let recs = revoked_records(&b, |r| r["reason"] == reason);
        assert_eq!(recs.len(), 1, "{reason}: {recs:?}");
        assert_eq!(recs[0]["actor"], actor_admin());
    }
    assert_eq!(b.records_of("identity_disabled")[0]["actor"], actor_admin());
    assert_eq!(b.records_of("identity_enabled")[0]["actor"], actor_admin());
}
