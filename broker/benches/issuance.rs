//! Benchmarks of the hot pieces of the issuance path (issue 2, `BENCHMARKS.md`); the whole
//! path over loopback is `bench/issuance.sh`.
//!
//! - `policy_evaluate`: one decision for a registry identity with two tasks: the task
//!   found, the scopes narrowed to one, the TTL narrowed, the source address checked
//!   against the task's `source_cidrs`.
//! - `mint`: one access token built and signed (`Minter::mint`), EdDSA (the default) and
//!   ES256.
//! - `audit_append_32`: the group-commit audit log under 32 concurrent appenders on a
//!   2-worker runtime, durable (each batch: one segment `fdatasync` and one anchor write +
//!   `fdatasync`, run at the same time), in a temporary directory on the disk `TMPDIR`
//!   points at. One iteration is one record; criterion reports records/s.
//!
//! Self-contained: keys, policies and the log live in temporary directories.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::audit::event::{AuditEvent, Decision as AuditDecision, EventKind, Evidence};
use broker::audit::{AuditLog, AuditOptions};
use broker::clock::{Clock, SystemClock};
use broker::config::AudienceEntry;
use broker::mint::keys::{self, KeyRing, SigningAlgorithm};
use broker::mint::{MintRequest, Minter};
use broker::policy::{Decision, Request, from_sources};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const REGISTRY: &str = r#"
[identity]
id          = "payments-api"
owner       = "team-payments"
steward     = "alice@example.com"
purpose     = "Charge cards through the ledger API"
environment = "prod"
ticket      = "CHG-1234"
approved_by = "bob@example.com"
expires     = "2099-02-01"

[[identity.match]]
issuer  = "https://kubernetes.default.svc.cluster.local"
subject = "system:serviceaccount:payments:api"

[[task]]
name         = "ledger-write"
audience     = "https://ledger.prod.example.org"
scopes       = ["ledger:read", "ledger:write"]
max_ttl      = "10m"
source_cidrs = ["10.20.0.0/16", "127.0.0.0/8"]

[[task]]
name     = "ledger-read"
audience = "https://ledger.prod.example.org"
scopes   = ["ledger:read"]
max_ttl  = "5m"
"#;

fn policy_evaluate(c: &mut Criterion) {
    let audiences = [AudienceEntry {
        uri: "https://ledger.prod.example.org".into(),
        environment: "prod".into(),
        algorithm: None,
    }];
    let set = from_sources([(Path::new("payments.toml"), REGISTRY)], &audiences, &[]).unwrap();
    let req = Request {
        identity: "payments-api",
        task: "ledger-write",
        audience: None,
        scopes: Some(vec!["ledger:read"]),
        requested_ttl: Some(Duration::from_secs(60)),
        source: IpAddr::V4(Ipv4Addr::new(10, 20, 1, 2)),
        now: SystemClock.now(),
        cert_bound: false,
    };
    // The figure is for an allow that did all its checks.
    assert!(matches!(set.evaluate(&req).decision, Decision::Allow(_)));
    c.bench_function("policy_evaluate", |b| {
        b.iter(|| black_box(set.evaluate(black_box(&req))))
    });
}

fn mint(c: &mut Criterion) {
    let mut group = c.benchmark_group("mint");
    for alg in [SigningAlgorithm::EdDSA, SigningAlgorithm::ES256] {
        let dir = tempfile::tempdir().unwrap();
        keys::generate(dir.path(), alg, SystemClock.unix_secs()).unwrap();
        let minter = Minter::new(
            "https://broker.bench".into(),
            &KeyRing::load_dir(dir.path()).unwrap(),
            Arc::new(SystemClock),
        );
        let scopes = vec!["ledger:read".to_string()];
        let req = MintRequest {
            identity: "payments-api",
            environment: "prod",
            task: "ledger-write",
            audience: "https://ledger.prod.example.org",
            scopes: &scopes,
            ttl_secs: 600,
            cert_thumbprint: None,
            break_glass: None,
            min_iat: 0,
            not_after: None,
            actor: None,
            dpop_jkt: None,
        };
        minter.mint(&req).unwrap();
        group.bench_function(alg.as_str(), |b| {
            b.iter(|| black_box(minter.mint(black_box(&req)).unwrap()))
        });
    }
    group.finish();
}

/// An `issued` record of the size the broker writes.
fn issued(i: u64) -> AuditEvent {
    let mut e = AuditEvent::new(EventKind::Issued);
    e.decision = Some(AuditDecision::Allow);
    e.identity = Some("payments-api".into());
    e.evidence = Some(Evidence {
        kind: "jwt",
        issuer: Some("https://kubernetes.default.svc.cluster.local".into()),
        subject: Some("system:serviceaccount:payments:api".into()),
        ..Evidence::default()
    });
    e.environment = Some("prod".into());
    e.task = Some("ledger-write".into());
    e.audience = Some("https://ledger.prod.example.org".into());
    e.scopes = Some(vec!["ledger:read".into()]);
    e.jti = Some(format!("{i:022}"));
    e.exp = Some(1_900_000_000);
    e.source = Some("10.20.1.2:51515".into());
    e
}

fn audit_append_32(c: &mut Criterion) {
    const APPENDERS: u64 = 32;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let keys_dir = tempfile::tempdir().unwrap();
    keys::generate(
        keys_dir.path(),
        SigningAlgorithm::EdDSA,
        SystemClock.unix_secs(),
    )
    .unwrap();
    let signer = KeyRing::load_dir(keys_dir.path()).unwrap().current();
    let log_dir = tempfile::tempdir().unwrap();
    let log = rt
        .block_on(async {
            AuditLog::open(
                AuditOptions {
                    dir: log_dir.path().to_path_buf(),
                    segment_max_bytes: 64 << 20,
                    replica: None,
                },
                signer,
                Arc::new(SystemClock),
            )
        })
        .unwrap();
    let mut group = c.benchmark_group("audit");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("append_32", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let per_task = iters.div_ceil(APPENDERS);
                let start = Instant::now();
                let tasks: Vec<_> = (0..APPENDERS)
                    .map(|t| {
                        let log = log.clone();
                        tokio::spawn(async move {
                            for i in 0..per_task {
                                log.append(issued(t * 1_000_000_000 + i)).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                // Scaled to `iters` records (the tasks may have written a few more).
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per_task * APPENDERS) as f64)
            })
        })
    });
    group.finish();
    let stats = log.stats();
    eprintln!(
        "audit append_32: {} batches, {:.1} records each; per batch {:.0} µs commit, {:.0} µs log fdatasync, {:.0} µs anchor",
        stats.batches,
        stats.records as f64 / stats.batches.max(1) as f64,
        stats.commit_time.as_micros() as f64 / stats.batches.max(1) as f64,
        stats.log_sync_time.as_micros() as f64 / stats.batches.max(1) as f64,
        stats.head_time.as_micros() as f64 / stats.batches.max(1) as f64,
    );
    rt.block_on(log.close());
}

criterion_group!(benches, policy_evaluate, mint, audit_append_32);
criterion_main!(benches);
