//! Memory and size figures of revocation (issue 4, `BENCHMARKS.md`); timings are in the
//! `revocation` criterion bench.
//!
//! Each scenario runs in a fresh child process (this binary, re-executed with
//! `FOOTPRINT_SCENARIO` set) so that its resident-set growth is not hidden by memory an
//! earlier scenario freed. Memory is read from `/proc/self/status` (`VmRSS`, `VmHWM`)
//! before and after; page granularity is 4 KiB, so figures below ~100 KiB are coarse.
//!
//! - `record_100k_600s`: 100,000 `record_issued` calls for one identity, expiries spread
//!   over 600 s (a 10-minute `max_ttl`); then one revocation of all of them
//!   (`live_count` + `commit(RevokeRule)` on a `FileStore`, one `fdatasync`), timed once.
//! - `record_100k_distinct_exp`: the worst case of the counting design: 100,000 tokens
//!   spread over 86,400 distinct expiry seconds (the 24 h lifetime ceiling: no more
//!   buckets can be live at once).
//! - `revoked_jtis_100k`: 100,000 revoked `jti`s held in memory (what introspection
//!   looks up), applied through a store that keeps nothing.
//! - `feed_10k`: the feed body (`GET /v1/revocations`, as the handler builds it) with
//!   10,000 revoked `jti`s: bytes, and the body written to `$FEED_OUT` (default
//!   `<tmp>/broker-feed-10k.json`) for `gzip -c | wc -c`; and the size of one rule entry.
//!
//! Run: `cargo bench -p broker --bench revocation_footprint`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use broker::clock::{Clock, SystemClock};
use broker::revocation::{MAX_TOKEN_LIFETIME_SECS, Revocations};
use broker::store::file::FileStore;
use broker::store::{Event, Selector, StateChange, StateStore, StoreError};
use broker_client::types::AccessTokenClaims;

const SCENARIOS: [&str; 4] = [
    "record_100k_600s",
    "record_100k_distinct_exp",
    "revoked_jtis_100k",
    "feed_10k",
];

/// A store that keeps nothing (so only the in-memory revocation state is measured); it
/// numbers appends as a journal would.
#[derive(Default)]
struct NullStore(std::sync::atomic::AtomicU64);

impl StateStore for NullStore {
    fn append_all(&self, changes: &[StateChange]) -> Result<Vec<u64>, StoreError> {
        let n = changes.len() as u64;
        let first = self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + 1;
        Ok((first..first + n).collect())
    }
    fn load(&self) -> Result<Vec<Event>, StoreError> {
        Ok(Vec::new())
    }
}

/// (VmRSS, VmHWM) in KiB.
fn mem() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn claims(identity: &str, iat: u64, exp: u64) -> AccessTokenClaims {
    AccessTokenClaims {
        iss: "https://broker.bench".into(),
        sub: identity.into(),
        client_id: identity.into(),
        aud: "https://api.dev.example.org".into(),
        scope: "demo:read demo:write".into(),
        jti: "AAAAAAAAAAAAAAAAAAAAAA".into(),
        iat,
        nbf: iat,
        exp,
        task: "demo".into(),
        env: "dev".into(),
        cnf: None,
        bg: None,
        act: None,
    }
}

fn random_jti(rng: &SystemRandom) -> String {
    let mut b = [0u8; 16];
    rng.fill(&mut b).unwrap();
    URL_SAFE_NO_PAD.encode(b)
}

fn report_mem(what: &str, before: (u64, u64), after: (u64, u64)) {
    println!(
        "{what}: VmRSS {} -> {} KiB (+{} KiB), VmHWM {} -> {} KiB (+{} KiB)",
        before.0,
        after.0,
        after.0.saturating_sub(before.0),
        before.1,
        after.1,
        after.1.saturating_sub(before.1)
    );
}

