//! The one JSON Web Key model (RFC 7517) shared by the broker and the SDK: the broker
//! publishes its signing keys with it, reads workload issuers' key sets with it, and the
//! SDK's verifier reads the broker's key set with it.
//!
//! Only public members exist here; a private member (`d`, `p`, …) in a document is
//! ignored on reading and can never be written back. Decoding a key
//! ([`Jwk::public_key`]) checks the sizes, so a caller gets either a usable key or `None`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// One public JWK. Members a key type does not use are absent (`None`).
///
/// The member order is the order the broker has always published (`kty`, `crv`, `x`,
/// `y`, `kid`, `alg`, `use`), so its JWKS keeps the same bytes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Jwk {
    /// `OKP`, `EC` or `RSA` (others are read and skipped).
    pub kty: String,
    /// The curve (`Ed25519`, `P-256`, `P-384`) for `OKP` and `EC` keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// base64url public key (`OKP`) or x coordinate (`EC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// base64url y coordinate (`EC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// base64url RSA modulus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// base64url RSA public exponent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// The key id; empty when the document has none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kid: String,
    /// The algorithm the key is pinned to, if the document says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// `sig` or `enc`, if the document says.
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

/// A JSON Web Key Set (RFC 7517 §5).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct JwkSet {
    /// The keys.
    pub keys: Vec<Jwk>,
}

/// The decoded public key of a [`Jwk`], sizes checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA modulus and exponent, big-endian (modulus at least 2048 bits).
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Exponent.
        e: Vec<u8>,
    },
    /// Uncompressed P-256 point (`04 || x || y`).
    P256(Vec<u8>),
    /// Uncompressed P-384 point (`04 || x || y`).
    P384(Vec<u8>),
    /// Ed25519 public key (32 bytes).
    Ed25519(Vec<u8>),
}

/// Smallest RSA modulus accepted, bytes (2048 bits).
const MIN_RSA_MODULUS: usize = 256;

fn decode(member: &Option<String>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(member.as_deref()?.trim_end_matches('='))
        .ok()
}

fn point(x: &Option<String>, y: &Option<String>, len: usize) -> Option<Vec<u8>> {
    let (x, y) = (decode(x)?, decode(y)?);
    if x.len() != len || y.len() != len {
        return None;
    }
    let mut p = Vec::with_capacity(1 + 2 * len);
    p.push(4);
    p.extend_from_slice(&x);
    p.extend_from_slice(&y);
    Some(p)
}

impl Jwk {
    /// A signing JWK for an Ed25519 public key (`kid` left empty).
    pub fn ed25519(public: &[u8]) -> Self {
        Self::signing(
            "OKP",
            "Ed25519",
            URL_SAFE_NO_PAD.encode(public),
            None,
            "EdDSA",
        )
    }

    /// A signing JWK for a P-256 public key given as coordinates (`kid` left empty).
    pub fn p256(x: &[u8], y: &[u8]) -> Self {
        let y = Some(URL_SAFE_NO_PAD.encode(y));
        Self::signing("EC", "P-256", URL_SAFE_NO_PAD.encode(x), y, "ES256")
    }

    fn signing(kty: &str, crv: &str, x: String, y: Option<String>, alg: &str) -> Self {
        Self {
            kty: kty.into(),
            crv: Some(crv.into()),
            x: Some(x),
            y,
            n: None,
            e: None,
            kid: String::new(),
            alg: Some(alg.into()),
            use_: Some("sig".into()),
        }
    }

    /// This JWK with `kid` set.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = kid.into();
        self
    }

    /// True unless the document marks the key for another use than signatures.
    pub fn is_for_signing(&self) -> bool {
        self.use_.as_deref().is_none_or(|u| u == "sig")
    }

    /// The decoded key, or `None` for an unsupported type or curve or a wrong size.
    pub fn public_key(&self) -> Option<PublicKey> {
        match (self.kty.as_str(), self.crv.as_deref()) {
            ("RSA", _) => match (decode(&self.n), decode(&self.e)) {
                (Some(n), Some(e)) if n.len() >= MIN_RSA_MODULUS => Some(PublicKey::Rsa { n, e }),
                _ => None,
            },
            ("EC", Some("P-256")) => point(&self.x, &self.y, 32).map(PublicKey::P256),
            ("EC", Some("P-384")) => point(&self.x, &self.y, 48).map(PublicKey::P384),
            ("OKP", Some("Ed25519")) => decode(&self.x)
                .filter(|x| x.len() == 32)
                .map(PublicKey::Ed25519),
            _ => None,
        }
    }

    /// The RFC 7638 thumbprint input of an EC P-256 or Ed25519 key (hash it with SHA-256
    /// and base64url-encode the digest), or `None` for other keys.
    pub fn thumbprint_input(&self) -> Option<String> {
        thumbprint_input(
            &self.kty,
            self.crv.as_deref()?,
            self.x.as_deref()?,
            self.y.as_deref(),
        )
    }
}

