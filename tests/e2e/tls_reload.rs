//! TLS material reloads without a restart (issue 3): the server certificate and the
//! client CA bundle are replaced on disk while the broker runs; new connections see the
//! new material within a poll interval (the harness config polls every second; the tests
//! allow 5 s), a certificate of the retired client CA is refused at the handshake, and a
//! `tls_reloaded` record is written. A broken replacement (garbage certificate, a key
//! that does not match the certificate, a garbage CA bundle) keeps the old material live
//! and writes `tls_reload_failed`.

use std::path::Path;
use std::time::{Duration, Instant};

use broker_tests::curl::CurlReply;
use broker_tests::mtls::{PAYMENTS_CN, PAYMENTS_SPIFFE_ID, PROD_CA, mtls_broker};
use broker_tests::pki::{LeafSpec, server_certificate};
use broker_tests::{PROD_LEDGER, TASK, TestBroker, TokenRequest};
use serde_json::Value;

use crate::mtls::{TOKEN, assert_no_key_material, curl_token};

/// How long new material may take to be live (the poll interval is 1 s).
const RELOAD_WAIT: Duration = Duration::from_secs(5);

/// Replaces `to` with a copy of `from` the way deploy tools do: write beside, then rename.
fn install(from: &Path, to: &Path) {
    install_bytes(
        &std::fs::read(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display())),
        to,
    );
}

/// Replaces `to` with `bytes` (write beside, then rename).
fn install_bytes(bytes: &[u8], to: &Path) {
    let tmp = to.with_extension("e2e-new");
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, to).unwrap_or_else(|e| panic!("renaming onto {}: {e}", to.display()));
}

/// The `seq` of the last record so far (records after it are new).
fn last_seq(b: &TestBroker) -> u64 {
    b.records()
        .last()
        .and_then(|r| r["seq"].as_u64())
        .unwrap_or(0)
}

/// Waits for a new record (after `seq`) of `event`.
async fn new_record(b: &TestBroker, seq: u64, event: &str) -> Value {
    b.wait_for_record(RELOAD_WAIT, |r| {
        r["event"] == event && r["seq"].as_u64().is_some_and(|s| s > seq)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no {event} record within {RELOAD_WAIT:?}; records: {:#?}\n--- broker stderr ---\n{}",
            b.records(),
            b.stderr()
        )
    })
}

