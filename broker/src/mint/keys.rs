//! Signing keys: the only place private key bytes exist.
//!
//! Keys are PKCS#8 PEM files in the configured key directory, made by `broker keygen`.
//! Each key's `kid` is its RFC 7638 JWK thumbprint. The newest file (by name, which
//! starts with its creation time) signs; every key in the directory is published in the
//! JWKS, so a token always verifies while its key is still in the directory.
//!
//! Private key bytes never leave this module: callers get an `Arc<dyn Signer>` and the
//! public half as a [`PublicJwk`] or [`VerifyingKey`]. The PKCS#8 bytes read from disk are
//! zeroized once parsed; no type here implements `Debug` with key material.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use broker_client::jwk::PublicKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// A JWS signing algorithm the broker can mint with.
///
/// ES256 is the default (`broker keygen`, `serve --dev`): every relying party takes it,
/// where `EdDSA` is refused by default by common validators (authlib, joserfc) and by
/// the cloud federation endpoints. Ed25519 stays available and is published under the
/// JOSE name `EdDSA` (RFC 8037), not RFC 9864's `Ed25519`: the libraries deployed today
/// (jose, PyJWT, jsonwebtoken, Go's jose) know `EdDSA`, few know `Ed25519` yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum SigningAlgorithm {
    /// Ed25519 (RFC 8037), published as `EdDSA`.
    EdDSA,
    /// ECDSA P-256 with SHA-256 (RFC 7518 §3.4). The default.
    #[default]
    ES256,
}

impl SigningAlgorithm {
    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::EdDSA => "EdDSA",
            SigningAlgorithm::ES256 => "ES256",
        }
    }
}

impl std::str::FromStr for SigningAlgorithm {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "EdDSA" | "eddsa" | "Ed25519" => Ok(Self::EdDSA),
            "ES256" | "es256" => Ok(Self::ES256),
            other => Err(KeyError::UnsupportedAlgorithm(other.to_owned())),
        }
    }
}

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of key generation, loading and signing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The algorithm is not one the broker signs with.
    #[error("unsupported signing algorithm {0:?}: use EdDSA or ES256")]
    UnsupportedAlgorithm(String),
    /// A key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key file is not a PKCS#8 key of a supported algorithm.
    #[error("key file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, without key bytes.
        reason: String,
    },
    /// The key directory holds no key.
    #[error("no signing key in {0}: run `broker keygen --dir {0}`")]
    NoKeys(PathBuf),
    /// The signature operation failed.
    #[error("signing failed")]
    Sign,
}

/// Something that signs: the broker never touches a private key outside this module.
pub trait Signer: Send + Sync {
    /// The key id (RFC 7638 thumbprint).
    fn kid(&self) -> &str;
    /// The JOSE algorithm.
    fn algorithm(&self) -> SigningAlgorithm;
    /// Signs `msg`, returning the JWS signature bytes.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KeyError>;
    /// The public half as a JWK.
    fn public_jwk(&self) -> PublicJwk;
}

/// A public key as published in the JWKS: the one JWK model shared with the SDK.
pub use broker_client::jwk::Jwk as PublicJwk;
/// A JSON Web Key Set (RFC 7517 §5): the one model shared with the SDK.
pub use broker_client::jwk::JwkSet as Jwks;

/// The public half of a signing key, able to verify its signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyingKey {
    alg: SigningAlgorithm,
    bytes: Vec<u8>,
}

impl VerifyingKey {
    /// The verifier for a published JWK, or `None` if it is not an Ed25519 or P-256 key.
    pub fn from_jwk(jwk: &PublicJwk) -> Option<Self> {
        match jwk.public_key()? {
            PublicKey::Ed25519(bytes) => Some(Self {
                alg: SigningAlgorithm::EdDSA,
                bytes,
            }),
            PublicKey::P256(bytes) => Some(Self {
                alg: SigningAlgorithm::ES256,
                bytes,
            }),
            _ => None,
        }
    }

    /// The verifier for `kid` in `set`, if present and supported.
    pub fn in_set(set: &Jwks, kid: &str) -> Option<Self> {
        set.get(kid).and_then(Self::from_jwk)
    }

