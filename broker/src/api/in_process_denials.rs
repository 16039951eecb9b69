//! The refusal budget on the broker's clock (moved from the e2e flood test, which slept a
//! second for the source to be back within budget): past its burst a source's refusals
//! are answered 429 and counted; once the budget has refilled on the broker's clock, its
//! next refusal is recorded, right after one `denials_summarized` record of the count.

use std::time::Duration;

use axum::http::StatusCode;

use super::in_process::InProcess;
use crate::denial_budget::DenialBudgetConfig;

/// 2098-10-01T00:00:00Z, inside the dev registration.
const START: u64 = 4_070_908_800 - 92 * 86_400;
const PEER: &str = "127.0.0.9:4000";
/// Refusals past the burst in the test.
const OVER: u64 = 7;

fn bad_form() -> [(&'static str, &'static str); 4] {
    [
        (
            "grant_type",
            broker_client::types::GRANT_TYPE_TOKEN_EXCHANGE,
        ),
        ("subject_token_type", broker_client::types::TOKEN_TYPE_JWT),
        ("subject_token", "x.y.z"),
        ("task", crate::dev::DEV_TASK),
    ]
}

#[tokio::test]
async fn a_source_back_within_its_budget_is_recorded_after_its_summary() {
    let b = InProcess::start_at(START, "").await;
    let budget = DenialBudgetConfig::default();
    let burst = budget.burst as u64;
    for i in 0..burst {
        let r = b.token_form(&bad_form(), PEER).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "refusal {i} is recorded");
    }
    for _ in 0..OVER {
        let r = b.token_form(&bad_form(), PEER).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
        assert_eq!(r.body["error"], "temporarily_unavailable");
        assert!(r.headers.get("retry-after").is_some());
    }
    let denied_before = b.records_of("denied").len();
    assert!(b.records_of("denials_summarized").is_empty(), "not yet");

    // Still over budget without the clock moving; a second later it is back.
    let r = b.token_form(&bad_form(), PEER).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    b.clock.advance(Duration::from_secs(1));
    let r = b.token_form(&bad_form(), PEER).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);

    let records = b.records();
    let summary_at = records
        .iter()
        .position(|r| r["event"] == "denials_summarized")
        .expect("a denials_summarized record");
    let summary = &records[summary_at];
    assert_eq!(summary["source"], "127.0.0.9");
    assert_eq!(summary["detail"]["count"], OVER + 1, "{summary:#}");
    let next = &records[summary_at + 1];
    assert_eq!(
        next["event"], "denied",
        "the refusal right after its summary: {next:#}"
    );
    assert_eq!(b.records_of("denied").len(), denied_before + 1);
}