/// The RFC 7638 thumbprint input (required members, lexicographic order, no whitespace)
/// of an EC P-256 (`y` given) or Ed25519 (`y` ignored) key; `None` for anything else.
pub fn thumbprint_input(kty: &str, crv: &str, x: &str, y: Option<&str>) -> Option<String> {
    match (kty, crv, y) {
        ("EC", "P-256", Some(y)) => Some(format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#
        )),
        ("OKP", "Ed25519", _) => Some(format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#)),
        _ => None,
    }
}

impl JwkSet {
    /// Parses a JWKS document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))
    }

    /// The key with `kid`, if present.
    pub fn get(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_published_member_order_is_kept() {
        let jwk = Jwk::ed25519(&[7; 32]).with_kid("k1");
        let json = serde_json::to_string(&jwk).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"kty":"OKP","crv":"Ed25519","x":"{}","kid":"k1","alg":"EdDSA","use":"sig"}}"#,
                URL_SAFE_NO_PAD.encode([7; 32])
            )
        );
        let ec = Jwk::p256(&[1; 32], &[2; 32]).with_kid("k2");
        let json = serde_json::to_string(&ec).unwrap();
        assert!(
            json.starts_with(r#"{"kty":"EC","crv":"P-256","x":"#),
            "{json}"
        );
        assert!(
            json.ends_with(r#","kid":"k2","alg":"ES256","use":"sig"}"#),
            "{json}"
        );
    }

    #[test]
    fn keys_decode_only_with_the_right_sizes() {
        assert_eq!(
            Jwk::ed25519(&[7; 32]).public_key(),
            Some(PublicKey::Ed25519(vec![7; 32]))
        );
        assert_eq!(Jwk::ed25519(&[7; 31]).public_key(), None);
        let p = Jwk::p256(&[1; 32], &[2; 32]).public_key().unwrap();
        let PublicKey::P256(bytes) = p else {
            panic!("not P-256")
        };
        assert_eq!((bytes.len(), bytes[0], bytes[1], bytes[64]), (65, 4, 1, 2));
        assert_eq!(Jwk::p256(&[1; 32], &[2; 31]).public_key(), None);
        let set = JwkSet::from_json(
            br#"{"keys":[
                {"kty":"RSA","kid":"small","n":"AQAB","e":"AQAB"},
                {"kty":"oct","kid":"hmac","k":"c2VjcmV0"},
                {"kty":"OKP","crv":"X25519","kid":"ecdh","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}
            ]}"#,
        )
        .unwrap();
        assert!(set.keys.iter().all(|k| k.public_key().is_none()));
    }

    #[test]
    fn private_members_are_never_kept() {
        let set = JwkSet::from_json(
            br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","d":"c2VjcmV0"}]}"#,
        )
        .unwrap();
        let back = serde_json::to_string(&set).unwrap();
        assert!(!back.contains("\"d\""), "{back}");
        assert_eq!(set.get("a").map(|k| k.kty.as_str()), Some("OKP"));
        assert!(set.get("b").is_none());
    }

    #[test]
    fn use_enc_is_not_for_signing_and_absent_use_is() {
        let mut jwk = Jwk::ed25519(&[7; 32]);
        assert!(jwk.is_for_signing());
        jwk.use_ = None;
        assert!(jwk.is_for_signing());
        jwk.use_ = Some("enc".into());
        assert!(!jwk.is_for_signing());
    }

    #[test]
    fn thumbprint_inputs_follow_rfc_7638() {
        // RFC 8037 appendix A.3: the thumbprint input of its Ed25519 example key.
        let jwk = Jwk {
            x: Some("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo".into()),
            ..Jwk::ed25519(&[0; 32])
        };
        assert_eq!(
            jwk.thumbprint_input().unwrap(),
            r#"{"crv":"Ed25519","kty":"OKP","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#
        );
        assert_eq!(thumbprint_input("EC", "P-256", "x", None), None);
        assert_eq!(thumbprint_input("OKP", "X25519", "x", None), None);
    }
}
