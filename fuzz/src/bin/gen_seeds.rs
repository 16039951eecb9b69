//! Writes the fixed fixtures and the seed corpus of every fuzz target from real inputs:
//! JWTs signed with the `tests/fixtures` issuer keys, token-request forms, rcgen client
//! certificates, the repository's policies and example config, a real audit log written
//! by `broker::audit::AuditLog`, PEM/DER keys, and SDK answers (token response, JWKS,
//! revocation feed page) as the broker serializes them.
//!
//! Run from `fuzz/`: `cargo +nightly run --bin gen-seeds` (idempotent; the broker key and
//! the audit fixture are made once and kept, so the committed seeds stay valid).

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use broker::audit::event::{AuditEvent, EventKind};
use broker::audit::{AuditLog, AuditOptions};
use broker::clock::ManualClock;
use broker::mint::keys::{LocalSigner, Signer};
use broker_fuzz::{NOW, TEST_AUDIENCE, TEST_ISSUER, fuzz_dir, pem_to_der, sign_es256, test_fixtures};
use serde_json::json;

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn with_mode(mode: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(rest);
    v
}

fn rs256(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    let pem = std::fs::read_to_string(test_fixtures().join("issuer-rsa.pem")).expect("rsa");
    let kp = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&pem_to_der(&pem)).expect("rsa key");
    let mut s = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).expect("json"));
    s.push('.');
    s.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("json")));
    let mut sig = vec![0u8; kp.public().modulus_len()];
    kp.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        s.as_bytes(),
        &mut sig,
    )
    .expect("sign");
    s.push('.');
    s.push_str(&URL_SAFE_NO_PAD.encode(sig));
    s
}

fn broker_key() {
    let path = fuzz_dir().join("fixtures/broker-es256.pk8");
    if !path.exists() {
        let der = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .expect("keygen");
        std::fs::write(&path, der.as_ref()).expect("write key");
    }
}

fn jwt_seeds() {
    let claims = json!({
        "iss": TEST_ISSUER, "sub": "system:serviceaccount:payments:api", "aud": TEST_AUDIENCE,
        "iat": NOW - 60, "nbf": NOW - 60, "exp": NOW + 600, "jti": "seed-1",
        "kubernetes.io": {"namespace": "payments", "serviceaccount": {"name": "api"}}
    });
    let es_header = json!({"alg": "ES256", "kid": "test-ec-1", "typ": "JWT"});
    let es = sign_es256(
        &serde_json::to_vec(&es_header).expect("json"),
        &serde_json::to_vec(&claims).expect("json"),
    );
    put("jwt", "es256-valid", &with_mode(0, es.as_bytes()));
    put("jwt", "es256-valid-assertion", &with_mode(1, es.as_bytes()));
    let rs = rs256(&json!({"alg": "RS256", "kid": "test-rsa-1"}), &claims);
    put("jwt", "rs256-valid", &with_mode(0, rs.as_bytes()));
    let mut single = claims.clone();
    single["iss"] = "https://single.test".into();
    let s = rs256(&json!({"alg": "RS256", "kid": "test-rsa-1"}), &single);
    put("jwt", "rs256-single-use", &with_mode(0, s.as_bytes()));
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("json"))
    );
    put("jwt", "alg-none", &with_mode(0, none.as_bytes()));
    // Resign mode: header \0 claims, signed by the target.
    let mut resign = serde_json::to_vec(&es_header).expect("json");
    resign.push(0);
    resign.extend_from_slice(&serde_json::to_vec(&claims).expect("json"));
    put("jwt", "resign-valid", &with_mode(128, &resign));
    let mut assertion = claims.clone();
    assertion["aud"] = "https://broker.test/oauth2/token".into();
    let mut r2 = serde_json::to_vec(&es_header).expect("json");
    r2.push(0);
    r2.extend_from_slice(&serde_json::to_vec(&assertion).expect("json"));
    put("jwt", "resign-assertion", &with_mode(129, &r2));
    put(
        "jwt",
        "resign-dup-claims",
        &with_mode(
            128,
            b"{\"alg\":\"ES256\",\"kid\":\"test-ec-1\"}\0{\"iss\":\"https://issuer.test\",\"sub\":\"evil\",\"sub\":\"x\",\"aud\":\"jit-broker\",\"exp\":1735690000}",
        ),
    );
    put(
        "jwt",
        "jwks",
        &with_mode(
            0,
            &std::fs::read(test_fixtures().join("issuer-jwks.json")).expect("jwks"),
        ),
    );
}

