//! Audit-flood bounds (issue 19): 50,000 invalid token requests from one anonymous source
//! add a bounded number of audit bytes (each refusal past the source's budget is answered
//! 429 and counted into one `denials_summarized` record), while a legitimate client on
//! another address keeps getting tokens.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use broker_tests::{
    IssuerKey, Options, SUBJECT, TASK, TestBroker, TokenRequest, audit_bytes, sign, workload_claims,
};
use tokio::task::JoinSet;

const FLOOD: u64 = 50_000;
const CONNECTIONS: u64 = 16;

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_invalid_requests_adds_bounded_audit_bytes_and_issuance_goes_on() {
    let mut b = TestBroker::start(Options::default());
    let url = format!("{}/oauth2/token", b.base_url());
    let before = audit_bytes(&b.audit_dir()).len();
    let bad = TokenRequest::exchange("x.y.z", TASK).params;
    let refused_429 = Arc::new(AtomicU64::new(0));
    let started = Instant::now();

    // A legitimate client from 127.0.0.2 (another source) issues meanwhile.
    let legit = {
        let url = url.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .local_address(Some("127.0.0.2".parse().unwrap()))
                .build()
                .unwrap();
            let jwt = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
            let form = TokenRequest::exchange(&jwt, TASK).params;
            let (mut ok, mut failed) = (0u64, 0u64);
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                match client.post(&url).form(&form).send().await {
                    Ok(r) if r.status().as_u16() == 200 => ok += 1,
                    _ => failed += 1,
                }
                if ok >= 200 {
                    break;
                }
            }
            (ok, failed)
        })
    };

    let mut set = JoinSet::new();
    for _ in 0..CONNECTIONS {
        let (url, bad, refused_429) = (url.clone(), bad.clone(), Arc::clone(&refused_429));
        set.spawn(async move {
            let client = broker_tests::http_client();
            for _ in 0..FLOOD / CONNECTIONS {
                let r = client
                    .post(&url)
                    .form(&bad)
                    .send()
                    .await
                    .expect("an answer");
                match r.status().as_u16() {
                    400 => {}
                    429 => {
                        assert!(r.headers().get("retry-after").is_some());
                        refused_429.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("unexpected status {other}"),
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("a flooding task panicked");
    }
    let flood_secs = started.elapsed().as_secs_f64();
    let (ok, failed) = legit.await.unwrap();
    assert_eq!(failed, 0, "the legitimate client was never refused");
    assert!(ok >= 200, "the legitimate client kept issuing: {ok}");

    // A graceful stop writes the summaries still pending, so every refusal is recorded
    // or counted. (That a source back within its budget has its next refusal recorded
    // after the summary is shown on the broker's clock by
    // api::in_process_denials::a_source_back_within_its_budget_is_recorded_after_its_summary.)
    let st = b.stop();
    assert!(st.success(), "graceful stop: {st}\n{}", b.stderr());
    let added = audit_bytes(&b.audit_dir()).len() - before;
    let denied = b
        .records_of("denied")
        .into_iter()
        .filter(|r| r["source"] == "127.0.0.1")
        .count() as u64;
    let summarized: u64 = b
        .records_of("denials_summarized")
        .iter()
        .map(|r| r["detail"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        denied + summarized,
        FLOOD,
        "every refusal is recorded or counted"
    );
    assert_eq!(summarized, refused_429.load(Ordering::Relaxed));
    // At most the burst, then 20 per second, one by one (plus the legitimate issuances).
    let bound_records = 100.0 + 20.0 * (flood_secs + 2.0);
    assert!(
        (denied as f64) <= bound_records,
        "{denied} denied records in {flood_secs:.1} s"
    );
    eprintln!(
        "flood: {FLOOD} invalid requests in {flood_secs:.1} s; {denied} recorded one by one, {summarized} counted in summaries; {added} audit bytes added in all ({ok} legitimate tokens issued meanwhile)"
    );
    // Without the budget each refusal was ~375 bytes: 18.75 MB for this flood.
    assert!(
        added < 2_000_000,
        "{added} audit bytes for {FLOOD} refusals"
    );
}
