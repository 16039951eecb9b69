//! DPoP (RFC 9449): a client proves, on every request, that it holds the private key its
//! token is bound to (`cnf.jkt`), so a stolen token is useless without the key.
//!
//! - [`DpopKey`] makes proofs (ES256 or Ed25519; the private key stays in memory, never
//!   serialized).
//! - [`verify_proof`] checks one: `typ` `dpop+jwt`, an allowed `alg` matching the embedded
//!   public `jwk` (never a private one), the signature, `htm` and `htu` against the
//!   request, `iat` within a window, `ath` against the access token (resource side), and a
//!   server `nonce` when one is required. The broker uses it at its token endpoint; the
//!   [`crate::Verifier`] at resource servers.
//! - [`ReplayGuard`] remembers proof `jti`s for the window in bounded memory; when full
//!   it refuses (fails closed) rather than forgetting a proof that could be replayed.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

/// The proof algorithms accepted (metadata `dpop_signing_alg_values_supported`).
pub const DPOP_SIGNING_ALGS: &[&str] = &["ES256", "EdDSA"];
/// Longest proof accepted, bytes.
pub const MAX_PROOF_LEN: usize = 4096;
/// The default `iat` window: a proof is accepted this many seconds either side of now.
pub const DEFAULT_PROOF_MAX_AGE: u64 = 60;

/// Why a DPoP proof was refused. The messages are safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DpopError {
    /// The proof is not a well-formed DPoP JWT: what is wrong.
    Malformed(&'static str),
    /// `alg` is not ES256 or EdDSA, or does not match the `jwk`.
    Algorithm,
    /// The signature does not verify with the embedded `jwk`.
    Signature,
    /// `htm` is not the request's method.
    Method,
    /// `htu` is not the request's URL.
    Url,
    /// `iat` is outside the accepted window.
    Stale,
    /// The proof's `jti` was seen before.
    Replayed,
    /// The replay memory is full: the proof cannot be checked now (retry).
    Busy,
    /// `ath` is missing or is not the access token's hash.
    AccessTokenHash,
    /// The proof's key is not the one the token is bound to.
    WrongKey,
    /// A server nonce is required (`use_dpop_nonce`): retry with the `DPoP-Nonce` given.
    NonceRequired,
}

impl DpopError {
    /// The OAuth error code: `use_dpop_nonce` for a missing or stale nonce, else
    /// `invalid_dpop_proof` (RFC 9449 §7.1, §8).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NonceRequired => "use_dpop_nonce",
            _ => "invalid_dpop_proof",
        }
    }

    /// The stable rule name for records and metrics.
    pub fn rule(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "dpop_malformed",
            Self::Algorithm => "dpop_algorithm",
            Self::Signature => "dpop_signature",
            Self::Method => "dpop_method",
            Self::Url => "dpop_url",
            Self::Stale => "dpop_stale",
            Self::Replayed => "dpop_replayed",
            Self::Busy => "dpop_busy",
            Self::AccessTokenHash => "dpop_ath",
            Self::WrongKey => "dpop_wrong_key",
            Self::NonceRequired => "dpop_nonce",
        }
    }
}

impl std::fmt::Display for DpopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "DPoP proof malformed: {why}"),
            Self::Algorithm => f.write_str(
                "DPoP proof alg must be ES256 or EdDSA and match its jwk (RFC 9449 §4.2)",
            ),
            Self::Signature => f.write_str("DPoP proof signature does not verify with its jwk"),
            Self::Method => f.write_str("DPoP proof htm is not this request's method"),
            Self::Url => f.write_str("DPoP proof htu is not this request's URL"),
            Self::Stale => f.write_str("DPoP proof iat is outside the accepted window"),
            Self::Replayed => f.write_str("DPoP proof jti was already used: make a new proof"),
            Self::Busy => f.write_str("too many DPoP proofs in flight to check replays; retry"),
            Self::AccessTokenHash => {
                f.write_str("DPoP proof ath is missing or is not the access token's hash")
            }
            Self::WrongKey => {
                f.write_str("DPoP proof key is not the key the token is bound to (cnf.jkt)")
            }
            Self::NonceRequired => {
                f.write_str("a DPoP nonce is required: retry with the DPoP-Nonce given")
            }
        }
    }
}

