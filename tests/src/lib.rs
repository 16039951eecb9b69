#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The end-to-end test harness: runs the real `broker` binary the way an operator would.
//!
//! It owns everything a test needs around the broker and nothing inside it:
//!
//! - a fake workload-identity issuer ([`ISSUER`]) whose test-only keys live in
//!   `tests/fixtures/`, signing workload JWTs with `jsonwebtoken` ([`sign`], [`rs256`]),
//!   and hand-built attack tokens where `jsonwebtoken` refuses to make them ([`unsigned`],
//!   [`hs256_with_issuer_public_key`], [`with_bad_signature`]);
//! - [`TestBroker`]: a temp dir with a config, signing keys made by `broker keygen`, a
//!   policy directory and the issuer's JWKS, and the `broker serve` child process listening
//!   on a free loopback port; it is killed when the value is dropped;
//! - an HTTP client for `/oauth2/token` ([`TokenRequest`], [`Reply`]) and an independent
//!   verifier of the broker's tokens that uses only the published JWKS
//!   ([`TestBroker::verify_access_token`]);
//! - readers for the audit log ([`read_records`]) and runners for the CLI tools
//!   ([`broker_command`], [`verify_audit`], [`lint`]);
//! - for mTLS (issue 3): a PKI made by the `openssl` CLI ([`pki`]), the real `curl` as the
//!   client ([`curl`]), a TLS listener with `[[client_ca]]` bundles ([`TlsOptions`]) and
//!   the registry and CAs the mTLS tests share ([`mtls`]);
//! - for `/metrics`: sample readers and the `promtool` runner ([`prom`]).
//!
//! The harness never links the broker library: everything goes through the binary, its
//! files and its HTTP API, so the tests see exactly what a user sees. It never starts a
//! shared server, and every test gets its own temp dir, so tests do not depend on order.

use std::ffi::OsStr;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use policy::{Identity, Matcher, PolicyFile, Task, entries};
use serde_json::{Value, json};
use tempfile::TempDir;

pub mod admin;
pub mod break_glass;
pub mod curl;
pub mod governance;
pub mod mtls;
pub mod oidc_idp;
pub mod pki;
pub mod policy;
pub mod postgres;
pub mod prom;
pub mod sdk_support;
pub mod webdriver;

/// `iss` of the test workload issuer (the one the broker is configured to trust).
pub const ISSUER: &str = "https://issuer.test";
/// The audience workload JWTs must carry for the broker to accept them.
pub const ISSUER_AUDIENCE: &str = "jit-broker";
/// `iss` of the tokens the broker under test mints.
pub const BROKER_ISSUER: &str = "https://broker.test";
/// `kid` of the RSA fixture key in `issuer-jwks.json`.
pub const RSA_KID: &str = "test-rsa-1";
/// `kid` of the EC P-256 fixture key in `issuer-jwks.json`.
pub const EC_KID: &str = "test-ec-1";

/// The registered prod identity of the default policies.
pub const IDENTITY: &str = "payments-api";
/// The workload-JWT subject that proves [`IDENTITY`].
pub const SUBJECT: &str = "system:serviceaccount:payments:api";
/// A registered identity whose registration expired in 2020.
pub const EXPIRED_IDENTITY: &str = "legacy-job";
/// The workload-JWT subject that proves [`EXPIRED_IDENTITY`].
pub const EXPIRED_SUBJECT: &str = "system:serviceaccount:legacy:job";
/// A subject no identity is registered for.
pub const UNKNOWN_SUBJECT: &str = "system:serviceaccount:nobody:stranger";

/// [`IDENTITY`]'s main task: `ledger:read ledger:write` on [`PROD_LEDGER`], `max_ttl` 10m.
pub const TASK: &str = "ledger-write";
/// The scopes of [`TASK`], in policy order.
pub const TASK_SCOPES: &[&str] = &["ledger:read", "ledger:write"];
/// `max_ttl` of [`TASK`], seconds.
pub const TASK_MAX_TTL: u64 = 600;
/// A task of [`IDENTITY`] callable only from `10.0.0.0/8`.
pub const OFFICE_TASK: &str = "ledger-office";
/// The prod audience of [`TASK`].
pub const PROD_LEDGER: &str = "https://ledger.prod.example.org";
/// A catalogued audience in the `dev` environment.
pub const DEV_LEDGER: &str = "https://ledger.dev.example.org";

/// RFC 8693 token-exchange grant type.
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 6749 client-credentials grant type (with RFC 8705 `tls_client_auth`).
pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
/// RFC 8693 JWT token type (the `subject_token_type` of workload JWTs).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// RFC 8693 access-token token type (the `issued_token_type` of the answer).
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

const ISSUER_RSA_PEM: &str = include_str!("../fixtures/issuer-rsa.pem");
const ISSUER_RSA_PUB_PEM: &str = include_str!("../fixtures/issuer-rsa.pub.pem");
const ISSUER_EC_PEM: &str = include_str!("../fixtures/issuer-ec.pem");
const ISSUER_JWKS: &str = include_str!("../fixtures/issuer-jwks.json");

/// How long `broker serve` may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` waits after SIGTERM before it kills the broker.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Time and the binary
// ---------------------------------------------------------------------------------------

/// Seconds since the Unix epoch, from the system clock (workload JWTs are checked against
/// the broker's real clock, so tests build them from real timestamps).
#[allow(clippy::disallowed_methods)]
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The `broker` binary under test: `$BROKER_BIN`, else `target/<profile>/broker` next to
/// this test binary's `deps/` directory.
pub fn broker_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BROKER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/e2e-<hash> → target/debug/broker
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(format!("broker{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "the broker binary {} is missing: build it: cargo build -p broker (or set BROKER_BIN)",
        bin.display()
    );
    bin
}