    /// True when `sig` is a valid signature of `msg` by this key.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let alg: &dyn signature::VerificationAlgorithm = match self.alg {
            SigningAlgorithm::EdDSA => &signature::ED25519,
            SigningAlgorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
        };
        signature::UnparsedPublicKey::new(alg, &self.bytes)
            .verify(msg, sig)
            .is_ok()
    }

    /// The algorithm.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.alg
    }
}

enum KeyPairKind {
    Ed25519(Ed25519KeyPair),
    Es256(EcdsaKeyPair),
}

/// A signing key loaded from a PKCS#8 file.
pub struct LocalSigner {
    kind: KeyPairKind,
    kid: String,
    jwk: PublicJwk,
    rng: SystemRandom,
}

impl fmt::Debug for LocalSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalSigner")
            .field("kid", &self.kid)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl LocalSigner {
    /// Parses a PKCS#8 DER document (Ed25519 or P-256).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let rng = SystemRandom::new();
        if let Ok(kp) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            let jwk = with_thumbprint_kid(PublicJwk::ed25519(kp.public_key().as_ref()));
            let kid = jwk.kid.clone();
            return Ok(Self {
                kind: KeyPairKind::Ed25519(kp),
                kid,
                jwk,
                rng,
            });
        }
        match EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der) {
            Ok(kp) => {
                let point = kp.public_key().as_ref();
                if point.len() != 65 {
                    return Err("P-256 public key has an unexpected encoding".into());
                }
                let jwk = with_thumbprint_kid(PublicJwk::p256(&point[1..33], &point[33..65]));
                let kid = jwk.kid.clone();
                Ok(Self {
                    kind: KeyPairKind::Es256(kp),
                    kid,
                    jwk,
                    rng,
                })
            }
            Err(_) => Err("not a PKCS#8 Ed25519 or P-256 private key".into()),
        }
    }
}

impl Signer for LocalSigner {
    fn kid(&self) -> &str {
        &self.kid
    }

    fn algorithm(&self) -> SigningAlgorithm {
        match self.kind {
            KeyPairKind::Ed25519(_) => SigningAlgorithm::EdDSA,
            KeyPairKind::Es256(_) => SigningAlgorithm::ES256,
        }
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.kind {
            KeyPairKind::Ed25519(kp) => Ok(kp.sign(msg).as_ref().to_vec()),
            KeyPairKind::Es256(kp) => kp
                .sign(&self.rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Sign),
        }
    }

    fn public_jwk(&self) -> PublicJwk {
        self.jwk.clone()
    }
}

/// `jwk` with its `kid` set to its RFC 7638 thumbprint (SHA-256 of the required members).
pub(crate) fn with_thumbprint_kid(jwk: PublicJwk) -> PublicJwk {
    let input = jwk.thumbprint_input().unwrap_or_default();
    let kid = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        input.as_bytes(),
    ));
    jwk.with_kid(kid)
}

/// The broker's signing keys: the newest signs, all are published.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<Arc<dyn Signer>>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|k| k.kid()).collect();
        f.debug_struct("KeyRing").field("kids", &kids).finish()
    }
}

impl KeyRing {
    /// A ring over the given signers; the last one signs.
    pub fn new(keys: Vec<Arc<dyn Signer>>) -> Option<Self> {
        if keys.is_empty() {
            None
        } else {
            Some(Self { keys })
        }
    }

    /// Every key, oldest first.
    pub fn signers(&self) -> impl Iterator<Item = &Arc<dyn Signer>> {
        self.keys.iter()
    }

