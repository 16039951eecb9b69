//! A full audit filesystem (issue 19): the broker's audit directory on a small tmpfs the
//! test mounts itself. When it fills, issuance answers 503 (no token without its
//! record), `/readyz` and `/metrics` say why; once space is back issuance resumes
//! without a restart, and `broker audit verify` passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use broker_tests::{
    IssuerKey, Options, SUBJECT, TASK, TestBroker, TokenRequest, sign, verify_audit,
    workload_claims,
};

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts a `size` tmpfs on `dir`, or says why it cannot.
fn mount_tmpfs(dir: &Path, size: &str) -> Result<Mount, String> {
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    if out.status.success() {
        Ok(Mount(dir.to_path_buf()))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Fills the filesystem of `dir` with a file until writes fail; returns the file.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

async fn exchange(b: &TestBroker) -> broker_tests::Reply {
    let jwt = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
    b.token(&TokenRequest::exchange(&jwt, TASK)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_audit_filesystem_gives_503_then_recovers_without_a_restart() {
    let mut b = TestBroker::prepare(Options::default());
    let audit = b.audit_dir();
    std::fs::create_dir_all(&audit).unwrap();
    let _mount = match mount_tmpfs(&audit, "2m") {
        Ok(m) => m,
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: cannot mount a tmpfs ({why}); CI=true makes this a failure");
            return;
        }
        Err(why) => panic!("cannot mount a tmpfs for the audit directory: {why}"),
    };
    b.launch().unwrap_or_else(|e| panic!("{e}"));
    let ok = exchange(&b).await;
    assert_eq!(ok.status, 200, "{}", ok.text);

    // The disk fills up.
    let filler = fill(&audit);
    let mut refused = None;
    for _ in 0..50 {
        let r = exchange(&b).await;
        if r.status != 200 {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("a full audit disk refuses issuance");
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.error(), Some("temporarily_unavailable"), "{}", r.text);
    assert!(r.access_token().is_none(), "no token without its record");
    let client = broker_tests::http_client();
    let ready = client
        .get(format!("{}/readyz", b.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let why = ready.text().await.unwrap();
    assert!(
        why.contains("audit log cannot be written") && why.contains("No space left"),
        "{why}"
    );
    let metrics = client
        .get(format!("{}/metrics", b.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("broker_audit_write_failing 1"),
        "{metrics}"
    );

    // Space is back: issuance resumes, no restart.
    std::fs::remove_file(&filler).unwrap();
    let mut resumed = false;
    for _ in 0..20 {
        if exchange(&b).await.status == 200 {
            resumed = true;
            break;
        }
    }
    assert!(resumed, "issuance resumes once space is back");
    let ready = client
        .get(format!("{}/readyz", b.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    assert!(b.stop().success());
    let out = verify_audit(&audit, &b.key_dir());
    assert!(out.success(), "the log still verifies: {out}");
    let issued = b.records_of("issued");
    assert!(issued.len() >= 2, "{}", issued.len());
}