/// A `broker` command with the given arguments (not yet run).
pub fn broker_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(broker_bin());
    cmd.args(args).stdin(Stdio::null());
    cmd
}

/// What a finished CLI run printed and how it exited.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CmdOutput {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Runs `cmd` to completion.
    pub fn of(cmd: &mut Command) -> Self {
        let out = cmd.output().expect("running a broker command");
        Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `broker` with `args` and waits for it.
pub fn run_broker<I, S>(args: I) -> CmdOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    CmdOutput::of(&mut broker_command(args))
}

/// `broker audit verify AUDIT_DIR --key-dir KEY_DIR`.
pub fn verify_audit(audit_dir: &Path, key_dir: &Path) -> CmdOutput {
    run_broker([
        OsStr::new("audit"),
        OsStr::new("verify"),
        audit_dir.as_os_str(),
        OsStr::new("--key-dir"),
        key_dir.as_os_str(),
    ])
}

/// `broker policy lint DIR [--config CONFIG]`.
pub fn lint(policy_dir: &Path, config: Option<&Path>) -> CmdOutput {
    let mut cmd = broker_command([
        OsStr::new("policy"),
        OsStr::new("lint"),
        policy_dir.as_os_str(),
    ]);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    CmdOutput::of(&mut cmd)
}

// ---------------------------------------------------------------------------------------
// The fake workload issuer
// ---------------------------------------------------------------------------------------

/// Which fixture key signs a workload JWT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerKey {
    /// RSA-2048, RS256, `kid` [`RSA_KID`].
    Rsa,
    /// EC P-256, ES256, `kid` [`EC_KID`].
    Ec,
}

impl IssuerKey {
    fn algorithm(self) -> Algorithm {
        match self {
            IssuerKey::Rsa => Algorithm::RS256,
            IssuerKey::Ec => Algorithm::ES256,
        }
    }

    /// The `kid` the issuer's JWKS lists this key under.
    pub fn kid(self) -> &'static str {
        match self {
            IssuerKey::Rsa => RSA_KID,
            IssuerKey::Ec => EC_KID,
        }
    }

    fn encoding_key(self) -> &'static EncodingKey {
        static RSA: OnceLock<EncodingKey> = OnceLock::new();
        static EC: OnceLock<EncodingKey> = OnceLock::new();
        match self {
            IssuerKey::Rsa => RSA.get_or_init(|| {
                EncodingKey::from_rsa_pem(ISSUER_RSA_PEM.as_bytes()).expect("fixture RSA key")
            }),
            IssuerKey::Ec => EC.get_or_init(|| {
                EncodingKey::from_ec_pem(ISSUER_EC_PEM.as_bytes()).expect("fixture EC key")
            }),
        }
    }
}

/// The issuer's JWKS as the broker is configured with it (`tests/fixtures/issuer-jwks.json`).
pub fn issuer_jwks() -> &'static str {
    ISSUER_JWKS
}

/// Valid workload-JWT claims for `subject`: `iss` [`ISSUER`], `aud` `[ISSUER_AUDIENCE]`,
/// issued now, valid for 10 minutes. Tests edit the returned object to build bad ones.
pub fn workload_claims(subject: &str) -> Value {
    let now = now_secs();
    json!({
        "iss": ISSUER,
        "sub": subject,
        "aud": [ISSUER_AUDIENCE],
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    })
}

/// Signs `claims` with a fixture key, `kid` as listed in the issuer's JWKS.
pub fn sign(key: IssuerKey, claims: &Value) -> String {
    sign_with_kid(key, key.kid(), claims)
}

/// Signs `claims` with a fixture key under an arbitrary `kid`.
pub fn sign_with_kid(key: IssuerKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(key.algorithm());
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key.encoding_key()).expect("signing a workload JWT")
}