fn form_seeds() {
    let ct = "application/x-www-form-urlencoded\n";
    let exchange = format!(
        "{ct}grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&task=ledger-write&audience=https%3A%2F%2Fledger.prod.example.org&scope=ledger%3Aread+ledger%3Awrite&requested_ttl=300"
    );
    put("token_form", "token-exchange", exchange.as_bytes());
    put(
        "token_form",
        "client-credentials",
        format!("{ct}grant_type=client_credentials&task=report&client_id=reports-batch&resource=https%3A%2F%2Freports.prod.example.org").as_bytes(),
    );
    put(
        "token_form",
        "client-assertion",
        format!("application/x-www-form-urlencoded; charset=utf-8\ngrant_type=client_credentials&task=report&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=a.b.c").as_bytes(),
    );
    put(
        "token_form",
        "repeated-param",
        format!("{ct}grant_type=client_credentials&task=a&task=b").as_bytes(),
    );
    put("token_form", "json-body", b"application/json\n{\"grant_type\":\"client_credentials\"}");
}

fn cert_seeds() {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
    let key = KeyPair::generate().expect("key");
    let mk = |name: &str, cn: Option<&str>, sans: Vec<SanType>| {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(cn) = cn {
            dn.push(DnType::CommonName, cn);
        }
        p.distinguished_name = dn;
        p.subject_alt_names = sans;
        let c = p.self_signed(&key).expect("cert");
        put("client_cert", name, c.der());
    };
    mk(
        "spiffe-svid",
        None,
        vec![SanType::URI(
            "spiffe://prod.example.org/ns/payments/sa/api".try_into().expect("uri"),
        )],
    );
    mk(
        "dns-and-cn",
        Some("reports-batch"),
        vec![SanType::DnsName(
            "reports-batch.prod.example.org".try_into().expect("dns"),
        )],
    );
    mk("cn-only", Some("analytics.vendor.example.com"), vec![]);
    mk(
        "two-spiffe-ids",
        Some("x"),
        vec![
            SanType::URI("spiffe://prod.example.org/a".try_into().expect("uri")),
            SanType::URI("spiffe://dev.example.org/b".try_into().expect("uri")),
        ],
    );
}

fn policy_and_config_seeds() {
    let root = fuzz_dir().join("..");
    for e in std::fs::read_dir(root.join("policies")).expect("policies") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "toml") {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            put("policy_toml", &name, &std::fs::read(&p).expect("read"));
        }
    }
    let a = std::fs::read_to_string(root.join("policies/payments-api.toml")).expect("read");
    let b = std::fs::read_to_string(root.join("policies/reports-batch.toml")).expect("read");
    put("policy_toml", "two-files", format!("{a}\n#--next-file--\n{b}").as_bytes());
    put(
        "config_toml",
        "broker.example.toml",
        &std::fs::read(root.join("broker.example.toml")).expect("example config"),
    );
    put(
        "config_toml",
        "minimal.toml",
        br#"issuer = "https://broker.test"

[[trusted_issuer]]
issuer = "https://issuer.test"
audiences = ["jit-broker"]
algorithms = ["ES256", "RS256"]
jwks_file = "issuer-jwks.json"
token_types = ["JWT"]
max_lifetime = "1h"

[[audience]]
uri = "https://ledger.prod.example.org"
environment = "prod"
"#,
    );
}

