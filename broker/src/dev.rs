//! `broker serve --dev`: a broker with no setup at all.
//!
//! [`prepare`] creates, under one local folder, everything a first run needs: a signing
//! key, a dev workload-JWT issuer (its own key and JWKS file), a sample policy, the audit
//! directory and a config file serving plain HTTP on loopback. Existing keys and policies
//! are kept, so the folder survives restarts. [`workload_token`] mints a workload JWT from
//! the dev issuer so a newcomer can try the token exchange with one pasted command.
//!
//! Nothing here is for production: the dev issuer's key sits next to the broker's.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::clock::{Clock, SystemClock};
use crate::mint::keys::{self, KeyRing, SigningAlgorithm};

/// `iss` of the dev workload issuer.
pub const DEV_ISSUER: &str = "https://dev-issuer.broker.local";
/// The audience dev workload JWTs carry (the broker's own name).
pub const DEV_AUDIENCE: &str = "jit-broker";
/// The subject of the sample workload.
pub const DEV_SUBJECT: &str = "system:serviceaccount:dev:demo";
/// The sample task.
pub const DEV_TASK: &str = "demo";

/// Errors of the dev bootstrap.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevError {
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key problem.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// Input that is not a token.
    #[error("{0}")]
    Decode(String),
}

fn write(path: &Path, text: &str) -> Result<(), DevError> {
    fs::write(path, text).map_err(|source| DevError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn mkdir(path: &Path) -> Result<(), DevError> {
    fs::create_dir_all(path).map_err(|source| DevError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn has_pem(dir: &Path) -> bool {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "pem"))
        })
        .unwrap_or(false)
}

/// Creates (or completes) the dev folder and returns the path of its config file.
/// Tokens are signed with `alg` (`serve --dev --dev-alg`, default ES256), by the folder's
/// newest key of `alg`; a folder with no key of `alg` gets one.
pub fn prepare(dir: &Path, addr: &str, alg: SigningAlgorithm) -> Result<PathBuf, DevError> {
    let now = SystemClock.unix_secs();
    mkdir(dir)?;
    let key_dir = dir.join("keys");
    if !has_pem(&key_dir) || KeyRing::load_dir(&key_dir)?.current_for(alg).is_none() {
        keys::generate(&key_dir, alg, now)?;
    }
    let issuer_dir = dir.join("dev-issuer");
    if !has_pem(&issuer_dir) {
        keys::generate(&issuer_dir, SigningAlgorithm::ES256, now)?;
    }
    let jwks = KeyRing::load_dir(&issuer_dir)?.jwks();
    let jwks_text = serde_json::to_string_pretty(&jwks).unwrap_or_default();
    write(&dir.join("dev-issuer-jwks.json"), &jwks_text)?;
    let policy_dir = dir.join("policies");
    if !policy_dir.exists() {
        mkdir(&policy_dir)?;
        write(&policy_dir.join("demo-workload.toml"), &sample_policy())?;
    }
    mkdir(&dir.join("audit"))?;
    let config = format!(
        r#"# Written by `broker serve --dev`. Not for production.
issuer = "http://{addr}"

[listen]
addr = "{addr}"
insecure_http = true

[signing]
key_dir = "keys"
algorithm = "{alg}"

[audit]
dir = "audit"

[policies]
dir = "policies"

[[trusted_issuer]]
issuer = "{DEV_ISSUER}"
audiences = ["{DEV_AUDIENCE}"]
algorithms = ["ES256"]
jwks_file = "dev-issuer-jwks.json"

[[audience]]
uri = "https://api.dev.example.org"
environment = "dev"
"#
    );
    let path = dir.join("broker.toml");
    write(&path, &config)?;
    Ok(path)
}

fn sample_policy() -> String {
    format!(
        r#"# Sample workload for `broker serve --dev`. Edit me: the broker reloads on save.
[identity]
id          = "demo-workload"
owner       = "team-dev"
steward     = "you@example.com"
purpose     = "Try the broker locally"
environment = "dev"
ticket      = "DEV-1"
expires     = "2099-01-01"

[[identity.match]]
issuer  = "{DEV_ISSUER}"
subject = "{DEV_SUBJECT}"

[[task]]
name         = "{DEV_TASK}"
audience     = "https://api.dev.example.org"
scopes       = ["demo:read", "demo:write"]
max_ttl      = "10m"
source_cidrs = ["127.0.0.0/8", "::1/128"]
"#
    )
}

/// A workload JWT signed by the dev issuer.
pub fn workload_token(dir: &Path, subject: &str, ttl_secs: u64) -> Result<String, DevError> {
    workload_token_at(dir, subject, ttl_secs, SystemClock.unix_secs())
}

/// [`workload_token`] issued at `now` (unix seconds), for a broker on another clock.
pub fn workload_token_at(
    dir: &Path,
    subject: &str,
    ttl_secs: u64,
    now: u64,
) -> Result<String, DevError> {
    let claims = serde_json::json!({
        "iss": DEV_ISSUER, "sub": subject, "aud": DEV_AUDIENCE,
        "iat": now, "nbf": now, "exp": now + ttl_secs,
    });
    sign_as_dev_issuer(dir, Some("JWT"), claims.to_string().as_bytes())
}