/// A valid RS256 workload JWT for `subject`.
pub fn rs256(subject: &str) -> String {
    sign(IssuerKey::Rsa, &workload_claims(subject))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An unsigned JWT (`alg: none`, empty signature) naming the RSA key's `kid`.
pub fn unsigned(claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT", "kid": RSA_KID});
    format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// The algorithm-confusion attack: an HS256 JWT whose HMAC key is the issuer's RSA
/// *public* key PEM (what a verifier that trusts the header's `alg` would use).
pub fn hs256_with_issuer_public_key(claims: &Value) -> String {
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": RSA_KID});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key =
        aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, ISSUER_RSA_PUB_PEM.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

/// `token` with one bit of its signature flipped (header and claims untouched).
pub fn with_bad_signature(token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').expect("a JWS compact token");
    let mut sig = URL_SAFE_NO_PAD.decode(sig).expect("base64url signature");
    let mid = sig.len() / 2;
    sig[mid] ^= 0x01;
    format!("{input}.{}", b64(&sig))
}

/// The claims of a JWT, decoded WITHOUT checking anything (for reading `jti`s).
pub fn insecure_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url payload"))
        .expect("JSON claims")
}

// ---------------------------------------------------------------------------------------
// Policies and config
// ---------------------------------------------------------------------------------------

/// The file of [`IDENTITY`] (prod): tasks [`TASK`] (10m) and [`OFFICE_TASK`]
/// (`source_cidrs = ["10.0.0.0/8"]`).
pub fn payments_file() -> PolicyFile {
    PolicyFile::new(
        Identity::prod(
            IDENTITY,
            "team-payments",
            "alice@example.com",
            "Charge cards through the ledger API",
            "CHG-1234",
        )
        .approved_by("bob@example.com")
        .third_party(false)
        .jwt(SUBJECT),
    )
    .task(Task::new(TASK, PROD_LEDGER, TASK_SCOPES, "10m"))
    .task(Task::new(OFFICE_TASK, PROD_LEDGER, &["ledger:read"], "5m").source_cidrs(&["10.0.0.0/8"]))
}

/// [`payments_file`]'s text.
pub fn payments_policy() -> String {
    payments_file().render()
}

/// The file of [`EXPIRED_IDENTITY`]: registration expired on 2020-01-01.
pub fn expired_file() -> PolicyFile {
    PolicyFile::new(
        Identity::prod(
            EXPIRED_IDENTITY,
            "team-legacy",
            "erin@example.com",
            "A retired nightly job",
            "CHG-0001",
        )
        .expires("2020-01-01")
        .jwt(EXPIRED_SUBJECT),
    )
    .task(Task::new(
        "ledger-read",
        PROD_LEDGER,
        &["ledger:read"],
        "5m",
    ))
}

/// [`expired_file`]'s text.
pub fn expired_policy() -> String {
    expired_file().render()
}

/// The registry id of the CI identity of [`ci_policy`].
pub const CI_IDENTITY: &str = "payments-ci";
/// The subject of the CI identity's workload JWTs.
pub const CI_SUBJECT: &str = "repo:acme/payments";

/// A CI identity ([`CI_IDENTITY`], task `deploy`) that a workload JWT from [`ISSUER`] for
/// [`CI_SUBJECT`] proves only with the exact claims `repository = "acme/payments"` and
/// `ref = "refs/heads/main"`.
pub fn ci_policy() -> String {
    PolicyFile::new(
        Identity::prod(
            CI_IDENTITY,
            "team-payments",
            "alice@example.com",
            "Deploy the payments service from CI",
            "CHG-77",
        )
        .matcher(
            Matcher::jwt(CI_SUBJECT)
                .claims(&[("repository", "acme/payments"), ("ref", "refs/heads/main")]),
        ),
    )
    .task(Task::new("deploy", PROD_LEDGER, &["ledger:read"], "5m"))
    .render()
}

/// The default registry: [`payments_file`] and [`expired_file`].
pub fn default_registry() -> Vec<PolicyFile> {
    vec![payments_file(), expired_file()]
}

/// The default policy directory: `payments-api.toml` and `legacy-job.toml`.
pub fn default_policies() -> Vec<(String, String)> {
    entries(&default_registry())
}

/// What [`TestBroker`] sets up. `Default` is a working broker with [`default_policies`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Policy files: (file name, TOML).
    pub policies: Vec<(String, String)>,
    /// `listen.max_body_bytes`.
    pub max_body_bytes: Option<usize>,
    /// `audit.segment_max_bytes`.
    pub segment_max_bytes: Option<u64>,
    /// `audit.dir` exactly as written in the config (default `"audit"`, relative to the
    /// temp dir).
    pub audit_dir: String,
    /// Run the broker under `ulimit -f N` (RLIMIT_FSIZE in 512-byte blocks).
    pub file_size_limit_blocks: Option<u64>,
    /// Run the broker with every capability dropped (`setpriv --bounding-set=-all`), so
    /// that file permissions bind it even when the tests run as root.
    pub without_capabilities: bool,
    /// Serve TLS (and mTLS with `client_cas`) instead of loopback plain HTTP.
    pub tls: Option<TlsOptions>,
    /// TOML appended verbatim to the generated config (e.g. `[state]`, `[[admin]]`).
    pub extra_toml: String,
    /// Where the broker gets the test issuer's keys (default: the fixture `jwks_file`).
    pub issuer_keys: IssuerKeySource,
    /// Environment variables set on the broker process (e.g. `SOFTHSM2_CONF`).
    pub env: Vec<(String, String)>,
}

/// Where the broker gets the trusted test issuer's keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum IssuerKeySource {
    /// `jwks_file = "issuer-jwks.json"`: the fixture JWKS ([`issuer_jwks`]) in the temp dir.
    #[default]
    File,
    /// `jwks_uri = URL`, for [`ISSUER`].
    Uri(String),
    /// `discovery = true` for the issuer URL given here instead of [`ISSUER`] (the broker
    /// fetches `{url}/.well-known/openid-configuration`), so the test's policies and
    /// workload JWTs must name this issuer.
    Discovery(String),
}

/// The TLS listener of a test broker. The files are copied into the broker's dir
/// (`tls/server.pem`, `tls/server.key`, `tls/<name>-ca.pem`), which the config names with
/// relative paths; tests replace those copies to exercise the TLS reload.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// Server certificate chain (PEM) to install as `tls/server.pem`.
    pub cert: PathBuf,
    /// Server private key (PEM) to install as `tls/server.key`.
    pub key: PathBuf,
    /// The CA that signed `cert`: what the harness's own clients trust (not broker config).
    pub server_ca: PathBuf,
    /// `[[client_ca]]` entries, in order.
    pub client_cas: Vec<ClientCaOptions>,
}

/// One `[[client_ca]]`.
#[derive(Debug, Clone)]
pub struct ClientCaOptions {
    /// `name` (the audit records' `evidence.issuer`).
    pub name: String,
    /// The CA bundle (PEM) to install as `tls/<name>-ca.pem`.
    pub bundle: PathBuf,
    /// `trust_domain`, if any.
    pub trust_domain: Option<String>,
}

