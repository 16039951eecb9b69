//! Access-token minting (RFC 9068): claims from a policy grant, signed by the current
//! key of the [`keys::KeyRing`]. Private keys live only in [`keys`]; this module sees
//! them as `Arc<dyn Signer>`.
//!
//! The returned [`MintedToken`] holds the compact JWT in a zeroizing wrapper whose
//! `Debug` prints `[redacted]`: log its `jti` and `kid`, never the token.

pub mod keys;
pub mod lifecycle;
pub mod pkcs11;
pub mod verify;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use broker_client::types::{AccessTokenClaims, Confirmation};
use zeroize::Zeroizing;

use crate::clock::Clock;
use keys::{Jwks, KeyError, KeyRing};

/// What a token is minted for: the outcome of a policy decision.
#[derive(Debug, Clone)]
pub struct MintRequest<'a> {
    /// NHI id (`sub`, `client_id`).
    pub identity: &'a str,
    /// Environment (`env`).
    pub environment: &'a str,
    /// Task (`task`).
    pub task: &'a str,
    /// Audience (`aud`).
    pub audience: &'a str,
    /// Scopes.
    pub scopes: &'a [String],
    /// Lifetime, seconds (already capped by policy).
    pub ttl_secs: u64,
    /// RFC 8705 certificate thumbprint, base64url SHA-256 of the DER certificate.
    pub cert_thumbprint: Option<String>,
    /// Break-glass grant id.
    pub break_glass: Option<String>,
    /// Smallest `iat` allowed (0: none). A revocation rule covers tokens with `iat` at or
    /// before its second, so a token minted in that same second gets the next one.
    pub min_iat: u64,
    /// Latest `exp` allowed (a break-glass grant's end): `ttl_secs` was computed at the
    /// decision, and the clock may have moved to the next second before the mint.
    pub not_after: Option<u64>,
    /// The acting party of a delegated token (`act`, RFC 8693 §4.1).
    pub actor: Option<broker_client::types::Actor>,
    /// RFC 9449 DPoP key thumbprint the token is bound to (`cnf.jkt`).
    pub dpop_jkt: Option<String>,
}

/// Errors while minting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// Signing failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The random number generator failed.
    #[error("random number generator failed")]
    Random,
    /// Claims could not be encoded.
    #[error("claims encoding failed")]
    Encode,
    /// No key of the token's algorithm signs now, or its publication lease ran out (the
    /// state store could not extend it).
    #[error("no signing key is active with a publication lease")]
    NoActiveKey,
}

/// A key that signs, and until when it is guaranteed to stay in the JWKS.
#[derive(Clone)]
pub struct ActiveKey {
    /// The signer.
    pub signer: Arc<dyn keys::Signer>,
    /// No token it signs may expire later than this (unix seconds).
    pub lease_until: u64,
}

/// What signs (one active key per algorithm) and what is published.
pub struct Signing {
    /// The active key of each algorithm.
    pub by_alg: HashMap<keys::SigningAlgorithm, ActiveKey>,
    /// The JWKS.
    pub published: Arc<Jwks>,
}

/// A minted token: the secret JWT plus the facts that may be logged.
pub struct MintedToken {
    token: Zeroizing<String>,
    /// The claims (contain no secret).
    pub claims: AccessTokenClaims,
    /// The signing key id.
    pub kid: String,
}

impl MintedToken {
    /// The compact JWT. Hand it to the caller; never log it.
    pub fn expose_token(&self) -> &str {
        &self.token
    }
}

impl fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintedToken")
            .field("token", &"[redacted]")
            .field("jti", &self.claims.jti)
            .field("kid", &self.kid)
            .finish()
    }
}