impl std::error::Error for DpopError {}

enum Pair {
    Es256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A DPoP key pair held by a client. `Debug` shows only the thumbprint.
pub struct DpopKey {
    pair: Pair,
    jwk: Value,
    jkt: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopKey").field("jkt", &self.jkt).finish()
    }
}

impl DpopKey {
    /// A new P-256 key (proofs signed ES256).
    pub fn generate_es256() -> Result<Self, DpopError> {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng)
            .map_err(|_| DpopError::Malformed("key generation failed"))?;
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref())
            .map_err(|_| DpopError::Malformed("key generation failed"))?;
        let public = pair.public_key().as_ref();
        let jwk = json!({
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&public[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&public[33..65]),
        });
        Ok(Self::with(Pair::Es256(pair), jwk, rng))
    }

    /// A new Ed25519 key (proofs signed EdDSA).
    pub fn generate_ed25519() -> Result<Self, DpopError> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| DpopError::Malformed("key generation failed"))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| DpopError::Malformed("key generation failed"))?;
        let jwk = json!({
            "kty": "OKP", "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        });
        Ok(Self::with(Pair::Ed25519(pair), jwk, rng))
    }

    fn with(pair: Pair, jwk: Value, rng: SystemRandom) -> Self {
        let jkt = jwk.as_object().and_then(jwk_thumbprint).unwrap_or_default();
        Self {
            pair,
            jwk,
            jkt,
            rng,
        }
    }

    /// The RFC 7638 thumbprint of the public key: the token's `cnf.jkt`.
    pub fn thumbprint(&self) -> &str {
        &self.jkt
    }

    /// A proof for one request: `method` and `url` (its query and fragment are dropped),
    /// the access token it goes with (resource requests: `ath`), and the server's nonce if
    /// it asked for one.
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<String, DpopError> {
        self.proof_at(method, url, access_token, nonce, unix_now())
    }

    /// [`DpopKey::proof`] with the `iat` given (tests: a proof made earlier).
    pub(crate) fn proof_at(
        &self,
        method: &str,
        url: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
        iat: u64,
    ) -> Result<String, DpopError> {
        let alg = match self.pair {
            Pair::Es256(_) => "ES256",
            Pair::Ed25519(_) => "EdDSA",
        };
        let header = json!({ "typ": "dpop+jwt", "alg": alg, "jwk": self.jwk });
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::SecureRandom::fill(&self.rng, &mut jti)
            .map_err(|_| DpopError::Malformed("random number generator failed"))?;
        let mut claims = json!({
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "htm": method,
            "htu": htu_of(url),
            "iat": iat,
        });
        if let Some(t) = access_token {
            claims["ath"] = Value::String(access_token_hash(t));
        }
        if let Some(n) = nonce {
            claims["nonce"] = Value::String(n.to_owned());
        }
        let mut out = URL_SAFE_NO_PAD.encode(header.to_string());
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig = match &self.pair {
            Pair::Es256(p) => p
                .sign(&self.rng, out.as_bytes())
                .map_err(|_| DpopError::Malformed("signing failed"))?
                .as_ref()
                .to_vec(),
            Pair::Ed25519(p) => p.sign(out.as_bytes()).as_ref().to_vec(),
        };
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(out)
    }
}

/// Seconds since the epoch: a proof's `iat` is the client's wall time.
fn unix_now() -> u64 {
    #[allow(clippy::disallowed_methods)] // runs in the client's process: wall time is right
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// base64url SHA-256 of an access token (the proof's `ath`).
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        token.as_bytes(),
    ))
}

/// `url` as `htu` compares it (RFC 9449 §4.3): without query and fragment, the scheme
/// and host in lower case.
pub fn htu_of(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..end];
    match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            let host_end = rest.find('/').unwrap_or(rest.len());
            format!(
                "{}://{}{}",
                url[..i].to_ascii_lowercase(),
                rest[..host_end].to_ascii_lowercase(),
                &rest[host_end..]
            )
        }
        None => url.to_owned(),
    }
}