impl ClientCaOptions {
    /// The installed bundle's path relative to the broker's dir.
    pub fn installed(&self) -> String {
        format!("tls/{}-ca.pem", self.name)
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            policies: default_policies(),
            max_body_bytes: None,
            segment_max_bytes: None,
            audit_dir: "audit".to_owned(),
            file_size_limit_blocks: None,
            without_capabilities: false,
            tls: None,
            extra_toml: String::new(),
            issuer_keys: IssuerKeySource::File,
            env: Vec::new(),
        }
    }
}

/// Escapes `s` as a TOML basic string (with the quotes).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

/// The broker config file for `opts` (paths relative to the config's directory).
pub fn config_toml(opts: &Options) -> String {
    let mut listen = match &opts.tls {
        None => String::from("addr = \"127.0.0.1:0\"\ninsecure_http = true\n"),
        Some(_) => String::from(
            "addr = \"127.0.0.1:0\"\ntls_cert = \"tls/server.pem\"\ntls_key = \"tls/server.key\"\n",
        ),
    };
    let mut client_cas = String::new();
    for ca in opts.tls.iter().flat_map(|t| &t.client_cas) {
        client_cas.push_str(&format!(
            "\n[[client_ca]]\nname   = {}\nbundle = {}\n",
            toml_str(&ca.name),
            toml_str(&ca.installed())
        ));
        if let Some(td) = &ca.trust_domain {
            client_cas.push_str(&format!("trust_domain = {}\n", toml_str(td)));
        }
    }
    if let Some(n) = opts.max_body_bytes {
        listen.push_str(&format!("max_body_bytes = {n}\n"));
    }
    let mut audit = format!("dir = {}\n", toml_str(&opts.audit_dir));
    if let Some(n) = opts.segment_max_bytes {
        audit.push_str(&format!("segment_max_bytes = {n}\n"));
    }
    let (trusted_issuer, issuer_keys) = match &opts.issuer_keys {
        IssuerKeySource::File => (
            toml_str(ISSUER),
            "jwks_file  = \"issuer-jwks.json\"".to_owned(),
        ),
        IssuerKeySource::Uri(uri) => (toml_str(ISSUER), format!("jwks_uri   = {}", toml_str(uri))),
        IssuerKeySource::Discovery(issuer) => (toml_str(issuer), "discovery  = true".to_owned()),
    };
    format!(
        r#"issuer = "{BROKER_ISSUER}"

[listen]
{listen}
[signing]
key_dir = "keys"

[audit]
{audit}
[policies]
dir = "policies"
reload_interval = "1s"

[[trusted_issuer]]
issuer     = {trusted_issuer}
audiences  = ["{ISSUER_AUDIENCE}"]
algorithms = ["RS256", "ES256"]
{issuer_keys}
leeway     = "5s"

[[audience]]
uri         = "{PROD_LEDGER}"
environment = "prod"

[[audience]]
uri         = "{DEV_LEDGER}"
environment = "dev"

[[audience]]
uri         = "https://reports.prod.example.org"
environment = "prod"
{client_cas}{}"#,
        opts.extra_toml
    )
}

/// Writes `config.toml`, `issuer-jwks.json` and `policies/` for `opts` into `dir` (no keys)
/// and returns the config path. Used by the lint tests, which need a catalogue but no
/// running broker.
pub fn write_config(dir: &Path, opts: &Options) -> PathBuf {
    std::fs::write(dir.join("issuer-jwks.json"), ISSUER_JWKS).expect("writing the JWKS");
    if let Some(tls) = &opts.tls {
        let tls_dir = dir.join("tls");
        std::fs::create_dir_all(&tls_dir).expect("creating the tls dir");
        let copy = |from: &Path, to: &str| {
            std::fs::copy(from, dir.join(to))
                .unwrap_or_else(|e| panic!("installing {} as {to}: {e}", from.display()));
        };
        copy(&tls.cert, "tls/server.pem");
        copy(&tls.key, "tls/server.key");
        for ca in &tls.client_cas {
            copy(&ca.bundle, &ca.installed());
        }
    }
    write_policies(&dir.join("policies"), &opts.policies);
    let path = dir.join("config.toml");
    std::fs::write(&path, config_toml(opts)).expect("writing the config");
    path
}

/// Writes `files` into `dir` (created if missing).
pub fn write_policies(dir: &Path, files: &[(String, String)]) {
    std::fs::create_dir_all(dir).expect("creating the policy dir");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("writing a policy file");
    }
}

// ---------------------------------------------------------------------------------------
// The audit log, read from outside
// ---------------------------------------------------------------------------------------

/// The segment files of an audit dir (`audit-NNNNNN.log`), in order.
pub fn segment_files(audit_dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(audit_dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", audit_dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".log"))
        })
        .collect();
    segs.sort();
    segs
}

/// Every complete record (a line ending in `\n`) of every segment, in order. A trailing
/// partial line (a write in flight, or a torn tail) is skipped.
pub fn read_records(audit_dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for seg in segment_files(audit_dir) {
        let text = std::fs::read_to_string(&seg)
            .unwrap_or_else(|e| panic!("reading {}: {e}", seg.display()));
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        for (i, line) in complete.lines().enumerate() {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("{} line {}: not JSON ({e}): {line}", seg.display(), i + 1)
            });
            out.push(v);
        }
    }
    out
}

/// Every byte of every file in the audit dir (segments and head anchor), for checking that
/// no token ever reaches the log.
pub fn audit_bytes(audit_dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(audit_dir).expect("reading the audit dir") {
        let p = e.expect("dir entry").path();
        if p.is_file() {
            out.extend(std::fs::read(&p).expect("reading an audit file"));
            out.push(b'\n');
        }
    }
    out
}