fn audit_seeds() {
    let dir = fuzz_dir().join("fixtures/audit");
    let der = std::fs::read(fuzz_dir().join("fixtures/broker-es256.pk8")).expect("key");
    let signer: Arc<dyn Signer> = Arc::new(LocalSigner::from_pkcs8(&der).expect("key"));
    if !dir.join("head.json").exists() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let opts = AuditOptions {
            dir: dir.clone(),
            segment_max_bytes: 1 << 20,
            replica: None,
        };
        let log = AuditLog::open(opts, Arc::clone(&signer), Arc::new(ManualClock::at_unix(NOW)))
            .expect("open audit log");
        rt.block_on(async {
            let mut started = AuditEvent::new(EventKind::BrokerStarted);
            started.detail = Some(json!({"version": "fuzz-seed"}));
            log.append(started).await.expect("append");
            let mut issued = AuditEvent::new(EventKind::Issued);
            issued.identity = Some("payments-api".into());
            issued.task = Some("ledger-write".into());
            issued.audience = Some("https://ledger.prod.example.org".into());
            issued.scopes = Some(vec!["ledger:read".into()]);
            issued.jti = Some("seed-jti-1".into());
            issued.exp = Some(NOW + 300);
            issued.kid = Some(signer.kid().into());
            log.append(issued).await.expect("append");
            let mut denied = AuditEvent::new(EventKind::Denied);
            denied.rule = Some("bad_signature".into());
            denied.reason = Some("the JWT signature does not verify".into());
            log.append(denied).await.expect("append");
            let mut revoked = AuditEvent::new(EventKind::Revoked);
            revoked.jti = Some("seed-jti-1".into());
            revoked.actor = Some("alice@example.com".into());
            log.append(revoked).await.expect("append");
            log.close().await;
        });
    }
    let jwks = broker::mint::keys::Jwks {
        keys: vec![signer.public_jwk()],
    };
    broker::audit::verify(&dir, &jwks).expect("the fixture log verifies");
    let seg = std::fs::read(dir.join("audit-000001.log")).expect("segment");
    let head = std::fs::read(dir.join("head.json")).expect("head");
    put("audit_verify", "segment", &with_mode(0, &seg));
    put("audit_verify", "head", &with_mode(1, &head));
    let torn = &seg[..seg.len() - 20];
    put("audit_verify", "open-torn-tail", &with_mode(2, torn));
    put("audit_verify", "open-intact", &with_mode(2, &seg));
    let mut split = vec![3u8, 128];
    split.extend_from_slice(&seg);
    put("audit_verify", "two-segments", &split);
}

fn key_seeds() {
    let ec_pem = std::fs::read(test_fixtures().join("issuer-ec.pem")).expect("ec pem");
    put("keys", "p256-pem", &with_mode(0, &ec_pem));
    let rsa_pem = std::fs::read(test_fixtures().join("issuer-rsa.pem")).expect("rsa pem");
    put("keys", "rsa-pem-refused", &with_mode(0, &rsa_pem));
    let der = std::fs::read(fuzz_dir().join("fixtures/broker-es256.pk8")).expect("key");
    put("keys", "p256-der", &with_mode(1, &der));
    let ed = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
        .expect("ed25519");
    put("keys", "ed25519-der", &with_mode(1, ed.as_ref()));
    let ed_pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(ed.as_ref())
    );
    put("keys", "ed25519-pem", &with_mode(0, ed_pem.as_bytes()));
    let signer = LocalSigner::from_pkcs8(ed.as_ref()).expect("ed25519 loads");
    let k2 = LocalSigner::from_pkcs8(&der).expect("p256 loads");
    let jwks = broker::mint::keys::Jwks {
        keys: vec![signer.public_jwk(), k2.public_jwk()],
    };
    put("keys", "jwks", &with_mode(2, &serde_json::to_vec(&jwks).expect("json")));
}