/// RFC 7638 thumbprint of a public EC P-256 or Ed25519 JWK (its required members only).
pub fn jwk_thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let s = |k: &str| jwk.get(k).and_then(Value::as_str);
    let input = crate::jwk::thumbprint_input(s("kty")?, s("crv")?, s("x")?, s("y"))?;
    Some(URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        input.as_bytes(),
    )))
}

/// What a proof must match.
#[derive(Debug, Clone, Copy)]
pub struct ProofCheck<'a> {
    /// The request's method (`htm`).
    pub method: &'a str,
    /// The request's URL (`htu`; query and fragment ignored): any one of these (a
    /// server reachable under several names lists each).
    pub urls: &'a [&'a str],
    /// Now, seconds since the epoch.
    pub now: u64,
    /// The `iat` window, seconds either side of `now`.
    pub max_age: u64,
    /// The access token the proof must go with (`ath`; resource requests).
    pub access_token: Option<&'a str>,
    /// The nonce the proof must carry, when the server requires one.
    pub nonce: Option<&'a str>,
}

/// A proof that passed [`verify_proof`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// Thumbprint of the proof's key (`cnf.jkt` of the token it binds or must match).
    pub jkt: String,
    /// The proof's `jti` (for the replay check).
    pub jti: String,
    /// The proof's `iat`.
    pub iat: u64,
    /// The proof's `nonce`, if any.
    pub nonce: Option<String>,
}

/// A JSON object without duplicate member names at any depth (a parser differential
/// otherwise: [`crate::jws::strict_object`]).
fn strict_object(bytes: &[u8], what: &'static str) -> Result<Map<String, Value>, DpopError> {
    crate::jws::strict_object(bytes).map_err(|_| DpopError::Malformed(what))
}

/// Checks a DPoP proof against the request; the caller checks the `jti` with a
/// [`ReplayGuard`] and, at a resource, the key against the token's `cnf.jkt`.
pub fn verify_proof(proof: &str, check: &ProofCheck<'_>) -> Result<VerifiedProof, DpopError> {
    let c = crate::jws::split(proof, MAX_PROOF_LEN)
        .map_err(|_| DpopError::Malformed("not a compact JWS within 4096 bytes"))?;
    let header = strict_object(&c.header, "the header is not a JSON object")?;
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err(DpopError::Malformed("typ is not dpop+jwt"));
    }
    let jwk = header
        .get("jwk")
        .and_then(Value::as_object)
        .ok_or(DpopError::Malformed("no jwk in the header"))?;
    if jwk.contains_key("d") {
        return Err(DpopError::Malformed("the jwk holds a private key"));
    }
    let alg = header.get("alg").and_then(Value::as_str);
    let key_bytes = public_key_bytes(jwk, alg)?;
    let algorithm: &dyn signature::VerificationAlgorithm = match alg {
        Some("EdDSA") => &signature::ED25519,
        _ => &signature::ECDSA_P256_SHA256_FIXED,
    };
    UnparsedPublicKey::new(algorithm, &key_bytes)
        .verify(c.signing_input, &c.signature)
        .map_err(|_| DpopError::Signature)?;
    let claims = strict_object(&c.payload, "the claims are not a JSON object")?;
    let text = |k: &str| claims.get(k).and_then(Value::as_str);
    let jti = text("jti")
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or(DpopError::Malformed("jti missing or over 256 bytes"))?;
    if text("htm") != Some(check.method) {
        return Err(DpopError::Method);
    }
    let htu = text("htu").map(htu_of);
    if !check
        .urls
        .iter()
        .any(|u| htu.as_deref() == Some(htu_of(u).as_str()))
    {
        return Err(DpopError::Url);
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_u64)
        .ok_or(DpopError::Malformed("iat missing or not a whole number"))?;
    if iat.abs_diff(check.now) > check.max_age {
        return Err(DpopError::Stale);
    }
    if let Some(token) = check.access_token {
        let want = access_token_hash(token);
        // Not a secret (the caller holds the token): a plain comparison.
        let ok = text("ath") == Some(want.as_str());
        if !ok {
            return Err(DpopError::AccessTokenHash);
        }
    }
    if let Some(nonce) = check.nonce
        && text("nonce") != Some(nonce)
    {
        return Err(DpopError::NonceRequired);
    }
    Ok(VerifiedProof {
        jkt: jwk_thumbprint(jwk).ok_or(DpopError::Algorithm)?,
        jti: jti.to_owned(),
        iat,
        nonce: text("nonce").map(str::to_owned),
    })
}