/// Whether `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Copies every file of `from` into `to` (created), for tampering with a copy.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating the copy dir");
    for e in std::fs::read_dir(from).expect("reading the dir to copy") {
        let p = e.expect("dir entry").path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().expect("file name"))).expect("copying");
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

/// A plain-HTTP client (keep-alive). reqwest is built without a TLS provider of its own,
/// so the process-wide rustls provider (aws-lc-rs, the workspace's one stack) is installed
/// first.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("building the HTTP client")
}

/// An HTTPS client (keep-alive) that trusts only `server_ca` (PEM) and presents no client
/// certificate; the TLS stack is rustls with the ring provider, like the broker's.
pub fn https_client(server_ca: &Path) -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pem = std::fs::read(server_ca)
        .unwrap_or_else(|e| panic!("reading the server CA {}: {e}", server_ca.display()));
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("a PEM CA certificate"))
        .build()
        .expect("building the HTTPS client")
}

/// A `POST /oauth2/token` form.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The form parameters, in order.
    pub params: Vec<(String, String)>,
}

impl TokenRequest {
    /// A token-exchange request: `subject_token` (a workload JWT) for `task`.
    pub fn exchange(subject_token: &str, task: &str) -> Self {
        Self {
            params: vec![
                ("grant_type".into(), GRANT_TOKEN_EXCHANGE.into()),
                ("subject_token".into(), subject_token.into()),
                ("subject_token_type".into(), TOKEN_TYPE_JWT.into()),
                ("task".into(), task.into()),
            ],
        }
    }

    /// An RFC 8705 `client_credentials` request for `task` (the credential is the TLS
    /// client certificate).
    pub fn client_credentials(task: &str) -> Self {
        Self {
            params: vec![
                ("grant_type".into(), GRANT_CLIENT_CREDENTIALS.into()),
                ("task".into(), task.into()),
            ],
        }
    }

    /// Adds a parameter.
    pub fn param(mut self, key: &str, value: &str) -> Self {
        self.params.push((key.into(), value.into()));
        self
    }

    /// Asks for `audience`.
    pub fn audience(self, audience: &str) -> Self {
        self.param("audience", audience)
    }

    /// Asks for `scope` (space separated).
    pub fn scope(self, scope: &str) -> Self {
        self.param("scope", scope)
    }

    /// Asks for `requested_ttl` seconds.
    pub fn ttl(self, secs: u64) -> Self {
        self.param("requested_ttl", &secs.to_string())
    }
}

/// An HTTP answer with its body parsed as JSON when it is JSON.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body as JSON (`Value::Null` if it is not JSON).
    pub body: Value,
    /// The raw body.
    pub text: String,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
}

impl Reply {
    /// Reads a response: status, `Retry-After`, and the body (as JSON where it is).
    pub async fn from(res: reqwest::Response) -> Self {
        let status = res.status().as_u16();
        let retry_after = res
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = res.text().await.expect("reading the body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self {
            status,
            body,
            text,
            retry_after,
        }
    }

    /// The OAuth `error` code, if any.
    pub fn error(&self) -> Option<&str> {
        self.body.get("error").and_then(Value::as_str)
    }

    /// The `access_token`, if any.
    pub fn access_token(&self) -> Option<&str> {
        self.body.get("access_token").and_then(Value::as_str)
    }
}

/// A token verified with the broker's published JWKS.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The JOSE header.
    pub header: Header,
    /// The claims.
    pub claims: Value,
}

// ---------------------------------------------------------------------------------------
// The broker process
// ---------------------------------------------------------------------------------------

/// Why `broker serve` did not come up.
#[derive(Debug)]
pub struct StartError {
    /// How it exited, if it did.
    pub status: Option<ExitStatus>,
    /// What it printed on stderr.
    pub stderr: String,
    /// What went wrong, as the harness saw it.
    pub what: String,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "broker did not start: {} (exit: {:?})\n--- broker stderr ---\n{}",
            self.what, self.status, self.stderr
        )
    }
}

impl std::error::Error for StartError {}

struct Running {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
}

/// The real `broker serve` in a temp dir of its own, on a free loopback port.
///
/// Dropping it kills the process (SIGKILL) and deletes the temp dir; [`TestBroker::stop`]
/// stops it gracefully (SIGTERM) and keeps the dir for inspection and restarts.
pub struct TestBroker {
    dir: TempDir,
    config: PathBuf,
    serve_args: Vec<std::ffi::OsString>,
    file_size_limit_blocks: Option<u64>,
    without_capabilities: bool,
    running: Option<Running>,
    last_stderr: Option<String>,
    base_url: String,
    client: reqwest::Client,
    server_ca: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl fmt::Debug for TestBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestBroker")
            .field("dir", &self.dir.path())
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl TestBroker {
    /// Writes a config for `opts` (keys via `broker keygen`, policies, issuer JWKS) into a
    /// fresh temp dir and starts the broker; panics with its stderr if it does not come up.
    pub fn start(opts: Options) -> Self {
        let mut b = Self::prepare(opts);
        if let Err(e) = b.launch() {
            panic!("{e}");
        }
        b
    }

    /// Writes everything [`TestBroker::start`] does, without starting the broker.
    // By value, like `start`, so that tests write `prepare(Options { .., ..Default::default() })`.
    #[allow(clippy::needless_pass_by_value)]
    pub fn prepare(opts: Options) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("broker-e2e-")
            .tempdir()
            .expect("creating a temp dir");
        let keys = dir.path().join("keys");
        // EdDSA, not keygen's ES256 default: the suite was written against Ed25519 keys;
        // the ES256 default is tested on its own (`issuance`, `dev`, `conformance`).
        let out = run_broker([
            OsStr::new("keygen"),
            OsStr::new("--dir"),
            keys.as_os_str(),
            OsStr::new("--alg"),
            OsStr::new("EdDSA"),
        ]);
        assert!(out.success(), "broker keygen failed: {out}");
        let config = write_config(dir.path(), &opts);
        let serve_args = vec![
            "serve".into(),
            "--config".into(),
            config.clone().into_os_string(),
        ];
        Self {
            dir,
            config,
            serve_args,
            file_size_limit_blocks: opts.file_size_limit_blocks,
            without_capabilities: opts.without_capabilities,
            running: None,
            last_stderr: None,
            base_url: String::new(),
            client: match &opts.tls {
                Some(t) => https_client(&t.server_ca),
                None => http_client(),
            },
            server_ca: opts.tls.as_ref().map(|t| t.server_ca.clone()),
            env: opts.env.clone(),
        }
    }