/// Any JWT the dev issuer signs: `typ` (or none) in the header, `claims` as given (raw
/// bytes, so tests can send what no well-behaved issuer would).
pub fn sign_as_dev_issuer(
    dir: &Path,
    typ: Option<&str>,
    claims: &[u8],
) -> Result<String, DevError> {
    let ring = KeyRing::load_dir(&dir.join("dev-issuer"))?;
    let signer = ring.current();
    let mut header = serde_json::json!({"alg": signer.algorithm().as_str(), "kid": signer.kid()});
    if let Some(typ) = typ {
        header["typ"] = typ.into();
    }
    let mut token = String::new();
    URL_SAFE_NO_PAD.encode_string(header.to_string(), &mut token);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims, &mut token);
    let sig = signer.sign(token.as_bytes())?;
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(sig, &mut token);
    Ok(token)
}

/// The paste-able commands printed by `serve --dev`.
pub fn banner(dir: &Path, addr: SocketAddr) -> String {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "broker".into());
    let dir = dir.display();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nDev broker ready (plain HTTP on loopback; state in {dir})."
    );
    let _ = writeln!(s, "Get a token for task `{DEV_TASK}` and see it decoded:\n");
    let _ = writeln!(
        s,
        "  curl -s http://{addr}/oauth2/token \\\n    -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \\\n    -d subject_token_type=urn:ietf:params:oauth:token-type:jwt \\\n    -d subject_token=\"$({exe} dev token --dir {dir})\" \\\n    -d task={DEV_TASK} | {exe} token decode\n"
    );
    let _ = writeln!(
        s,
        "Keys: http://{addr}/.well-known/jwks.json   Audit: {exe} audit verify {dir}/audit --key-dir {dir}/keys"
    );
    s
}

/// Decodes a compact JWT, or the `access_token` of a token response JSON, for display.
/// Does NOT verify the signature; says so. An error response is shown as is.
pub fn decode_for_display(input: &str) -> Result<String, DevError> {
    let input = input.trim();
    let token = if input.starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(input).map_err(|e| DevError::Decode(format!("not JSON: {e}")))?;
        match v.get("access_token").and_then(|t| t.as_str()) {
            Some(t) => t.to_owned(),
            None => {
                return Ok(format!(
                    "the broker answered with an error:\n{}",
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                ));
            }
        }
    } else {
        input.to_owned()
    };
    let c = broker_client::jws::split(&token, 64 * 1024)
        .map_err(|e| DevError::Decode(format!("not a compact JWT: {e}")))?;
    let json = |bytes: &[u8]| -> Result<serde_json::Value, DevError> {
        serde_json::from_slice(bytes).map_err(|_| DevError::Decode("JWT part is not JSON".into()))
    };
    let header = json(&c.header)?;
    let claims = json(&c.payload)?;
    Ok(format!(
        "header (signature NOT verified here; verify with the JWKS):\n{}\nclaims:\n{}",
        serde_json::to_string_pretty(&header).unwrap_or_default(),
        serde_json::to_string_pretty(&claims).unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_is_idempotent_and_keeps_keys() {
        let d = tempfile::tempdir().unwrap();
        let c1 = prepare(d.path(), "127.0.0.1:8080", SigningAlgorithm::ES256).unwrap();
        let kid1 = KeyRing::load_dir(&d.path().join("keys"))
            .unwrap()
            .current()
            .kid()
            .to_owned();
        let c2 = prepare(d.path(), "127.0.0.1:8080", SigningAlgorithm::ES256).unwrap();
        let kid2 = KeyRing::load_dir(&d.path().join("keys"))
            .unwrap()
            .current()
            .kid()
            .to_owned();
        assert_eq!(c1, c2);
        assert_eq!(kid1, kid2);
        crate::config::Config::load(&c1).unwrap();
    }

    #[test]
    fn prepare_signs_with_the_algorithm_asked_for_and_keeps_old_keys_published() {
        let d = tempfile::tempdir().unwrap();
        let keys = d.path().join("keys");
        let kids = || {
            let ring = KeyRing::load_dir(&keys).unwrap();
            let kid = |alg| ring.current_for(alg).map(|k| k.kid().to_owned());
            (
                kid(SigningAlgorithm::EdDSA),
                kid(SigningAlgorithm::ES256),
                ring.jwks().keys.len(),
            )
        };
        let signing = |c: &Path| crate::config::Config::load(c).unwrap().algorithm;

        let c = prepare(d.path(), "127.0.0.1:8080", SigningAlgorithm::EdDSA).unwrap();
        assert_eq!(signing(&c), Some(SigningAlgorithm::EdDSA));
        let (ed, es, n) = kids();
        assert!(ed.is_some() && es.is_none() && n == 1, "{ed:?} {es:?} {n}");

        // The default again: an ES256 key is added, the Ed25519 one stays published.
        let c = prepare(d.path(), "127.0.0.1:8080", SigningAlgorithm::ES256).unwrap();
        assert_eq!(signing(&c), Some(SigningAlgorithm::ES256));
        let (ed2, es2, n) = kids();
        assert!(ed2 == ed && es2.is_some() && n == 2, "{ed2:?} {es2:?} {n}");

        // EdDSA once more: its key is still there, nothing new is made.
        let c = prepare(d.path(), "127.0.0.1:8080", SigningAlgorithm::EdDSA).unwrap();
        assert_eq!(signing(&c), Some(SigningAlgorithm::EdDSA));
        assert_eq!(kids(), (ed, es2, 2));
    }

    #[test]
    fn dev_token_decodes() {
        let d = tempfile::tempdir().unwrap();
        prepare(d.path(), "127.0.0.1:8080", SigningAlgorithm::ES256).unwrap();
        let t = workload_token(d.path(), DEV_SUBJECT, 60).unwrap();
        let shown = decode_for_display(&t).unwrap();
        assert!(shown.contains(DEV_SUBJECT));
        assert!(shown.contains("NOT verified"));
    }
}
