//! Shared helpers of the fuzz targets: the test issuer's keys, JWT signing, a runtime, a
//! scratch directory on tmpfs, and a one-route-per-path loopback HTTP server whose
//! answers the SDK targets set per input.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

/// The crate directory (`fuzz/`).
pub fn fuzz_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/fixtures/` of the repository (the fake workload issuer).
pub fn test_fixtures() -> PathBuf {
    fuzz_dir().join("../tests/fixtures")
}

/// The issuer the fixtures play.
pub const TEST_ISSUER: &str = "https://issuer.test";
/// The audience the fuzzed authenticator accepts.
pub const TEST_AUDIENCE: &str = "jit-broker";
/// A fixed "now" for every clock in the targets (2025-01-01T00:00:00Z).
pub const NOW: u64 = 1_735_689_600;

/// The DER inside a PEM block (no validation beyond base64).
pub fn pem_to_der(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("fixture PEM is base64")
}

/// The test issuer's P-256 key (`kid` `test-ec-1`).
pub fn issuer_ec_key() -> &'static EcdsaKeyPair {
    static K: OnceLock<EcdsaKeyPair> = OnceLock::new();
    K.get_or_init(|| {
        let pem = std::fs::read_to_string(test_fixtures().join("issuer-ec.pem")).expect("fixture");
        EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &pem_to_der(&pem),
        )
        .expect("fixture key")
    })
}

/// A compact JWS of `header`.`payload` (raw bytes, base64url-encoded here) signed ES256
/// with the test issuer's key.
pub fn sign_es256(header: &[u8], payload: &[u8]) -> String {
    let mut s = URL_SAFE_NO_PAD.encode(header);
    s.push('.');
    s.push_str(&URL_SAFE_NO_PAD.encode(payload));
    let sig = issuer_ec_key()
        .sign(&aws_lc_rs::rand::SystemRandom::new(), s.as_bytes())
        .expect("sign");
    s.push('.');
    s.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
    s
}

/// A single-threaded Tokio runtime shared by one target's iterations.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// A scratch directory, on tmpfs when there is one (files are written every iteration).
pub fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::Builder::new().prefix("broker-fuzz").tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().expect("tempdir")
}

/// One canned answer: status, extra header lines, body.
#[derive(Clone, Default)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// Extra header lines, each without CRLF.
    pub headers: Vec<String>,
    /// The body.
    pub body: Vec<u8>,
}

/// A loopback HTTP/1.1 server answering each request by the longest matching path prefix
/// from a table the target rewrites per input. One connection, one request, then close.
pub struct CannedServer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    routes: Arc<Mutex<Vec<(String, Answer)>>>,
}

impl CannedServer {
    /// Starts the server thread.
    pub fn start() -> CannedServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let routes: Arc<Mutex<Vec<(String, Answer)>>> = Arc::default();
        let r = Arc::clone(&routes);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut buf = Vec::with_capacity(2048);
                let mut chunk = [0u8; 4096];
                // Read the head, then any Content-Length body (the SDK sends small forms).
                let head_end = loop {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break None,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break Some(p + 4);
                    }
                    if buf.len() > 64 * 1024 {
                        break None;
                    }
                };
                let Some(head_end) = head_end else { continue };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let want: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() - head_end < want {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let path = head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .to_owned();
                let answer = {
                    let routes = r.lock().unwrap_or_else(|e| e.into_inner());
                    routes
                        .iter()
                        .filter(|(p, _)| path.starts_with(p.as_str()))
                        .max_by_key(|(p, _)| p.len())
                        .map(|(_, a)| a.clone())
                        .unwrap_or(Answer {
                            status: 404,
                            ..Answer::default()
                        })
                };
                let mut out = format!(
                    "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                    answer.status,
                    answer.body.len()
                )
                .into_bytes();
                for h in &answer.headers {
                    out.extend_from_slice(h.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&answer.body);
                let _ = conn.write_all(&out);
                let _ = conn.flush();
            }
        });
        CannedServer { url, routes }
    }

    /// Sets the answer of every path starting with `prefix`.
    pub fn set(&self, prefix: &str, answer: Answer) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.retain(|(p, _)| p != prefix);
        routes.push((prefix.to_owned(), answer));
    }
}

/// A broker-style signing key (ES256) made once per process, with a JWKS publishing it.
pub struct BrokerKey {
    /// The signer.
    pub signer: broker::mint::keys::LocalSigner,
    /// `{"keys":[<its public JWK>]}`.
    pub jwks_json: Vec<u8>,
}

/// The fixed broker key of the SDK targets, from `fuzz/fixtures/broker-es256.pk8`.
pub fn broker_key() -> &'static BrokerKey {
    static K: OnceLock<BrokerKey> = OnceLock::new();
    K.get_or_init(|| {
        use broker::mint::keys::Signer as _;
        let der = std::fs::read(fuzz_dir().join("fixtures/broker-es256.pk8")).expect("fixture");
        let signer = broker::mint::keys::LocalSigner::from_pkcs8(&der).expect("fixture key");
        let jwks = broker::mint::keys::Jwks {
            keys: vec![signer.public_jwk()],
        };
        let jwks_json = serde_json::to_vec(&jwks).expect("jwks");
        BrokerKey { signer, jwks_json }
    })
}

/// A broker access token (`typ` `at+jwt`) over `claims`, signed by [`broker_key`].
pub fn broker_token(claims: &serde_json::Value) -> String {
    use broker::mint::keys::Signer as _;
    let k = broker_key();
    let header = serde_json::json!({"alg": "ES256", "kid": k.signer.kid(), "typ": "at+jwt"});
    let mut s = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("json"));
    s.push('.');
    s.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("json")));
    let sig = k.signer.sign(s.as_bytes()).expect("sign");
    s.push('.');
    s.push_str(&URL_SAFE_NO_PAD.encode(sig));
    s
}

/// Claims of a valid access token for `iss`/`aud` (valid for the next 10 years).
pub fn access_claims(iss: &str, aud: &str) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(NOW);
    serde_json::json!({
        "iss": iss, "sub": "payments-api", "client_id": "payments-api", "aud": aud,
        "scope": "ledger:read ledger:write", "jti": "fuzz-jti-1", "iat": now - 10,
        "nbf": now - 10, "exp": now + 315_360_000, "task": "ledger-write", "env": "prod",
        "bg": "grant-1"
    })
}

/// Whether `broker::config::parse_duration(s)` would hit the known overflow panic
/// (`total += unit` in `broker/src/config.rs`: the sum of the parts passes
/// `Duration::MAX`, e.g. `"18446744073709551615s1s"`), replicating its arithmetic with
/// checked additions. Inputs in `fuzz/regressions/config_toml/`.
pub fn duration_would_overflow(s: &str) -> bool {
    use std::time::Duration;
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut chars = s.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let Ok(n) = num.parse::<u64>() else {
            return false;
        };
        num.clear();
        let unit = match c {
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                Duration::from_millis(n)
            }
            's' => Duration::from_secs(n),
            'm' => Duration::from_secs(n.saturating_mul(60)),
            'h' => Duration::from_secs(n.saturating_mul(3600)),
            'd' => Duration::from_secs(n.saturating_mul(86400)),
            _ => return false,
        };
        match total.checked_add(unit) {
            Some(t) => total = t,
            None => return true,
        }
    }
    false
}

/// The known-crash mask of the TOML targets: true when a line or a quoted string of
/// `text` is a duration that would overflow (see [`duration_would_overflow`]), unless
/// `FUZZ_MASK_KNOWN` is set. The overflow is fixed (`parse_duration` adds with
/// `checked_add`), so the mask is off by default: the runs check the fix.
pub fn has_known_duration_overflow(text: &str) -> bool {
    if std::env::var_os("FUZZ_MASK_KNOWN").is_none() {
        return false;
    }
    text.lines().any(duration_would_overflow)
        || text.split(['"', '\'']).any(duration_would_overflow)
}