/// The raw public key of `jwk`, checked against `alg`.
fn public_key_bytes(jwk: &Map<String, Value>, alg: Option<&str>) -> Result<Vec<u8>, DpopError> {
    let s = |k: &str| jwk.get(k).and_then(Value::as_str);
    let b64 = |v: Option<&str>| {
        v.and_then(|x| URL_SAFE_NO_PAD.decode(x).ok())
            .ok_or(DpopError::Malformed("jwk coordinates are not base64url"))
    };
    match (alg, s("kty"), s("crv")) {
        (Some("ES256"), Some("EC"), Some("P-256")) => {
            let (x, y) = (b64(s("x"))?, b64(s("y"))?);
            if x.len() != 32 || y.len() != 32 {
                return Err(DpopError::Malformed("P-256 coordinates are not 32 bytes"));
            }
            Ok([&[0x04][..], &x, &y].concat())
        }
        (Some("EdDSA"), Some("OKP"), Some("Ed25519")) => {
            let x = b64(s("x"))?;
            if x.len() != 32 {
                return Err(DpopError::Malformed("an Ed25519 key is 32 bytes"));
            }
            Ok(x)
        }
        _ => Err(DpopError::Algorithm),
    }
}

/// Remembers the `jti`s of accepted proofs until they leave the `iat` window, in at most
/// `capacity` entries (16-byte digests of thumbprint and `jti`). Full: refuses.
#[derive(Debug)]
pub struct ReplayGuard {
    capacity: usize,
    state: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    until: HashMap<u128, u64>,
    order: VecDeque<(u64, u128)>,
}

