//! `broker serve --dev`: zero setup. It comes up on a free port in an empty folder, and
//! the dev workload token it hands out (`broker dev token`) is exchanged for task `demo`.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use broker_tests::{TestBroker, TokenRequest, broker_command, run_broker};

#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_serves_a_dev_token_exchange() {
    let b = TestBroker::start_dev();
    let dev_dir = b.dir().join("dev");

    // The banner follows the listening line and shows a command to paste.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.stdout_lines().iter().any(|l| l.contains("curl")) {
        assert!(
            Instant::now() < deadline,
            "no curl command in the dev banner: {:?}",
            b.stdout_lines()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let out = run_broker([
        "dev".as_ref(),
        "token".as_ref(),
        "--dir".as_ref(),
        dev_dir.as_os_str(),
    ]);
    assert!(out.success(), "broker dev token: {out}");
    let workload = out.stdout.trim().to_owned();
    assert_eq!(workload.split('.').count(), 3, "a JWS: {workload}");

    let reply = b.token(&TokenRequest::exchange(&workload, "demo")).await;
    assert_eq!(reply.status, 200, "dev exchange: {}", reply.text);
    let access = reply.access_token().expect("access_token").to_owned();
    let v = b
        .verify_access_token_with_issuer(&access, "https://api.dev.example.org", None)
        .await;
    assert_eq!(v.claims["task"], "demo");
    assert_eq!(v.claims["aud"], "https://api.dev.example.org");

    // `broker token decode` reads the token response from stdin.
    let mut child = broker_command(["token", "decode"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(reply.text.as_bytes())
        .unwrap();
    let decoded = child.wait_with_output().unwrap();
    assert!(decoded.status.success(), "token decode: {decoded:?}");
    let text = String::from_utf8_lossy(&decoded.stdout);
    assert!(
        text.contains("demo"),
        "decoded claims show the task: {text}"
    );
}

/// `serve --dev --dev-alg EdDSA` signs with a new Ed25519 key: the token's header says
/// `EdDSA`, it verifies against the published JWKS with jsonwebtoken (an independent JOSE
/// implementation). (`dev::tests` shows the folder going back to ES256 without the flag.)
#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_signs_with_the_algorithm_asked_for() {
    let b = TestBroker::start_dev_with(&["--dev-alg", "EdDSA"]);
    let dev_dir = b.dir().join("dev");
    let out = run_broker([
        "dev".as_ref(),
        "token".as_ref(),
        "--dir".as_ref(),
        dev_dir.as_os_str(),
    ]);
    assert!(out.success(), "broker dev token: {out}");
    let workload = out.stdout.trim().to_owned();

    let header_alg = |token: &str| {
        jsonwebtoken::decode_header(token)
            .expect("a JWS header")
            .alg
    };
    let reply = b.token(&TokenRequest::exchange(&workload, "demo")).await;
    assert_eq!(reply.status, 200, "dev exchange: {}", reply.text);
    let access = reply.access_token().expect("access_token").to_owned();
    assert_eq!(header_alg(&access), jsonwebtoken::Algorithm::EdDSA);
    let v = b
        .verify_access_token_with_issuer(&access, "https://api.dev.example.org", None)
        .await;
    assert_eq!(v.claims["task"], "demo");
    let jwks = b.jwks().await;
    assert_eq!(jwks.keys.len(), 1, "one key in a fresh dev folder");
}