fn sdk_seeds() {
    let tr = broker_client::types::TokenResponse {
        access_token: "eyJhbGciOiJFUzI1NiJ9.e30.c2ln".into(),
        issued_token_type: broker_client::types::TOKEN_TYPE_ACCESS_TOKEN.into(),
        token_type: "Bearer".into(),
        expires_in: 300,
        scope: "ledger:read".into(),
    };
    let mut ok = vec![0u8, 0];
    ok.extend_from_slice(&serde_json::to_vec(&tr).expect("json"));
    put("sdk_token_response", "ok", &ok);
    let err = broker_client::types::ErrorResponse {
        error: "invalid_grant".into(),
        error_description: Some("the JWT signature does not verify".into()),
    };
    let mut denied = vec![2u8, 0];
    denied.extend_from_slice(&serde_json::to_vec(&err).expect("json"));
    put("sdk_token_response", "denied", &denied);
    let mut limited = vec![4u8, 1];
    limited.extend_from_slice(br#"{"error":"slow_down","error_description":"rate limited"}"#);
    put("sdk_token_response", "rate-limited", &limited);

    broker_key();
    let key = broker_fuzz::broker_key();
    put("sdk_jwks", "jwks", &with_mode(0, &key.jwks_json));
    let ed = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
        .expect("ed25519");
    let eds = LocalSigner::from_pkcs8(ed.as_ref()).expect("ed25519");
    let both = broker::mint::keys::Jwks {
        keys: vec![eds.public_jwk(), key.signer.public_jwk()],
    };
    put("sdk_jwks", "jwks-two-keys", &with_mode(0, &serde_json::to_vec(&both).expect("json")));
    // The server URL is only known at run time; the token seed uses a placeholder issuer
    // (verification then stops at `iss`), the claims seed is signed by the target.
    let claims = broker_fuzz::access_claims("http://127.0.0.1:1", "https://ledger.prod.example.org");
    put("sdk_jwks", "token", &with_mode(1, broker_fuzz::broker_token(&claims).as_bytes()));
    put("sdk_jwks", "claims", &with_mode(2, &serde_json::to_vec(&claims).expect("json")));

    let far = NOW + 10 * 365 * 86400;
    let page = json!({
        "cursor": 4,
        "entries": [
            {"jti": "fuzz-jti-9", "until": far},
            {"rule": {"id": "r1", "by": "identity", "identity": "payments-api", "issued_before": far}, "until": far},
            {"rule": {"id": "r2", "by": "task", "task": "report", "issued_before": 5}, "until": far},
            {"rule": {"id": "r3", "by": "owner", "identities": ["reports-batch"], "issued_before": far}, "until": far},
            {"rule": {"id": "r4", "by": "key", "kid": "k", "issued_before": far}, "until": far},
            {"rule": {"id": "r5", "by": "grant", "grant": "grant-1", "issued_before": far}, "until": far}
        ]
    });
    put("sdk_revocation_feed", "page", &with_mode(0, &serde_json::to_vec(&page).expect("json")));
    let mut two = serde_json::to_vec(&page).expect("json");
    two.extend_from_slice(b"\n--\n");
    two.extend_from_slice(br#"{"cursor":1,"entries":[]}"#);
    put("sdk_revocation_feed", "cursor-back", &with_mode(1, &two));
    put(
        "sdk_revocation_feed",
        "denied",
        &with_mode(3, br#"{"error":"invalid_token","error_description":"no"}"#),
    );
}

fn main() {
    let _ = Path::new("");
    broker_key();
    jwt_seeds();
    form_seeds();
    cert_seeds();
    policy_and_config_seeds();
    audit_seeds();
    key_seeds();
    sdk_seeds();
    println!("seeds written under {}", fuzz_dir().join("corpus").display());
}
