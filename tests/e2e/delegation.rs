//! RFC 8693 delegation (issue 14) through the real binary: an agent identity presents its
//! own workload JWT as `actor_token` with the subject's as `subject_token`; the policy of
//! the subject's task (`[[task.delegation]]`) decides who may act, with which scopes, for
//! how long and through how long a chain. The token carries `act`; introspection, the SDK
//! verifier and the audit record name both identities.

use broker_client::{Credential, TokenSource, Verifier};
use broker_tests::admin::{revocation_options, revocation_registry};
use broker_tests::policy::{Delegation, Identity, PolicyFile, Task, entries, identity_mut};
use broker_tests::{
    BROKER_ISSUER, IDENTITY, IssuerKey, PROD_LEDGER, Reply, SUBJECT, TASK, TestBroker,
    TokenRequest, insecure_claims, rs256, sign, workload_claims,
};
use serde_json::{Value, json};

/// May act for [`IDENTITY`] on [`TASK`]: `ledger:read` only, 2 minutes, directly.
const AGENT: &str = "build-agent";
const AGENT_SUBJECT: &str = "system:serviceaccount:agents:build";
/// May act for [`IDENTITY`] on [`TASK`] through a chain of two.
const RELAY: &str = "relay-agent";
const RELAY_SUBJECT: &str = "system:serviceaccount:agents:relay";
/// Registered, but named by no delegation rule.
const STRANGER: &str = "stranger-agent";
const STRANGER_SUBJECT: &str = "system:serviceaccount:agents:stranger";

fn agent_file(id: &str, subject: &str) -> PolicyFile {
    PolicyFile::new(
        Identity::prod(
            id,
            "team-agents",
            "dave@example.com",
            "An agent acting for other workloads",
            "CHG-5000",
        )
        .jwt(subject),
    )
    .task(Task::new("own-work", PROD_LEDGER, &["ledger:read"], "5m"))
}

/// The revocation registry; [`TASK`] of [`IDENTITY`] may be delegated to [`AGENT`]
/// (`ledger:read`, 2m) and to [`RELAY`] (chains of two); the three agents registered.
fn registry() -> Vec<PolicyFile> {
    let mut r = revocation_registry();
    identity_mut(&mut r, IDENTITY).task_mut(TASK).delegations = vec![
        Delegation::to(&[AGENT])
            .scopes(&["ledger:read"])
            .max_ttl("2m"),
        Delegation::to(&[RELAY]).max_depth(2),
    ];
    for (id, subject) in [
        (AGENT, AGENT_SUBJECT),
        (RELAY, RELAY_SUBJECT),
        (STRANGER, STRANGER_SUBJECT),
    ] {
        r.push(agent_file(id, subject));
    }
    r
}

fn start() -> TestBroker {
    let mut opts = revocation_options();
    opts.policies = entries(&registry());
    TestBroker::start(opts)
}

/// A delegated request: `subject_token` for the subject, `actor_token` for the actor.
async fn delegated(
    b: &TestBroker,
    subject_jwt: &str,
    actor_jwt: &str,
    extra: &[(&str, &str)],
) -> Reply {
    let mut req = TokenRequest::exchange(subject_jwt, TASK)
        .param("actor_token", actor_jwt)
        .param("actor_token_type", "urn:ietf:params:oauth:token-type:jwt");
    for (k, v) in extra {
        req = req.param(k, v);
    }
    b.token(&req).await
}

