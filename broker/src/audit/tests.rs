//! Audit log tests: round trips across rotations, tamper detection, torn-tail repair,
//! group commit under concurrency, and fail-closed writes.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_lc_rs::digest::{Context, SHA256};

use super::chain::{self, GENESIS};
use super::event::{AuditEvent, Decision, EventKind, Evidence};
use super::segment::segment_name;
use super::{AuditError, AuditLog, AuditOptions, VerifyError, verify};
use crate::clock::{Clock, ManualClock};
use crate::mint::keys::{Jwks, KeyRing, Signer, SigningAlgorithm, generate};

struct Fixture {
    dir: tempfile::TempDir,
    signer: Arc<dyn Signer>,
    jwks: Jwks,
    clock: Arc<ManualClock>,
    max: u64,
}

fn keys(alg: SigningAlgorithm) -> (Arc<dyn Signer>, Jwks) {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), alg, 1).unwrap();
    let ring = KeyRing::load_dir(dir.path()).unwrap();
    (ring.current(), ring.jwks())
}

fn fixture(max: u64) -> Fixture {
    let (signer, jwks) = keys(SigningAlgorithm::EdDSA);
    Fixture {
        dir: tempfile::tempdir().unwrap(),
        signer,
        jwks,
        clock: Arc::new(ManualClock::at_unix(1_700_000_000)),
        max,
    }
}

impl Fixture {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn open(&self) -> Result<AuditLog, AuditError> {
        self.open_at(self.path())
    }

    fn open_at(&self, dir: &Path) -> Result<AuditLog, AuditError> {
        AuditLog::open(
            AuditOptions {
                dir: dir.to_path_buf(),
                segment_max_bytes: self.max,
                replica: None,
            },
            Arc::clone(&self.signer),
            Arc::clone(&self.clock) as Arc<dyn Clock>,
        )
    }

    /// A log whose writer never re-anchors while idle, so that its anchor stays as a busy
    /// broker's is: durable point before the last batch.
    fn open_busy(&self) -> AuditLog {
        let hooks = Arc::new(super::writer::Hooks::default());
        hooks.never_idle.store(true, Ordering::SeqCst);
        AuditLog::open_with_hooks(
            AuditOptions {
                dir: self.path().to_path_buf(),
                segment_max_bytes: self.max,
                replica: None,
            },
            Arc::clone(&self.signer),
            Arc::clone(&self.clock) as Arc<dyn Clock>,
            hooks,
        )
        .unwrap()
    }

    fn verify(&self) -> Result<super::VerifyReport, VerifyError> {
        verify(self.path(), &self.jwks)
    }

    fn segment(&self, index: u32) -> PathBuf {
        self.path().join(segment_name(index))
    }

    /// Appends `n` events one after another, checking the seqs.
    async fn fill(&self, log: &AuditLog, first: u64, n: u64) {
        for i in 0..n {
            let seq = log.append(event(first + i)).await.unwrap();
            assert_eq!(seq, first + i);
            self.clock.advance(Duration::from_millis(1_234));
        }
    }

    /// A closed log of `n` records.
    async fn log_of(&self, n: u64) {
        let log = self.open().unwrap();
        self.fill(&log, 1, n).await;
        log.close().await;
    }
}

fn event(i: u64) -> AuditEvent {
    let mut e = AuditEvent::new(EventKind::Issued);
    e.decision = Some(Decision::Allow);
    e.identity = Some("nhi-ci-deployer".into());
    e.evidence = Some(Evidence {
        kind: "jwt",
        issuer: Some("https://token.actions.example".into()),
        subject: Some(format!("repo:example/app:ref:{i}")),
        ..Evidence::default()
    });
    e.environment = Some("prod".into());
    e.task = Some("deploy".into());
    e.audience = Some("https://api.example".into());
    e.scopes = Some(vec!["deploy:write".into()]);
    e.jti = Some(format!("jti-{i:08}"));
    e.exp = Some(1_700_000_300);
    e.source = Some("10.0.0.7:51515".into());
    e
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(path, text).unwrap();
}

fn segment_count(dir: &Path) -> u32 {
    (1..)
        .take_while(|&i| dir.join(segment_name(i)).exists())
        .count() as u32
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap()
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.path().join(entry.file_name())).unwrap();
    }
    to
}

