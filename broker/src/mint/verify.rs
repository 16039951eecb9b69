//! Verification of the broker's own access tokens (introspection, revocation): the
//! signature with a key of the broker's key ring, `typ`, `iss`, and the time window.

use broker_client::types::AccessTokenClaims;
use serde::Deserialize;

use super::keys::{Jwks, VerifyingKey};

/// Longest token accepted for verification, bytes.
pub const MAX_OWN_TOKEN_LEN: usize = 8 * 1024;

/// Why a token is not an active token of this broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OwnTokenError {
    /// Not a token this broker signed (malformed, foreign key, bad signature).
    #[error("not a token issued by this broker")]
    Foreign,
    /// Past `exp`.
    #[error("token expired")]
    Expired,
    /// Before `nbf`.
    #[error("token not yet valid")]
    NotYetValid,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: String,
    #[serde(default)]
    typ: Option<String>,
}

/// Verifies the signature and issuer of `token`; returns its claims whatever the time.
pub fn verify_signature(
    token: &str,
    keys: &Jwks,
    issuer: &str,
) -> Result<AccessTokenClaims, OwnTokenError> {
    let c =
        broker_client::jws::split(token, MAX_OWN_TOKEN_LEN).map_err(|_| OwnTokenError::Foreign)?;
    let header: Header = serde_json::from_slice(&c.header).map_err(|_| OwnTokenError::Foreign)?;
    if header.typ.as_deref() != Some("at+jwt") {
        return Err(OwnTokenError::Foreign);
    }
    let key = VerifyingKey::in_set(keys, &header.kid).ok_or(OwnTokenError::Foreign)?;
    if key.algorithm().as_str() != header.alg {
        return Err(OwnTokenError::Foreign);
    }
    if !key.verify(c.signing_input, &c.signature) {
        return Err(OwnTokenError::Foreign);
    }
    let claims: AccessTokenClaims =
        serde_json::from_slice(&c.payload).map_err(|_| OwnTokenError::Foreign)?;
    if claims.iss != issuer {
        return Err(OwnTokenError::Foreign);
    }
    Ok(claims)
}

/// Checks the time window of verified claims (`leeway` seconds of clock skew).
pub fn check_time(claims: &AccessTokenClaims, now: u64, leeway: u64) -> Result<(), OwnTokenError> {
    if now >= claims.exp {
        return Err(OwnTokenError::Expired);
    }
    if claims.nbf > now.saturating_add(leeway) {
        return Err(OwnTokenError::NotYetValid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::mint::keys::KeyRing;
    use crate::mint::{MintRequest, Minter, keys};

    #[test]
    fn own_tokens_verify_and_others_do_not() {
        let dir = tempfile::tempdir().unwrap();
        keys::generate(dir.path(), keys::SigningAlgorithm::EdDSA, 1).unwrap();
        let ring = KeyRing::load_dir(dir.path()).unwrap();
        let m = Minter::new(
            "https://b".into(),
            &ring,
            Arc::new(ManualClock::at_unix(1000)),
        );
        let t = m
            .mint(&MintRequest {
                identity: "x",
                environment: "e",
                task: "t",
                audience: "a",
                scopes: &[],
                ttl_secs: 60,
                cert_thumbprint: None,
                break_glass: None,
                min_iat: 0,
                not_after: None,
                actor: None,
                dpop_jkt: None,
            })
            .unwrap();
        let c = verify_signature(t.expose_token(), &ring.jwks(), "https://b").unwrap();
        assert_eq!(c.jti, t.claims.jti);
        assert_eq!(check_time(&c, 1000, 0), Ok(()));
        assert_eq!(check_time(&c, 1060, 0), Err(OwnTokenError::Expired));
        assert_eq!(
            verify_signature(t.expose_token(), &ring.jwks(), "https://other"),
            Err(OwnTokenError::Foreign)
        );
        // Flip one character in the middle of the signature (the last one may only
        // carry padding bits).
        let tok = t.expose_token();
        let i = tok.rfind('.').unwrap() + 10;
        let flipped = if &tok[i..=i] == "A" { "B" } else { "A" };
        let bad = format!("{}{}{}", &tok[..i], flipped, &tok[i + 1..]);
        assert!(verify_signature(&bad, &ring.jwks(), "https://b").is_err());
        assert_eq!(
            verify_signature("x.y.z", &ring.jwks(), "https://b"),
            Err(OwnTokenError::Foreign)
        );
    }
}
