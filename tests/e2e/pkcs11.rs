//! A signing key in a PKCS#11 token (issue 12, item 5) through the real binary: a
//! throw-away SoftHSM2 token, `broker keys hsm-generate` into it, `broker serve` with
//! `[signing] pkcs11 = { .. }` and no key file, a token verified from the published JWKS
//! by `jsonwebtoken` and by an outside JOSE library (PyJWT), a restart that keeps the key,
//! rotation with the successors generated in the token (across a restart mid-rotation),
//! emergency revocation that destroys the key pair in the token, and `broker audit verify
//! --config` of anchors the tokens' keys signed.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` once per process, so the test points each child process
//! (softhsm2-util, the CLI, the broker) at its own config through the environment. Without
//! SoftHSM2 the test skips with a note; under `CI=true` it fails (`.ci/run` installs the
//! Debian package `softhsm2`).

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use broker_tests::admin::revocation_options;
use broker_tests::pki::is_ci;
use broker_tests::{
    BROKER_ISSUER, CmdOutput, ISSUER, PROD_LEDGER, SUBJECT, TASK, TestBroker, broker_bin, rs256,
};
use serde_json::{Value, json};

use crate::conformance::{python_env, python_json};

/// The SoftHSM2 library `.ci/run` installs (Debian's `softhsm2`).
const SOFTHSM2: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The user PIN of the test token: distinctive, so its absence from every output means
/// something.
const PIN: &str = "pin-7c1e9a";
/// The key's label in the token.
const LABEL: &str = "broker-signing-1";

/// The PKCS#11 module under test (`BROKER_TEST_PKCS11_MODULE` overrides the default).
fn module() -> PathBuf {
    std::env::var_os("BROKER_TEST_PKCS11_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SOFTHSM2))
}

/// Whether SoftHSM2 is here; a note and `false` outside CI, a panic under `CI=true`.
fn softhsm2_present(test: &str) -> bool {
    let util = Command::new("softhsm2-util")
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    if matches!(&util, Ok(out) if out.status.success()) && module().exists() {
        return true;
    }
    assert!(
        !is_ci(),
        "{test}: softhsm2 is missing ({} or softhsm2-util) and CI=true: .ci/run installs the Debian package `softhsm2`",
        module().display()
    );
    let _ = writeln!(
        std::io::stderr(),
        "note: skipping {test}: SoftHSM2 is not installed (apt-get install softhsm2); under CI=true this fails"
    );
    false
}

/// A SoftHSM2 config and token directory of the test's own, with one initialized token
/// labelled `broker`.
struct Token {
    _dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Token {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("broker-e2e-softhsm-")
            .tempdir()
            .expect("a temp dir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).expect("the token dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("the SoftHSM2 config");
        let t = Self { _dir: dir, conf };
        let out = CmdOutput::of(t.command("softhsm2-util").args([
            "--init-token",
            "--free",
            "--label",
            "broker",
            "--pin",
            PIN,
            "--so-pin",
            "so-5d2b8f",
        ]));
        assert!(out.success(), "softhsm2-util --init-token: {out}");
        t
    }

    /// `program` with `SOFTHSM2_CONF` pointing at this token's config.
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("SOFTHSM2_CONF", &self.conf).stdin(Stdio::null());
        c
    }

    /// The broker binary with `args`, in this token's environment.
    fn broker<I, S>(&self, args: I) -> CmdOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        CmdOutput::of(self.command(broker_bin()).args(args))
    }
}

/// The `*.pem` key files in `dir`.
fn key_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "pem"))
                .collect()
        })
        .unwrap_or_default()
}

fn header_kid(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("a JWS header")
        .kid
        .expect("a kid")
}

/// PyJWT, knowing nothing but the JWKS: verifies `token` by its `kid`, with the
/// algorithm the JWK names; a token with one signature byte changed must fail.
const PYJWT_CHECK: &str = r#"
import json, sys, jwt
inp = json.load(sys.stdin)
keys = jwt.PyJWKSet.from_dict(inp["jwks"])
kid = jwt.get_unverified_header(inp["token"])["kid"]
key = next(k for k in keys.keys if k.key_id == kid)
claims = jwt.decode(inp["token"], key.key, algorithms=[key.algorithm_name],
                    audience=inp["aud"], issuer=inp["iss"],
                    options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]})
head, body, sig = inp["token"].split(".")
bad = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
try:
    jwt.decode(".".join([head, body, bad]), key.key, algorithms=[key.algorithm_name],
               audience=inp["aud"], issuer=inp["iss"])
    tampered = "accepted"
except jwt.InvalidSignatureError:
    tampered = "refused"
print(json.dumps({"version": jwt.__version__, "kid": kid, "alg": key.algorithm_name,
                  "claims": claims, "tampered": tampered}))
"#;

