//! DPoP at the token endpoint (RFC 9449 §5): a `DPoP` proof header makes the token
//! sender-constrained (`cnf.jkt`, `token_type: DPoP`). The proof is checked by
//! [`broker_client::dpop::verify_proof`] (the same code resource servers run), its `jti`
//! remembered for the `iat` window in bounded memory, and, with `[dpop] require_nonce`,
//! it must carry a nonce the broker handed out (`DPoP-Nonce`, RFC 9449 §8).
//!
//! Nonces are an HMAC of the current period: no state, and a nonce of the current or
//! previous period is accepted. The key is made at start, or, with
//! `[dpop] nonce_secret_file`, taken from a secret the replicas share, so that a nonce one
//! replica handed out is accepted by every other (without it, a client behind a load
//! balancer may be asked for a nonce again by each replica it reaches).

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
    /// A file (mode 0600, one line of at least 32 bytes) holding the key nonces are made
    /// with, the same file on every replica; default: a key made at start, per process.
    #[serde(default)]
    pub nonce_secret_file: Option<std::path::PathBuf>,
}

/// Shortest shared nonce secret, bytes: an HMAC-SHA-256 key of full strength.
const MIN_NONCE_SECRET: usize = 32;

/// The shared nonce secret of `[dpop] nonce_secret_file`; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct NonceSecret(zeroize::Zeroizing<String>);

impl std::fmt::Debug for NonceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceSecret(<redacted>)")
    }
}

/// The checked `[dpop]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopSettings {
    /// Whether proofs must carry a server nonce.
    pub require_nonce: bool,
    /// The `iat` window, seconds.
    pub max_age: u64,
    /// Replay memory, proofs.
    pub replay_capacity: usize,
    /// The key nonces are made with, shared by the replicas (`None`: one made at start).
    pub nonce_secret: Option<NonceSecret>,
}

impl Default for DpopSettings {
    fn default() -> Self {
        Self {
            require_nonce: false,
            max_age: DEFAULT_PROOF_MAX_AGE,
            replay_capacity: DEFAULT_REPLAY_CAPACITY,
            nonce_secret: None,
        }
    }
}

impl DpopSettings {
    /// The settings of `file` (defaults when absent); `resolve` makes a relative path
    /// relative to the config file's directory.
    pub fn from_file(
        file: Option<&DpopFile>,
        resolve: &dyn Fn(&std::path::Path) -> std::path::PathBuf,
    ) -> Result<Self, String> {
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
        let nonce_secret = match &f.nonce_secret_file {
            None => None,
            Some(p) => {
                let path = resolve(p);
                let secret = crate::config::read_secret_file(&path, "dpop.nonce_secret_file")?;
                if secret.len() < MIN_NONCE_SECRET {
                    return Err(format!(
                        "dpop.nonce_secret_file {} holds {} bytes; it needs at least {MIN_NONCE_SECRET} (e.g. `openssl rand -hex 32`)",
                        path.display(),
                        secret.len()
                    ));
                }
                Some(NonceSecret(secret))
            }
        };
        Ok(Self {
            require_nonce: f.require_nonce,
            max_age,
            replay_capacity,
            nonce_secret,
        })
    }
}

/// Why [`DpopService::check`] did not accept a proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofRefused {
    /// The proof itself: malformed, for another URL, stale, replayed, and so on.
    Proof(DpopError),
    /// The record of proofs other replicas accepted (the shared state store) could not
    /// be asked; the store's error, for the audit record and the log only.
    ReplayCheckUnavailable(String),
}

impl From<DpopError> for ProofRefused {
    fn from(e: DpopError) -> Self {
        Self::Proof(e)
    }
}

