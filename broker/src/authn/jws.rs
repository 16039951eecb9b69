//! Compact JWS parsing and signature verification on aws-lc-rs, with an explicit algorithm
//! allow-list.
//!
//! Only asymmetric algorithms exist here: `none` and every HMAC algorithm are rejected
//! before any key is looked at, whatever an issuer's allow-list says, so a public key can
//! never be used as an HMAC secret (algorithm confusion). This module never logs tokens.

use std::collections::HashMap;

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use broker_client::jwk::{Jwk, JwkSet};
use serde::Deserialize;

use super::AuthnError;

/// Longest compact JWS accepted, bytes. Kubernetes and SPIFFE tokens are ~1 KiB.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// An asymmetric JWS algorithm the broker can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JwsAlgorithm {
    /// RSASSA-PKCS1-v1_5 SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 SHA-512.
    RS512,
    /// RSASSA-PSS SHA-256.
    PS256,
    /// RSASSA-PSS SHA-384.
    PS384,
    /// RSASSA-PSS SHA-512.
    PS512,
    /// ECDSA P-256 SHA-256.
    ES256,
    /// ECDSA P-384 SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl JwsAlgorithm {
    /// Parses a JOSE `alg`; `none` and HMAC are not algorithms here.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RS256" => Self::RS256,
            "RS384" => Self::RS384,
            "RS512" => Self::RS512,
            "PS256" => Self::PS256,
            "PS384" => Self::PS384,
            "PS512" => Self::PS512,
            "ES256" => Self::ES256,
            "ES384" => Self::ES384,
            "EdDSA" => Self::EdDSA,
            _ => return None,
        })
    }

    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
        }
    }
}

/// A decoded public key from an issuer's JWKS: the SDK's one JWK model.
pub use broker_client::jwk::PublicKey;

/// One key of a key set, with the `alg` its JWK pins, if any.
#[derive(Clone, Debug)]
pub struct IssuerKey {
    /// The key.
    pub key: PublicKey,
    /// The JWK's `alg`, when present: the token's `alg` must equal it.
    pub alg: Option<JwsAlgorithm>,
}

/// An issuer's keys by `kid`.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    /// Keys by id.
    pub keys: HashMap<String, IssuerKey>,
}

impl KeySet {
    /// Parses a JWKS document. Keys that are not usable for signature verification
    /// (symmetric keys, `use: enc`, unknown curves or algorithms, a missing `kid` beside
    /// other keys) are skipped; the count of skipped keys is returned for the logs.
    pub fn from_jwks_json(bytes: &[u8]) -> Result<(KeySet, usize), String> {
        let doc = JwkSet::from_json(bytes)?;
        let single = doc.keys.len() == 1;
        let mut set = KeySet::default();
        let mut skipped = 0;
        for jwk in doc.keys {
            let usable = Self::issuer_key(&jwk).filter(|_| single || !jwk.kid.is_empty());
            match usable {
                Some(key) => {
                    set.keys.insert(jwk.kid, key);
                }
                None => skipped += 1,
            }
        }
        Ok((set, skipped))
    }

    /// The key of one JWK, or `None` when it cannot verify signatures here.
    fn issuer_key(jwk: &Jwk) -> Option<IssuerKey> {
        if !jwk.is_for_signing() {
            return None;
        }
        let key = jwk.public_key()?;
        let alg = match jwk.alg.as_deref() {
            None => None,
            Some(a) => Some(JwsAlgorithm::parse(a)?),
        };
        Some(IssuerKey { key, alg })
    }
}

/// The protected header fields the broker reads.
#[derive(Debug, Deserialize)]
pub struct Header {
    /// `alg`.
    pub alg: String,
    /// `kid`.
    #[serde(default)]
    pub kid: Option<String>,
    /// `typ`.
    #[serde(default)]
    pub typ: Option<String>,
    /// `crit`: any critical extension is refused (none are understood).
    #[serde(default)]
    pub crit: Option<serde_json::Value>,
}

/// A compact JWS split and decoded, signature not yet checked.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The protected header.
    pub header: Header,
    /// The claims object.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// `header.payload`, the signed bytes.
    pub signing_input: &'a [u8],
    /// The signature.
    pub signature: Vec<u8>,
}

/// Splits and decodes a compact JWS without verifying it.
pub fn parse(token: &str) -> Result<Parsed<'_>, AuthnError> {
    use broker_client::jws::SplitError;
    let c = broker_client::jws::split(token, MAX_TOKEN_LEN).map_err(|e| {
        AuthnError::Malformed(match e {
            SplitError::TooLong { len, max } => {
                format!("the JWT is {len} bytes, more than the {max} accepted")
            }
            SplitError::NotThreeParts => {
                "not a compact JWS (three base64url parts separated by dots)".into()
            }
            SplitError::NotBase64url(part) => format!("JWT {} is not base64url", part.as_str()),
        })
    })?;
    let header: Header = serde_json::from_slice(&c.header)
        .map_err(|_| AuthnError::Malformed("JWT header is not a JSON object with `alg`".into()))?;
    let claims = strict_object(&c.payload).map_err(|e| {
        AuthnError::Malformed(format!(
            "JWT payload is not a JSON object with unique members: {e}"
        ))
    })?;
    Ok(Parsed {
        header,
        claims,
        signing_input: c.signing_input,
        signature: c.signature,
    })
}