    /// `broker serve --dev --dev-dir <tempdir>/dev --dev-addr 127.0.0.1:0`, started.
    pub fn start_dev() -> Self {
        Self::start_dev_with(&[])
    }

    /// [`TestBroker::start_dev`] with `extra` after the `serve --dev` arguments (for
    /// example `--dev-alg EdDSA`).
    pub fn start_dev_with(extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("broker-e2e-dev-")
            .tempdir()
            .expect("creating a temp dir");
        let dev_dir = dir.path().join("dev");
        let mut serve_args: Vec<std::ffi::OsString> = vec![
            "serve".into(),
            "--dev".into(),
            "--dev-dir".into(),
            dev_dir.into_os_string(),
            "--dev-addr".into(),
            "127.0.0.1:0".into(),
        ];
        serve_args.extend(extra.iter().map(Into::into));
        let mut b = Self {
            config: dir.path().join("dev").join("config.toml"),
            dir,
            serve_args,
            file_size_limit_blocks: None,
            without_capabilities: false,
            running: None,
            last_stderr: None,
            base_url: String::new(),
            client: http_client(),
            server_ca: None,
            env: Vec::new(),
        };
        if let Err(e) = b.launch() {
            panic!("{e}");
        }
        b
    }

    /// Adds `arg` to the `broker serve` command line of the next [`TestBroker::launch`]
    /// (e.g. `--log-format json`).
    pub fn serve_arg(&mut self, arg: impl Into<std::ffi::OsString>) -> &mut Self {
        self.serve_args.push(arg.into());
        self
    }