/// DPoP proofs at the token endpoint.
pub struct DpopService {
    settings: DpopSettings,
    replay: ReplayGuard,
    /// Proofs other replicas accepted (nothing to ask with a store of one process).
    shared_uses: crate::single_use::SharedUses,
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
        let nonce_key = match &settings.nonce_secret {
            Some(NonceSecret(secret)) => hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            None => hmac::Key::generate(hmac::HMAC_SHA256, &aws_lc_rs::rand::SystemRandom::new())?,
        };
        Ok(Self {
            replay: ReplayGuard::new(settings.replay_capacity),
            shared_uses: crate::single_use::SharedUses::default(),
            settings,
            nonce_key,
        })
    }

    /// Checks proofs against the ones other replicas accepted too.
    pub fn with_shared_uses(mut self, shared_uses: crate::single_use::SharedUses) -> Self {
        self.shared_uses = shared_uses;
        self
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
    /// A proof is single-use on this replica and, on a shared state store, on all of them.
    pub async fn check(
        &self,
        proof: Option<&str>,
        urls: &[&str],
        now: u64,
    ) -> Result<Option<String>, ProofRefused> {
        let Some(v) = self.check_here(proof, urls, now)? else {
            return Ok(None);
        };
        let kind = crate::single_use::UseKind::DpopProof;
        let until = v.iat.saturating_add(self.settings.max_age);
        match self
            .shared_uses
            .first_use(kind, &v.jkt, &v.jti, until, now)
            .await
        {
            Ok(true) => Ok(Some(v.jkt)),
            Ok(false) => Err(DpopError::Replayed.into()),
            Err(e) => Err(ProofRefused::ReplayCheckUnavailable(e.to_string())),
        }
    }

    /// The checks of [`DpopService::check`] this replica makes alone.
    fn check_here(
        &self,
        proof: Option<&str>,
        urls: &[&str],
        now: u64,
    ) -> Result<Option<VerifiedProof>, DpopError> {
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
        Ok(Some(v))
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

    #[tokio::test]
    async fn a_proof_binds_once_and_a_replay_or_another_url_is_refused() {
        let svc = DpopService::new(DpopSettings::default()).unwrap();
        let key = DpopKey::generate_ed25519().unwrap();
        let now = wall_now();
        let p = key.proof("POST", HTU, None, None).unwrap();
        assert_eq!(svc.check(None, &[HTU], now).await, Ok(None));
        assert_eq!(
            svc.check(Some(&p), &[HTU], now).await,
            Ok(Some(key.thumbprint().to_owned()))
        );
        assert_eq!(
            svc.check(Some(&p), &[HTU], now).await,
            Err(DpopError::Replayed.into())
        );
        let other = key
            .proof("POST", "http://127.0.0.1:8080/other", None, None)
            .unwrap();
        assert_eq!(
            svc.check(Some(&other), &[HTU], now).await,
            Err(DpopError::Url.into())
        );
        let get = key.proof("GET", HTU, None, None).unwrap();
        assert_eq!(
            svc.check(Some(&get), &[HTU], now).await,
            Err(DpopError::Method.into())
        );
    }

    /// A service requiring nonces, with its key made at start.
    fn with_nonces() -> DpopService {
        DpopService::new(DpopSettings {
            require_nonce: true,
            ..DpopSettings::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn with_nonces_a_proof_needs_the_current_or_previous_one() {
        let svc = with_nonces();
        let key = DpopKey::generate_es256().unwrap();
        let now = wall_now();
        let without = key.proof("POST", HTU, None, None).unwrap();
        assert_eq!(
            svc.check(Some(&without), &[HTU], now).await,
            Err(DpopError::NonceRequired.into())
        );
        let nonce = svc.nonce(now).unwrap();
        let with = key.proof("POST", HTU, None, Some(&nonce)).unwrap();
        assert!(svc.check(Some(&with), &[HTU], now).await.unwrap().is_some());
        let wrong = key.proof("POST", HTU, None, Some("made-up")).unwrap();
        assert_eq!(
            svc.check(Some(&wrong), &[HTU], now).await,
            Err(DpopError::NonceRequired.into())
        );
    }

    #[test]
    fn settings_are_bounded() {
        let f = |max_age: &str, cap: usize| {
            DpopSettings::from_file(
                Some(&DpopFile {
                    require_nonce: false,
                    max_age: Some(max_age.into()),
                    replay_capacity: Some(cap),
                    nonce_secret_file: None,
                }),
                &|p| p.to_path_buf(),
            )
        };
        assert_eq!(f("30s", 10).unwrap().max_age, 30);
        assert!(f("0s", 10).is_err());
        assert!(f("10m", 10).is_err());
        assert!(f("30s", 0).is_err());
    }

    /// `[dpop]` with nonces and `nonce_secret_file` = `name` in `dir` holding `secret`
    /// (mode `mode`).
    fn with_secret(
        dir: &std::path::Path,
        name: &str,
        secret: &str,
        mode: u32,
    ) -> Result<DpopSettings, String> {
        crate::config::tests::write_file_with_mode(&dir.join(name), secret, mode);
        let file = DpopFile {
            require_nonce: true,
            nonce_secret_file: Some(name.into()),
            ..DpopFile::default()
        };
        DpopSettings::from_file(Some(&file), &|p| dir.join(p))
    }

    #[tokio::test]
    async fn replicas_sharing_a_nonce_secret_accept_each_others_nonces() {
        let dir = tempfile::tempdir().unwrap();
        let shared = "0123456789abcdef0123456789abcdef0123456789abcdef\n";
        let a = DpopService::new(with_secret(dir.path(), "a", shared, 0o600).unwrap()).unwrap();
        let b = DpopService::new(with_secret(dir.path(), "b", shared, 0o600).unwrap()).unwrap();
        let other = "fedcba9876543210fedcba9876543210fedcba9876543210";
        let c = DpopService::new(with_secret(dir.path(), "c", other, 0o400).unwrap()).unwrap();
        let own = with_nonces();
        let key = DpopKey::generate_ed25519().unwrap();
        let now = wall_now();
        let nonce = a.nonce(now).unwrap();
        assert_eq!(b.nonce(now), Some(nonce.clone()), "the same nonce on both");
        let proof = || key.proof("POST", HTU, None, Some(&nonce)).unwrap();
        assert!(
            b.check(Some(&proof()), &[HTU], now)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            c.check(Some(&proof()), &[HTU], now).await,
            Err(DpopError::NonceRequired.into()),
            "another secret"
        );
        assert_eq!(
            own.check(Some(&proof()), &[HTU], now).await,
            Err(DpopError::NonceRequired.into()),
            "a key made at start"
        );
    }

    #[test]
    fn a_nonce_secret_must_be_private_long_enough_and_is_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "0123456789abcdef0123456789abcdef";
        let open = with_secret(dir.path(), "open", secret, 0o640).unwrap_err();
        assert!(open.contains("readable by others"), "{open}");
        let short = with_secret(dir.path(), "short", "too-short", 0o600).unwrap_err();
        assert!(short.contains("at least 32"), "{short}");
        let two =
            with_secret(dir.path(), "two", &format!("{secret}\n{secret}"), 0o600).unwrap_err();
        assert!(two.contains("one line"), "{two}");
        let missing = DpopSettings::from_file(
            Some(&DpopFile {
                nonce_secret_file: Some("absent".into()),
                ..DpopFile::default()
            }),
            &|p| dir.path().join(p),
        )
        .unwrap_err();
        assert!(missing.contains("dpop.nonce_secret_file"), "{missing}");
        for e in [&open, &short, &two, &missing] {
            assert!(!e.contains(secret) && !e.contains("too-short"), "{e}");
        }
        let ok = with_secret(dir.path(), "ok", secret, 0o600).unwrap();
        let shown = format!("{ok:?} {:?}", DpopService::new(ok.clone()).unwrap());
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