fn assert_200(r: &CurlReply) {
    assert_eq!(r.exit, Some(0), "{r}");
    assert_eq!(r.status, 200, "{r}");
    assert!(r.access_token().is_some(), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn server_certificate_and_client_ca_rotate_without_restart() {
    let Some((m, mut b)) = mtls_broker("server_certificate_and_client_ca_rotate_without_restart")
    else {
        return;
    };
    let old_client = m.payments_client();
    let cc = TokenRequest::client_credentials(TASK);

    // Before: the original server certificate, the original client CA.
    assert_200(&curl_token(&b, Some(&old_client), &cc));
    let (before, verified) = server_certificate(b.port(), &m.server_ca.cert);
    assert!(
        verified,
        "the server chain verifies against the original CA: {before}"
    );
    assert!(before.contains("CN = broker.test"), "{before}");

    // New material: a new server CA and certificate, and a new SPIFFE CA replacing the old
    // one in the prod-spiffe bundle.
    let new_server_ca = m.pki.ca("server-ca-next", "E2E Server CA (next)");
    let new_server = new_server_ca.issue(&LeafSpec::server("server-next", "broker-rotated.test"));
    let new_prod_ca = m
        .pki
        .ca("prod-ca-next", "E2E SPIFFE CA prod.example.org (next)");
    let new_client =
        new_prod_ca.issue(&LeafSpec::client("payments-next", PAYMENTS_CN).uri(PAYMENTS_SPIFFE_ID));
    let seq = last_seq(&b);
    install(&new_server.key, &b.tls_file("server.key"));
    install(&new_server.cert, &b.tls_file("server.pem"));
    install(&new_prod_ca.cert, &b.tls_file(&format!("{PROD_CA}-ca.pem")));
    let replaced = Instant::now();

    // New connections: the new server CA verifies the server, the new client CA's
    // certificate is accepted. Poll until then.
    let fresh = b
        .curl(TOKEN)
        .cacert(&new_server_ca.cert)
        .client_cert(&new_client)
        .form(&cc.params);
    let mut last = fresh.run();
    while last.status != 200 && replaced.elapsed() < RELOAD_WAIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = fresh.run();
    }
    let took = replaced.elapsed();
    assert_eq!(
        last.status,
        200,
        "new TLS material not live {took:?} after replacing the files: {last}\n--- broker stderr ---\n{}",
        b.stderr()
    );
    let token = last.access_token().unwrap().to_owned();

    // The server certificate is the new one (seen by openssl s_client), and the old CA no
    // longer verifies it.
    let (after, verified) = server_certificate(b.port(), &new_server_ca.cert);
    assert!(
        verified,
        "the new chain verifies against the new CA: {after}"
    );
    assert!(after.contains("CN = broker-rotated.test"), "{after}");
    assert!(after.contains("E2E Server CA (next)"), "issuer: {after}");
    let serial = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("serial="))
            .map(str::to_owned)
    };
    assert_ne!(serial(&before), serial(&after), "a different serial");
    let (_, old_verifies) = server_certificate(b.port(), &m.server_ca.cert);
    assert!(
        !old_verifies,
        "the old server CA no longer verifies the server"
    );
    let stale = curl_token(&b, Some(&new_client), &cc); // b.curl still trusts the old CA
    assert!(
        stale.no_http_answer(),
        "curl trusting only the old server CA must refuse the new certificate: {stale}"
    );

    // The token is bound to the new certificate and verifies (JWKS fetched over the new
    // TLS material).
    b.trust_server_ca(&new_server_ca.cert);
    let v = b.verify_access_token(&token, PROD_LEDGER).await;
    assert_eq!(v.claims["cnf"]["x5t#S256"], new_client.x5t_s256());

    // A certificate of the retired client CA is now refused at the handshake.
    let seq_old = last_seq(&b);
    let r = curl_token(&b, Some(&old_client), &cc);
    assert!(
        r.no_http_answer(),
        "the old CA's certificate is refused: {r}"
    );
    let rec = new_record(&b, seq_old, "denied").await;
    assert_eq!(rec["rule"], "client_certificate_rejected", "{rec}");
    assert_eq!(rec["source"], "127.0.0.1", "{rec}");
    assert!(
        rec["reason"]
            .as_str()
            .is_some_and(|s| s.contains("does not chain to a configured client_ca")),
        "{rec}"
    );

    // The reload is on record, naming the files, with no key material.
    let reloaded = new_record(&b, seq, "tls_reloaded").await;
    let files = reloaded.to_string();
    for f in ["server.pem", "server.key", "prod-spiffe-ca.pem"] {
        assert!(files.contains(f), "tls_reloaded names {f}: {reloaded}");
    }
    assert_no_key_material(&b, &[&old_client, &new_client, &new_server]);

    // No restart: one process, one `listening on` line, one broker_started record.
    let listening = b
        .stdout_lines()
        .into_iter()
        .filter(|l| l.starts_with("listening on "))
        .count();
    assert_eq!(listening, 1, "{:?}", b.stdout_lines());
    assert_eq!(b.records_of("broker_started").len(), 1);
    eprintln!("new TLS material was live {took:?} after the files were replaced");
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_tls_files_keep_the_old_material_live() {
    let Some((m, b)) = mtls_broker("broken_tls_files_keep_the_old_material_live") else {
        return;
    };
    let client = m.payments_client();
    let cc = TokenRequest::client_credentials(TASK);
    assert_200(&curl_token(&b, Some(&client), &cc));
    let server_pem = b.tls_file("server.pem");
    let server_key = b.tls_file("server.key");
    let bundle = b.tls_file(&format!("{PROD_CA}-ca.pem"));
    let garbage =
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
    let other_key = m.payments_client_named("not-the-server").key;

    let cases: [(&str, &Path, Vec<u8>, &Path); 4] = [
        (
            "a garbage server certificate",
            &server_pem,
            garbage.to_vec(),
            &m.server.cert,
        ),
        (
            "a private key of another certificate",
            &server_key,
            std::fs::read(&other_key).unwrap(),
            &m.server.key,
        ),
        (
            "a garbage client CA bundle",
            &bundle,
            garbage.to_vec(),
            &m.prod_ca.cert,
        ),
        (
            "an empty client CA bundle",
            &bundle,
            Vec::new(),
            &m.prod_ca.cert,
        ),
    ];
    for (what, file, bytes, original) in cases {
        let seq = last_seq(&b);
        install_bytes(&bytes, file);
        let failed = new_record(&b, seq, "tls_reload_failed").await;
        assert!(
            failed["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{what}: tls_reload_failed says why: {failed}"
        );
        assert!(
            b.records_of("tls_reloaded")
                .iter()
                .all(|r| r["seq"].as_u64() < Some(seq)),
            "{what}: the broken material was not swapped in: {:?}",
            b.records_of("tls_reloaded")
        );
        // New connections still get the old material: the original server certificate
        // and the original client CA.
        let r = curl_token(&b, Some(&client), &cc);
        assert_eq!(r.status, 200, "{what}: the old material stays live: {r}");
        let (subject, verified) = server_certificate(b.port(), &m.server_ca.cert);
        assert!(
            verified && subject.contains("CN = broker.test"),
            "{what}: {subject}"
        );

        // Putting the good file back reloads.
        let seq = last_seq(&b);
        install(original, file);
        new_record(&b, seq, "tls_reloaded").await;
        assert_200(&curl_token(&b, Some(&client), &cc));
    }
    assert_no_key_material(&b, &[&client]);
}
