//! DPoP at the token endpoint (RFC 9449 §5): a `DPoP` proof header makes the token
//! sender-constrained (`cnf.jkt`, `token_type: DPoP`). The proof is checked by
//! [`broker_client::dpop::verify_proof`] (the same code resource servers run), its `jti`
//! remembered for the `iat` window in bounded memory, and, with `[dpop] require_nonce`,
//! it must carry a nonce the broker handed out (`DPoP-Nonce`, RFC 9449 §8).
//!
//! Nonces are an HMAC of the current period under a key made at start: no state, and a
//! nonce of the current or previous period is accepted. (Replicas each make their own
//! key, so with several replicas behind one name a client may be asked once more.)

use aws_lc_rs::hmac;
use broker_client::dpop::{
    DEFAULT_PROOF_MAX_AGE, DpopError, ProofCheck, ReplayGuard, VerifiedProof, verify_proof,
};
use serde::Deserialize;

/// How long one nonce period lasts, seconds.
const NONCE_PERIOD: u64 = 300;
/// Proofs remembered at once by default.
const DEFAULT_REPLAY_CAPACITY: usize = 200_000;

/// `[dpop]` in the config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpopFile {
    /// Require a server nonce in every proof (default false).
    #[serde(default)]
    pub require_nonce: bool,
    /// The `iat` window either side of now, e.g. `"60s"` (default 60 s, at most 5 min).
    #[serde(default)]
    pub max_age: Option<String>,
    /// Proofs remembered at once for the replay check (default 200,000); past it, proofs
    /// are refused until older ones leave the window.
    #[serde(default)]
    pub replay_capacity: Option<usize>,
}

/// The checked `[dpop]` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DpopSettings {
    /// Whether proofs must carry a server nonce.
    pub require_nonce: bool,
    /// The `iat` window, seconds.
    pub max_age: u64,
    /// Replay memory, proofs.
    pub replay_capacity: usize,
}

impl Default for DpopSettings {
    fn default() -> Self {
        Self {
            require_nonce: false,
            max_age: DEFAULT_PROOF_MAX_AGE,
            replay_capacity: DEFAULT_REPLAY_CAPACITY,
        }
    }
}

impl DpopSettings {
    /// The settings of `file` (defaults when absent).
    pub fn from_file(file: Option<&DpopFile>) -> Result<Self, String> {
        let Some(f) = file else {
            return Ok(Self::default());
        };
        let max_age = match f.max_age.as_deref() {
            None => DEFAULT_PROOF_MAX_AGE,
            Some(s) => {
                let d =
                    crate::config::parse_duration(s).map_err(|e| format!("dpop.max_age: {e}"))?;
                if d.is_zero() || d.as_secs() > 300 {
                    return Err("dpop.max_age must be from 1s to 5m".into());
                }
                d.as_secs()
            }
        };
        let replay_capacity = f.replay_capacity.unwrap_or(DEFAULT_REPLAY_CAPACITY);
        if replay_capacity == 0 || replay_capacity > 10_000_000 {
            return Err("dpop.replay_capacity must be from 1 to 10000000".into());
        }
        Ok(Self {
            require_nonce: f.require_nonce,
            max_age,
            replay_capacity,
        })
    }
}

/// DPoP proofs at the token endpoint.
pub struct DpopService {
    settings: DpopSettings,
    replay: ReplayGuard,
    nonce_key: hmac::Key,
}

