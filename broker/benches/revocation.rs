//! Benchmarks of revocation and introspection (issue 4, `BENCHMARKS.md`).
//!
//! - `introspect_decision`: what `POST /oauth2/introspect` decides per token, in process:
//!   the EdDSA signature check ([`verify_signature`]), the time check ([`check_time`]) and
//!   the revocation lookup ([`Revocations::revoked`]) against a state of 10 revocation
//!   rules and 100,000 revoked `jti`s. The token is active, so the lookup does all its
//!   work: a hash miss on the `jti` list and every rule evaluated (each rule's
//!   `issued_before` is after the token's `iat`, none covers it). The parts are measured
//!   alone as well.
//! - `introspect_router`: the whole endpoint in process: the axum router of a started
//!   broker (`broker::start`, dev-style config, the same 10 rules + 100,000 `jti`s replayed
//!   from its state journal) driven with `tower::ServiceExt::oneshot`, so caller
//!   authentication (bearer workload JWT, verified-JWT cache), form parsing and the JSON
//!   answer are in, the TCP stack is not. `bench/revocation.sh` measures it over loopback.
//! - `record_issued`: the per-issuance bookkeeping that lets a revocation count the live
//!   tokens it covers; one call, and 100,000 calls (one identity, expiries spread over
//!   the 600 seconds of a 10-minute `max_ttl`).
//! - `revoke_identity_100k`: revoking every live token of one identity that holds 100,000
//!   of them: `live_count` + `commit(RevokeRule)` on a [`FileStore`] (one `fdatasync`), as
//!   the admin handler does; the same on a [`MemoryStore`] to show the in-memory part; and
//!   the whole `POST /v1/admin/revocations` call through the router (adds admin
//!   authentication and the durable audit record).
//! - `feed_10k`: building and serialising the revocation feed body with 10,000 revoked
//!   `jti`s (its size, and the memory figures, come from the `revocation_footprint`
//!   bench).
//!
//! Self-contained: keys, config and state are created in temporary directories.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use broker::clock::{Clock, SystemClock};
use broker::mint::keys::{self, KeyRing, SigningAlgorithm};
use broker::mint::verify::{check_time, verify_signature};
use broker::mint::{MintRequest, Minter};
use broker::revocation::{MAX_TOKEN_LIFETIME_SECS, Revocations};
use broker::store::file::FileStore;
use broker::store::memory::MemoryStore;
use broker::store::{Selector, StateChange, StateStore};
use broker_client::types::AccessTokenClaims;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::BodyExt;
use tower::ServiceExt;

const ISSUER: &str = "https://broker.bench";
const IDENTITY: &str = "demo-workload";
const TASK: &str = "demo";
const OWNER: &str = "team-dev";
const REVOKED_JTIS: usize = 100_000;
const RULES: usize = 10;
const LIVE_TOKENS: u64 = 100_000;
/// Expiries of live tokens are spread over this many seconds (a 10-minute `max_ttl`).
const EXP_SPREAD_SECS: u64 = 600;
/// Same leeway as the introspection handler.
const NBF_LEEWAY_SECS: u64 = 5;

const RS_SUBJECT: &str = "system:serviceaccount:dev:rs";
const ADMIN_SUBJECT: &str = "system:serviceaccount:dev:admin";

fn now() -> u64 {
    SystemClock.unix_secs()
}

/// A broker-format `jti`: 128 random bits, base64url.
fn random_jti(rng: &SystemRandom) -> String {
    let mut b = [0u8; 16];
    rng.fill(&mut b).unwrap();
    URL_SAFE_NO_PAD.encode(b)
}

/// 10 rules (identity, task, owner and grant selectors, none covering [`IDENTITY`]'s
/// token, all made after it was issued) and 100,000 revoked `jti`s, in journal order.
fn seed_changes(now: u64) -> Vec<StateChange> {
    let rng = SystemRandom::new();
    let mut out = Vec::with_capacity(RULES + REVOKED_JTIS);
    for i in 0..RULES {
        let selector = match i % 4 {
            0 => Selector::Identity {
                identity: format!("other-identity-{i}"),
            },
            1 => Selector::Task {
                task: format!("other-task-{i}"),
                identity: None,
            },
            2 => Selector::Owner {
                owner: format!("other-owner-{i}"),
            },
            _ => Selector::Grant {
                grant: format!("bg-{i}"),
            },
        };
        out.push(StateChange::RevokeRule {
            id: format!("rev-seed-{i}"),
            selector,
            issued_before: now + 3600,
            until: now + MAX_TOKEN_LIFETIME_SECS,
            at: now,
            actor: "admin:bench".into(),
            reason: "bench seed".into(),
        });
    }
    for _ in 0..REVOKED_JTIS {
        out.push(StateChange::RevokeJti {
            jti: random_jti(&rng),
            exp: now + 600,
            at: now,
            actor: "admin:bench".into(),
            reason: "bench seed".into(),
        });
    }
    out
}