    /// Starts (or restarts) the broker process and waits for its `listening on` line.
    pub fn launch(&mut self) -> Result<(), StartError> {
        assert!(self.running.is_none(), "the broker is already running");
        let bin = broker_bin();
        let mut cmd = match self.file_size_limit_blocks {
            Some(blocks) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -f {blocks}; exec \"$0\" \"$@\""))
                    .arg(&bin)
                    .args(&self.serve_args);
                c
            }
            None if self.without_capabilities => {
                // util-linux `setpriv`: no capability survives the exec, so root is bound by
                // file permissions like any other user.
                let mut c = Command::new("setpriv");
                c.args([
                    "--inh-caps=-all",
                    "--ambient-caps=-all",
                    "--bounding-set=-all",
                    "--",
                ])
                .arg(&bin)
                .args(&self.serve_args);
                c
            }
            None => {
                let mut c = Command::new(&bin);
                c.args(&self.serve_args);
                c
            }
        };
        cmd.current_dir(self.dir.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() && !self.env.iter().any(|(k, _)| k == "RUST_LOG")
        {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd.spawn().expect("spawning the broker");

        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let out = child.stdout.take().expect("piped stdout");
            let lines = Arc::clone(&stdout_lines);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().expect("stdout lock").push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let stderr_thread = {
            let mut err = child.stderr.take().expect("piped stderr");
            let text = Arc::clone(&stderr_text);
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    match err.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => text
                            .lock()
                            .expect("stderr lock")
                            .push_str(&String::from_utf8_lossy(&buf[..n])),
                    }
                }
            })
        };
        let mut running = Running {
            child,
            stdout: stdout_lines,
            stderr: stderr_text,
            stderr_thread: Some(stderr_thread),
        };

        let deadline = Instant::now() + START_TIMEOUT;
        let fail = |running: &mut Running, what: String| {
            let status = match running.child.try_wait() {
                Ok(Some(s)) => Some(s),
                _ => {
                    let _ = running.child.kill();
                    running.child.wait().ok()
                }
            };
            if let Some(t) = running.stderr_thread.take() {
                let _ = t.join();
            }
            StartError {
                status,
                stderr: running.stderr.lock().expect("stderr lock").clone(),
                what,
            }
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(fail(
                    &mut running,
                    format!("no `listening on` line within {START_TIMEOUT:?}"),
                ));
            }
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some(url) = line.trim().strip_prefix("listening on ") {
                        self.base_url = url.trim().trim_end_matches('/').to_owned();
                        self.running = Some(running);
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // stdout closed: the broker exited (or closed stdout) before listening.
                    let _ = running.child.wait();
                    return Err(fail(
                        &mut running,
                        "stdout closed before a `listening on` line".to_owned(),
                    ));
                }
            }
        }
    }

    /// Stops the broker with SIGTERM (graceful) and waits for it; SIGKILL after 20 s.
    /// Returns its exit status. The temp dir stays, so the broker can be relaunched.
    pub fn stop(&mut self) -> ExitStatus {
        let mut r = self.running.take().expect("the broker is not running");
        let pid = r.child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(s) = r.child.try_wait().expect("waiting for the broker") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = r.child.kill();
                let s = r.child.wait().expect("waiting for the killed broker");
                panic!(
                    "the broker ignored SIGTERM for {STOP_TIMEOUT:?} and was killed ({s})\n--- stderr ---\n{}",
                    r.stderr.lock().expect("stderr lock")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(t) = r.stderr_thread.take() {
            let _ = t.join();
        }
        self.last_stderr = Some(r.stderr.lock().expect("stderr lock").clone());
        status
    }

    /// Everything the running broker wrote to stderr so far (its logs).
    pub fn stderr(&self) -> String {
        match &self.running {
            Some(r) => r.stderr.lock().expect("stderr lock").clone(),
            None => self.last_stderr.clone().unwrap_or_default(),
        }
    }

    /// The lines the running broker printed on stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        match &self.running {
            Some(r) => r.stdout.lock().expect("stdout lock").clone(),
            None => Vec::new(),
        }
    }

    /// `http://127.0.0.1:PORT`, as the broker announced it.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The port the broker announced.
    pub fn port(&self) -> u16 {
        self.base_url
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {}", self.base_url))
    }

    /// A file of the installed TLS material (`<dir>/tls/<name>`: `server.pem`,
    /// `server.key`, `<client_ca name>-ca.pem`).
    pub fn tls_file(&self, name: &str) -> PathBuf {
        self.dir.path().join("tls").join(name)
    }

    /// The CA the harness's clients trust for the server certificate (TLS brokers).
    pub fn server_ca(&self) -> Option<&Path> {
        self.server_ca.as_deref()
    }

    /// Trusts `ca` instead for the server certificate from now on (after a rotation):
    /// rebuilds the HTTP client and changes what [`TestBroker::curl`] passes as `--cacert`.
    pub fn trust_server_ca(&mut self, ca: &Path) {
        self.client = https_client(ca);
        self.server_ca = Some(ca.to_path_buf());
    }

    /// A `curl` request to `path` on the broker, trusting the server CA.
    pub fn curl(&self, path: &str) -> curl::Curl {
        let c = curl::Curl::new(format!("{}{path}", self.base_url));
        match &self.server_ca {
            Some(ca) => c.cacert(ca),
            None => c,
        }
    }

    /// Polls the audit log (every 50 ms, up to `timeout`) until `pred` holds for some
    /// record; returns it, or `None` on timeout. For records written after the caller has
    /// its answer (a refused TLS handshake, a TLS reload).
    pub async fn wait_for_record(
        &self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.records().into_iter().find(|r| pred(r)) {
                return Some(r);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The broker's temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The audit directory (`<dir>/audit`).
    pub fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    /// The signing-key directory (`<dir>/keys`).
    pub fn key_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// Every complete audit record so far, in order.
    pub fn records(&self) -> Vec<Value> {
        read_records(&self.audit_dir())
    }

    /// The records of one `event` kind (`issued`, `denied`, ...).
    pub fn records_of(&self, event: &str) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["event"] == event)
            .collect()
    }

    /// The HTTP client.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// `POST /oauth2/token` with `req` as a form.
    pub async fn token(&self, req: &TokenRequest) -> Reply {
        self.token_with_dpop(req, None).await
    }

    /// `POST /oauth2/token` with `req` as a form and, if given, a `DPoP` proof header.
    pub async fn token_with_dpop(&self, req: &TokenRequest, proof: Option<&str>) -> Reply {
        let mut rb = self
            .client
            .post(format!("{}/oauth2/token", self.base_url))
            .form(&req.params);
        if let Some(p) = proof {
            rb = rb.header("DPoP", p);
        }
        Reply::from(rb.send().await.expect("POST /oauth2/token")).await
    }

    /// `POST /oauth2/token` with a raw body and an optional `Content-Type`.
    pub async fn token_raw(&self, content_type: Option<&str>, body: Vec<u8>) -> Reply {
        let mut rb = self
            .client
            .post(format!("{}/oauth2/token", self.base_url))
            .body(body);
        if let Some(ct) = content_type {
            rb = rb.header("content-type", ct);
        }
        Reply::from(rb.send().await.expect("POST /oauth2/token")).await
    }

    /// `GET /.well-known/jwks.json`.
    pub async fn jwks(&self) -> JwkSet {
        let res = self
            .client
            .get(format!("{}/.well-known/jwks.json", self.base_url))
            .send()
            .await
            .expect("GET jwks");
        assert_eq!(res.status().as_u16(), 200, "GET /.well-known/jwks.json");
        res.json().await.expect("the JWKS is a JWK set")
    }

    /// Verifies an access token with `jsonwebtoken` using only the JWKS fetched from the
    /// broker: signature by the key its `kid` names, `alg` EdDSA, `iss` [`BROKER_ISSUER`],
    /// `aud` = `audience`, `exp`/`nbf` (5 s leeway), all of `iss sub aud exp nbf iat`
    /// present. Panics on any failure.
    pub async fn verify_access_token(&self, token: &str, audience: &str) -> Verified {
        self.verify_access_token_with_issuer(token, audience, Some(BROKER_ISSUER))
            .await
    }

    /// [`TestBroker::verify_access_token`] with another expected `iss` (`None`: any; for
    /// dev mode, whose issuer the harness does not configure).
    pub async fn verify_access_token_with_issuer(
        &self,
        token: &str,
        audience: &str,
        issuer: Option<&str>,
    ) -> Verified {
        let jwks = self.jwks().await;
        verify_with_jwks(token, &jwks, audience, issuer)
            .unwrap_or_else(|e| panic!("the broker's token does not verify with its JWKS: {e}"))
    }
}