/// Duplicate member names are refused at every depth (the one parser, shared with the
/// SDK's DPoP proof check; its doc says why).
pub use broker_client::jws::strict_object;

/// Checks that `alg` is an asymmetric algorithm on `allowed`.
pub fn check_algorithm(alg: &str, allowed: &[JwsAlgorithm]) -> Result<JwsAlgorithm, AuthnError> {
    if alg.eq_ignore_ascii_case("none") {
        return Err(AuthnError::AlgorithmNotAllowed(
            "unsigned JWT (alg none) is never accepted".into(),
        ));
    }
    if alg.starts_with("HS") {
        return Err(AuthnError::AlgorithmNotAllowed(format!(
            "{alg} (HMAC) is never accepted for workload JWTs"
        )));
    }
    match JwsAlgorithm::parse(alg) {
        Some(a) if allowed.contains(&a) => Ok(a),
        _ => Err(AuthnError::AlgorithmNotAllowed(format!(
            "alg {alg:?} is not on this issuer's allow-list ({})",
            allowed
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Verifies `sig` over `msg` with `key` under `alg`; the key type must fit the algorithm.
pub fn verify_signature(
    alg: JwsAlgorithm,
    key: &IssuerKey,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), AuthnError> {
    if key.alg.is_some_and(|pinned| pinned != alg) {
        return Err(AuthnError::AlgorithmNotAllowed(format!(
            "the key is pinned to another algorithm than {}",
            alg.as_str()
        )));
    }
    use JwsAlgorithm as A;
    let ok = match (&key.key, alg) {
        (
            PublicKey::Rsa { n, e },
            A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512,
        ) => {
            let params: &signature::RsaParameters = match alg {
                A::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                A::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                A::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                A::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                A::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                _ => &signature::RSA_PSS_2048_8192_SHA512,
            };
            RsaPublicKeyComponents { n, e }
                .verify(params, msg, sig)
                .is_ok()
        }
        (PublicKey::P256(p), A::ES256) => {
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, p)
                .verify(msg, sig)
                .is_ok()
        }
        (PublicKey::P384(p), A::ES384) => {
            UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, p)
                .verify(msg, sig)
                .is_ok()
        }
        (PublicKey::Ed25519(p), A::EdDSA) => UnparsedPublicKey::new(&signature::ED25519, p)
            .verify(msg, sig)
            .is_ok(),
        _ => {
            return Err(AuthnError::AlgorithmNotAllowed(format!(
                "alg {} does not match the type of key the kid names",
                alg.as_str()
            )));
        }
    };
    if ok {
        Ok(())
    } else {
        Err(AuthnError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[test]
    fn none_and_hmac_are_always_refused() {
        let all = [JwsAlgorithm::RS256, JwsAlgorithm::ES256];
        assert!(check_algorithm("none", &all).is_err());
        assert!(check_algorithm("NONE", &all).is_err());
        assert!(check_algorithm("HS256", &all).is_err());
        assert!(check_algorithm("ES384", &all).is_err());
        assert_eq!(check_algorithm("ES256", &all).unwrap(), JwsAlgorithm::ES256);
    }

    #[test]
    fn malformed_tokens_are_errors_not_panics() {
        for t in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b",
            "a.b.c.d",
            "eyJ.eyJ.",
            &"a".repeat(9000),
        ] {
            assert!(parse(t).is_err(), "{t:?}");
        }
    }

    #[test]
    fn duplicate_claim_names_are_refused_at_every_depth() {
        // The parser's own cases are in broker_client::jws; here, through the JWT
        // parser: the whole token is malformed.
        let part = |s: &str| URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.{}",
            part(r#"{"alg":"ES256"}"#),
            part(r#"{"sub":"evil","sub":"real"}"#),
            part("sig")
        );
        let err = parse(&token).unwrap_err();
        assert!(
            matches!(err, AuthnError::Malformed(ref m) if m.contains("twice")),
            "{err}"
        );
        let token = format!(
            "{}.{}.{}",
            part(r#"{"alg":"ES256","alg":"none"}"#),
            part(r#"{"sub":"real"}"#),
            part("sig")
        );
        assert!(parse(&token).is_err());
    }

    #[test]
    fn jwks_skips_symmetric_and_encryption_keys() {
        let doc = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"e","use":"enc"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"s"}]}"#;
        let (set, skipped) = KeySet::from_jwks_json(doc).unwrap();
        assert_eq!(skipped, 2);
        assert!(set.keys.contains_key("s"));
    }

    #[test]
    fn key_type_must_match_algorithm() {
        let k = IssuerKey {
            key: PublicKey::Ed25519(vec![0; 32]),
            alg: None,
        };
        assert!(matches!(
            verify_signature(JwsAlgorithm::ES256, &k, b"m", b"s"),
            Err(AuthnError::AlgorithmNotAllowed(_))
        ));
    }
}