fn seeded_revocations(now: u64) -> Revocations {
    let store = MemoryStore::default();
    for c in seed_changes(now) {
        store.append(&c).unwrap();
    }
    Revocations::open(Arc::new(store)).unwrap()
}

fn claims(identity: &str, iat: u64, exp: u64) -> AccessTokenClaims {
    AccessTokenClaims {
        iss: ISSUER.into(),
        sub: identity.into(),
        client_id: identity.into(),
        aud: "https://api.dev.example.org".into(),
        scope: "demo:read demo:write".into(),
        jti: "AAAAAAAAAAAAAAAAAAAAAA".into(),
        iat,
        nbf: iat,
        exp,
        task: TASK.into(),
        env: "dev".into(),
        cnf: None,
        bg: None,
        act: None,
    }
}

fn mint_request(scopes: &[String]) -> MintRequest<'_> {
    MintRequest {
        identity: IDENTITY,
        environment: "dev",
        task: TASK,
        audience: "https://api.dev.example.org",
        scopes,
        ttl_secs: 600,
        cert_thumbprint: None,
        break_glass: None,
        min_iat: 0,
        not_after: None,
        actor: None,
        dpop_jkt: None,
    }
}

fn introspect_decision(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    keys::generate(dir.path(), SigningAlgorithm::EdDSA, now()).unwrap();
    let minter = Minter::new(
        ISSUER.into(),
        &KeyRing::load_dir(dir.path()).unwrap(),
        Arc::new(SystemClock),
    );
    let scopes = vec!["demo:read".to_string(), "demo:write".to_string()];
    let token = minter.mint(&mint_request(&scopes)).unwrap();
    let token = token.expose_token().to_owned();
    let revocations = seeded_revocations(now());
    let owners: HashMap<String, String> = [(IDENTITY.to_string(), OWNER.to_string())].into();
    let owner_of = |id: &str| owners.get(id).cloned();

    // The answer must be "active" for the figure to mean what it says.
    let c0 = verify_signature(&token, &minter.jwks(), ISSUER).unwrap();
    check_time(&c0, now(), NBF_LEEWAY_SECS).unwrap();
    assert!(revocations.revoked(&c0, &owner_of).is_none());

    let mut g = c.benchmark_group("introspect_decision");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify+time+revocation_lookup", |b| {
        b.iter(|| {
            // As the handler does: the JWKS of this replica's and its peers' keys.
            let keys = minter.jwks();
            let claims = verify_signature(black_box(&token), &keys, ISSUER).unwrap();
            check_time(&claims, SystemClock.unix_secs(), NBF_LEEWAY_SECS).unwrap();
            black_box(revocations.revoked(&claims, &owner_of))
        });
    });
    g.bench_function("verify_signature_only", |b| {
        let keys = minter.jwks();
        b.iter(|| black_box(verify_signature(black_box(&token), &keys, ISSUER).unwrap()));
    });
    g.bench_function("revocation_lookup_only", |b| {
        b.iter(|| black_box(revocations.revoked(black_box(&c0), &owner_of)));
    });
    g.finish();
}

