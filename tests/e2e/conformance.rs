//! Outside libraries judge the real broker (issue 17, item 6): Node `oauth4webapi` and
//! `jose`, Python `authlib`, `joserfc` and `PyJWT`, pinned in `tests/conformance/`, run as a
//! client and a resource server that know nothing but the broker's issuer URL.
//!
//! Every test starts the broker with its `issuer` set to the URL it really listens on
//! (libraries check that the discovery document names the issuer they asked), signing with
//! EdDSA or ES256 (`broker keygen --alg`, and `[signing] algorithm` so that a wrong key
//! stops the start), over plain HTTP on loopback or over TLS with a test CA (made by
//! `openssl`, handed to Node as `NODE_EXTRA_CA_CERTS` and to Python as `CA_FILE`).
//!
//! The libraries are installed by the tests themselves into `target/tmp/conformance/`
//! (`npm ci` from the lock file; a venv with `pip install --require-hashes`), once per
//! lock-file content: a stamp file holding the hash of the lock file and the runtime's
//! version skips the install when it matches. Without `node`/`npm` or `python3 -m venv`
//! the affected half of a test skips with a note, and fails under `CI=true`.
//!
//! | script | checks |
//! | --- | --- |
//! | `node/flow.mjs` | RFC 8414 + OIDC discovery, RFC 8693 exchange, RFC 9068 validation (oauth4webapi), jose `jwtVerify`, RFC 7662 introspection, RFC 7009 revocation, with `Authorization: Bearer <workload JWT>` |
//! | `node/client_assertion.mjs` | the same endpoints with RFC 7523 `private_key_jwt` (oauth4webapi `PrivateKeyJwt`), gated on the metadata |
//! | `python/verify.py` | authlib metadata `validate()` and RFC 9068 validator, joserfc, PyJWT, each with its defaults |

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use broker_tests::admin::{RS_IDENTITY, RS_SUBJECT, revocation_policies};
use broker_tests::pki::{self, LeafSpec, Pki};
use broker_tests::sdk_support::free_port;
use broker_tests::{
    BROKER_ISSUER, CmdOutput, EC_KID, IDENTITY, ISSUER, IssuerKey, Options, PROD_LEDGER, SUBJECT,
    TASK, TASK_MAX_TTL, TOKEN_TYPE_ACCESS_TOKEN, TestBroker, TlsOptions, TokenRequest, run_broker,
    sign, workload_claims,
};
use serde_json::{Value, json};

/// The pinned Node project (package.json, package-lock.json, the scripts).
const NODE_SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conformance/node");
/// The pinned Python requirements and the script.
pub(crate) const PYTHON_SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conformance/python");
/// The trusted test issuer's EC key, which signs the client assertions.
const ISSUER_EC_KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/issuer-ec.pem");
/// The scopes of [`TASK`] as one `scope` string.
const TASK_SCOPE: &str = "ledger:read ledger:write";

