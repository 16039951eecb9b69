//! Concurrency: 1,000 issuances from 32 concurrent keep-alive clients; afterwards every
//! `jti` a client received is in the log exactly once, the log has no `issued` record
//! that no client received, the chain verifies, and the records were group-committed
//! (fewer audit batches than records).

use std::collections::{HashMap, HashSet};

use broker_tests::{
    IssuerKey, Options, SUBJECT, TASK, TestBroker, TokenRequest, http_client, insecure_claims,
    sign, verify_audit, workload_claims,
};
use tokio::task::JoinSet;

const CLIENTS: usize = 32;
const ISSUANCES: usize = 1000;

#[tokio::test(flavor = "multi_thread")]
async fn thousand_issuances_from_32_clients_are_each_logged_once() {
    let mut b = TestBroker::start(Options::default());
    let url = format!("{}/oauth2/token", b.base_url());
    let token = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
    let form = TokenRequest::exchange(&token, TASK).params;

    let mut set = JoinSet::new();
    for c in 0..CLIENTS {
        // Spread 1,000 over 32 clients: the first 1000 % 32 do one more.
        let n = ISSUANCES / CLIENTS + usize::from(c < ISSUANCES % CLIENTS);
        let url = url.clone();
        let form = form.clone();
        set.spawn(async move {
            let client = http_client(); // one keep-alive connection per client
            let mut jtis = Vec::with_capacity(n);
            for i in 0..n {
                let res = client
                    .post(&url)
                    .form(&form)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("client {c} request {i}: {e}"));
                let status = res.status().as_u16();
                let body: serde_json::Value = res.json().await.expect("JSON body");
                assert_eq!(status, 200, "client {c} request {i}: {body}");
                let t = body["access_token"].as_str().expect("access_token");
                jtis.push(insecure_claims(t)["jti"].as_str().unwrap().to_owned());
            }
            jtis
        });
    }
    let mut received = Vec::with_capacity(ISSUANCES);
    while let Some(r) = set.join_next().await {
        received.extend(r.expect("a client task panicked"));
    }
    assert_eq!(received.len(), ISSUANCES);
    let unique: HashSet<&String> = received.iter().collect();
    assert_eq!(unique.len(), ISSUANCES, "every token has its own jti");

    let mut logged: HashMap<String, usize> = HashMap::new();
    for r in b.records_of("issued") {
        *logged
            .entry(
                r["jti"]
                    .as_str()
                    .expect("issued record has a jti")
                    .to_owned(),
            )
            .or_default() += 1;
    }
    for jti in &received {
        assert_eq!(
            logged.get(jti),
            Some(&1),
            "jti {jti} is in the log exactly once"
        );
    }
    assert_eq!(
        logged.len(),
        ISSUANCES,
        "no issued record without a token that a client received"
    );

    // Group commit: concurrent issuances shared syncs (fewer batches than records).
    let page = b.metrics_page().await;
    let counter = |name: &str| -> u64 {
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics:\n{page}"))
    };
    let (batches, records) = (
        counter("broker_audit_batches_total"),
        counter("broker_audit_records_total"),
    );
    assert!(records >= ISSUANCES as u64, "{records} audit records");
    assert!(
        batches < records,
        "32 concurrent clients share syncs: {batches} batches for {records} records"
    );

    assert!(b.stop().success(), "graceful stop: {}", b.stderr());
    let out = verify_audit(&b.audit_dir(), &b.key_dir());
    assert!(out.success(), "the chain verifies: {out}");
}

/// kill -9 under load: after the restart, every token a client received has its `issued`
/// record in the log exactly once, and the log (with a `log_repaired` record if a commit
/// was cut short) verifies. `BROKER_CRASH_ROUNDS` (default 1) repeats kill and restart on
/// the same log; `bench/crash-loop.sh` runs 20 rounds.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_load_loses_no_record_of_a_returned_token() {
    let rounds: usize = std::env::var("BROKER_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut b = TestBroker::start(Options::default());
    let mut all: Vec<String> = Vec::new();
    for round in 1..=rounds {
        all.extend(kill_under_load(&mut b).await);
        // It starts again on the same log, and every returned token is in it exactly once.
        b.launch()
            .unwrap_or_else(|e| panic!("restart {round} after SIGKILL: {e}"));
        let mut logged: HashMap<String, usize> = HashMap::new();
        for r in b.records_of("issued") {
            *logged
                .entry(r["jti"].as_str().expect("jti").to_owned())
                .or_default() += 1;
        }
        for jti in &all {
            assert_eq!(
                logged.get(jti),
                Some(&1),
                "round {round}: returned token {jti} is logged once"
            );
        }
        let out = verify_audit(&b.audit_dir(), &b.key_dir());
        assert!(
            out.success(),
            "round {round}: the chain verifies after the restart: {out}"
        );
        eprintln!(
            "crash round {round}/{rounds}: {} tokens received so far, each logged once; audit verify ok",
            all.len()
        );
    }
    assert!(b.stop().success(), "graceful stop: {}", b.stderr());
    let out = verify_audit(&b.audit_dir(), &b.key_dir());
    assert!(out.success(), "the chain verifies at the end: {out}");
}

/// 16 clients issue until the broker is SIGKILLed (once a few hundred tokens are out);
/// returns every `jti` a client received.
async fn kill_under_load(b: &mut TestBroker) -> Vec<String> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let url = format!("{}/oauth2/token", b.base_url());
    let token = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
    let form = TokenRequest::exchange(&token, TASK).params;
    let received = Arc::new(AtomicUsize::new(0));

    let mut set = JoinSet::new();
    for _ in 0..16 {
        let (url, form, received) = (url.clone(), form.clone(), Arc::clone(&received));
        set.spawn(async move {
            let client = http_client();
            let mut jtis = Vec::new();
            // Until the broker is gone: a transport error or a body cut short.
            loop {
                let Ok(res) = client.post(&url).form(&form).send().await else {
                    break;
                };
                let status = res.status().as_u16();
                let Ok(body) = res.json::<serde_json::Value>().await else {
                    break;
                };
                assert_eq!(status, 200, "{body}");
                let t = body["access_token"].as_str().expect("access_token");
                jtis.push(insecure_claims(t)["jti"].as_str().unwrap().to_owned());
                received.fetch_add(1, Ordering::Relaxed);
            }
            jtis
        });
    }
    // Kill it mid-stream, once a few hundred tokens have gone out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while received.load(Ordering::Relaxed) < 300 {
        assert!(
            std::time::Instant::now() < deadline,
            "no load reached the broker"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let status = b.sigkill();
    assert!(!status.success(), "killed: {status}");
    let mut jtis = Vec::new();
    while let Some(r) = set.join_next().await {
        jtis.extend(r.expect("a client task panicked"));
    }
    assert!(jtis.len() >= 300, "{} tokens received", jtis.len());
    jtis
}
