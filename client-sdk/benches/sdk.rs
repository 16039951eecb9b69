//! Benchmarks of the SDK's hot paths (issue 5, `BENCHMARKS.md`):
//!
//! - `token_from_cache`: `TokenSource::token()` once a token is cached: what every
//!   outgoing request pays. One task, and 8 tasks calling concurrently on 8 threads.
//! - `verify`: `Verifier::verify` of a broker-shaped access token (EdDSA, and ES256) with
//!   the JWKS already loaded: what every incoming request pays. `EdDSA` and `ES256` check
//!   the signature on every call (the verified-token cache off: a token never seen
//!   before); `*_seen_before` is the default verifier given a token it verified already
//!   (a client reusing its token until renewal). Next to them, the bare aws-lc-rs
//!   signature check, to show what the SDK adds around it.
//!
//! Self-contained, so `cargo bench -p broker-client` runs on a fresh machine: a tiny HTTP
//! server in this process plays the broker (a fixed `/oauth2/token` answer and a JWKS), and
//! the tokens are signed here with aws-lc-rs keys in the broker's token format (RFC 9068,
//! `typ: at+jwt`). Neither path talks to the network once warmed up, so the figures are
//! the SDK's own cost.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use broker_client::{Credential, TokenSource, Verifier};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const AUDIENCE: &str = "https://ledger.prod.example.org";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    #[allow(clippy::disallowed_methods)] // a benchmark: wall time is right here
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The broker's keys, and tokens signed with them.
struct Keys {
    ed: Ed25519KeyPair,
    ec: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Keys {
    fn new() -> Self {
        let rng = SystemRandom::new();
        let ed = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref())
            .unwrap();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let ec = EcdsaKeyPair::from_pkcs8(
            alg,
            EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap().as_ref(),
        )
        .unwrap();
        Self { ed, ec, rng }
    }

    fn jwks(&self) -> String {
        let ec = self.ec.public_key().as_ref();
        json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "bench-ed", "alg": "EdDSA", "use": "sig",
             "x": b64(self.ed.public_key().as_ref())},
            {"kty": "EC", "crv": "P-256", "kid": "bench-ec", "alg": "ES256", "use": "sig",
             "x": b64(&ec[1..33]), "y": b64(&ec[33..65])},
        ]})
        .to_string()
    }

    /// An access token as the broker mints it, for `iss`.
    fn token(&self, alg: &str, iss: &str) -> String {
        let kid = if alg == "EdDSA" {
            "bench-ed"
        } else {
            "bench-ec"
        };
        let now = now();
        let header = json!({"alg": alg, "typ": "at+jwt", "kid": kid});
        let claims = json!({
            "iss": iss, "sub": "payments-api", "client_id": "payments-api", "aud": AUDIENCE,
            "scope": "ledger:read ledger:write", "jti": b64(&[7u8; 16]),
            "iat": now, "nbf": now, "exp": now + 3600, "task": "ledger-write", "env": "prod",
        });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = if alg == "EdDSA" {
            self.ed.sign(input.as_bytes()).as_ref().to_vec()
        } else {
            self.ec
                .sign(&self.rng, input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec()
        };
        format!("{input}.{}", b64(&sig))
    }
}