/// The last `denied` record.
fn last_denial(b: &TestBroker) -> Value {
    b.records_of("denied").pop().expect("a denied record")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_gets_a_token_for_a_subject_it_may_act_for() {
    let b = start();
    let r = delegated(&b, &rs256(SUBJECT), &rs256(AGENT_SUBJECT), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let token = r.access_token().expect("a token").to_owned();
    let claims = insecure_claims(&token);
    assert_eq!(claims["sub"], IDENTITY, "the token is the subject's");
    assert_eq!(claims["act"], json!({ "sub": AGENT }), "and says who acts");
    assert_eq!(
        claims["scope"], "ledger:read",
        "narrowed to the delegation rule"
    );
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert!(lifetime <= 120, "the rule's max_ttl: {lifetime}s");
    // Verifies with the JWKS; introspection shows `act`.
    b.verify_access_token(&token, PROD_LEDGER).await;
    let intro = b.introspect(&token).await;
    assert_eq!(intro["active"], true);
    assert_eq!(intro["act"], json!({ "sub": AGENT }), "{intro}");
    // The record names both identities and the actor's evidence.
    let rec = b.records_of("issued").pop().expect("an issued record");
    assert_eq!(rec["identity"], IDENTITY);
    assert_eq!(rec["actor"], AGENT);
    assert_eq!(rec["delegation"], json!([AGENT]));
    assert_eq!(rec["evidence"]["subject"], SUBJECT);
    assert_eq!(rec["actor_evidence"]["subject"], AGENT_SUBJECT);

    // The SDK: a TokenSource acting for the subject, and a verifier exposing the chain.
    let subject_jwt = rs256(SUBJECT);
    let agent_jwt = rs256(AGENT_SUBJECT);
    let source = TokenSource::builder(b.base_url(), TASK)
        .credential(Credential::provider(move || Ok(agent_jwt.clone())))
        .acting_for(Credential::provider(move || Ok(subject_jwt.clone())))
        .build()
        .unwrap();
    let t = source.token().await.unwrap();
    let v = Verifier::builder(b.base_url(), PROD_LEDGER)
        .issuer(BROKER_ISSUER)
        .build()
        .unwrap();
    let verified = v.verify(t.expose(), None).await.unwrap();
    assert_eq!(verified.sub, IDENTITY);
    let act = verified.act.expect("an actor");
    assert_eq!(act.chain(), vec![AGENT]);
}

#[tokio::test(flavor = "multi_thread")]
async fn delegation_is_refused_beyond_its_rule() {
    let b = start();

    // An identity no rule names.
    let r = delegated(&b, &rs256(SUBJECT), &rs256(STRANGER_SUBJECT), &[]).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.error(), Some("access_denied"));
    let rec = last_denial(&b);
    assert_eq!(rec["rule"], "delegation_not_allowed");
    assert_eq!(rec["identity"], IDENTITY);
    assert_eq!(rec["actor"], STRANGER);

    // An expired actor token.
    let mut expired = workload_claims(AGENT_SUBJECT);
    expired["iat"] = json!(broker_tests::now_secs() - 3600);
    expired["nbf"] = expired["iat"].clone();
    expired["exp"] = json!(broker_tests::now_secs() - 1800);
    let r = delegated(&b, &rs256(SUBJECT), &sign(IssuerKey::Rsa, &expired), &[]).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.error(), Some("invalid_grant"));
    assert!(r.text.contains("actor_token rejected"), "{}", r.text);
    assert_eq!(last_denial(&b)["identity"], IDENTITY);

    // A scope beyond the delegation rule (the task itself has it).
    let r = delegated(
        &b,
        &rs256(SUBJECT),
        &rs256(AGENT_SUBJECT),
        &[("scope", "ledger:write")],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.error(), Some("invalid_scope"));
    assert_eq!(last_denial(&b)["rule"], "delegation_scope");

    // A lifetime beyond the rule's max_ttl.
    let r = delegated(
        &b,
        &rs256(SUBJECT),
        &rs256(AGENT_SUBJECT),
        &[("requested_ttl", "300")],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(last_denial(&b)["rule"], "delegation_ttl");

    // A chain too deep: the subject token already carries an actor (an earlier
    // delegation by its issuer); the agent's rule allows a direct delegation only.
    let mut chained = workload_claims(SUBJECT);
    chained["act"] = json!({ "sub": "upstream-scheduler" });
    let chained = sign(IssuerKey::Rsa, &chained);
    let r = delegated(&b, &chained, &rs256(AGENT_SUBJECT), &[]).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let rec = last_denial(&b);
    assert_eq!(rec["rule"], "delegation_chain_too_deep");
    assert_eq!(rec["delegation"], json!([AGENT, "upstream-scheduler"]));
    // The relay's rule allows two: the token nests the chain.
    let r = delegated(&b, &chained, &rs256(RELAY_SUBJECT), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let claims = insecure_claims(r.access_token().unwrap());
    assert_eq!(
        claims["act"],
        json!({ "sub": RELAY, "act": { "sub": "upstream-scheduler" } })
    );
    // A malformed act claim in the subject token.
    let mut bad = workload_claims(SUBJECT);
    bad["act"] = json!("upstream");
    let r = delegated(&b, &sign(IssuerKey::Rsa, &bad), &rs256(RELAY_SUBJECT), &[]).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(last_denial(&b)["rule"], "act_claim_malformed");

    // actor_token without its type, and on client_credentials.
    let r = b
        .token(
            &TokenRequest::exchange(&rs256(SUBJECT), TASK)
                .param("actor_token", &rs256(AGENT_SUBJECT)),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        r.text.contains("actor_token_type is required"),
        "{}",
        r.text
    );
}