impl ReplayGuard {
    /// A guard holding at most `capacity` proofs.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Mutex::new(Seen::default()),
        }
    }

    /// Records `proof` (valid until `until`) at `now`: `Ok` the first time, else
    /// [`DpopError::Replayed`]; [`DpopError::Busy`] when the memory is full of live
    /// proofs.
    pub fn first_use(&self, proof: &VerifiedProof, until: u64, now: u64) -> Result<(), DpopError> {
        let d = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            format!("{}.{}", proof.jkt, proof.jti).as_bytes(),
        );
        let mut key = [0u8; 16];
        key.copy_from_slice(&d.as_ref()[..16]);
        let key = u128::from_le_bytes(key);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(&(t, k)) = st.order.front() {
            if t >= now {
                break;
            }
            st.order.pop_front();
            if st.until.get(&k) == Some(&t) {
                st.until.remove(&k);
            }
        }
        if st.until.get(&key).is_some_and(|&t| t >= now) {
            return Err(DpopError::Replayed);
        }
        if st.until.len() >= self.capacity {
            return Err(DpopError::Busy);
        }
        st.until.insert(key, until);
        st.order.push_back((until, key));
        Ok(())
    }

    /// Proofs remembered now.
    pub fn len(&self) -> usize {
        self.state.lock().map(|s| s.until.len()).unwrap_or(0)
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<'a>(now: u64) -> ProofCheck<'a> {
        ProofCheck {
            method: "POST",
            urls: &["https://broker.example/oauth2/token"],
            now,
            max_age: 60,
            access_token: None,
            nonce: None,
        }
    }

    #[test]
    fn proofs_of_both_algorithms_verify_and_bind_their_thumbprint() {
        let now = unix_now();
        for key in [
            DpopKey::generate_es256().unwrap(),
            DpopKey::generate_ed25519().unwrap(),
        ] {
            let p = key
                .proof(
                    "POST",
                    "https://BROKER.example/oauth2/token?x=1",
                    None,
                    None,
                )
                .unwrap();
            let v = verify_proof(&p, &check(now)).unwrap();
            assert_eq!(v.jkt, key.thumbprint());
            assert!(!format!("{key:?}").contains("pkcs8"));
        }
    }

    #[test]
    fn each_mismatch_is_refused_precisely() {
        let now = unix_now();
        let key = DpopKey::generate_es256().unwrap();
        let p = key
            .proof(
                "POST",
                "https://broker.example/oauth2/token",
                Some("tok"),
                Some("n1"),
            )
            .unwrap();
        let mut c = check(now);
        c.method = "GET";
        assert_eq!(verify_proof(&p, &c), Err(DpopError::Method));
        let mut c = check(now);
        c.urls = &["https://broker.example/other"];
        assert_eq!(verify_proof(&p, &c), Err(DpopError::Url));
        assert_eq!(verify_proof(&p, &check(now + 120)), Err(DpopError::Stale));
        let mut c = check(now);
        c.access_token = Some("another");
        assert_eq!(verify_proof(&p, &c), Err(DpopError::AccessTokenHash));
        let mut c = check(now);
        c.nonce = Some("n2");
        assert_eq!(verify_proof(&p, &c), Err(DpopError::NonceRequired));
        let mut c = check(now);
        c.access_token = Some("tok");
        c.nonce = Some("n1");
        assert!(verify_proof(&p, &c).is_ok());
        // A changed signature byte, and a header claiming another algorithm.
        let mut bad = p.clone();
        let last = bad.pop().unwrap();
        bad.push(if last == 'A' { 'B' } else { 'A' });
        assert!(matches!(
            verify_proof(&bad, &check(now)),
            Err(DpopError::Signature | DpopError::Malformed(_))
        ));
        let parts: Vec<&str> = p.split('.').collect();
        let mut h: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        h["alg"] = json!("HS256");
        let forged = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(h.to_string()),
            parts[1],
            parts[2]
        );
        assert_eq!(
            verify_proof(&forged, &check(now)),
            Err(DpopError::Algorithm)
        );
        h["alg"] = json!("ES256");
        h["typ"] = json!("JWT");
        let wrong_typ = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(h.to_string()),
            parts[1],
            parts[2]
        );
        assert!(matches!(
            verify_proof(&wrong_typ, &check(now)),
            Err(DpopError::Malformed(_))
        ));
    }

    /// A header whose `jwk` names `x` twice: a last-wins parser would check the
    /// signature with one key while a first-wins one sees another. Refused, although it
    /// is signed by the key its last `x` names.
    #[test]
    fn a_proof_whose_key_repeats_a_member_is_refused() {
        let now = unix_now();
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let other = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let signed = |header: String| {
            let claims = json!({
                "jti": "j1", "htm": "POST",
                "htu": "https://broker.example/oauth2/token", "iat": now,
            });
            let mut out = URL_SAFE_NO_PAD.encode(header);
            out.push('.');
            out.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
            let sig = pair.sign(out.as_bytes());
            out.push('.');
            out.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
            out
        };
        let header = |xs: &str| {
            format!(
                r#"{{"typ":"dpop+jwt","alg":"EdDSA","jwk":{{"kty":"OKP","crv":"Ed25519",{xs}}}}}"#
            )
        };
        // The same proof with one `x` verifies: only the repeat is refused.
        let one = signed(header(&format!(r#""x":"{x}""#)));
        assert!(verify_proof(&one, &check(now)).is_ok());
        let twice = signed(header(&format!(r#""x":"{other}","x":"{x}""#)));
        assert!(matches!(
            verify_proof(&twice, &check(now)),
            Err(DpopError::Malformed(_))
        ));
    }

    #[test]
    fn the_replay_guard_refuses_a_second_use_and_is_bounded() {
        let g = ReplayGuard::new(2);
        let p = |jti: &str| VerifiedProof {
            jkt: "k".into(),
            jti: jti.into(),
            iat: 100,
            nonce: None,
        };
        assert_eq!(g.first_use(&p("a"), 160, 100), Ok(()));
        assert_eq!(g.first_use(&p("a"), 160, 101), Err(DpopError::Replayed));
        assert_eq!(g.first_use(&p("b"), 160, 101), Ok(()));
        assert_eq!(g.first_use(&p("c"), 160, 102), Err(DpopError::Busy));
        // Once the window passes, the memory frees and an old jti is no replay any more
        // (its proof is stale by then anyway).
        assert_eq!(g.first_use(&p("c"), 230, 170), Ok(()));
        assert_eq!(g.len(), 1);
    }
}