impl std::fmt::Debug for DpopService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopService")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl DpopService {
    /// The service with `settings`; fails only if the random generator does.
    pub fn new(settings: DpopSettings) -> Result<Self, aws_lc_rs::error::Unspecified> {
        let nonce_key =
            hmac::Key::generate(hmac::HMAC_SHA256, &aws_lc_rs::rand::SystemRandom::new())?;
        Ok(Self {
            settings,
            replay: ReplayGuard::new(settings.replay_capacity),
            nonce_key,
        })
    }

    /// Whether proofs must carry a nonce.
    pub fn requires_nonce(&self) -> bool {
        self.settings.require_nonce
    }

    fn nonce_of(&self, period: u64) -> String {
        use base64::Engine;
        let tag = hmac::sign(&self.nonce_key, &period.to_be_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag.as_ref()[..16])
    }

    /// The nonce to hand out now (`DPoP-Nonce`), when nonces are required.
    pub fn nonce(&self, now: u64) -> Option<String> {
        self.settings
            .require_nonce
            .then(|| self.nonce_of(now / NONCE_PERIOD))
    }

    /// Checks the token request's `DPoP` header (`None`: a bearer request) for `POST` to
    /// one of `urls` at `now`; returns the key thumbprint the token is to be bound to.
    pub fn check(
        &self,
        proof: Option<&str>,
        urls: &[&str],
        now: u64,
    ) -> Result<Option<String>, DpopError> {
        let Some(proof) = proof else {
            return Ok(None);
        };
        let max_age = self.settings.max_age;
        let v: VerifiedProof = verify_proof(
            proof,
            &ProofCheck {
                method: "POST",
                urls,
                now,
                max_age,
                access_token: None,
                nonce: None,
            },
        )?;
        if self.settings.require_nonce {
            let period = now / NONCE_PERIOD;
            let ok = v.nonce.as_deref().is_some_and(|n| {
                n == self.nonce_of(period) || n == self.nonce_of(period.saturating_sub(1))
            });
            if !ok {
                return Err(DpopError::NonceRequired);
            }
        }
        self.replay
            .first_use(&v, v.iat.saturating_add(max_age), now)?;
        Ok(Some(v.jkt))
    }
}

#[cfg(test)]
mod tests {
    use broker_client::dpop::DpopKey;

    use super::*;

    const HTU: &str = "http://127.0.0.1:8080/oauth2/token";

    /// Proofs carry the wall clock's `iat`.
    #[allow(clippy::disallowed_methods)]
    fn wall_now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn a_proof_binds_once_and_a_replay_or_another_url_is_refused() {
        let svc = DpopService::new(DpopSettings::default()).unwrap();
        let key = DpopKey::generate_ed25519().unwrap();
        let now = wall_now();
        let p = key.proof("POST", HTU, None, None).unwrap();
        assert_eq!(svc.check(None, &[HTU], now), Ok(None));
        assert_eq!(
            svc.check(Some(&p), &[HTU], now),
            Ok(Some(key.thumbprint().to_owned()))
        );
        assert_eq!(svc.check(Some(&p), &[HTU], now), Err(DpopError::Replayed));
        let other = key
            .proof("POST", "http://127.0.0.1:8080/other", None, None)
            .unwrap();
        assert_eq!(svc.check(Some(&other), &[HTU], now), Err(DpopError::Url));
        let get = key.proof("GET", HTU, None, None).unwrap();
        assert_eq!(svc.check(Some(&get), &[HTU], now), Err(DpopError::Method));
    }

    #[test]
    fn with_nonces_a_proof_needs_the_current_or_previous_one() {
        let svc = DpopService::new(DpopSettings {
            require_nonce: true,
            ..DpopSettings::default()
        })
        .unwrap();
        let key = DpopKey::generate_es256().unwrap();
        let now = wall_now();
        let without = key.proof("POST", HTU, None, None).unwrap();
        assert_eq!(
            svc.check(Some(&without), &[HTU], now),
            Err(DpopError::NonceRequired)
        );
        let nonce = svc.nonce(now).unwrap();
        let with = key.proof("POST", HTU, None, Some(&nonce)).unwrap();
        assert!(svc.check(Some(&with), &[HTU], now).unwrap().is_some());
        let wrong = key.proof("POST", HTU, None, Some("made-up")).unwrap();
        assert_eq!(
            svc.check(Some(&wrong), &[HTU], now),
            Err(DpopError::NonceRequired)
        );
    }

    #[test]
    fn settings_are_bounded() {
        let f = |max_age: &str, cap: usize| {
            DpopSettings::from_file(Some(&DpopFile {
                require_nonce: false,
                max_age: Some(max_age.into()),
                replay_capacity: Some(cap),
            }))
        };
        assert_eq!(f("30s", 10).unwrap().max_age, 30);
        assert!(f("0s", 10).is_err());
        assert!(f("10m", 10).is_err());
        assert!(f("30s", 0).is_err());
    }
}