// ---------------------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn eddsa_over_http() {
    outside_libraries("conformance::eddsa_over_http", Alg::EdDSA, Transport::Http).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn es256_over_http() {
    outside_libraries("conformance::es256_over_http", Alg::ES256, Transport::Http).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn eddsa_over_tls() {
    outside_libraries("conformance::eddsa_over_tls", Alg::EdDSA, Transport::Tls).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn es256_over_tls() {
    outside_libraries("conformance::es256_over_tls", Alg::ES256, Transport::Tls).await;
}

/// RFC 7523 client assertions with oauth4webapi's `PrivateKeyJwt`, every signing
/// algorithm over both transports: the metadata must advertise `private_key_jwt` at the
/// token, introspection and revocation endpoints, and each must take an assertion.
#[tokio::test(flavor = "multi_thread")]
async fn client_assertions_with_private_key_jwt() {
    let test = "conformance::client_assertions_with_private_key_jwt";
    let Some(node) = node_env(test) else { return };
    for alg in [Alg::EdDSA, Alg::ES256] {
        for transport in [Transport::Http, Transport::Tls] {
            let Some(c) = Conformance::start(test, alg, transport) else {
                return;
            };
            let out = c.node(&node, "client_assertion.mjs");
            check_client_assertion(&out, &c);
        }
    }
}

/// One cell of the matrix: the Node flow, then the Python checks, against one broker.
async fn outside_libraries(test: &str, alg: Alg, transport: Transport) {
    let node = node_env(test);
    let python = python_env(test);
    if node.is_none() && python.is_none() {
        return;
    }
    let Some(c) = Conformance::start(test, alg, transport) else {
        return;
    };
    if let Some(node) = &node {
        let out = c.node(node, "flow.mjs");
        check_node_flow(&out, &c);
    }
    if let Some(python) = &python {
        let out = c.python(python).await;
        check_python(&out, &c).await;
    }
}

// ---------------------------------------------------------------------------------------
// What the outputs must say
// ---------------------------------------------------------------------------------------

/// `flow.mjs`: the metadata names the broker's real endpoints, and the token lives and
/// dies through them.
fn check_node_flow(out: &Value, c: &Conformance) {
    let base = c.issuer.as_str();
    let alg = c.alg.name();

    let d = &out["discovery"]["oauth2"];
    assert_eq!(d["issuer"], base, "{out}");
    assert_eq!(d["token_endpoint"], format!("{base}/oauth2/token"), "{out}");
    assert_eq!(
        d["introspection_endpoint"],
        format!("{base}/oauth2/introspect"),
        "{out}"
    );
    assert_eq!(
        d["revocation_endpoint"],
        format!("{base}/oauth2/revoke"),
        "{out}"
    );
    let jwks_uri = format!("{base}/.well-known/jwks.json");
    assert_eq!(d["jwks_uri"], jwks_uri, "{out}");
    assert_eq!(
        d["access_token_signing_alg_values_supported"],
        json!([alg]),
        "{out}"
    );
    let oidc = &out["discovery"]["oidc"];
    assert_eq!(oidc["issuer"], base, "{out}");
    assert_eq!(oidc["jwks_uri"], jwks_uri, "{out}");
    assert_eq!(oidc["id_token_signing_alg_values_supported"], json!([alg]));

    let token = &out["token"];
    assert!(
        token["token_type"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("bearer")),
        "{out}"
    );
    assert_eq!(token["issued_token_type"], TOKEN_TYPE_ACCESS_TOKEN, "{out}");
    assert_eq!(token["scope"], TASK_SCOPE, "{out}");
    let expires_in = token["expires_in"].as_u64().unwrap_or(0);
    assert!((1..=TASK_MAX_TTL).contains(&expires_in), "{out}");

    // oauth4webapi's RFC 9068 validation and jose agree on the same token.
    let at = &out["rfc9068"];
    assert_eq!(at["iss"], base, "{out}");
    assert_eq!(at["sub"], IDENTITY, "{out}");
    assert_eq!(at["client_id"], IDENTITY, "{out}");
    assert_eq!(at["aud"], PROD_LEDGER, "{out}");
    assert_eq!(at["scope"], TASK_SCOPE, "{out}");
    let jti = at["jti"].as_str().expect("the token has a jti");
    assert_eq!(
        out["jose"],
        json!({"alg": alg, "typ": "at+jwt", "jti": jti})
    );

    // Active for the resource server; revoked by its owner; then exactly inactive.
    let intro = &out["introspection"];
    assert_eq!(intro["active"], true, "{out}");
    assert_eq!(intro["sub"], IDENTITY, "{out}");
    assert_eq!(intro["client_id"], IDENTITY, "{out}");
    assert_eq!(intro["jti"], jti, "{out}");
    assert_eq!(intro["scope"], TASK_SCOPE, "{out}");
    assert_eq!(out["revoked"], true, "{out}");
    assert_eq!(
        out["introspection_after_revocation"],
        json!({"active": false}),
        "{out}"
    );
    assert!(
        c.broker
            .records_of("revoked")
            .iter()
            .any(|r| r["jti"] == jti && r["detail"]["outcome"] == "revoked"),
        "the revocation through the metadata's endpoint is in the audit log"
    );
}

/// `verify.py`, with what each library does by default.
async fn check_python(out: &Value, c: &Conformance) {
    // authlib's metadata validation passes outright. (It treats an empty
    // `response_types_supported` as missing; the broker, which has no authorization
    // endpoint, publishes the registered `none`.)
    let m = &out["metadata"];
    assert_eq!(m["ok"], true, "authlib validates the metadata: {out}");
    assert_eq!(m["refused_fields"], json!({}), "{out}");

    // authlib's RFC 9068 validator and joserfc, with their defaults. Finding (issue 17
    // item 4): both refuse `EdDSA` unless the user opts in (joserfc registers it as not
    // recommended, RFC 9864 deprecates the polymorphic name); that refusal is the expected
    // outcome for an EdDSA broker. ES256 must pass with no configuration at all.
    for lib in ["authlib_rfc9068", "joserfc"] {
        let r = &out[lib];
        match c.alg {
            Alg::ES256 => {
                assert_eq!(r["ok"], true, "{lib} verifies an ES256 token: {out}");
                assert_eq!(r["sub"], IDENTITY, "{out}");
            }
            Alg::EdDSA => {
                assert_eq!(r["ok"], false, "{lib} refuses EdDSA by default: {out}");
                let why = format!("{} {}", r["error"], r["cause"]);
                assert!(
                    why.contains("UnsupportedAlgorithmError")
                        && why.contains("'EdDSA' is not recommended"),
                    "{lib} refuses EdDSA for its algorithm, nothing else: {out}"
                );
            }
        }
    }

    // PyJWT asks for the algorithm list, and takes both.
    let p = &out["pyjwt"];
    assert_eq!(p["ok"], true, "PyJWT verifies the token: {out}");
    assert_eq!(p["alg"], c.alg.name(), "{out}");
    assert_eq!(p["sub"], IDENTITY, "{out}");
}

/// `client_assertion.mjs`: advertised at every endpoint, and accepted at each.
fn check_client_assertion(out: &Value, c: &Conformance) {
    assert_eq!(
        out["client_assertion"], "advertised",
        "the metadata must list private_key_jwt for the token endpoint ({:?} over {:?}): {out}",
        c.alg, c.transport
    );
    for endpoint in ["token", "introspection", "revocation"] {
        assert!(
            out["auth_methods"][endpoint]
                .as_array()
                .is_some_and(|m| m.iter().any(|x| x == "private_key_jwt")),
            "{endpoint}_endpoint_auth_methods_supported lists private_key_jwt: {out}"
        );
    }
    for grant in ["client_credentials", "token_exchange"] {
        assert_eq!(
            out[grant],
            json!({"sub": IDENTITY, "client_id": IDENTITY, "scope": TASK_SCOPE}),
            "{grant} with a client assertion: {out}"
        );
    }
    assert_eq!(
        out["introspection"],
        json!({"active": true, "sub": IDENTITY, "client_id": IDENTITY}),
        "{out}"
    );
    assert_eq!(out["revoked"], true, "{out}");
    assert_eq!(out["introspection_after_revocation"]["active"], false);
}

// ---------------------------------------------------------------------------------------
// The broker under test
// ---------------------------------------------------------------------------------------

/// The broker's signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    EdDSA,
    ES256,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::ES256 => "ES256",
        }
    }
}