    /// Loads one key file.
    pub fn load_dir_file(path: &Path) -> Result<Arc<dyn Signer>, KeyError> {
        let pem = Zeroizing::new(fs::read(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?);
        let der = pem_decode_private_key(&pem).map_err(|reason| KeyError::Invalid {
            path: path.to_path_buf(),
            reason,
        })?;
        let signer = LocalSigner::from_pkcs8(&der).map_err(|reason| KeyError::Invalid {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(Arc::new(signer))
    }

    /// Loads every `*.pem` key in `dir`, sorted by file name (oldest first).
    pub fn load_dir(dir: &Path) -> Result<Self, KeyError> {
        let mut files = key_files(dir)?;
        files.sort();
        let mut keys: Vec<Arc<dyn Signer>> = Vec::new();
        for path in files {
            keys.push(Self::load_dir_file(&path)?);
        }
        Self::new(keys).ok_or_else(|| KeyError::NoKeys(dir.to_path_buf()))
    }

    /// The newest key: it signs the audit anchors, and the tokens when no algorithm is
    /// configured.
    pub fn current(&self) -> Arc<dyn Signer> {
        // `new` guarantees at least one key.
        Arc::clone(&self.keys[self.keys.len() - 1])
    }

    /// The newest key of `alg`, if the ring has one.
    pub fn current_for(&self, alg: SigningAlgorithm) -> Option<Arc<dyn Signer>> {
        self.keys
            .iter()
            .rev()
            .find(|k| k.algorithm() == alg)
            .map(Arc::clone)
    }

    /// Every published public key.
    pub fn jwks(&self) -> Jwks {
        Jwks {
            keys: self.keys.iter().map(|k| k.public_jwk()).collect(),
        }
    }

    /// The verifier for `kid`, if the ring has it.
    pub fn verifying_key(&self, kid: &str) -> Option<VerifyingKey> {
        self.keys
            .iter()
            .find(|k| k.kid() == kid)
            .and_then(|k| VerifyingKey::from_jwk(&k.public_jwk()))
    }
}

/// The private key files (`*.pem`) in `dir`.
pub(crate) fn key_files(dir: &Path) -> Result<Vec<PathBuf>, KeyError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeyError::NoKeys(dir.to_path_buf()));
        }
        Err(source) => {
            return Err(KeyError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in rd.flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "pem") && p.is_file() {
            out.push(p);
        }
    }
    Ok(out)
}

/// Deletes the private key file of `kid` from `dir` (overwritten with zeros and synced
/// first, so the bytes do not linger in the file's blocks on simple filesystems). No file:
/// nothing to do.
pub fn remove_key_file(dir: &Path, kid: &str) -> Result<(), KeyError> {
    for path in key_files(dir).unwrap_or_default() {
        let Ok(signer) = KeyRing::load_dir_file(&path) else {
            continue;
        };
        if signer.kid() != kid {
            continue;
        }
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        let len = fs::metadata(&path).map_err(io)?.len();
        {
            let mut f = fs::OpenOptions::new().write(true).open(&path).map_err(io)?;
            f.write_all(&vec![0u8; usize::try_from(len).unwrap_or(0)])
                .map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        fs::remove_file(&path).map_err(io)?;
    }
    Ok(())
}

/// The PKCS#8 DER inside a `PRIVATE KEY` PEM block (parsed by `rustls-pki-types`).
fn pem_decode_private_key(pem: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::{Error, PemObject};
    match PrivatePkcs8KeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(Zeroizing::new(key.secret_pkcs8_der().to_vec())),
        Err(Error::NoItemsFound) => Err("no `BEGIN PRIVATE KEY` block (PKCS#8 expected)".into()),
        Err(Error::MissingSectionEnd { .. }) => Err("unterminated PEM block".into()),
        Err(Error::Base64Decode(_)) => Err("PEM body is not valid base64".into()),
        Err(e) => Err(format!("not a PKCS#8 PEM key: {e}")),
    }
}