fn expect_err(result: Result<super::VerifyReport, VerifyError>, needles: &[&str]) -> String {
    let msg = result.expect_err("verify must fail").to_string();
    for n in needles {
        assert!(msg.contains(n), "{msg:?} does not contain {n:?}");
    }
    msg
}

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn round_trip_across_rotations_and_reopen() {
    let fx = fixture(2_000);
    fx.log_of(60).await;
    let report = fx.verify().unwrap();
    assert_eq!(report.records, 60);
    assert_eq!(report.last_seq, 60);
    assert_eq!(report.anchor_seq, 60);
    assert_eq!(report.unanchored, 0);
    assert_eq!(report.anchor_kid, fx.signer.kid());
    let segs = segment_count(fx.path());
    assert!(segs >= 4, "{segs} segments");
    assert_eq!(report.segments, segs as usize);
    for i in 1..=segs {
        let len = fs::metadata(fx.segment(i)).unwrap().len();
        assert!(len <= fx.max, "segment {i} is {len} bytes");
    }

    // The line format, field by field.
    let first = lines(&fx.segment(1)).remove(0);
    assert!(
        first.starts_with(&format!(
            r#"{{"seq":1,"ts":"2023-11-14T22:13:20.000Z","prev":"{}","event":"issued","decision":"allow","#,
            "0".repeat(64)
        )),
        "{first}"
    );
    let v = json(&first);
    assert_eq!(v["jti"], "jti-00000001");
    assert_eq!(v["evidence"]["kind"], "jwt");
    let second = json(&lines(&fx.segment(1))[1]);
    assert_eq!(second["ts"], "2023-11-14T22:13:21.234Z");
    assert_eq!(second["prev"], v["hash"]);

    // The hash rule, implemented independently: SHA-256(prev bytes || line minus hash member).
    let hash = v["hash"].as_str().unwrap();
    let suffix = format!(r#","hash":"{hash}"}}"#);
    let body = format!("{}}}", first.strip_suffix(&suffix).unwrap());
    let mut ctx = Context::new(&SHA256);
    ctx.update(&GENESIS);
    ctx.update(body.as_bytes());
    assert_eq!(chain::to_hex(ctx.finish().as_ref()), hash);

    // The chain continues across segments and restarts.
    let next = json(&lines(&fx.segment(2))[0]);
    let last_of_first = json(lines(&fx.segment(1)).last().unwrap());
    assert_eq!(next["prev"], last_of_first["hash"]);
    let log = fx.open().unwrap();
    fx.fill(&log, 61, 5).await;
    log.close().await;
    assert_eq!(fx.verify().unwrap().last_seq, 65);
}

#[tokio::test]
async fn head_anchor_format() {
    let fx = fixture(1 << 20);
    fx.log_of(3).await;
    let raw = fs::read(fx.path().join("head.json")).unwrap();
    assert_eq!(raw.len(), 512, "fixed-size slot");
    let head: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let last = json(lines(&fx.segment(1)).last().unwrap());
    assert_eq!(head["seq"], 3);
    assert_eq!(head["hash"], last["hash"]);
    assert_eq!(head["segment"], "audit-000001.log");
    assert_eq!(head["kid"], fx.signer.kid());
    assert_eq!(head["alg"], "EdDSA");
    let sig = head["sig"].as_str().unwrap();
    assert!(!sig.contains('=') && !sig.contains('+') && !sig.contains('/'));
}

#[tokio::test]
async fn es256_anchor_verifies_too() {
    let (signer, jwks) = keys(SigningAlgorithm::ES256);
    let fx = Fixture {
        signer,
        jwks,
        ..fixture(1 << 20)
    };
    fx.log_of(3).await;
    assert_eq!(fx.verify().unwrap().records, 3);
}

#[tokio::test]
async fn empty_log_verifies_and_reopens() {
    let fx = fixture(1 << 20);
    let log = fx.open().unwrap();
    log.close().await;
    let report = fx.verify().unwrap();
    assert_eq!(
        (report.records, report.last_seq, report.anchor_seq),
        (0, 0, 0)
    );
    let log = fx.open().unwrap();
    assert_eq!(log.append(event(1)).await.unwrap(), 1);
    log.close().await;
}

#[tokio::test]
async fn tampering_is_found_at_the_right_line() {
    let fx = fixture(5_000);
    fx.log_of(40).await;
    fx.verify().unwrap();
    let segs = segment_count(fx.path());
    assert!(segs >= 3);
    assert!(lines(&fx.segment(1)).len() >= 6);
    let last_seg = segment_name(segs);
    let check =
        |name: &str, tamper: &dyn Fn(&Path), needles: &[&str]| -> (tempfile::TempDir, String) {
            let copy = copy_dir(fx.path());
            tamper(copy.path());
            let msg = expect_err(verify(copy.path(), &fx.jwks), needles);
            eprintln!("{name}: {msg}");
            (copy, msg)
        };

    // One byte changed.
    check(
        "byte",
        &|d| {
            let p = d.join(segment_name(2));
            let mut l = lines(&p);
            l[2] = l[2].replacen("jti-", "jtj-", 1);
            write_lines(&p, &l);
        },
        &["audit-000002.log line 3", "hash mismatch"],
    );
    // One line deleted.
    check(
        "deleted",
        &|d| {
            let p = d.join(segment_name(1));
            let mut l = lines(&p);
            l.remove(3);
            write_lines(&p, &l);
        },
        &["audit-000001.log line 4", "seq gap"],
    );
    // Two lines swapped.
    check(
        "swapped",
        &|d| {
            let p = d.join(segment_name(2));
            let mut l = lines(&p);
            l.swap(1, 2);
            write_lines(&p, &l);
        },
        &["audit-000002.log line 2", "seq gap"],
    );
    // Bad JSON.
    check(
        "json",
        &|d| {
            let p = d.join(segment_name(1));
            let mut l = lines(&p);
            l[1].insert(5, '"');
            write_lines(&p, &l);
        },
        &["audit-000001.log line 2", "bad JSON"],
    );
    // A record rewritten with a correct hash of its own: the next one's prev no longer links.
    check(
        "rehashed",
        &|d| {
            let p = d.join(segment_name(1));
            let mut l = lines(&p);
            let v = json(&l[4]);
            let hash = v["hash"].as_str().unwrap();
            let prev = chain::parse_hex(v["prev"].as_str().unwrap().as_bytes()).unwrap();
            let body = l[4]
                .strip_suffix(&format!(r#","hash":"{hash}"}}"#))
                .unwrap()
                .replace("\"allow\"", "\"deny\"");
            let mut ctx = Context::new(&SHA256);
            ctx.update(&prev);
            ctx.update(format!("{body}}}").as_bytes());
            let new_hash = chain::to_hex(ctx.finish().as_ref());
            l[4] = format!(r#"{body},"hash":"{new_hash}"}}"#);
            write_lines(&p, &l);
        },
        &["audit-000001.log line 6", "prev mismatch"],
    );
    // The final complete line removed: only the anchor can tell.
    let (copy, _) = check(
        "final line",
        &|d| {
            let p = d.join(&last_seg);
            let mut l = lines(&p);
            l.pop();
            write_lines(&p, &l);
        },
        &[
            "head anchor says seq 40 hash",
            "but log ends at 39",
            &last_seg,
        ],
    );
    let err = fx.open_at(copy.path()).unwrap_err().to_string();
    assert!(err.contains("head anchor says seq 40"), "{err}");
    // A middle segment removed.
    let (copy, _) = check(
        "middle segment",
        &|d| fs::remove_file(d.join(segment_name(2))).unwrap(),
        &["segment audit-000002.log is missing"],
    );
    let err = fx.open_at(copy.path()).unwrap_err().to_string();
    assert!(err.contains("audit-000002.log is missing"), "{err}");
    // The last segment removed.
    let (copy, _) = check(
        "last segment",
        &|d| fs::remove_file(d.join(&last_seg)).unwrap(),
        &["head anchor says seq 40", "but log ends at"],
    );
    assert!(fx.open_at(copy.path()).is_err());
    // The first segment removed.
    check(
        "first segment",
        &|d| fs::remove_file(d.join(segment_name(1))).unwrap(),
        &["segment audit-000001.log is missing"],
    );
    // The anchor's signature.
    let (copy, _) = check(
        "signature",
        &|d| {
            let p = d.join("head.json");
            let mut head: serde_json::Value =
                serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
            let sig = head["sig"].as_str().unwrap().to_owned();
            let flipped = if sig.starts_with('A') { "B" } else { "A" };
            head["sig"] = format!("{flipped}{}", &sig[1..]).into();
            fs::write(&p, serde_json::to_vec(&head).unwrap()).unwrap();
        },
        &["bad head anchor signature"],
    );
    let err = fx.open_at(copy.path()).unwrap_err().to_string();
    assert!(err.contains("bad head anchor signature"), "{err}");
    // An anchor moved back to an earlier record cannot be re-signed without the key.
    check(
        "anchor moved",
        &|d| {
            let p = d.join("head.json");
            let mut head: serde_json::Value =
                serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
            let l = lines(&d.join(&last_seg));
            let prev = json(&l[l.len() - 2]);
            head["seq"] = prev["seq"].clone();
            head["hash"] = prev["hash"].clone();
            head["durable_seq"] = prev["seq"].clone();
            head["durable_hash"] = prev["hash"].clone();
            fs::write(&p, serde_json::to_vec(&head).unwrap()).unwrap();
        },
        &["bad head anchor signature"],
    );
    // No anchor at all.
    let (copy, _) = check(
        "no anchor",
        &|d| fs::remove_file(d.join("head.json")).unwrap(),
        &["no head anchor"],
    );
    let err = fx.open_at(copy.path()).unwrap_err().to_string();
    assert!(err.contains("no head anchor"), "{err}");
    // A JWKS without the anchor's key.
    let (_, other) = keys(SigningAlgorithm::EdDSA);
    expect_err(verify(fx.path(), &other), &["unknown key id"]);
}

#[tokio::test]
async fn torn_tail_is_repaired_with_a_log_repaired_record() {
    let fx = fixture(1 << 20);
    fx.log_of(10).await;
    let seg = fx.segment(1);
    let good = fs::metadata(&seg).unwrap().len();
    let torn = br#"{"seq":11,"ts":"2023-11-14T22:1"#;
    let mut bytes = fs::read(&seg).unwrap();
    bytes.extend_from_slice(torn);
    fs::write(&seg, &bytes).unwrap();
    expect_err(fx.verify(), &["audit-000001.log line 11", "incomplete"]);

    let log = fx.open().unwrap();
    assert_eq!(log.append(event(12)).await.unwrap(), 12);
    log.close().await;
    let l = lines(&seg);
    let repaired = json(&l[10]);
    assert_eq!(repaired["seq"], 11);
    assert_eq!(repaired["event"], "log_repaired");
    assert_eq!(repaired["detail"]["segment"], "audit-000001.log");
    assert_eq!(repaired["detail"]["offset"], good);
    assert_eq!(repaired["detail"]["bytes_cut"], torn.len());
    assert_eq!(repaired["detail"]["line"], 11);
    let report = fx.verify().unwrap();
    assert_eq!((report.records, report.anchor_seq), (12, 12));
}

#[tokio::test]
async fn garbage_and_torn_new_segment_tails_are_repaired() {
    // A complete-looking line that is not a record (e.g. zeros from a torn page).
    let fx = fixture(1 << 20);
    fx.log_of(4).await;
    let mut bytes = fs::read(fx.segment(1)).unwrap();
    bytes.extend_from_slice(&[0; 40]);
    bytes.push(b'\n');
    fs::write(fx.segment(1), &bytes).unwrap();
    let log = fx.open().unwrap();
    log.close().await;
    let l = lines(&fx.segment(1));
    assert_eq!(json(&l[4])["event"], "log_repaired");
    assert_eq!(json(&l[4])["detail"]["bytes_cut"], 41);
    fx.verify().unwrap();

    // A crash right after rotation: the new segment holds only a torn write.
    let fx = fixture(1 << 20);
    fx.log_of(4).await;
    fs::write(fx.segment(2), br#"{"seq":5,"ts""#).unwrap();
    let log = fx.open().unwrap();
    assert_eq!(log.append(event(6)).await.unwrap(), 6);
    log.close().await;
    let l = lines(&fx.segment(2));
    assert_eq!(json(&l[0])["seq"], 5);
    assert_eq!(json(&l[0])["detail"]["segment"], "audit-000002.log");
    assert_eq!(json(&l[0])["detail"]["offset"], 0);
    assert_eq!(fx.verify().unwrap().records, 6);
}

#[tokio::test]
async fn damage_before_the_anchor_is_not_repaired() {
    let fx = fixture(1 << 20);
    fx.log_of(5).await;
    let before = fs::read(fx.segment(1)).unwrap();
    let mut l = lines(&fx.segment(1));
    l[4] = l[4].replacen("jti-", "jtX-", 1);
    write_lines(&fx.segment(1), &l);
    let err = fx.open().unwrap_err().to_string();
    assert!(
        err.contains("audit-000001.log line 5") && err.contains("hash mismatch"),
        "{err}"
    );
    // Nothing was cut.
    assert_eq!(fs::read(fx.segment(1)).unwrap().len(), before.len());
}

/// The anchor of a live log: written with the last batch, before that batch's log sync
/// completed, so its durable point is the record before the batch.
fn live_head(fx: &Fixture) -> serde_json::Value {
    serde_json::from_slice(&fs::read(fx.path().join("head.json")).unwrap()).unwrap()
}

#[tokio::test]
async fn the_anchor_names_the_batch_end_and_the_durable_point_before_it() {
    let fx = fixture(1 << 20);
    let log = fx.open_busy();
    fx.fill(&log, 1, 5).await;
    let head = live_head(&fx);
    assert_eq!(
        (head["seq"].as_u64(), head["durable_seq"].as_u64()),
        (Some(5), Some(4))
    );
    let l = lines(&fx.segment(1));
    assert_eq!(head["hash"], json(&l[4])["hash"]);
    assert_eq!(head["durable_hash"], json(&l[3])["hash"]);
    // A clean stop re-anchors with the durable point at the end.
    log.close().await;
    let head = live_head(&fx);
    assert_eq!(
        (head["seq"].as_u64(), head["durable_seq"].as_u64()),
        (Some(5), Some(5))
    );
    fx.verify().unwrap();
}

/// A copy of a busy log of 5 records (one a batch) taken live, with the last record cut:
/// what a crash between batch 5's anchor sync and its log sync leaves (and also what
/// cutting the last batch looks like). Returns the copy and its segment.
async fn interrupted_copy(fx: &Fixture) -> (tempfile::TempDir, PathBuf) {
    let log = fx.open_busy();
    fx.fill(&log, 1, 5).await;
    let crashed = copy_dir(fx.path());
    log.close().await;
    let seg = crashed.path().join(segment_name(1));
    let mut l = lines(&seg);
    l.pop();
    write_lines(&seg, &l);
    (crashed, seg)
}

#[tokio::test]
async fn a_commit_interrupted_between_its_syncs_is_recorded_at_start() {
    // The state a crash after the anchor's sync but before the log's leaves: the log holds
    // the records only up to the anchor's durable point. (Made here from a live copy by
    // cutting batch 5's record, which is also what cutting the last batch looks like.)
    let fx = fixture(1 << 20);
    let (crashed, seg) = interrupted_copy(&fx).await;
    // verify cannot tell this from the batch being cut off, so it fails, saying both.
    expect_err(
        verify(crashed.path(), &fx.jwks),
        &[
            "head anchor says seq 5",
            "log ends at 4",
            "records 5 to 5",
            "stopped while committing",
        ],
    );
    // Start-up records it and carries on; the repaired log verifies.
    let log = fx.open_at(crashed.path()).unwrap();
    assert_eq!(log.append(event(6)).await.unwrap(), 6);
    log.close().await;
    let l = lines(&seg);
    let repaired = json(&l[4]);
    assert_eq!(repaired["seq"], 5);
    assert_eq!(repaired["event"], "log_repaired");
    assert_eq!(repaired["detail"]["unacknowledged"]["first"], 5);
    assert_eq!(repaired["detail"]["unacknowledged"]["last"], 5);
    assert!(repaired["detail"].get("bytes_cut").is_none(), "{repaired}");
    assert!(
        repaired["reason"]
            .as_str()
            .unwrap()
            .contains("none of it was acknowledged, or the log was cut"),
        "{repaired}"
    );
    let report = verify(crashed.path(), &fx.jwks).unwrap();
    assert_eq!((report.records, report.anchor_seq), (6, 6));
    // verify passes but points at the repair: it cannot tell a crash from a cut.
    assert_eq!(report.repairs, 1);
    assert!(report.to_string().contains("1 log_repaired"), "{report}");
}

#[tokio::test]
async fn an_interrupted_commit_with_a_torn_record_is_cut_and_recorded_once() {
    let fx = fixture(1 << 20);
    let log = fx.open_busy();
    fx.fill(&log, 1, 5).await;
    let crashed = copy_dir(fx.path());
    log.close().await;
    // The last record half-written: torn, after the durable point.
    let seg = crashed.path().join(segment_name(1));
    let mut bytes = fs::read(&seg).unwrap();
    let last_line = bytes[..bytes.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    let keep = last_line + (bytes.len() - last_line) / 2;
    bytes.truncate(keep);
    fs::write(&seg, &bytes).unwrap();
    let log = fx.open_at(crashed.path()).unwrap();
    log.close().await;
    let l = lines(&seg);
    assert_eq!(l.len(), 5);
    let repaired = json(&l[4]);
    assert_eq!(repaired["event"], "log_repaired");
    assert_eq!(repaired["detail"]["line"], 5);
    assert_eq!(repaired["detail"]["bytes_cut"], (keep - last_line) as u64);
    assert_eq!(repaired["detail"]["unacknowledged"]["first"], 5);
    verify(crashed.path(), &fx.jwks).unwrap();
}

/// Rewrites `head.json` in `dir` as `fx`'s key would sign it: end `end_seq`, durable point
/// `durable_seq` (hashes taken from the records in segment 1 unless overridden).
fn forge_head(
    fx: &Fixture,
    dir: &Path,
    end_seq: u64,
    durable_seq: u64,
    durable_hash: Option<[u8; 32]>,
) {
    use super::head::{Head, HeadWriter, Point};
    let hash_of = |seq: u64| -> [u8; 32] {
        let l = lines(&dir.join(segment_name(1)));
        let v = json(&l[seq as usize - 1]);
        chain::parse_hex(v["hash"].as_str().unwrap().as_bytes()).unwrap()
    };
    let end_hash = hash_of(end_seq);
    let durable_hash = durable_hash.unwrap_or_else(|| hash_of(durable_seq));
    let seg = segment_name(1);
    let head = Head::sign(
        fx.signer.as_ref(),
        Point {
            seq: end_seq,
            hash: &end_hash,
            segment: &seg,
        },
        Point {
            seq: durable_seq,
            hash: &durable_hash,
            segment: &seg,
        },
    )
    .unwrap();
    HeadWriter::new(dir).write(&head).unwrap();
}

#[tokio::test]
async fn an_interrupted_batch_of_several_records_keeps_those_in_the_log() {
    // A batch of seq 6..=8 whose anchor (durable point 5) reached the disk while only
    // record 6 of the batch did.
    let fx = fixture(1 << 20);
    fx.log_of(8).await;
    forge_head(&fx, fx.path(), 8, 5, None);
    let seg = fx.segment(1);
    let mut l = lines(&seg);
    l.truncate(6);
    write_lines(&seg, &l);
    expect_err(
        fx.verify(),
        &["records 7 to 8 were removed", "stopped while committing"],
    );
    let log = fx.open().unwrap();
    log.close().await;
    let l = lines(&seg);
    assert_eq!(l.len(), 7, "record 6 kept, the repair record after it");
    let repaired = json(&l[6]);
    assert_eq!(repaired["event"], "log_repaired");
    let u = &repaired["detail"]["unacknowledged"];
    assert_eq!(
        (
            u["first"].as_u64(),
            u["last"].as_u64(),
            u["in_log"].as_u64()
        ),
        (Some(6), Some(8), Some(6))
    );
    assert!(
        repaired["reason"]
            .as_str()
            .unwrap()
            .contains("seq 6 to 6 are in the log"),
        "{repaired}"
    );
    assert_eq!(fx.verify().unwrap().records, 7);
}

#[tokio::test]
async fn a_durable_point_with_another_hash_is_not_a_crash() {
    let fx = fixture(1 << 20);
    fx.log_of(8).await;
    forge_head(&fx, fx.path(), 8, 5, Some([9; 32]));
    let mut l = lines(&fx.segment(1));
    l.truncate(6);
    write_lines(&fx.segment(1), &l);
    let needles = ["head anchor says seq 5", "audit-000001.log line 5 has hash"];
    expect_err(fx.verify(), &needles);
    let err = fx.open().unwrap_err().to_string();
    for n in needles {
        assert!(err.contains(n), "{err}");
    }
}

#[tokio::test]
async fn a_failed_anchor_during_start_up_repair_leaves_a_log_the_next_start_repairs() {
    // The repair record takes the seq the stale anchor names; start-up moves the anchor
    // back to the log's end first, so a failure (or a crash) there cannot leave the
    // anchor naming a seq whose record has changed.
    let fx = fixture(1 << 20);
    let (crashed, seg) = interrupted_copy(&fx).await;
    let hooks = Arc::new(super::writer::Hooks::default());
    hooks.fail_heads.store(1, Ordering::SeqCst);
    let opts = AuditOptions {
        dir: crashed.path().to_path_buf(),
        segment_max_bytes: fx.max,
        replica: None,
    };
    let err = AuditLog::open_with_hooks(
        opts,
        Arc::clone(&fx.signer),
        Arc::clone(&fx.clock) as Arc<dyn Clock>,
        hooks,
    )
    .unwrap_err();
    assert!(err.to_string().contains("head anchor"), "{err}");
    assert_eq!(lines(&seg).len(), 4, "nothing appended");
    let log = fx.open_at(crashed.path()).unwrap();
    log.close().await;
    assert_eq!(json(&lines(&seg)[4])["event"], "log_repaired");
    verify(crashed.path(), &fx.jwks).unwrap();
}

#[tokio::test]
async fn an_idle_writer_re_anchors_with_the_durable_point_at_the_end() {
    let fx = fixture(1 << 20);
    let log = fx.open().unwrap();
    fx.fill(&log, 1, 3).await;
    // Right after the batch the durable point is before it; once the writer has been idle
    // for a moment it is at the end.
    let mut head = live_head(&fx);
    for _ in 0..100 {
        if head["durable_seq"] == head["seq"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        head = live_head(&fx);
    }
    assert_eq!(
        (head["seq"].as_u64(), head["durable_seq"].as_u64()),
        (Some(3), Some(3))
    );
    // So cutting the last record of an idle broker's log is refused at start-up.
    let copy = copy_dir(fx.path());
    let seg = copy.path().join(segment_name(1));
    let mut l = lines(&seg);
    l.pop();
    write_lines(&seg, &l);
    assert!(fx.open_at(copy.path()).is_err());
    log.close().await;
}

#[tokio::test]
async fn records_before_the_durable_point_missing_stop_start_up() {
    // Two records gone from a live copy: past the durable point, so not a crash.
    let fx = fixture(1 << 20);
    let log = fx.open().unwrap();
    fx.fill(&log, 1, 5).await;
    let copy = copy_dir(fx.path());
    log.close().await;
    let seg = copy.path().join(segment_name(1));
    let mut l = lines(&seg);
    l.truncate(3);
    write_lines(&seg, &l);
    let needles = [
        "head anchor says seq 5",
        "but log ends at 3",
        "records were removed",
    ];
    expect_err(verify(copy.path(), &fx.jwks), &needles);
    let err = fx.open_at(copy.path()).unwrap_err().to_string();
    for n in needles {
        assert!(err.contains(n), "{err}");
    }
    // After a clean stop the durable point is the end: even the last record is vouched for.
    let copy = copy_dir(fx.path());
    let seg = copy.path().join(segment_name(1));
    let mut l = lines(&seg);
    l.pop();
    write_lines(&seg, &l);
    assert!(fx.open_at(copy.path()).is_err());
}

#[tokio::test]
async fn a_failed_log_sync_takes_the_anchor_back_too() {
    let fx = fixture(1 << 20);
    let log = fx.open().unwrap();
    fx.fill(&log, 1, 3).await;
    log.hooks().fail_syncs.store(1, Ordering::SeqCst);
    assert!(log.append(event(4)).await.is_err());
    // The anchor no longer vouches for the record taken back, and a live copy verifies.
    let head = live_head(&fx);
    assert_eq!(
        (head["seq"].as_u64(), head["durable_seq"].as_u64()),
        (Some(3), Some(3))
    );
    let report = fx.verify().unwrap();
    assert_eq!((report.records, report.anchor_seq), (3, 3));
    assert_eq!(log.append(event(4)).await.unwrap(), 4);
    log.close().await;
    assert_eq!(fx.verify().unwrap().records, 4);
}

#[tokio::test]
async fn a_lagging_anchor_is_accepted() {
    // A crash between a batch's log sync and its anchor write leaves an older anchor.
    let fx = fixture(1 << 20);
    fx.log_of(5).await;
    let old_head = fs::read(fx.path().join("head.json")).unwrap();
    let log = fx.open().unwrap();
    fx.fill(&log, 6, 3).await;
    log.close().await;
    fs::write(fx.path().join("head.json"), &old_head).unwrap();
    let report = fx.verify().unwrap();
    assert_eq!(
        (report.last_seq, report.anchor_seq, report.unanchored),
        (8, 5, 3)
    );
    let log = fx.open().unwrap();
    assert_eq!(log.append(event(9)).await.unwrap(), 9);
    log.close().await;
    assert_eq!(fx.verify().unwrap().unanchored, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_distinct_seqs_and_the_chain_verifies() {
    let fx = fixture(64 * 1024);
    let log = fx.open().unwrap();
    let mut tasks = Vec::new();
    for t in 0..32u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..50 {
                seqs.push(log.append(event(t * 1000 + i)).await.unwrap());
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=1600).collect::<Vec<u64>>());
    let batches = log.hooks().batches.load(Ordering::Relaxed);
    log.close().await;
    eprintln!("1600 appends in {batches} batches");
    assert!(batches < 1600, "group commit batches");
    let report = fx.verify().unwrap();
    assert_eq!((report.records, report.unanchored), (1600, 0));
    assert!(report.segments > 1);
}

#[tokio::test]
async fn close_is_idempotent_and_later_appends_fail() {
    let fx = fixture(1 << 20);
    let log = fx.open().unwrap();
    log.append(event(1)).await.unwrap();
    log.close().await;
    log.close().await;
    assert!(matches!(
        log.append(event(2)).await,
        Err(AuditError::Closed)
    ));
}

/// `close` returns only once the writer thread has let go of everything it holds, so
/// that a process exiting right after it never drops a key on that thread while the
/// process is being torn down (a PKCS#11 module crashes on a session closed then).
#[tokio::test]
async fn close_returns_after_the_writer_has_let_go_of_the_anchor_key() {
    let fx = fixture(1 << 20);
    let (signer, _) = keys(SigningAlgorithm::EdDSA);
    let held = Arc::downgrade(&signer);
    let hooks = Arc::new(super::writer::Hooks::default());
    hooks.slow_drop.store(true, Ordering::SeqCst);
    let log = AuditLog::open_with_hooks(
        AuditOptions {
            dir: fx.path().to_path_buf(),
            segment_max_bytes: fx.max,
            replica: None,
        },
        signer,
        Arc::clone(&fx.clock) as Arc<dyn Clock>,
        hooks,
    )
    .unwrap();
    log.append(event(1)).await.unwrap();
    log.close().await;
    drop(log);
    assert!(
        held.upgrade().is_none(),
        "the writer thread still holds the anchor key after close returned"
    );
}

#[tokio::test]
async fn dropping_a_clone_does_not_stop_the_log() {
    let fx = fixture(1 << 20);
    let log = fx.open().unwrap();
    let pending = tokio::spawn({
        let log = log.clone();
        async move { log.append(event(1)).await }
    });
    drop(log);
    assert_eq!(pending.await.unwrap().unwrap(), 1);
    // The last handle is gone: the writer has stopped and the log reopens cleanly.
    fx.verify().unwrap();
    let log = fx.open().unwrap();
    assert_eq!(log.append(event(2)).await.unwrap(), 2);
    log.close().await;
}

// ---------------------------------------------------------------------------------------
// Fail closed.

fn os_error(e: &AuditError) -> Option<i32> {
    match e {
        AuditError::Write { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

#[tokio::test]
async fn failed_write_acknowledges_nothing_and_the_log_recovers() {
    let fx = fixture(1 << 20);
    let log = fx.open().unwrap();
    fx.fill(&log, 1, 3).await;
    let len = fs::metadata(fx.segment(1)).unwrap().len();

    log.hooks().fail_writes.store(1, Ordering::SeqCst);
    let err = log.append(event(4)).await.unwrap_err();
    assert_eq!(os_error(&err), Some(libc::ENOSPC), "{err}");
    assert!(err.to_string().contains("not acknowledged"), "{err}");
    assert_eq!(
        fs::metadata(fx.segment(1)).unwrap().len(),
        len,
        "half-write undone"
    );

    log.hooks().fail_syncs.store(1, Ordering::SeqCst);
    let err = log.append(event(4)).await.unwrap_err();
    assert_eq!(os_error(&err), Some(libc::EIO), "{err}");
    assert_eq!(
        fs::metadata(fx.segment(1)).unwrap().len(),
        len,
        "unsynced write undone"
    );

    // The condition clears: the chain continues with no gap.
    assert_eq!(log.append(event(4)).await.unwrap(), 4);
    log.close().await;
    let report = fx.verify().unwrap();
    assert_eq!((report.records, report.anchor_seq), (4, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_waiter_of_a_failed_batch_gets_err() {
    let fx = fixture(1 << 20);
    let log = fx.open().unwrap();
    log.hooks().fail_writes.store(3, Ordering::SeqCst);
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..10 {
                if let Ok(seq) = log.append(event(t * 100 + i)).await {
                    acked.push(seq);
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    log.close().await;
    acked.sort_unstable();
    assert!(acked.len() < 160, "three batches failed");
    // Exactly the acknowledged records are in the log, numbered without gaps.
    assert_eq!(acked, (1..=acked.len() as u64).collect::<Vec<_>>());
    assert_eq!(fx.verify().unwrap().records, acked.len() as u64);
}

#[tokio::test]
async fn an_undo_that_fails_marks_the_log_failed_until_restart() {
    let fx = fixture(1 << 20);
    let log = fx.open().unwrap();
    fx.fill(&log, 1, 2).await;
    log.hooks().fail_writes.store(1, Ordering::SeqCst);
    log.hooks().fail_truncates.store(1, Ordering::SeqCst);
    assert!(matches!(
        log.append(event(3)).await,
        Err(AuditError::Write { .. })
    ));
    let err = log.append(event(3)).await.unwrap_err();
    assert!(matches!(err, AuditError::Failed { .. }), "{err}");
    assert!(err.to_string().contains("restart"), "{err}");
    log.close().await;

    // The half-written record is still there; a restart cuts it off and says so.
    expect_err(fx.verify(), &["audit-000001.log line 3"]);
    let log = fx.open().unwrap();
    assert_eq!(log.append(event(4)).await.unwrap(), 4);
    log.close().await;
    assert_eq!(json(&lines(&fx.segment(1))[2])["event"], "log_repaired");
    assert_eq!(fx.verify().unwrap().records, 4);
}

#[tokio::test]
async fn a_failed_anchor_write_fails_the_batch_but_not_the_chain() {
    let fx = fixture(1 << 20);
    let log = fx.open().unwrap();
    fx.fill(&log, 1, 2).await;
    log.hooks().fail_heads.store(1, Ordering::SeqCst);
    let err = log.append(event(3)).await.unwrap_err();
    assert!(err.to_string().contains("head anchor"), "{err}");
    // The record is durable but unacknowledged (like a crash before the answer).
    let report = fx.verify().unwrap();
    assert_eq!((report.last_seq, report.anchor_seq), (3, 2));
    assert_eq!(log.append(event(4)).await.unwrap(), 4);
    log.close().await;
    assert_eq!(fx.verify().unwrap().anchor_seq, 4);
}

#[tokio::test]
async fn a_failed_rotation_fails_the_batch_and_a_later_one_succeeds() {
    let fx = fixture(600);
    let log = fx.open().unwrap();
    fx.fill(&log, 1, 1).await;
    // Something in the way of the next segment: its creation fails for real.
    fs::create_dir(fx.segment(2)).unwrap();
    let err = log.append(event(2)).await.unwrap_err();
    assert!(err.to_string().contains("audit-000002.log"), "{err}");
    fs::remove_dir(fx.segment(2)).unwrap();
    assert_eq!(log.append(event(2)).await.unwrap(), 2);
    log.close().await;
    let report = fx.verify().unwrap();
    assert_eq!((report.records, report.segments), (2, 2));
}

/// Writes past RLIMIT_FSIZE fail with EFBIG (SIGXFSZ ignored, as the broker arranges):
/// an error for the batch, never a crash, and nothing unacknowledged stays in the log.
/// The limit is per process, so this runs `efbig_child` in a child under `ulimit -f`.
#[test]
fn efbig_is_an_error_not_a_crash() {
    let key_dir = tempfile::tempdir().unwrap();
    generate(key_dir.path(), SigningAlgorithm::EdDSA, 1).unwrap();
    let jwks = KeyRing::load_dir(key_dir.path()).unwrap().jwks();
    let log_dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        // dash counts `ulimit -f` in 512-byte blocks, bash in 1024: 40-80 KiB.
        .arg(r#"trap '' XFSZ; ulimit -f 80 && exec "$0" --exact audit::tests::efbig_child --ignored --nocapture --test-threads=1"#)
        .arg(&exe)
        .env("AUDIT_EFBIG_DIR", log_dir.path())
        .env("AUDIT_EFBIG_KEYS", key_dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed: {stdout}\n{stderr}");
    let acked: u64 = stdout
        .lines()
        .find_map(|l| l.split_once("ACKED=").map(|(_, n)| n))
        .unwrap_or_else(|| panic!("no ACKED= in {stdout}\n{stderr}"))
        .trim()
        .parse()
        .unwrap();
    assert!(acked > 10);
    let report = verify(log_dir.path(), &jwks).unwrap();
    assert_eq!((report.records, report.anchor_seq), (acked, acked));
}

#[test]
#[ignore = "run by efbig_is_an_error_not_a_crash in a child process under a file size limit"]
fn efbig_child() {
    let Some(dir) = std::env::var_os("AUDIT_EFBIG_DIR") else {
        return;
    };
    let keys = std::env::var_os("AUDIT_EFBIG_KEYS").unwrap();
    let signer = KeyRing::load_dir(Path::new(&keys)).unwrap().current();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let log = AuditLog::open(
            AuditOptions {
                dir: PathBuf::from(&dir),
                segment_max_bytes: 1 << 30,
                replica: None,
            },
            signer,
            Arc::new(ManualClock::at_unix(1_700_000_000)),
        )
        .unwrap();
        let mut acked = 0;
        let mut err = None;
        for i in 1..=10_000 {
            let mut e = event(i);
            e.reason = Some("x".repeat(300));
            match log.append(e).await {
                Ok(seq) => acked = seq,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let err = err.expect("the file size limit was never hit");
        assert_eq!(os_error(&err), Some(libc::EFBIG), "{err}");
        // Still no crash; whatever is acknowledged is counted.
        if let Ok(seq) = log.append(AuditEvent::new(EventKind::Denied)).await {
            acked = seq;
        }
        log.close().await;
        println!("ACKED={acked}");
    });
}

#[test]
fn events_never_shadow_record_fields() {
    let mut e = event(1);
    e.rule = Some("r".into());
    e.reason = Some("r".into());
    e.error = Some("access_denied".into());
    e.kid = Some("k".into());
    e.approved_by = Some("a".into());
    e.ticket = Some("T-1".into());
    e.actor = Some("admin".into());
    e.detail = Some(serde_json::json!({"seq": 1, "hash": "x"}));
    let v = serde_json::to_value(&e).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    for reserved in ["seq", "ts", "prev", "hash"] {
        assert!(
            !keys.iter().any(|k| *k == reserved),
            "{reserved} in {keys:?}"
        );
    }
}

#[test]
fn the_documented_example_line_follows_the_hash_rule() {
    let doc = include_str!("../../../docs/audit-log.md");
    let line = doc
        .lines()
        .find(|l| l.starts_with(r#"{"seq":1,"ts":"2025-06-01T12:00:00.123Z""#))
        .expect("example line in docs/audit-log.md");
    let genesis = chain::Link {
        seq: 0,
        hash: GENESIS,
    };
    chain::check_line(line.as_bytes(), Some(&genesis)).unwrap();
}

#[test]
fn the_field_and_kind_tables_cover_every_field_and_kind() {
    let doc = include_str!("../../../docs/audit-log.md");
    let mut e = event(1);
    e.rule = Some("r".into());
    e.reason = Some("r".into());
    e.error = Some("e".into());
    e.kid = Some("k".into());
    e.approved_by = Some("a".into());
    e.ticket = Some("t".into());
    e.actor = Some("a".into());
    e.detail = Some(serde_json::json!({}));
    e.evidence = Some(Evidence {
        kind: "mtls",
        issuer: Some("i".into()),
        subject: Some("s".into()),
        spiffe_id: Some("spiffe://x/y".into()),
        cert_sha256: Some("00".into()),
        kid: Some("k".into()),
    });
    let v = serde_json::to_value(&e).unwrap();
    let evidence = v["evidence"].as_object().unwrap().keys();
    for key in v.as_object().unwrap().keys().chain(evidence) {
        assert!(
            doc.contains(&format!("| `{key}` |")),
            "docs/audit-log.md has no table row for field `{key}`"
        );
    }
    use EventKind::*;
    for kind in [
        Issued,
        Denied,
        Revoked,
        BrokerStarted,
        BrokerStopped,
        LogRepaired,
        PolicyReloaded,
        PolicyReloadFailed,
        TlsReloaded,
        TlsReloadFailed,
    ] {
        let name = serde_json::to_value(kind).unwrap();
        let name = name.as_str().unwrap();
        assert!(
            doc.contains(&format!("| `{name}` |")),
            "docs/audit-log.md has no table row for event `{name}`"
        );
    }
}

/// A closed log of `n` records written as `replica`, and the checkpoint chain a
/// checkpointer would have written after each record (seq 1..=n).
async fn replica_log(
    dir: &Path,
    replica: &str,
    n: u64,
    signer: &Arc<dyn Signer>,
    clock_at: u64,
) -> Vec<super::Checkpoint> {
    use super::checkpoint::{Checkpoint, CheckpointPoint};
    let log = AuditLog::open(
        AuditOptions {
            dir: dir.to_path_buf(),
            segment_max_bytes: 1 << 20,
            replica: Some(replica.into()),
        },
        Arc::clone(signer),
        Arc::new(ManualClock::at_unix(clock_at)) as Arc<dyn Clock>,
    )
    .unwrap();
    let mut chain: Vec<Checkpoint> = Vec::new();
    for i in 0..n {
        log.append(event(i)).await.unwrap();
        let (seq, hash) = log.durable_point();
        let prev = chain.last().map(|c| c.sig.clone()).unwrap_or_default();
        chain.push(
            Checkpoint::sign(
                signer.as_ref(),
                CheckpointPoint {
                    replica,
                    n: chain.len() as u64 + 1,
                    seq,
                    hash: &hash,
                    prev: &prev,
                    at: 1,
                },
            )
            .unwrap(),
        );
    }
    log.close().await;
    chain
}

#[tokio::test]
async fn replica_logs_verify_together_against_their_checkpoints() {
    use super::{ReplicasError, verify_replicas};
    // Two replicas with their own keys; the verifier knows both (the shared JWKS).
    let (sa, ja) = keys(SigningAlgorithm::EdDSA);
    let (sb, jb) = keys(SigningAlgorithm::ES256);
    let jwks = Jwks {
        keys: ja.keys.into_iter().chain(jb.keys.clone()).collect(),
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ca = replica_log(a.path(), "a", 4, &sa, 1_700_000_000).await;
    let cb = replica_log(b.path(), "b", 3, &sb, 1_700_000_000).await;
    let dirs = [a.path().to_path_buf(), b.path().to_path_buf()];
    let all: Vec<_> = ca.iter().chain(&cb).cloned().collect();
    let reports = verify_replicas(&dirs, &jwks, &all).unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0].replica.as_deref(), Some("a"));
    assert_eq!(reports[0].checkpoints, 4);
    assert_eq!(reports[1].checkpoints, 3);
    // Each record names its replica (and the hash covers it).
    let text = fs::read_to_string(a.path().join(segment_name(1))).unwrap();
    assert!(
        text.lines().all(|l| l.contains("\"replica\":\"a\"")),
        "{text}"
    );

    // A replica that checkpointed but whose log is not given.
    let err = verify_replicas(&dirs[..1], &jwks, &all).unwrap_err();
    assert!(
        matches!(err, ReplicasError::MissingReplica { ref replica, .. } if replica == "b"),
        "{err}"
    );
    // A checkpoint removed from the middle of a chain.
    let gap: Vec<_> = all
        .iter()
        .filter(|c| !(c.replica == "a" && c.n == 2))
        .cloned()
        .collect();
    let err = verify_replicas(&dirs, &jwks, &gap).unwrap_err();
    assert!(
        matches!(err, ReplicasError::Checkpoint { n: 3, .. }),
        "{err}"
    );
    // A checkpoint whose signature does not verify.
    let mut bad_sig = all.clone();
    bad_sig[1].sig = bad_sig[0].sig.clone();
    bad_sig[2].prev = bad_sig[1].sig.clone();
    let err = verify_replicas(&dirs, &jwks, &bad_sig).unwrap_err();
    assert!(
        matches!(&err, ReplicasError::Checkpoint { n: 2, problem, .. } if problem.contains("bad signature")),
        "{err}"
    );
    // Without replica a's key, its log (anchor) does not verify.
    let err = verify_replicas(
        &dirs,
        &Jwks {
            keys: jb.keys.clone(),
        },
        &all,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ReplicasError::Log {
                source: VerifyError::UnknownKid { .. },
                ..
            }
        ),
        "{err}"
    );
    // Two directories of one replica.
    let err = verify_replicas(&[dirs[0].clone(), dirs[0].clone()], &jwks, &ca).unwrap_err();
    assert!(matches!(err, ReplicasError::Duplicate { .. }), "{err}");

    // Replica a's disk is replaced by a shorter log (a restore from an older copy): its
    // own chain and anchor verify, but the checkpoints vouch for a record it lacks.
    let restored = tempfile::tempdir().unwrap();
    replica_log(restored.path(), "a", 2, &sa, 1_700_000_000).await;
    let dirs2 = [restored.path().to_path_buf(), dirs[1].clone()];
    let err = verify_replicas(&dirs2, &jwks, &all).unwrap_err();
    assert!(
        matches!(
            err,
            ReplicasError::NotInLog {
                seq: 3,
                found: None,
                ..
            }
        ),
        "{err}"
    );
    // Replica a's log replaced by another of the same length, written later (its own
    // chain and anchor are fine): the checkpointed hashes are not in it.
    let forged = tempfile::tempdir().unwrap();
    replica_log(forged.path(), "a", 4, &sa, 1_800_000_000).await;
    let dirs3 = [forged.path().to_path_buf(), dirs[1].clone()];
    let err = verify_replicas(&dirs3, &jwks, &all).unwrap_err();
    assert!(
        matches!(
            err,
            ReplicasError::NotInLog {
                n: 1,
                found: Some(_),
                ..
            }
        ),
        "{err}"
    );
}

/// Appends `first` and, once the writer has taken it as its own batch, `second`, each on
/// its own task; their seqs.
async fn two_batches(log: &AuditLog, first: AuditEvent, second: AuditEvent) -> (u64, u64) {
    let a = tokio::spawn({
        let log = log.clone();
        async move { log.append(first).await }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.hooks().batches.load(Ordering::SeqCst) < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never took the first batch"
        );
        tokio::task::yield_now().await;
    }
    let b = log.append(second).await;
    let a = a.await.unwrap();
    (a.unwrap_or(0), b.unwrap_or(0))
}

fn trace(log: &AuditLog) -> Vec<String> {
    log.hooks().trace.lock().unwrap().clone()
}

fn at(trace: &[String], step: &str) -> usize {
    trace
        .iter()
        .position(|s| s == step)
        .unwrap_or_else(|| panic!("{step} not in {trace:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_answered_after_its_own_syncs_even_when_a_later_sync_finishes_first() {
    let fx = fixture(1 << 20);
    let log = fx.open().unwrap();
    let hooks = log.hooks();
    hooks.tracing.store(true, Ordering::SeqCst);
    // The sync thread holds batch 1's sync until batch 2's is queued, then syncs batch
    // 2 first and batch 1 30 ms later.
    hooks.reorder_syncs.store(1, Ordering::SeqCst);
    let (a, b) = two_batches(&log, event(1), event(2)).await;
    assert_eq!((a, b), (1, 2));
    let t = trace(&log);
    // Tickets 0 and 1 are the two batches' syncs; batch 1 starts at seq 1, batch 2 at 2.
    assert!(at(&t, "synced 1") < at(&t, "synced 0"), "{t:?}");
    // Batch 1 is answered only after its own sync and its own anchor.
    assert!(at(&t, "answered 1") > at(&t, "synced 0"), "{t:?}");
    assert!(at(&t, "answered 1") > at(&t, "anchored 0"), "{t:?}");
    // Batch 2's anchor waits for batch 1 to be durable; its answer for its own sync and
    // anchor, and comes after batch 1's.
    assert!(at(&t, "anchored 1") > at(&t, "synced 0"), "{t:?}");
    assert!(at(&t, "answered 2") > at(&t, "anchored 1"), "{t:?}");
    assert!(at(&t, "answered 2") > at(&t, "answered 1"), "{t:?}");
    log.close().await;
    let report = fx.verify().unwrap();
    assert_eq!((report.records, report.anchor_seq), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_takes_back_the_batch_written_behind_it_too() {
    let fx = fixture(1 << 20);
    let log = fx.open_busy();
    fx.fill(&log, 1, 2).await;
    let hooks = log.hooks();
    hooks.batches.store(0, Ordering::SeqCst);
    // Batch 1's sync is held until batch 2 is written behind it, then fails.
    hooks.pair_syncs.store(1, Ordering::SeqCst);
    hooks.fail_thread_syncs.store(1, Ordering::SeqCst);
    let (a, b) = two_batches(&log, event(3), event(4)).await;
    assert_eq!((a, b), (0, 0), "neither batch is acknowledged");
    // Both are gone from the log and the anchor is back at the durable point.
    let head = live_head(&fx);
    assert_eq!(
        (head["seq"].as_u64(), head["durable_seq"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(fx.verify().unwrap().records, 2);
    // The log goes on from there.
    assert_eq!(log.append(event(3)).await.unwrap(), 3);
    log.close().await;
    let report = fx.verify().unwrap();
    assert_eq!((report.records, report.anchor_seq), (3, 3));
}