/// A dev-style broker directory: keys, a dev workload-JWT issuer, the demo workload, a
/// resource server allowed to introspect and an admin with the `revoke` role. Returns the
/// config path.
fn broker_dir(dir: &Path, seed: &[StateChange]) -> std::path::PathBuf {
    let config = broker::dev::prepare(
        dir,
        "127.0.0.1:0",
        broker::mint::keys::SigningAlgorithm::ES256,
    )
    .unwrap();
    std::fs::write(
        dir.join("policies/rs.toml"),
        format!(
            r#"[identity]
id          = "bench-rs"
owner       = "team-rs"
steward     = "rs@example.com"
purpose     = "Introspects tokens (bench)"
environment = "dev"
ticket      = "BENCH-1"
expires     = "2099-01-01"
may_introspect = true

[[identity.match]]
issuer  = "{iss}"
subject = "{RS_SUBJECT}"

[[task]]
name         = "read"
audience     = "https://api.dev.example.org"
scopes       = ["demo:read"]
max_ttl      = "10m"
"#,
            iss = broker::dev::DEV_ISSUER
        ),
    )
    .unwrap();
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(&format!(
        r#"
[state]
dir = "state"

[[admin]]
name    = "bench-admin"
roles   = ["revoke"]
issuer  = "{iss}"
subject = "{ADMIN_SUBJECT}"
"#,
        iss = broker::dev::DEV_ISSUER
    ));
    std::fs::write(&config, toml).unwrap();
    // The journal the broker replays at start (what FileStore writes, one JSON a line).
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut journal = Vec::new();
    for c in seed {
        serde_json::to_writer(&mut journal, c).unwrap();
        journal.push(b'\n');
    }
    std::fs::write(state.join("changes.jsonl"), journal).unwrap();
    config
}

async fn started(dir: &Path, seed: &[StateChange]) -> broker::Broker {
    let path = broker_dir(dir, seed);
    let config = broker::config::Config::load(&path).unwrap();
    broker::start(&config).await.unwrap()
}