fn record_100k(spread: u64, label: &str) {
    let base = SystemClock.unix_secs();
    let dir = tempfile::tempdir().unwrap();
    let r = Revocations::open(Arc::new(FileStore::open(dir.path()).unwrap())).unwrap();
    let mut c = claims("demo-workload", base, base + 1);
    let m0 = mem();
    let t0 = Instant::now();
    for i in 0..100_000u64 {
        c.exp = base + 1 + i % spread;
        r.record_issued(&c);
    }
    let took = t0.elapsed();
    let m1 = mem();
    println!(
        "{label}: 100000 record_issued calls in {:.2} ms ({:.0} ns/call)",
        took.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e9 / 100_000.0
    );
    report_mem(&format!("{label}: memory of 100000 live tokens"), m0, m1);
    let selector = Selector::Identity {
        identity: "demo-workload".into(),
    };
    let t0 = Instant::now();
    let n = r.live_count(&selector, base, &[]);
    let t_count = t0.elapsed();
    let change = StateChange::RevokeRule {
        id: "rev-footprint".into(),
        selector,
        issued_before: r.rule_cutoff(base),
        until: base + MAX_TOKEN_LIFETIME_SECS,
        at: base,
        actor: "admin:bench".into(),
        reason: "bench".into(),
    };
    let t1 = Instant::now();
    r.commit(&change).unwrap();
    let t_commit = t1.elapsed();
    let m2 = mem();
    println!(
        "{label}: one revocation covering {n} live tokens: live_count {:.1} us + commit (FileStore, fdatasync) {:.3} ms = {:.3} ms (single shot; see the criterion bench for the distribution)",
        t_count.as_secs_f64() * 1e6,
        t_commit.as_secs_f64() * 1e3,
        (t_count + t_commit).as_secs_f64() * 1e3
    );
    report_mem(&format!("{label}: memory added by the revocation"), m1, m2);
    assert_eq!(n, 100_000);
}

fn revoked_jtis_100k() {
    let base = SystemClock.unix_secs();
    let rng = SystemRandom::new();
    let r = Revocations::open(Arc::new(NullStore::default())).unwrap();
    let m0 = mem();
    for _ in 0..100_000 {
        r.commit(&StateChange::RevokeJti {
            jti: random_jti(&rng),
            exp: base + 600,
            at: base,
            actor: "admin:bench".into(),
            reason: "bench".into(),
        })
        .unwrap();
    }
    let m1 = mem();
    report_mem(
        "revoked_jtis_100k: memory of 100000 revoked jtis (strings and table)",
        m0,
        m1,
    );
}

fn feed_body(r: &Revocations, now: u64) -> Vec<u8> {
    // As `GET /v1/revocations` builds it.
    let (entries, cursor) = r.feed(0, now);
    let body = serde_json::json!({
        "cursor": cursor,
        "now": now,
        "entries": serde_json::to_value(&entries).unwrap(),
    });
    serde_json::to_vec(&body).unwrap()
}

fn feed_10k() {
    let base = SystemClock.unix_secs();
    let rng = SystemRandom::new();
    let r = Revocations::open(Arc::new(NullStore::default())).unwrap();
    for _ in 0..10_000 {
        r.commit(&StateChange::RevokeJti {
            jti: random_jti(&rng),
            exp: base + 600,
            at: base,
            actor: "admin:bench".into(),
            reason: "bench".into(),
        })
        .unwrap();
    }
    let body = feed_body(&r, base);
    let out = std::env::var_os("FEED_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("broker-feed-10k.json"));
    std::fs::write(&out, &body).unwrap();
    println!(
        "feed_10k: GET /v1/revocations body with 10000 revoked jtis: {} bytes ({:.1} bytes/entry), written to {}",
        body.len(),
        body.len() as f64 / 10_000.0,
        out.display()
    );
    let one = Revocations::open(Arc::new(NullStore::default())).unwrap();
    one.commit(&StateChange::RevokeRule {
        id: "rev-0123456789abcdef".into(),
        selector: Selector::Identity {
            identity: "demo-workload".into(),
        },
        issued_before: base,
        until: base + MAX_TOKEN_LIFETIME_SECS,
        at: base,
        actor: "admin:bench".into(),
        reason: "bench".into(),
    })
    .unwrap();
    let body = feed_body(&one, base);
    println!(
        "feed_10k: the same body with one identity rule (covering any number of tokens) instead: {} bytes: {}",
        body.len(),
        String::from_utf8_lossy(&body)
    );
}

fn main() {
    if let Ok(s) = std::env::var("FOOTPRINT_SCENARIO") {
        match s.as_str() {
            "record_100k_600s" => record_100k(600, "record_100k_600s"),
            "record_100k_distinct_exp" => record_100k(86_400, "record_100k_distinct_exp"),
            "revoked_jtis_100k" => revoked_jtis_100k(),
            "feed_10k" => feed_10k(),
            other => panic!("unknown scenario {other}"),
        }
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing we need.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for s in SCENARIOS {
        let status = Command::new(&exe)
            .env("FOOTPRINT_SCENARIO", s)
            .status()
            .unwrap();
        assert!(status.success(), "scenario {s} failed");
    }
}
