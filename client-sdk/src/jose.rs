//! JWS verification of broker tokens (EdDSA, ES256) on aws-lc-rs, and the rustls client setup
//! (aws-lc-rs provider, the broker's CA, an optional client certificate).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::error::VerifyError;
use crate::jwk::{self, JwkSet};
use crate::types::AccessTokenClaims;

/// A broker public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublicKey {
    alg: &'static str,
    bytes: Vec<u8>,
}

/// Parses a JWKS into keys by `kid`. Keys this verifier cannot use (no `kid`, `use`
/// other than `sig`, a type or curve other than Ed25519 and P-256) are skipped.
pub(crate) fn parse_jwks(bytes: &[u8]) -> Result<HashMap<String, PublicKey>, String> {
    let mut out = HashMap::new();
    for jwk in JwkSet::from_json(bytes)?.keys {
        if jwk.kid.is_empty() || !jwk.is_for_signing() {
            continue;
        }
        let key = match jwk.public_key() {
            Some(jwk::PublicKey::Ed25519(bytes)) => PublicKey {
                alg: "EdDSA",
                bytes,
            },
            Some(jwk::PublicKey::P256(bytes)) => PublicKey {
                alg: "ES256",
                bytes,
            },
            _ => continue,
        };
        out.insert(jwk.kid, key);
    }
    Ok(out)
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: String,
    typ: Option<String>,
}

/// A split, unverified token: kid, alg, signing input, signature, claims.
pub(crate) type Split<'a> = (String, String, &'a [u8], Vec<u8>, AccessTokenClaims);

/// Splits a token and returns (kid, alg, signing input, signature, claims), unverified.
pub(crate) fn split(token: &str) -> Result<Split<'_>, VerifyError> {
    use crate::jws::SplitError;
    let c = crate::jws::split(token, 8192).map_err(|e| {
        VerifyError::Malformed(
            match e {
                SplitError::TooLong { .. } => "token longer than 8 KiB",
                SplitError::NotThreeParts => "not a compact JWS",
                SplitError::NotBase64url(_) => "not base64url",
            }
            .into(),
        )
    })?;
    let header: Header = serde_json::from_slice(&c.header)
        .map_err(|_| VerifyError::Malformed("bad header".into()))?;
    if header.typ.as_deref() != Some("at+jwt") {
        return Err(VerifyError::Malformed("typ is not at+jwt".into()));
    }
    let claims: AccessTokenClaims = serde_json::from_slice(&c.payload)
        .map_err(|_| VerifyError::Malformed("claims are not an access token".into()))?;
    Ok((header.kid, header.alg, c.signing_input, c.signature, claims))
}

/// Verifies a signature; the algorithm must be the key's.
pub(crate) fn verify(
    key: &PublicKey,
    alg: &str,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), VerifyError> {
    if alg != key.alg {
        return Err(VerifyError::BadSignature);
    }
    let algorithm: &dyn signature::VerificationAlgorithm = match key.alg {
        "EdDSA" => &signature::ED25519,
        _ => &signature::ECDSA_P256_SHA256_FIXED,
    };
    UnparsedPublicKey::new(algorithm, &key.bytes)
        .verify(msg, sig)
        .map_err(|_| VerifyError::BadSignature)
}

/// base64url SHA-256 of a DER certificate (RFC 8705 thumbprint).
pub(crate) fn thumbprint(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A reqwest client on rustls/aws-lc-rs trusting `ca` (PEM), presenting `client` if given.
pub(crate) fn http_client(
    ca: Option<&Path>,
    client: Option<(&Path, &Path)>,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        for c in certs(ca)? {
            roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    let tls = match client {
        Some((cert, key)) => {
            let k =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(certs(cert)?, k)
                .map_err(|e| format!("client certificate: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| e.to_string())
}