/// A minimal HTTP/1.1 server standing in for the broker: `POST /oauth2/token` answers
/// `token_response`, anything else the JWKS. One request per connection.
async fn fake_broker(jwks: String, token_response: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answers = Arc::new((jwks, token_response));
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let answers = Arc::clone(&answers);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head, then the body by Content-Length.
                let (head_end, len) = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (i + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = if buf.starts_with(b"POST /oauth2/token") {
                    &answers.1
                } else {
                    &answers.0
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    url
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(8)
        .enable_all()
        .build()
        .unwrap();
    let keys = Keys::new();
    // The fake broker's `iss` is its URL, as the Verifier expects by default.
    let (url, source, ed_token, ec_token) = rt.block_on(async {
        let jwks = keys.jwks();
        // The token response needs a token; its `iss` is irrelevant to the source.
        let access = keys.token("EdDSA", "https://broker.bench");
        let token_response = json!({
            "access_token": access,
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "token_type": "Bearer", "expires_in": 3600, "scope": "ledger:read ledger:write",
        })
        .to_string();
        let url = fake_broker(jwks, token_response).await;
        let source = TokenSource::builder(&url, "ledger-write")
            .credential(Credential::provider(|| {
                Ok("workload.jwt.placeholder".into())
            }))
            .build()
            .unwrap();
        source.token().await.unwrap();
        (
            url.clone(),
            source,
            keys.token("EdDSA", &url),
            keys.token("ES256", &url),
        )
    });

    let mut g = c.benchmark_group("token_from_cache");
    g.throughput(Throughput::Elements(1));
    g.bench_function("1_task", |b| {
        b.to_async(&rt)
            .iter(|| async { source.token().await.unwrap() })
    });
    g.bench_function("8_tasks", |b| {
        b.iter_custom(|iters| {
            let per_task = iters.div_ceil(8);
            rt.block_on(async {
                let start = Instant::now();
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..8 {
                    let source = source.clone();
                    set.spawn(async move {
                        for _ in 0..per_task {
                            std::hint::black_box(source.token().await.unwrap());
                        }
                    });
                }
                while set.join_next().await.is_some() {}
                // Time per call across the 8 tasks: wall time over all calls made.
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per_task * 8) as f64)
            })
        })
    });
    g.finish();
    assert_eq!(
        source.broker_requests(),
        1,
        "every call was served from cache"
    );

    // `verifier` checks every signature (a token it has not seen: the cache is off);
    // `remembering` is the default, which skips the check for a token seen before.
    let [verifier, remembering] = [0, broker_client::DEFAULT_VERIFIED_TOKEN_CACHE].map(|cache| {
        rt.block_on(async {
            let v = Verifier::builder(&url, AUDIENCE)
                .require_scope("ledger:read")
                .verified_token_cache(cache)
                .build()
                .unwrap();
            v.refetch_keys(true).await.unwrap();
            v.verify(&ed_token, None).await.unwrap();
            v.verify(&ec_token, None).await.unwrap();
            v
        })
    });
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));
    for (name, token) in [("EdDSA", &ed_token), ("ES256", &ec_token)] {
        g.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| async { verifier.verify(token, None).await.unwrap() })
        });
        g.bench_function(format!("{name}_seen_before"), |b| {
            b.to_async(&rt)
                .iter(|| async { remembering.verify(token, None).await.unwrap() })
        });
    }
    // The signature check alone (aws-lc-rs), to show what the SDK adds around it.
    for (name, token, alg, key) in [
        (
            "EdDSA_signature_only",
            &ed_token,
            &signature::ED25519 as &dyn signature::VerificationAlgorithm,
            keys.ed.public_key().as_ref().to_vec(),
        ),
        (
            "ES256_signature_only",
            &ec_token,
            &signature::ECDSA_P256_SHA256_FIXED,
            keys.ec.public_key().as_ref().to_vec(),
        ),
    ] {
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        let key = signature::UnparsedPublicKey::new(alg, key);
        g.bench_function(name, |b| {
            b.iter(|| key.verify(input.as_bytes(), &sig).unwrap())
        });
    }
    g.finish();
    dpop(c);
}

/// DPoP (RFC 9449): making a proof (client side) and checking one (broker and resource
/// side), per algorithm.
fn dpop(c: &mut Criterion) {
    use broker_client::dpop::{DpopKey, ProofCheck, verify_proof};
    let url = "http://127.0.0.1:8080/oauth2/token";
    let mut g = c.benchmark_group("dpop");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));
    for (name, key) in [
        ("EdDSA", DpopKey::generate_ed25519().unwrap()),
        ("ES256", DpopKey::generate_es256().unwrap()),
    ] {
        g.bench_function(format!("{name}_proof"), |b| {
            b.iter(|| key.proof("POST", url, None, None).unwrap())
        });
        let proof = key.proof("POST", url, None, None).unwrap();
        #[allow(clippy::disallowed_methods)]
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let check = ProofCheck {
            method: "POST",
            urls: &[url],
            now,
            max_age: 300,
            access_token: None,
            nonce: None,
        };
        g.bench_function(format!("{name}_verify"), |b| {
            b.iter(|| verify_proof(&proof, &check).unwrap())
        });
    }
    g.finish();
}

criterion_group!(sdk, benches);
criterion_main!(sdk);