/// Builds and signs access tokens.
pub struct Minter {
    issuer: String,
    /// The algorithm of tokens whose audience names none.
    default_alg: keys::SigningAlgorithm,
    /// Audiences that name their algorithm (`[[audience]] algorithm`).
    audience_algs: HashMap<String, keys::SigningAlgorithm>,
    /// What signs and what is published, swapped whole by the key lifecycle: this
    /// replica's keys, then those other replicas published through the shared store.
    signing: RwLock<Arc<Signing>>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter")
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl Minter {
    /// A minter for `issuer` signing with the newest of `keys` (of each algorithm). It
    /// keeps no copy of the ring: what signs is what [`Minter::install`] installs, so a
    /// private key the key lifecycle destroys is no longer held here.
    pub fn new(issuer: String, keys: &KeyRing, clock: Arc<dyn Clock>) -> Self {
        let mut by_alg = HashMap::new();
        for alg in [keys::SigningAlgorithm::ES256, keys::SigningAlgorithm::EdDSA] {
            if let Some(signer) = keys.current_for(alg) {
                by_alg.insert(
                    alg,
                    ActiveKey {
                        signer,
                        lease_until: u64::MAX,
                    },
                );
            }
        }
        Self {
            issuer,
            default_alg: keys.current().algorithm(),
            audience_algs: HashMap::new(),
            signing: RwLock::new(Arc::new(Signing {
                by_alg,
                published: Arc::new(keys.jwks()),
            })),
            clock,
        }
    }

    /// Signs with `default` (when set) and, for each audience in `per_audience`, its
    /// algorithm. Every algorithm named must have a key; the error names the first that
    /// has none.
    pub fn with_algorithms(
        mut self,
        default: Option<keys::SigningAlgorithm>,
        per_audience: &[(String, keys::SigningAlgorithm)],
    ) -> Result<Self, keys::SigningAlgorithm> {
        if let Some(alg) = default {
            self.default_alg = alg;
        }
        self.audience_algs = per_audience.iter().cloned().collect();
        let signing = self.signing();
        for alg in self.algorithms() {
            if !signing.by_alg.contains_key(&alg) {
                return Err(alg);
            }
        }
        Ok(self)
    }

    /// Every algorithm tokens are signed with: the default, then the audiences'.
    pub fn algorithms(&self) -> Vec<keys::SigningAlgorithm> {
        let mut out = vec![self.default_alg];
        for alg in self.audience_algs.values() {
            if !out.contains(alg) {
                out.push(*alg);
            }
        }
        out
    }

    /// The key that signs tokens for `audience` now, if there is one.
    pub fn signer_for(&self, audience: &str) -> Option<ActiveKey> {
        let alg = self
            .audience_algs
            .get(audience)
            .copied()
            .unwrap_or(self.default_alg);
        self.signing().by_alg.get(&alg).cloned()
    }

    /// The active key of `alg` (the default algorithm's when `None`).
    pub fn signer_for_alg(&self, alg: Option<keys::SigningAlgorithm>) -> Option<ActiveKey> {
        self.signing()
            .by_alg
            .get(&alg.unwrap_or(self.default_alg))
            .cloned()
    }

    fn signing(&self) -> Arc<Signing> {
        Arc::clone(&self.signing.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Installs what signs and what is published (the key lifecycle's decision).
    pub fn install(&self, signing: Signing) {
        *self.signing.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(signing);
    }

    /// The issuer (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The key that signs audit head anchors and checkpoints: the active key of the
    /// default algorithm, else any active key. `None` while no key is active (after a
    /// revocation whose successor could not be made, until the lifecycle's next tick
    /// makes one): no retired, revoked or destroyed key is ever returned.
    pub fn anchor_signer(&self) -> Option<Arc<dyn keys::Signer>> {
        let signing = self.signing();
        signing
            .by_alg
            .get(&self.default_alg)
            .or_else(|| signing.by_alg.values().next())
            .map(|a| Arc::clone(&a.signer))
    }

    /// The published keys: this replica's, then those other replicas published.
    pub fn jwks(&self) -> Arc<Jwks> {
        Arc::clone(&self.signing().published)
    }

    /// Adds a public key another replica published (idempotent by `kid`): brokers
    /// without key lifecycles publish that way.
    pub fn add_peer_key(&self, jwk: keys::PublicJwk) {
        let mut signing = self.signing.write().unwrap_or_else(|e| e.into_inner());
        if !signing.published.keys.iter().any(|k| k.kid == jwk.kid) {
            let mut next = Jwks::clone(&signing.published);
            next.keys.push(jwk);
            *signing = Arc::new(Signing {
                by_alg: signing.by_alg.clone(),
                published: Arc::new(next),
            });
        }
    }

    /// Applies a journal change: a key another replica published.
    pub fn apply_remote(&self, change: &crate::store::StateChange) {
        if let crate::store::StateChange::KeyPublished { jwk, .. } = change {
            self.add_peer_key(jwk.clone());
        }
    }

    /// A fresh 128-bit random token id, base64url (from [`crate::ids::id_bytes`]: a
    /// `jti` is public once issued).
    pub fn new_jti(&self) -> Result<String, MintError> {
        let b = crate::ids::id_bytes::<16>().map_err(|_| MintError::Random)?;
        Ok(URL_SAFE_NO_PAD.encode(b))
    }

    /// Mints a token for `req`.
    pub fn mint(&self, req: &MintRequest<'_>) -> Result<MintedToken, MintError> {
        let now = self.clock.unix_secs();
        let iat = now.max(req.min_iat);
        let active = self
            .signer_for(req.audience)
            .ok_or(MintError::NoActiveKey)?;
        // The key's publication is guaranteed until `lease_until`: no token it signs may
        // outlive it (a verifier must always find the key).
        if active.lease_until <= now {
            return Err(MintError::NoActiveKey);
        }
        let claims = AccessTokenClaims {
            iss: self.issuer.clone(),
            sub: req.identity.to_owned(),
            client_id: req.identity.to_owned(),
            aud: req.audience.to_owned(),
            scope: req.scopes.join(" "),
            jti: self.new_jti()?,
            iat,
            nbf: now,
            exp: now
                .saturating_add(req.ttl_secs)
                .min(req.not_after.unwrap_or(u64::MAX))
                .min(active.lease_until),
            task: req.task.to_owned(),
            env: req.environment.to_owned(),
            cnf: (req.cert_thumbprint.is_some() || req.dpop_jkt.is_some()).then(|| Confirmation {
                x5t_s256: req.cert_thumbprint.clone().unwrap_or_default(),
                jkt: req.dpop_jkt.clone(),
            }),
            bg: req.break_glass.clone(),
            act: req.actor.clone(),
        };
        let signer = &active.signer;
        let header = format!(
            r#"{{"alg":"{}","typ":"at+jwt","kid":"{}"}}"#,
            signer.algorithm().as_str(),
            signer.kid()
        );
        let payload = serde_json::to_vec(&claims).map_err(|_| MintError::Encode)?;
        let mut token = String::with_capacity(512);
        URL_SAFE_NO_PAD.encode_string(header.as_bytes(), &mut token);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let sig = signer.sign(token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&sig, &mut token);
        Ok(MintedToken {
            token: Zeroizing::new(token),
            claims,
            kid: signer.kid().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::mint::keys::VerifyingKey;

    fn minter() -> (Minter, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        keys::generate(dir.path(), keys::SigningAlgorithm::EdDSA, 1).unwrap();
        let ring = KeyRing::load_dir(dir.path()).unwrap();
        let clock = Arc::new(ManualClock::at_unix(1_700_000_000));
        (Minter::new("https://broker.test".into(), &ring, clock), dir)
    }

    #[test]
    fn minted_token_has_rfc9068_header_and_claims_and_verifies() {
        let (m, _d) = minter();
        let scopes = vec!["a".to_string(), "b".to_string()];
        let t = m
            .mint(&MintRequest {
                identity: "svc",
                environment: "prod",
                task: "t",
                audience: "https://aud",
                scopes: &scopes,
                ttl_secs: 600,
                cert_thumbprint: None,
                break_glass: None,
                min_iat: 0,
                not_after: None,
                actor: None,
                dpop_jkt: None,
            })
            .unwrap();
        let parts: Vec<&str> = t.expose_token().split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["kid"], t.kid.as_str());
        assert_eq!(t.claims.exp - t.claims.iat, 600);
        assert_eq!(t.claims.scope, "a b");
        assert_eq!(URL_SAFE_NO_PAD.decode(&t.claims.jti).unwrap().len(), 16);
        let vk = VerifyingKey::in_set(&m.jwks(), &t.kid).unwrap();
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let signed = &t.expose_token()[..parts[0].len() + 1 + parts[1].len()];
        assert!(vk.verify(signed.as_bytes(), &sig));
        assert!(format!("{t:?}").contains("[redacted]"));
    }

    #[test]
    fn jtis_are_unique() {
        let (m, _d) = minter();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(m.new_jti().unwrap()));
        }
    }
}
