//! What the client-SDK tests (issue 5) need around the broker: a broker on a fixed port
//! (so that "stopped, then back" and "restarted with a rotated key" reach the same URL),
//! signing-key rotation, workload-JWT files written the way a platform rotates them,
//! a tiny axum server on a free port, and the example binaries.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;

use crate::{Options, TestBroker, broker_bin, now_secs, run_broker};

/// A loopback port that was free a moment ago (bound to port 0, read, released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// [`TestBroker::start`] on a fixed loopback port instead of port 0, so that a
/// [`TestBroker::stop`] then [`TestBroker::launch`] (or [`rotate_signing_key`]) brings the
/// broker back at the same URL. The port is written into the generated config.
// By value, like `TestBroker::start`.
#[allow(clippy::needless_pass_by_value)]
pub fn start_on_fixed_port(opts: Options) -> TestBroker {
    let port = free_port();
    let mut b = TestBroker::prepare(opts);
    let path = b.config_path().to_path_buf();
    let text = std::fs::read_to_string(&path).expect("reading the config");
    let fixed = text.replacen(
        "addr = \"127.0.0.1:0\"",
        &format!("addr = \"127.0.0.1:{port}\""),
        1,
    );
    assert_ne!(fixed, text, "the generated config has a port-0 listen addr");
    std::fs::write(&path, fixed).expect("writing the config");
    if let Err(e) = b.launch() {
        panic!("{e}");
    }
    assert_eq!(b.port(), port, "the broker listens on the fixed port");
    b
}

/// The creation second of the newest key in `key_dir` (key files are named
/// `<created_unix:012>-<alg>-<kid>.pem`; the newest name signs).
fn newest_key_second(key_dir: &Path) -> u64 {
    std::fs::read_dir(key_dir)
        .expect("reading the key dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".pem"))
        .filter_map(|n| n.split('-').next()?.parse::<u64>().ok())
        .max()
        .expect("a key in the key dir")
}

/// Rotates the broker's signing key the way an operator does: stop, `broker keygen` into
/// the key dir, start again (the new key signs; the old one stays published unless
/// `retire_old`, which deletes the old key files). Waits for a new second first so that
/// the new key's file name sorts last.
pub fn rotate_signing_key(b: &mut TestBroker, retire_old: bool) {
    let st = b.stop();
    assert!(st.success(), "graceful stop: {st}: {}", b.stderr());
    let key_dir = b.key_dir();
    let old: Vec<PathBuf> = std::fs::read_dir(&key_dir)
        .expect("reading the key dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    let newest = newest_key_second(&key_dir);
    while now_secs() <= newest {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run_broker(["keygen".as_ref(), "--dir".as_ref(), key_dir.as_os_str()]);
    assert!(out.success(), "broker keygen: {out}");
    if retire_old {
        for k in old {
            std::fs::remove_file(&k).unwrap_or_else(|e| panic!("removing {}: {e}", k.display()));
        }
    }
    if let Err(e) = b.launch() {
        panic!("{e}");
    }
}

/// Writes `contents` to `path` the way the kubelet rotates a projected token: a new file
/// renamed over the old one, so a reader never sees a half-written token.
pub fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("writing the temp file");
    std::fs::rename(&tmp, path).expect("renaming over the old file");
}

/// The DER of the first certificate in a PEM file.
pub fn cert_der(pem: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem)
        .unwrap_or_else(|e| panic!("reading {}: {e}", pem.display()))
        .to_vec()
}

/// The number of `issued` records (one per token the broker handed out).
pub fn issued_count(b: &TestBroker) -> usize {
    b.records_of("issued").len()
}

/// The `issued` record of `jti`.
pub fn issued_record(b: &TestBroker, jti: &str) -> Value {
    let mut found: Vec<Value> = b
        .records_of("issued")
        .into_iter()
        .filter(|r| r["jti"] == jti)
        .collect();
    assert_eq!(found.len(), 1, "exactly one issued record for jti {jti}");
    found.remove(0)
}

/// Serves `app` on a free loopback port until the test ends; returns `http://addr`.
pub async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding 127.0.0.1:0");
    let addr: SocketAddr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// The path of a binary of this workspace (`workload`, `resource_server`) next to the
/// broker binary; built with `cargo build -p broker-examples --bins` (same profile) when it
/// is missing, since `cargo test` does not build another package's binaries. `None` (with
/// a note) if it cannot be built.
pub fn example_bin(name: &str) -> Option<PathBuf> {
    let dir = broker_bin()
        .parent()
        .expect("the broker binary's dir")
        .to_path_buf();
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let fresh = |bin: &Path| {
        // Rebuild when the example's source is newer than the binary.
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/src/bin")
            .join(format!("{name}.rs"));
        match (
            std::fs::metadata(bin).and_then(|m| m.modified()),
            std::fs::metadata(&src).and_then(|m| m.modified()),
        ) {
            (Ok(b), Ok(s)) => b >= s,
            (Ok(_), Err(_)) => true,
            _ => false,
        }
    };
    if fresh(&bin) {
        return Some(bin);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "broker-examples", "--bins"]);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    match cmd.status() {
        Ok(s) if s.success() && bin.is_file() => Some(bin),
        other => {
            eprintln!(
                "note: {} is missing and `cargo build -p broker-examples --bins` failed ({other:?})",
                bin.display()
            );
            None
        }
    }
}