fn pyjwt_verify(venv: &Path, token: &str, jwks: &Value) -> Value {
    let input = json!({ "token": token, "jwks": jwks, "aud": PROD_LEDGER, "iss": BROKER_ISSUER });
    python_json(
        venv,
        &[OsStr::new("-c"), OsStr::new(PYJWT_CHECK)],
        &input,
        "PyJWT refused the token",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn softhsm2_key_signs_tokens_that_outside_libraries_verify() {
    let test = "pkcs11::softhsm2_key_signs_tokens_that_outside_libraries_verify";
    if !softhsm2_present(test) {
        return;
    }
    let token = Token::new();

    // The broker's dir, its config and policies; the file key `prepare` made removed.
    let mut opts = revocation_options();
    opts.extra_toml.push_str(&format!(
        "\n[[admin]]\nname = \"keyadmin\"\nroles = [\"admin\"]\nissuer = \"{ISSUER}\"\nsubject = \"admin:keys\"\n"
    ));
    opts.env = vec![("SOFTHSM2_CONF".to_owned(), token.conf.display().to_string())];
    let mut b = TestBroker::prepare(opts);
    let key_dir = b.key_dir();
    for f in key_files(&key_dir) {
        std::fs::remove_file(f).expect("removing the file key");
    }
    let pin_file = b.dir().join("hsm.pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).expect("the PIN file");

    // Keygen into the token.
    let hsm_generate = || {
        token.broker([
            OsStr::new("keys"),
            OsStr::new("hsm-generate"),
            OsStr::new("--module"),
            module().as_os_str(),
            OsStr::new("--token-label"),
            OsStr::new("broker"),
            OsStr::new("--pin-file"),
            pin_file.as_os_str(),
            OsStr::new("--label"),
            OsStr::new(LABEL),
        ])
    };
    let out = hsm_generate();
    assert!(out.success(), "broker keys hsm-generate: {out}");
    assert!(
        !out.stdout.contains(PIN) && !out.stderr.contains(PIN),
        "the PIN is never printed: {out}"
    );
    let kid = out
        .stdout
        .split_whitespace()
        .skip_while(|w| *w != "key")
        .nth(1)
        .unwrap_or_else(|| panic!("a kid in {out}"))
        .to_owned();
    assert!(out.stdout.starts_with("generated ES256 key "), "{out}");
    // The same label again is refused: never two keys of one name.
    let again = hsm_generate();
    assert!(
        !again.success() && again.stderr.contains("already exists"),
        "{again}"
    );

    // `[signing] pkcs11`, the PIN file relative to the config's dir.
    let config = std::fs::read_to_string(b.config_path()).expect("the config");
    let from = "key_dir = \"keys\"\n";
    assert!(config.contains(from), "{config}");
    let signing = format!(
        "key_dir = \"keys\"\npkcs11 = {{ module = {}, token_label = \"broker\", pin_file = \"hsm.pin\", key_label = \"{LABEL}\" }}\n",
        serde_json::to_string(&module().display().to_string()).expect("a TOML string")
    );
    std::fs::write(b.config_path(), config.replacen(from, &signing, 1)).expect("the config");
    if let Err(e) = b.launch() {
        panic!("{e}");
    }

    // A token, verified from the JWKS by jsonwebtoken; its kid is the token's key.
    let access = b.issue(SUBJECT, TASK, None).await;
    assert_eq!(header_kid(&access), kid, "the token's key signs");
    let verified = b.verify_access_token(&access, PROD_LEDGER).await;
    assert_eq!(verified.header.alg, jsonwebtoken::Algorithm::ES256);
    let jwks = b.jwks().await;
    let kids: Vec<_> = jwks
        .keys
        .iter()
        .filter_map(|k| k.common.key_id.clone())
        .collect();
    assert_eq!(
        kids,
        vec![kid.clone()],
        "the JWKS publishes the token's key only"
    );
    let jwks_json = serde_json::to_value(&jwks).expect("the JWKS as JSON");

    // And by PyJWT.
    if let Some(venv) = python_env(test) {
        let out = pyjwt_verify(&venv, &access, &jwks_json);
        assert_eq!(out["kid"], kid.as_str(), "{out}");
        assert_eq!(out["alg"], "ES256", "{out}");
        assert_eq!(out["claims"]["aud"], PROD_LEDGER, "{out}");
        assert_eq!(out["tampered"], "refused", "{out}");
        eprintln!("PyJWT {} verified the PKCS#11-signed token", out["version"]);
    }

    // Rotation in the token: `rotate --now` generates the successor in the token (no
    // key file), which signs at once; the old key is retiring, still published.
    let admin_bearer = b.dir().join("bearer-admin.jwt");
    std::fs::write(&admin_bearer, rs256("admin:keys")).expect("the bearer file");
    let secops_bearer = b.dir().join("bearer-secops.jwt");
    std::fs::write(&secops_bearer, broker_tests::admin::admin_bearer()).expect("the bearer");
    let keys_cli = |url: &str, bearer: &Path, args: &[&str]| -> Value {
        let mut all: Vec<&OsStr> = vec![OsStr::new("keys")];
        all.extend(args.iter().map(OsStr::new));
        all.extend([
            OsStr::new("--url"),
            OsStr::new(url),
            OsStr::new("--bearer-file"),
            bearer.as_os_str(),
        ]);
        let out = token.broker(all);
        assert!(out.success(), "broker keys {args:?}: {out}");
        assert!(!out.stdout.contains(PIN) && !out.stderr.contains(PIN));
        serde_json::from_str(&out.stdout).unwrap_or(Value::Null)
    };
    let state_of = |listed: &Value, kid: &str| -> String {
        listed
            .as_array()
            .and_then(|a| a.iter().find(|k| k["kid"] == kid))
            .and_then(|k| k["state"].as_str())
            .unwrap_or("absent")
            .to_owned()
    };
    let listed = keys_cli(b.base_url(), &admin_bearer, &["rotate", "--now"]);
    assert_eq!(state_of(&listed, &kid), "retiring", "{listed}");
    let second = b.issue(SUBJECT, TASK, None).await;
    let k2 = header_kid(&second);
    assert_ne!(k2, kid, "the successor signs");
    assert_eq!(state_of(&listed, &k2), "active", "{listed}");
    b.verify_access_token(&second, PROD_LEDGER).await;
    b.verify_access_token(&access, PROD_LEDGER).await;
    if let Some(venv) = python_env(test) {
        let jwks = serde_json::to_value(b.jwks().await).expect("the JWKS as JSON");
        assert_eq!(pyjwt_verify(&venv, &second, &jwks)["kid"], k2.as_str());
        assert_eq!(pyjwt_verify(&venv, &access, &jwks)["kid"], kid.as_str());
    }
    assert!(
        key_files(&key_dir).is_empty(),
        "the successor is in the token, not in {}",
        key_dir.display()
    );

    // A rotation in progress across a restart: `rotate` prepares a key (published, not
    // signing for `prepublish`); after the restart it is still prepared, found in the
    // token by the label the broker gave it, and the successor still signs.
    let listed = keys_cli(b.base_url(), &admin_bearer, &["rotate"]);
    let k3 = listed
        .as_array()
        .and_then(|a| a.iter().find(|k| k["state"] == "prepared"))
        .and_then(|k| k["kid"].as_str())
        .unwrap_or_else(|| panic!("a prepared key in {listed}"))
        .to_owned();
    let status = b.stop();
    assert!(
        status.success(),
        "graceful stop exits 0: {status}\n{}",
        b.stderr()
    );
    // Every key handle was let go before the process ended: the module was finalized.
    assert!(
        b.stderr().contains("PKCS#11 module finalized"),
        "{}",
        b.stderr()
    );
    if let Err(e) = b.launch() {
        panic!("{e}");
    }
    let listed = keys_cli(b.base_url(), &admin_bearer, &["list"]);
    assert_eq!(state_of(&listed, &k3), "prepared", "{listed}");
    assert_eq!(state_of(&listed, &k2), "active", "{listed}");
    assert_eq!(state_of(&listed, &kid), "retiring", "{listed}");
    let after = b.issue(SUBJECT, TASK, None).await;
    assert_eq!(
        header_kid(&after),
        k2,
        "the successor signs after the restart"
    );
    let published: Vec<String> = b
        .jwks()
        .await
        .keys
        .iter()
        .filter_map(|k| k.common.key_id.clone())
        .collect();
    for k in [&kid, &k2, &k3] {
        assert!(published.contains(k), "{k} published: {published:?}");
    }

    // Emergency revocation of the signing key: it leaves the JWKS, its tokens are
    // inactive, a new key generated in the token signs at once.
    keys_cli(
        b.base_url(),
        &secops_bearer,
        &["revoke", &k2, "--reason", "HSM partition exposed"],
    );
    assert!(b.jwks().await.find(&k2).is_none(), "gone from the JWKS");
    assert!(!b.is_active(&second).await, "its tokens are revoked");
    let fourth = b.issue(SUBJECT, TASK, None).await;
    let k4 = header_kid(&fourth);
    assert!(![&kid, &k2].contains(&&k4), "a new key signs: {k4}");
    b.verify_access_token(&fourth, PROD_LEDGER).await;
    assert!(b.is_active(&fourth).await);
    // And the original key, retiring: revoked, destroyed in the token.
    keys_cli(
        b.base_url(),
        &secops_bearer,
        &["revoke", &kid, "--reason", "token backup lost"],
    );
    assert!(!b.is_active(&access).await);
    assert!(
        key_files(&key_dir).is_empty(),
        "no file key after rotations"
    );
    assert!(!b.stderr().contains(PIN), "the PIN is never logged");
    let status = b.stop();
    assert!(
        status.success(),
        "graceful stop exits 0: {status}\n{}",
        b.stderr()
    );
    // The revoked key pair is gone from the token: its label is free again.
    let regen = hsm_generate();
    assert!(
        regen.success(),
        "the revoked key was destroyed, so its label is free: {regen}"
    );
    assert!(!regen.stdout.contains(&kid), "a different key: {regen}");

    // The head anchors the token's key signed verify with `--config`.
    let verify = token.broker([
        OsStr::new("audit"),
        OsStr::new("verify"),
        b.audit_dir().as_os_str(),
        OsStr::new("--config"),
        b.config_path().as_os_str(),
    ]);
    assert!(verify.success(), "broker audit verify --config: {verify}");
    assert!(!verify.stdout.contains(PIN) && !verify.stderr.contains(PIN));
}
