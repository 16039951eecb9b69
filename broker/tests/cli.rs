//! CLI smoke tests of the `broker` binary itself (the end-to-end suite lives in `tests/`).
//! Having an integration test here also makes `cargo test --workspace` build
//! `target/debug/broker`, which the end-to-end suite runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn broker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_broker"))
}

#[test]
fn help_lists_every_subcommand() {
    let out = broker().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "keygen", "policy", "audit", "token", "dev"] {
        assert!(text.contains(cmd), "missing {cmd} in:\n{text}");
    }
}

#[test]
fn keygen_writes_a_private_pkcs8_file_and_prints_only_the_kid() {
    let dir = tempfile::tempdir().unwrap();
    for alg in ["EdDSA", "ES256"] {
        let out = broker()
            .args(["keygen", "--dir"])
            .arg(dir.path())
            .args(["--alg", alg])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(alg), "{stdout}");
        assert!(
            !stdout.contains("PRIVATE KEY"),
            "keygen must not print key material"
        );
    }
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(files.len(), 2);
    for f in files {
        let text = std::fs::read_to_string(f.path()).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}

#[test]
fn keygen_refuses_unknown_algorithms() {
    let dir = tempfile::tempdir().unwrap();
    let out = broker()
        .args(["keygen", "--dir"])
        .arg(dir.path())
        .args(["--alg", "HS256"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("EdDSA or ES256"));
}