/// Plain HTTP on loopback, or TLS with a test CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Http,
    Tls,
}

/// A running broker whose issuer is its own URL, and what the scripts need to reach it.
struct Conformance {
    alg: Alg,
    transport: Transport,
    /// `http(s)://127.0.0.1:PORT`: the issuer, and where the broker listens.
    issuer: String,
    /// The test CA (TLS only).
    ca: Option<PathBuf>,
    broker: TestBroker,
    /// Owns the CA's files.
    _pki: Option<Pki>,
}

impl Conformance {
    /// Starts the broker, or `None` (skip) when TLS needs `openssl` and it is missing
    /// outside CI. Policies: the payments workload and a resource server allowed to
    /// introspect (`broker_tests::admin`); `[state]` for revocations.
    fn start(test: &str, alg: Alg, transport: Transport) -> Option<Self> {
        let (pki, tls) = match transport {
            Transport::Http => (None, None),
            Transport::Tls => {
                if !pki::tools_present(test, &["openssl"]) {
                    return None;
                }
                let pki = Pki::new();
                let ca = pki.ca("server-ca", "Conformance Test CA");
                let server = ca.issue(&LeafSpec::server("server", "broker.test"));
                let tls = TlsOptions {
                    cert: server.cert.clone(),
                    key: server.key.clone(),
                    server_ca: ca.cert.clone(),
                    client_cas: Vec::new(),
                };
                (Some(pki), Some(tls))
            }
        };
        let ca = tls.as_ref().map(|t| t.server_ca.clone());
        let mut broker = TestBroker::prepare(Options {
            policies: revocation_policies(),
            tls,
            extra_toml: "\n[state]\ndir = \"state\"\n".to_owned(),
            ..Options::default()
        });
        replace_signing_key(&broker.key_dir(), alg);

        // The issuer must be the URL the libraries reach, so the port is chosen first
        // (free a moment ago; a lost race is retried on another port).
        let scheme = match transport {
            Transport::Http => "http",
            Transport::Tls => "https",
        };
        let template = std::fs::read_to_string(broker.config_path()).expect("the config");
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = free_port();
            let issuer = format!("{scheme}://127.0.0.1:{port}");
            let config = edit(&template, &issuer, port, alg);
            std::fs::write(broker.config_path(), config).expect("writing the config");
            match broker.launch() {
                Ok(()) => {
                    assert_eq!(
                        broker.base_url(),
                        issuer,
                        "the broker listens at its issuer"
                    );
                    return Some(Self {
                        alg,
                        transport,
                        issuer,
                        ca,
                        broker,
                        _pki: pki,
                    });
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        panic!("the broker did not start on three free ports: {last_error}");
    }

    /// Runs a Node script of the installed project with every input it may read.
    fn node(&self, node: &Path, script: &str) -> Value {
        let mut cmd = Command::new("node");
        cmd.arg(node.join(script))
            .current_dir(node)
            .env("BROKER_ISSUER_URL", &self.issuer)
            .env("SUBJECT_TOKEN", workload_jwt(SUBJECT))
            .env("CLIENT_ID", IDENTITY)
            .env("CLIENT_SUBJECT", SUBJECT)
            .env("RS_TOKEN", workload_jwt(RS_SUBJECT))
            .env("RS_CLIENT_ID", RS_IDENTITY)
            .env("RS_SUBJECT", RS_SUBJECT)
            .env("TASK", TASK)
            .env("EXPECTED_AUDIENCE", PROD_LEDGER)
            .env("EXPECTED_ALG", self.alg.name())
            .env("ASSERTION_KEY_FILE", ISSUER_EC_KEY)
            .env("ASSERTION_ISSUER", ISSUER)
            .env("ASSERTION_KID", EC_KID);
        if let Some(ca) = &self.ca {
            cmd.env("NODE_EXTRA_CA_CERTS", ca);
        }
        self.script_output(&mut cmd, script)
    }

    /// Runs `verify.py` in the venv on a token the harness has just minted.
    async fn python(&self, venv: &Path) -> Value {
        let reply = self
            .broker
            .token(&TokenRequest::exchange(&workload_jwt(SUBJECT), TASK))
            .await;
        assert_eq!(reply.status, 200, "minting a token: {}", reply.text);
        let token = reply.access_token().expect("access_token");
        let mut cmd = Command::new(venv.join("bin").join("python"));
        cmd.arg(Path::new(PYTHON_SRC).join("verify.py"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("BROKER_ISSUER_URL", &self.issuer)
            .env("ACCESS_TOKEN", token)
            .env("EXPECTED_AUDIENCE", PROD_LEDGER)
            .env("EXPECTED_ALG", self.alg.name());
        if let Some(ca) = &self.ca {
            cmd.env("CA_FILE", ca);
        }
        self.script_output(&mut cmd, "verify.py")
    }

    /// Runs a script to completion; it must exit 0 and print one JSON object.
    fn script_output(&self, cmd: &mut Command, script: &str) -> Value {
        cmd.stdin(Stdio::null());
        let out = CmdOutput::of(cmd);
        let what = format!("{script} ({:?} over {:?})", self.alg, self.transport);
        let json: Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("{what} printed no JSON ({e}): {out}"));
        assert!(
            out.success(),
            "{what} failed: {out}\n--- broker stderr ---\n{}",
            self.broker.stderr()
        );
        json
    }
}

/// A valid workload JWT of the trusted test issuer (ES256 fixture key) for `subject`.
fn workload_jwt(subject: &str) -> String {
    sign(IssuerKey::Ec, &workload_claims(subject))
}

/// Replaces the key `TestBroker::prepare` made with one of `alg`.
fn replace_signing_key(key_dir: &Path, alg: Alg) {
    for e in std::fs::read_dir(key_dir).expect("reading the key dir") {
        std::fs::remove_file(e.expect("dir entry").path()).expect("removing a key");
    }
    let out = run_broker([
        "keygen".as_ref(),
        "--alg".as_ref(),
        alg.name().as_ref(),
        "--dir".as_ref(),
        key_dir.as_os_str(),
    ]);
    assert!(out.success(), "broker keygen --alg {}: {out}", alg.name());
}

/// The generated config with the issuer, the listen port and `[signing] algorithm` set.
fn edit(template: &str, issuer: &str, port: u16, alg: Alg) -> String {
    let mut config = template.to_owned();
    for (from, to) in [
        (
            format!("issuer = \"{BROKER_ISSUER}\""),
            format!("issuer = \"{issuer}\""),
        ),
        (
            "addr = \"127.0.0.1:0\"".to_owned(),
            format!("addr = \"127.0.0.1:{port}\""),
        ),
        (
            "key_dir = \"keys\"".to_owned(),
            format!("key_dir = \"keys\"\nalgorithm = \"{}\"", alg.name()),
        ),
    ] {
        assert!(config.contains(&from), "the generated config has {from}");
        config = config.replacen(&from, &to, 1);
    }
    config
}

// ---------------------------------------------------------------------------------------
// Installing the outside libraries
// ---------------------------------------------------------------------------------------

/// Where the libraries are installed, kept between runs: `target/tmp/conformance`.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("conformance")
}

/// One install at a time within this test binary.
static INSTALL: Mutex<()> = Mutex::new(());

/// Whether `program args` runs and exits 0; its stdout.
fn runs(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The runtime gate of `pki::tool_gate`: `true` to run; a note and `false` to skip
/// outside CI; a panic under `CI=true`.
fn runtime_present(test: &str, missing: &[&str]) -> bool {
    match pki::tool_gate(missing, pki::is_ci()) {
        Ok(true) => true,
        Ok(false) => {
            let _ = writeln!(
                std::io::stderr(),
                "note: skipping part of {test}: it needs {} (not found); under CI=true this fails",
                missing.join(", ")
            );
            false
        }
        Err(why) => panic!("{test}: {why}"),
    }
}

/// Hex SHA-256 of the lock file and the runtime's version: the install stamp.
fn stamp(lock: &Path, runtime_version: &str) -> String {
    let mut bytes = std::fs::read(lock)
        .unwrap_or_else(|e| panic!("reading the lock file {}: {e}", lock.display()));
    bytes.extend_from_slice(runtime_version.as_bytes());
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs an install command; panics with its output unless it exits 0.
fn install(cmd: &mut Command) {
    cmd.stdin(Stdio::null());
    let shown = format!("{cmd:?}");
    let out = CmdOutput::of(cmd);
    assert!(out.success(), "{shown} failed: {out}");
}

/// Copies `from` to `to` through a temp file and a rename, so that a reader never sees
/// half a file; skipped when `to` already has the same bytes.
fn install_file(from: &Path, to: &Path) {
    let bytes = std::fs::read(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display()));
    if std::fs::read(to).is_ok_and(|b| b == bytes) {
        return;
    }
    let tmp = to.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &bytes).expect("writing a script copy");
    std::fs::rename(&tmp, to).expect("installing a script copy");
}

/// The Node project installed (`npm ci` from the lock file) with the scripts beside its
/// `node_modules` (ES modules resolve packages from the script's own directory), or
/// `None` when `node`/`npm` are missing outside CI.
fn node_env(test: &str) -> Option<PathBuf> {
    let node_version = runs("node", &["--version"]);
    let mut missing = Vec::new();
    if node_version.is_none() {
        missing.push("node");
    }
    if runs("npm", &["--version"]).is_none() {
        missing.push("npm");
    }
    if !runtime_present(test, &missing) {
        return None;
    }
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = cache_dir().join("node");
    std::fs::create_dir_all(&dir).expect("creating the Node cache dir");
    let src = Path::new(NODE_SRC);
    let want = stamp(
        &src.join("package-lock.json"),
        node_version.as_deref().unwrap_or_default(),
    );
    let stamp_file = dir.join(".installed");
    let installed = dir.join("node_modules").is_dir()
        && std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(want.as_str());
    if !installed {
        for f in ["package.json", "package-lock.json"] {
            install_file(&src.join(f), &dir.join(f));
        }
        install(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
                .current_dir(&dir),
        );
        std::fs::write(&stamp_file, &want).expect("writing the install stamp");
    }
    for e in std::fs::read_dir(src).expect("reading the Node scripts") {
        let p = e.expect("dir entry").path();
        if p.extension().is_some_and(|x| x == "mjs") {
            install_file(&p, &dir.join(p.file_name().expect("file name")));
        }
    }
    Some(dir)
}

/// A venv with the pinned requirements (`pip install --require-hashes`), or `None` when
/// `python3 -m venv` is missing outside CI.
pub(crate) fn python_env(test: &str) -> Option<PathBuf> {
    let version = runs("python3", &["--version"]);
    // Debian's python3 has `venv` but not `ensurepip` without python3-venv.
    let venv_ok = runs("python3", &["-c", "import venv, ensurepip"]).is_some();
    let missing: &[&str] = if version.is_none() {
        &["python3"]
    } else if !venv_ok {
        &["python3 -m venv (python3-venv)"]
    } else {
        &[]
    };
    if !runtime_present(test, missing) {
        return None;
    }
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let venv = cache_dir().join("python").join("venv");
    let requirements = Path::new(PYTHON_SRC).join("requirements.txt");
    let want = stamp(&requirements, version.as_deref().unwrap_or_default());
    let stamp_file = cache_dir().join("python").join(".installed");
    let installed = venv.join("bin").join("python").exists()
        && std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(want.as_str());
    if !installed {
        if venv.exists() {
            std::fs::remove_dir_all(&venv).expect("removing a stale venv");
        }
        install(Command::new("python3").arg("-m").arg("venv").arg(&venv));
        install(
            Command::new(venv.join("bin").join("python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--require-hashes",
                    "-r",
                ])
                .arg(&requirements),
        );
        std::fs::write(&stamp_file, &want).expect("writing the install stamp");
    }
    Some(venv)
}

/// Runs the venv's python with `args`, `input` as JSON on stdin; panics (naming `what`)
/// unless it succeeds; returns the JSON it prints.
pub(crate) fn python_json(
    venv: &Path,
    args: &[&std::ffi::OsStr],
    input: &serde_json::Value,
    what: &str,
) -> serde_json::Value {
    use std::io::Write as _;
    let mut child = Command::new(venv.join("bin").join("python"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running the venv's python");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.to_string().as_bytes())
        .expect("writing to python");
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what} prints JSON: {e}"))
}