/// Writes the PKCS#8 PEM block `broker keygen` stores (`rustls-pki-types` only reads PEM).
fn pem_encode_private_key(der: &[u8]) -> Zeroizing<String> {
    let b64 = Zeroizing::new(STANDARD.encode(der));
    let mut out = Zeroizing::new(String::from("-----BEGIN PRIVATE KEY-----\n"));
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

/// Generates a new key in `dir` (created if missing, file mode 0600) and returns its
/// path and `kid`. `created_unix` orders keys: the newest signs.
pub fn generate(
    dir: &Path,
    alg: SigningAlgorithm,
    created_unix: u64,
) -> Result<(PathBuf, String), KeyError> {
    let rng = SystemRandom::new();
    let der = Zeroizing::new(match alg {
        SigningAlgorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| KeyError::Sign)?
            .as_ref()
            .to_vec(),
        SigningAlgorithm::ES256 => {
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| KeyError::Sign)?
                .as_ref()
                .to_vec()
        }
    });
    let signer = LocalSigner::from_pkcs8(&der).map_err(|reason| KeyError::Invalid {
        path: dir.to_path_buf(),
        reason,
    })?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KeyError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let short: String = signer.kid().chars().take(12).collect();
    let path = dir.join(format!("{created_unix:012}-{}-{short}.pem", alg.as_str()));
    let pem = pem_encode_private_key(&der);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&path).map_err(io(&path))?;
    f.write_all(pem.as_bytes()).map_err(io(&path))?;
    f.sync_all().map_err(io(&path))?;
    Ok((path, signer.kid().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_keys_round_trip_and_bad_ones_are_named() {
        let der = b"not really a key, but DER-shaped bytes".to_vec();
        let pem = pem_encode_private_key(&der);
        assert_eq!(*pem_decode_private_key(pem.as_bytes()).unwrap(), der);
        let err = pem_decode_private_key(b"hello").unwrap_err();
        assert!(err.contains("BEGIN PRIVATE KEY"), "{err}");
        let err = pem_decode_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap_err();
        assert!(err.contains("unterminated"), "{err}");
    }

    #[test]
    fn generate_load_sign_verify_both_algorithms() {
        for alg in [SigningAlgorithm::EdDSA, SigningAlgorithm::ES256] {
            let dir = tempfile::tempdir().unwrap();
            let (path, kid) = generate(dir.path(), alg, 1).unwrap();
            assert!(path.exists());
            let ring = KeyRing::load_dir(dir.path()).unwrap();
            let signer = ring.current();
            assert_eq!(signer.kid(), kid);
            assert_eq!(signer.algorithm(), alg);
            let sig = signer.sign(b"hello").unwrap();
            let vk = VerifyingKey::in_set(&ring.jwks(), &kid).unwrap();
            assert!(vk.verify(b"hello", &sig));
            assert!(!vk.verify(b"hellp", &sig));
        }
    }

    #[test]
    fn newest_key_signs_and_all_are_published() {
        let dir = tempfile::tempdir().unwrap();
        let (_, old) = generate(dir.path(), SigningAlgorithm::EdDSA, 100).unwrap();
        let (_, new) = generate(dir.path(), SigningAlgorithm::ES256, 200).unwrap();
        let ring = KeyRing::load_dir(dir.path()).unwrap();
        assert_eq!(ring.current().kid(), new);
        let kids: Vec<String> = ring.jwks().keys.into_iter().map(|k| k.kid).collect();
        assert_eq!(kids, vec![old, new]);
    }

    #[test]
    fn the_newest_key_of_each_algorithm_signs_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let (_, ed_old) = generate(dir.path(), SigningAlgorithm::EdDSA, 100).unwrap();
        let (_, es) = generate(dir.path(), SigningAlgorithm::ES256, 200).unwrap();
        let (_, ed_new) = generate(dir.path(), SigningAlgorithm::EdDSA, 300).unwrap();
        let ring = KeyRing::load_dir(dir.path()).unwrap();
        let kid = |a| ring.current_for(a).map(|k| k.kid().to_owned());
        assert_eq!(kid(SigningAlgorithm::ES256), Some(es));
        assert_eq!(kid(SigningAlgorithm::EdDSA), Some(ed_new.clone()));
        assert_ne!(Some(ed_old), kid(SigningAlgorithm::EdDSA));
        assert_eq!(ring.current().kid(), ed_new);
        let only_es = tempfile::tempdir().unwrap();
        generate(only_es.path(), SigningAlgorithm::default(), 1).unwrap();
        let ring = KeyRing::load_dir(only_es.path()).unwrap();
        assert_eq!(
            ring.current().algorithm(),
            SigningAlgorithm::ES256,
            "ES256 is the default"
        );
        assert!(ring.current_for(SigningAlgorithm::EdDSA).is_none());
    }

    #[test]
    fn rfc7638_thumbprint_example() {
        // RFC 8037 Appendix A.3: thumbprint of the Ed25519 example key.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        assert_eq!(
            with_thumbprint_kid(PublicJwk::ed25519(&x)).kid,
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn empty_dir_and_garbage_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            KeyRing::load_dir(dir.path()),
            Err(KeyError::NoKeys(_))
        ));
        fs::write(dir.path().join("x.pem"), "not a key").unwrap();
        let err = KeyRing::load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("x.pem"), "{err}");
    }

    #[test]
    fn debug_never_prints_key_material() {
        let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let s = LocalSigner::from_pkcs8(der.as_ref()).unwrap();
        assert!(format!("{s:?}").contains("[redacted]"));
    }
}