fn post(uri: &str, bearer: &str, content_type: &str, body: String) -> Request<Body> {
    let mut req = Request::post(uri)
        .header(header::AUTHORIZATION, format!("Bearer {bearer}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    req
}

async fn call(router: &axum::Router, req: Request<Body>) -> (StatusCode, axum::body::Bytes) {
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

fn introspect_router(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let seed = seed_changes(now());
    let b = rt.block_on(started(dir.path(), &seed));
    let router = b.router();
    let scopes = vec!["demo:read".to_string(), "demo:write".to_string()];
    let token = b.state().minter.mint(&mint_request(&scopes)).unwrap();
    let form = format!("token={}", token.expose_token());
    let rs_jwt = broker::dev::workload_token(dir.path(), RS_SUBJECT, 3600).unwrap();
    let req = || {
        post(
            "/oauth2/introspect",
            &rs_jwt,
            "application/x-www-form-urlencoded",
            form.clone(),
        )
    };
    let (status, body) = rt.block_on(call(&router, req()));
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["active"], true, "{v}");

    let mut g = c.benchmark_group("introspect_router");
    g.throughput(Throughput::Elements(1));
    g.bench_function("post_oauth2_introspect_active", |bch| {
        bch.to_async(&rt).iter(|| async {
            let (status, body) = call(&router, req()).await;
            debug_assert_eq!(status, StatusCode::OK);
            black_box(body)
        });
    });
    g.finish();
    drop(router);
    drop(b);
}

fn record_issued(c: &mut Criterion) {
    let base = now();
    let mut g = c.benchmark_group("record_issued");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_call", |b| {
        let r = Revocations::open(Arc::new(MemoryStore::default())).unwrap();
        let mut claims = claims(IDENTITY, base, base + 1);
        let mut i = 0u64;
        b.iter(|| {
            claims.exp = base + 1 + i % EXP_SPREAD_SECS;
            i += 1;
            r.record_issued(black_box(&claims));
        });
    });
    g.throughput(Throughput::Elements(LIVE_TOKENS));
    g.sample_size(20);
    g.bench_function("100k_calls", |b| {
        b.iter_batched(
            || {
                (
                    Revocations::open(Arc::new(MemoryStore::default())).unwrap(),
                    claims(IDENTITY, base, base + 1),
                )
            },
            |(r, mut claims)| {
                for i in 0..LIVE_TOKENS {
                    claims.exp = base + 1 + i % EXP_SPREAD_SECS;
                    r.record_issued(&claims);
                }
                r
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

/// A [`Revocations`] on `store` counting 100,000 live tokens of [`IDENTITY`], plus a few
/// other identities' tokens.
fn with_live_tokens(store: Arc<dyn StateStore>, base: u64) -> Revocations {
    let r = Revocations::open(store).unwrap();
    let mut c = claims(IDENTITY, base, base + 1);
    for i in 0..LIVE_TOKENS {
        c.exp = base + 1 + i % EXP_SPREAD_SECS;
        r.record_issued(&c);
    }
    for other in 0..10 {
        let mut c = claims(&format!("other-identity-{other}"), base, base + 1);
        for i in 0..1000 {
            c.exp = base + 1 + i % EXP_SPREAD_SECS;
            r.record_issued(&c);
        }
    }
    r
}

fn revoke_rule(r: &Revocations, id: String, now: u64) -> StateChange {
    StateChange::RevokeRule {
        id,
        selector: Selector::Identity {
            identity: IDENTITY.into(),
        },
        issued_before: r.rule_cutoff(now),
        until: now + MAX_TOKEN_LIFETIME_SECS,
        at: now,
        actor: "admin:bench".into(),
        reason: "bench: revoke every live token of the identity".into(),
    }
}

fn revoke_identity_100k(c: &mut Criterion) {
    let base = now();
    let selector = Selector::Identity {
        identity: IDENTITY.into(),
    };
    let mut g = c.benchmark_group("revoke_identity_100k");
    g.measurement_time(Duration::from_secs(10));

    let dir = tempfile::tempdir().unwrap();
    let file = with_live_tokens(Arc::new(FileStore::open(dir.path()).unwrap()), base);
    assert_eq!(file.live_count(&selector, base, &[]), LIVE_TOKENS);
    let mut i = 0u64;
    g.bench_function("live_count+commit_filestore_fdatasync", |b| {
        b.iter(|| {
            let n = file.live_count(&selector, base, &[]);
            i += 1;
            file.commit(&revoke_rule(&file, format!("rev-{i}"), base))
                .unwrap();
            black_box(n)
        });
    });
    let mem = with_live_tokens(Arc::new(MemoryStore::default()), base);
    g.bench_function("live_count+commit_memorystore", |b| {
        b.iter(|| {
            let n = mem.live_count(&selector, base, &[]);
            i += 1;
            mem.commit(&revoke_rule(&mem, format!("rev-{i}"), base))
                .unwrap();
            black_box(n)
        });
    });
    g.bench_function("live_count_only", |b| {
        b.iter(|| black_box(mem.live_count(black_box(&selector), base, &[])));
    });

    // The whole admin call, in process: a broker counting 100,000 live tokens of the
    // identity; every iteration adds one more rule (each answer still covers 100,000).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bdir = tempfile::tempdir().unwrap();
    let b = rt.block_on(started(bdir.path(), &[]));
    let st = b.state();
    // The handler reads the real clock: keep every token live for the whole measurement
    // (expiries 2 to 12 minutes from now).
    let base = now();
    let mut cl = claims(IDENTITY, base, base + 1);
    for i in 0..LIVE_TOKENS {
        cl.exp = base + 120 + i % EXP_SPREAD_SECS;
        st.revocations.record_issued(&cl);
    }
    let router = b.router();
    let admin_jwt = broker::dev::workload_token(bdir.path(), ADMIN_SUBJECT, 3600).unwrap();
    let body = serde_json::json!({ "identity": IDENTITY, "reason": "bench" }).to_string();
    let req = || {
        post(
            "/v1/admin/revocations",
            &admin_jwt,
            "application/json",
            body.clone(),
        )
    };
    let (status, answer) = rt.block_on(call(&router, req()));
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let v: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert!(
        v["live_tokens_covered"].as_u64().unwrap() >= LIVE_TOKENS,
        "{v}"
    );
    g.bench_function("post_admin_revocations_router", |bch| {
        bch.to_async(&rt).iter(|| async {
            let (status, body) = call(&router, req()).await;
            debug_assert_eq!(status, StatusCode::OK);
            black_box(body)
        });
    });
    g.finish();
}

fn feed_10k(c: &mut Criterion) {
    let base = now();
    let r = Revocations::open(Arc::new(MemoryStore::default())).unwrap();
    let rng = SystemRandom::new();
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
    let mut g = c.benchmark_group("feed_10k");
    g.bench_function("feed+serialise_body", |b| {
        b.iter(|| {
            let (entries, cursor) = r.feed(0, base);
            let body = serde_json::json!({
                "cursor": cursor,
                "now": base,
                "entries": serde_json::to_value(&entries).unwrap(),
            });
            black_box(serde_json::to_vec(&body).unwrap())
        });
    });
    g.finish();
}

criterion_group!(
    revocation,
    introspect_decision,
    introspect_router,
    record_issued,
    revoke_identity_100k,
    feed_10k
);
criterion_main!(revocation);
