//! The audit log from outside: `broker audit verify` accepts the log of a real run and
//! finds every edit, deletion, reordering and tail truncation made to a copy of it; a torn
//! tail is repaired at start and says so; and the broker fails closed when it cannot
//! write the log (no start, or 503 with no token).

use std::path::{Path, PathBuf};

use broker_tests::{
    IssuerKey, Options, SUBJECT, TASK, TestBroker, TokenRequest, copy_dir, insecure_claims,
    read_records, segment_files, sign, verify_audit, workload_claims,
};
use tempfile::TempDir;

/// A broker that served a few issuances and denials and was then stopped gracefully.
async fn stopped_broker_with_history(opts: Options, issued: usize) -> TestBroker {
    let mut b = TestBroker::start(opts);
    let token = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
    for i in 0..issued {
        let r = b.token(&TokenRequest::exchange(&token, TASK)).await;
        assert_eq!(r.status, 200, "issuance {i}: {}", r.text);
        if i % 3 == 0 {
            let r = b
                .token(&TokenRequest::exchange(&token, "no-such-task"))
                .await;
            assert_eq!(r.status, 400, "{}", r.text);
        }
    }
    let status = b.stop();
    assert!(
        status.success(),
        "graceful stop exits 0: {status}\n{}",
        b.stderr()
    );
    b
}

/// Verifies and asserts it passes.
fn assert_verifies(audit_dir: &Path, key_dir: &Path) {
    let out = verify_audit(audit_dir, key_dir);
    assert!(out.success(), "the audit log should verify: {out}");
    assert!(out.stdout.starts_with("ok:"), "{out}");
}

/// Verifies and asserts it fails; returns stdout.
fn assert_verify_fails(audit_dir: &Path, key_dir: &Path) -> String {
    let out = verify_audit(audit_dir, key_dir);
    assert_eq!(out.code, Some(1), "tampering must fail verification: {out}");
    assert!(out.stdout.contains("FAILED:"), "{out}");
    out.stdout
}

/// A copy of the stopped broker's audit dir, and its only segment split into lines (each
/// with its `\n`).
fn tamper_copy(b: &TestBroker) -> (TempDir, PathBuf, Vec<String>) {
    assert_verifies(&b.audit_dir(), &b.key_dir());
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&b.audit_dir(), copy.path());
    let segs = segment_files(copy.path());
    assert_eq!(segs.len(), 1, "one segment expected: {segs:?}");
    let seg = segs[0].clone();
    let text = std::fs::read_to_string(&seg).unwrap();
    let lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
    assert!(
        lines.len() >= 8,
        "enough records to tamper with: {}",
        lines.len()
    );
    (copy, seg, lines)
}