/// Verifies a broker token against `jwks` (as a verifier holding that JWKS would): the
/// key by the token's `kid`, the algorithm the JWK names, `aud`, `iss` (unless `None`),
/// `exp` and `nbf` with 5 s of leeway.
pub fn verify_with_jwks(
    token: &str,
    jwks: &jsonwebtoken::jwk::JwkSet,
    audience: &str,
    issuer: Option<&str>,
) -> Result<Verified, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.clone().ok_or("the token header has no kid")?;
    let jwk = jwks
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} is not in the JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    // The algorithm the published key is for (never the token header's say).
    let alg = match jwk.common.key_algorithm {
        Some(jsonwebtoken::jwk::KeyAlgorithm::ES256) => Algorithm::ES256,
        _ => Algorithm::EdDSA,
    };
    let mut v = Validation::new(alg);
    v.set_audience(&[audience]);
    if let Some(iss) = issuer {
        v.set_issuer(&[iss]);
    }
    v.set_required_spec_claims(&["iss", "sub", "aud", "exp", "nbf", "iat"]);
    v.validate_nbf = true;
    v.leeway = 5;
    let data = jsonwebtoken::decode::<Value>(token, &key, &v).map_err(|e| e.to_string())?;
    Ok(Verified {
        header: data.header,
        claims: data.claims,
    })
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(mut r) = self.running.take() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}

// Resource limits
// ---------------------------------------------------------------------------------------

/// Raises this process's soft open-file limit (RLIMIT_NOFILE) to its hard limit when it
/// is under `needed`, with util-linux `prlimit` on this process (the workspace forbids
/// `unsafe`, so no `setrlimit` call here); brokers started afterwards inherit it. Returns
/// the soft limit now in force, or why it is under `needed`.
pub fn raise_open_files_limit(needed: u64) -> Result<u64, String> {
    let pid = std::process::id().to_string();
    let read = || -> Result<(u64, u64), String> {
        let out = CmdOutput::of(Command::new("prlimit").args([
            "--pid",
            &pid,
            "--nofile",
            "--output",
            "SOFT,HARD",
            "--noheadings",
            "--raw",
        ]));
        if !out.success() {
            return Err(format!("prlimit could not read the limit: {out}"));
        }
        let mut it = out.stdout.split_whitespace().map(|v| match v {
            "unlimited" => Ok(u64::MAX),
            n => n
                .parse::<u64>()
                .map_err(|e| format!("prlimit said {n:?}: {e}")),
        });
        match (it.next(), it.next()) {
            (Some(soft), Some(hard)) => Ok((soft?, hard?)),
            _ => Err(format!("prlimit said {:?}", out.stdout)),
        }
    };
    let (soft, hard) = read()?;
    if soft >= needed {
        return Ok(soft);
    }
    let out = CmdOutput::of(Command::new("prlimit").args([
        "--pid",
        &pid,
        &format!("--nofile={hard}:{hard}"),
    ]));
    if !out.success() {
        return Err(format!("prlimit could not raise the limit: {out}"));
    }
    let (soft, _) = read()?;
    if soft < needed {
        return Err(format!(
            "the open-file limit is {soft} (hard limit {hard}); {needed} are needed"
        ));
    }
    Ok(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed JWKS really is the public half of the committed private keys.
    #[test]
    fn fixture_jwks_matches_keys() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let jwks: JwkSet = serde_json::from_str(ISSUER_JWKS).unwrap();
        for key in [IssuerKey::Rsa, IssuerKey::Ec] {
            let token = rs256_or_es256(key);
            let jwk = jwks.find(key.kid()).unwrap();
            let mut v = Validation::new(key.algorithm());
            v.set_audience(&[ISSUER_AUDIENCE]);
            v.set_issuer(&[ISSUER]);
            jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_jwk(jwk).unwrap(), &v)
                .unwrap();
            assert!(
                jsonwebtoken::decode::<Value>(
                    with_bad_signature(&token),
                    &DecodingKey::from_jwk(jwk).unwrap(),
                    &v
                )
                .is_err()
            );
        }
    }

    fn rs256_or_es256(key: IssuerKey) -> String {
        sign(key, &workload_claims(SUBJECT))
    }

    #[test]
    fn attack_tokens_have_the_advertised_headers() {
        let c = workload_claims(SUBJECT);
        let h = |t: &str| -> Value {
            serde_json::from_slice(
                &URL_SAFE_NO_PAD
                    .decode(t.split('.').next().unwrap())
                    .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(h(&unsigned(&c))["alg"], "none");
        assert!(unsigned(&c).ends_with('.'));
        assert_eq!(h(&hs256_with_issuer_public_key(&c))["alg"], "HS256");
        assert_eq!(insecure_claims(&rs256(SUBJECT))["sub"], SUBJECT);
    }

    #[test]
    fn config_is_toml_shaped() {
        let c = config_toml(&Options {
            max_body_bytes: Some(1024),
            segment_max_bytes: Some(4096),
            audit_dir: "/dev/null/audit".into(),
            ..Options::default()
        });
        assert!(c.contains("max_body_bytes = 1024"));
        assert!(c.contains("dir = \"/dev/null/audit\""));
    }
}
