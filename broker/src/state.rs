//! [`AppState`]: everything the handlers need, behind one `Arc`: a request clones it
//! several times (every `State` extractor and layer), and each clone is one reference-count
//! increment rather than one per service (issue 13: the per-field clones and drops were
//! ~1.6 % of the broker's CPU per issuance, atomics bouncing between the two cores).

use std::sync::Arc;

use crate::audit::AuditLog;
use crate::authn::Authenticator;
use crate::breakglass::Grants;
use crate::breakglass::webhook::Webhook;
use crate::clock::Clock;
use crate::config::Admin;
use crate::metrics::Metrics;
use crate::mint::Minter;
use crate::reload::PolicyStore;
use crate::revocation::Revocations;

/// Shared state of the HTTP handlers, cheap to clone; its [`Services`] are reached through
/// `Deref` (`st.audit`, `st.minter`, …).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    /// The handle to `services`.
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// What the handlers share. The caller's identity is request-scoped and never lives here.
pub struct Services {
    /// Workload authentication.
    pub authn: Arc<Authenticator>,
    /// The live policy set (atomically swapped on reload).
    pub policies: Arc<PolicyStore>,
    /// Token minting; owns the signing keys.
    pub minter: Arc<Minter>,
    /// The signing keys' lifecycle (rotation, retirement, revocation).
    pub keys: Arc<crate::mint::lifecycle::KeyService>,
    /// DPoP proofs at the token endpoint (replay memory, nonces).
    pub dpop: Arc<crate::dpop::DpopService>,
    /// Per-source budgets of refusals recorded one by one at the token endpoint.
    pub denials: Arc<crate::denial_budget::DenialBudget>,
    /// `Cache-Control: max-age` of the JWKS (`[signing] jwks_max_age`).
    pub jwks_max_age: std::time::Duration,
    /// The audit log.
    pub audit: AuditLog,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Revocations and disabled identities.
    pub revocations: Arc<Revocations>,
    /// Admin identities from the config.
    pub admins: Arc<Vec<Admin>>,
    /// Break-glass and anomaly webhook.
    pub webhook: Webhook,
    /// Break-glass grants and their settings.
    pub break_glass: Arc<BreakGlass>,
    /// Usage, behavioural monitoring, rate limits and recertification, with their
    /// settings.
    pub governance: Arc<Governance>,
    /// The operator console's settings and sessions.
    pub console: Arc<crate::console::Console>,
}

/// Break-glass: the grants and how long an unapproved request waits.
pub struct BreakGlass {
    /// The grants.
    pub grants: Arc<Grants>,
    /// How long an unapproved grant waits, seconds.
    pub pending_ttl_secs: u64,
}

/// Governance: what identities do and the limits on it.
pub struct Governance {
    /// Issuance token buckets.
    pub rate_limiter: Arc<crate::ratelimit::RateLimiter>,
    /// Per-identity issuance rate limit.
    pub identity_rate_limit: Option<crate::ratelimit::Rate>,
    /// Recertification warning window, seconds.
    pub expiring_window_secs: u64,
    /// After this long without issuance an identity is dormant, seconds.
    pub dormant_after_secs: u64,
    /// Usage per identity.
    pub usage: Arc<crate::usage::Usage>,
    /// Behavioural monitoring.
    pub monitor: Arc<crate::anomaly::Monitor>,
    /// Default anomaly action.
    pub anomaly_action: crate::anomaly::AnomalyAction,
    /// Whether behavioural monitoring runs.
    pub monitoring: bool,
}