fn seg_name(seg: &Path) -> String {
    seg.file_name().unwrap().to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn log_of_a_run_verifies_across_segments() {
    let b = stopped_broker_with_history(
        Options {
            segment_max_bytes: Some(4096),
            ..Options::default()
        },
        20,
    )
    .await;
    let segs = segment_files(&b.audit_dir());
    assert!(segs.len() >= 2, "small segments rotate: {segs:?}");
    assert!(b.audit_dir().join("head.json").is_file(), "a head anchor");
    let records = read_records(&b.audit_dir());
    // seq is dense and increasing, and each record's prev is the previous record's hash.
    for w in records.windows(2) {
        assert_eq!(
            w[1]["seq"].as_u64().unwrap(),
            w[0]["seq"].as_u64().unwrap() + 1,
            "dense seq: {} then {}",
            w[0],
            w[1]
        );
        assert_eq!(
            w[1]["prev"], w[0]["hash"],
            "chained: {} then {}",
            w[0], w[1]
        );
    }
    assert_eq!(
        records.iter().filter(|r| r["event"] == "issued").count(),
        20
    );
    assert!(records.iter().any(|r| r["event"] == "broker_started"));
    assert_verifies(&b.audit_dir(), &b.key_dir());
}

#[tokio::test(flavor = "multi_thread")]
async fn one_changed_byte_fails_verification() {
    let b = stopped_broker_with_history(Options::default(), 6).await;
    let (copy, seg, mut lines) = tamper_copy(&b);
    // Change one digit of the timestamp of line 3: still valid JSON, different content.
    let line = &mut lines[2];
    let ts = line.find("\"ts\"").expect("a ts field");
    let at = ts
        + line[ts..]
            .find(|c: char| c.is_ascii_digit())
            .expect("a digit in ts");
    let old = line.as_bytes()[at];
    let new = if old == b'9' { b'0' } else { old + 1 };
    line.replace_range(at..=at, &(new as char).to_string());
    std::fs::write(&seg, lines.concat()).unwrap();
    let out = assert_verify_fails(copy.path(), &b.key_dir());
    assert!(
        out.contains(&format!("{} line 3", seg_name(&seg))),
        "names the changed record: {out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_deleted_line_fails_verification() {
    let b = stopped_broker_with_history(Options::default(), 6).await;
    let (copy, seg, mut lines) = tamper_copy(&b);
    lines.remove(2);
    std::fs::write(&seg, lines.concat()).unwrap();
    let out = assert_verify_fails(copy.path(), &b.key_dir());
    assert!(
        out.contains(&format!("{} line 3", seg_name(&seg))),
        "names where the chain breaks: {out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_swapped_lines_fail_verification() {
    let b = stopped_broker_with_history(Options::default(), 6).await;
    let (copy, seg, mut lines) = tamper_copy(&b);
    lines.swap(2, 3);
    std::fs::write(&seg, lines.concat()).unwrap();
    let out = assert_verify_fails(copy.path(), &b.key_dir());
    assert!(
        out.contains(&format!("{} line 3", seg_name(&seg))),
        "names where the order breaks: {out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_final_line_fails_verification() {
    let b = stopped_broker_with_history(Options::default(), 6).await;
    let (copy, seg, mut lines) = tamper_copy(&b);
    lines.pop();
    std::fs::write(&seg, lines.concat()).unwrap();
    assert_verify_fails(copy.path(), &b.key_dir());
}

#[tokio::test(flavor = "multi_thread")]
async fn torn_tail_is_repaired_at_start() {
    let mut b = stopped_broker_with_history(Options::default(), 3).await;
    let before = read_records(&b.audit_dir());
    let seg = segment_files(&b.audit_dir()).pop().unwrap();
    let torn = r#"{"seq":999999,"ts":"2026-01-01T00:00:0"#;
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(torn.as_bytes());
    std::fs::write(&seg, &bytes).unwrap();

    if let Err(e) = b.launch() {
        panic!("the broker must repair a torn tail and start: {e}");
    }
    let records = b.records();
    let repaired: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "log_repaired")
        .collect();
    assert_eq!(repaired.len(), 1, "one log_repaired record: {records:?}");
    assert_eq!(
        &records[..before.len()],
        &before[..],
        "complete records before the torn tail are kept as they were"
    );
    let text = std::fs::read_to_string(&seg).unwrap();
    assert!(!text.contains("999999"), "the torn bytes are gone");

    // It serves, and the repaired log verifies.
    let token = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
    let r = b.token(&TokenRequest::exchange(&token, TASK)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(b.stop().success());
    assert_verifies(&b.audit_dir(), &b.key_dir());
    for seg in segment_files(&b.audit_dir()) {
        let text = std::fs::read_to_string(&seg).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} ends with a full line",
            seg.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn uncreatable_audit_dir_stops_the_start() {
    let mut b = TestBroker::prepare(Options {
        audit_dir: "/dev/null/audit".to_owned(),
        ..Options::default()
    });
    let err = match b.launch() {
        Ok(()) => panic!(
            "the broker started without an audit log at {}",
            b.base_url()
        ),
        Err(e) => e,
    };
    let status = err.status.expect("the broker exited");
    assert!(!status.success(), "non-zero exit: {err}");
    assert!(
        err.stderr.contains("/dev/null/audit"),
        "the message names the audit dir: {err}"
    );
}

/// A 503 when the audit record cannot be made durable: `temporarily_unavailable`, no
/// token, and a description that names the audit log as the cause.
fn assert_fails_closed(r: &broker_tests::Reply) {
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.error(), Some("temporarily_unavailable"), "{}", r.text);
    assert!(
        r.access_token().is_none(),
        "a 503 carries no token: {}",
        r.text
    );
    assert!(
        r.body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("audit")),
        "the description says the audit log is the cause: {}",
        r.text
    );
}

/// Every `jti` handed out has exactly one `issued` record on disk.
fn assert_logged_once(b: &TestBroker, jtis: &[String]) {
    let logged: Vec<String> = b
        .records_of("issued")
        .iter()
        .map(|r| r["jti"].as_str().unwrap().to_owned())
        .collect();
    for jti in jtis {
        assert_eq!(
            logged.iter().filter(|l| *l == jti).count(),
            1,
            "jti {jti} was handed out but is not in the log exactly once"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unwritable_audit_log_fails_closed_with_503() {
    // RLIMIT_FSIZE of 64 blocks (32 KiB): the segment soon cannot grow (EFBIG).
    let mut b = TestBroker::start(Options {
        file_size_limit_blocks: Some(64),
        ..Options::default()
    });
    let token = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
    let mut issued_jtis = Vec::new();
    let mut unavailable = 0;
    for i in 0..2000 {
        let r = b.token(&TokenRequest::exchange(&token, TASK)).await;
        match r.status {
            200 => {
                let t = r.access_token().expect("200 carries a token");
                issued_jtis.push(insecure_claims(t)["jti"].as_str().unwrap().to_owned());
            }
            503 => {
                assert_fails_closed(&r);
                unavailable += 1;
                if unavailable >= 5 {
                    break;
                }
            }
            s => panic!("request {i}: unexpected status {s}: {}", r.text),
        }
    }
    assert!(
        unavailable > 0,
        "the log never filled up after {} issuances",
        issued_jtis.len()
    );
    assert!(
        !issued_jtis.is_empty(),
        "some issuances succeeded before the limit"
    );

    // Every token that left the broker has its issued record on disk.
    assert_logged_once(&b, &issued_jtis);
    // A failed batch leaves no partial record behind: what is on disk still verifies.
    let _ = b.stop();
    assert_verifies(&b.audit_dir(), &b.key_dir());
}

#[tokio::test(flavor = "multi_thread")]
async fn unwritable_audit_directory_fails_closed_with_503_and_recovers() {
    use std::os::unix::fs::PermissionsExt as _;

    // Small segments, so that the log soon needs a new file in the directory; no
    // capabilities, so that the directory's mode binds the broker even when tests run as
    // root.
    let mut b = TestBroker::start(Options {
        segment_max_bytes: Some(4096),
        without_capabilities: true,
        ..Options::default()
    });
    let token = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
    let mut issued_jtis = Vec::new();
    let mut take = |r: &broker_tests::Reply| {
        let t = r.access_token().expect("200 carries a token");
        issued_jtis.push(insecure_claims(t)["jti"].as_str().unwrap().to_owned());
    };
    for _ in 0..3 {
        let r = b.token(&TokenRequest::exchange(&token, TASK)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        take(&r);
    }

    let audit = b.audit_dir();
    let mode = |m| std::fs::set_permissions(&audit, std::fs::Permissions::from_mode(m)).unwrap();
    mode(0o555);
    let mut unavailable = 0;
    for i in 0..200 {
        let r = b.token(&TokenRequest::exchange(&token, TASK)).await;
        match r.status {
            200 => take(&r),
            503 => {
                assert_fails_closed(&r);
                unavailable += 1;
                if unavailable >= 3 {
                    break;
                }
            }
            s => panic!("request {i}: unexpected status {s}: {}", r.text),
        }
    }
    assert_eq!(
        unavailable, 3,
        "issuance kept succeeding with a read-only audit directory"
    );
    assert!(
        b.stderr().contains("create segment"),
        "the broker's log names the failed operation: {}",
        b.stderr()
    );

    // Writable again: issuance recovers without a restart.
    mode(0o755);
    let r = b.token(&TokenRequest::exchange(&token, TASK)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    take(&r);

    let _ = b.stop();
    assert_logged_once(&b, &issued_jtis);
    assert_eq!(
        b.records_of("issued").len(),
        issued_jtis.len(),
        "no issued record without a token"
    );
    assert_verifies(&b.audit_dir(), &b.key_dir());
}

/// Issues tokens on a broker with a small `RLIMIT_FSIZE` until its audit log is full
/// (an issuance answers 503).
async fn fill_audit_log(b: &TestBroker) {
    let subject = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
    for _ in 0..4000 {
        if b.token(&TokenRequest::exchange(&subject, TASK))
            .await
            .status
            == 503
        {
            return;
        }
    }
    panic!("the audit log never filled up");
}

/// The broker's state journal (the file store creates it at start).
fn state_journal(b: &TestBroker) -> String {
    std::fs::read_to_string(b.dir().join("state").join("changes.jsonl"))
        .expect("the state journal exists from the start")
}

/// An admin change is recorded first (docs/audit-log.md, "Admin changes"): when its
/// record cannot be made durable, the change is not made and the answer is 503. Shown for
/// a revocation and the kill switch on a broker whose audit log cannot grow.
#[tokio::test(flavor = "multi_thread")]
async fn an_admin_change_whose_record_fails_is_not_made() {
    use broker_tests::admin::{admin_bearer, jti_of, revocation_options};
    let b = TestBroker::start(Options {
        file_size_limit_blocks: Some(64),
        ..revocation_options()
    });
    // A token issued while the log still had room, then fill the log.
    let token = b.issue_payments().await;
    fill_audit_log(&b).await;
    let jti = jti_of(&token);
    let r = b
        .admin_post(
            Some(&admin_bearer()),
            "revocations",
            &serde_json::json!({"jti": jti, "reason": "leaked"}),
        )
        .await;
    assert_fails_closed(&r);
    let r = b
        .admin_post(
            Some(&admin_bearer()),
            "identities/payments-api/disable",
            &serde_json::json!({"reason": "incident"}),
        )
        .await;
    assert_fails_closed(&r);
    // Neither change reached the state journal.
    let journal = state_journal(&b);
    assert!(
        !journal.contains(&jti),
        "the revocation was not made: {journal}"
    );
    assert!(
        !journal.contains("\"disable\""),
        "the kill switch was not set: {journal}"
    );
}

/// A break-glass request is recorded before it is made too: on a full audit log it is
/// refused with 503 and no grant exists.
#[tokio::test(flavor = "multi_thread")]
async fn a_break_glass_request_whose_record_fails_is_not_made() {
    use broker_tests::break_glass::{
        BreakGlassOptions, commander_bearer, ledger_grant_body, write_break_glass_files,
    };
    let bg = BreakGlassOptions::default();
    let mut b = TestBroker::prepare(Options {
        file_size_limit_blocks: Some(64),
        ..bg.options()
    });
    write_break_glass_files(&b.dir().join("policies"), &bg.files);
    b.launch().unwrap_or_else(|e| panic!("{e}"));
    fill_audit_log(&b).await;
    let r = b
        .request_grant(Some(&commander_bearer()), &ledger_grant_body("5m"))
        .await;
    assert_fails_closed(&r);
    let journal = state_journal(&b);
    assert!(
        !journal.contains("requested"),
        "no grant was made: {journal}"
    );
}
