//! Signing-key changes made by this replica, recorded first (docs/audit-log.md, "Admin
//! changes: the record comes first"): `broker keys rotate`, `retire` and `revoke` (with
//! the revoked key's successor), and what the lifecycle's clock makes due (activation, retirement,
//! scheduled rotation). The change is planned ([`KeyPlan`]: any new key is made, but
//! nothing publishes or signs with it), its records (`key_prepared`, `key_activated`,
//! `key_retiring`, `key_retired`, with the admin as `actor`) are made durable, then the
//! change is made durable in the state store and installed. If a record cannot be
//! written the change is not made (503) and the keys made for it are destroyed. Changes
//! are made one at a time on a replica, also against the journal poll's
//! [`KeyService::apply_remote`].

use crate::audit::event::AuditEvent;
use crate::error::ApiError;
use crate::mint::lifecycle::{KeyPlan, KeyService, LifecycleError};
use crate::record_first;
use crate::state::AppState;

/// Why a key change was not made.
#[derive(Debug)]
pub enum KeyChangeError {
    /// Refused as asked (unknown key, another replica's, wrong state), or a key could
    /// not be made: nothing changed.
    Refused(LifecycleError),
    /// Its record or its transaction failed (503): nothing changed; what was recorded
    /// is undone in the log.
    Failed(ApiError),
}

/// Plans a change with `plan` (on a blocking thread: it may make a key file or a key
/// in the PKCS#11 token), records it first (`actor`: the admin who asked, if one did)
/// and makes it. `Ok(false)`: nothing was due.
pub async fn change(
    st: &AppState,
    actor: Option<&str>,
    plan: impl FnOnce(&KeyService) -> Result<KeyPlan, LifecycleError> + Send + 'static,
) -> Result<bool, KeyChangeError> {
    change_led_by(st, None, actor, plan).await
}

/// [`change`], with `lead` (the admin call's own record, such as its `key_revoked`)
/// written before the plan's records.
pub async fn change_led_by(
    st: &AppState,
    lead: Option<AuditEvent>,
    actor: Option<&str>,
    plan: impl FnOnce(&KeyService) -> Result<KeyPlan, LifecycleError> + Send + 'static,
) -> Result<bool, KeyChangeError> {
    let _one = st.keys.one_change_at_a_time().await;
    let keys = std::sync::Arc::clone(&st.keys);
    let plan = tokio::task::spawn_blocking(move || plan(&keys))
        .await
        .map_err(|_| KeyChangeError::Failed(ApiError::internal()))?
        .map_err(KeyChangeError::Refused)?;
    if plan.is_empty() {
        return Ok(false);
    }
    let mut records: Vec<AuditEvent> = lead.into_iter().collect();
    records.extend(st.keys.events(&plan, actor));
    // One transaction; a revocation among the changes is applied by the revocation
    // module on the way (its feed rule), the key states here.
    let mut appended = false;
    let made = record_first::decided(st, records, || {
        appended = true;
        st.revocations.commit_all(plan.changes())?;
        st.keys.applied(&plan);
        Ok(Some(()))
    })
    .await;
    let keys = std::sync::Arc::clone(&st.keys);
    match made {
        Ok(_) => {
            // The change is durable; a leftover private half is logged, not undone.
            let _ = tokio::task::spawn_blocking(move || keys.finish(plan)).await;
            Ok(true)
        }
        Err(e) if !appended => {
            // The records failed: nothing reached the store.
            let _ = tokio::task::spawn_blocking(move || keys.abandon(plan)).await;
            Err(KeyChangeError::Failed(e))
        }
        Err(e) => {
            // The store failed, but may have committed (a lost answer): the keys made
            // for it stay, so that a committed key can still sign once this replica
            // learns of it (the journal poll, or a restart's reconciliation).
            tracing::error!(
                "a key change's transaction failed; its new keys are kept in case it committed"
            );
            Err(KeyChangeError::Failed(e))
        }
    }
}

/// What the lifecycle's clock makes due, recorded first (the server's key loop); the
/// records name `broker` as their actor, like the break-glass expiry sweep's.
pub async fn tick(st: &AppState) -> Result<bool, KeyChangeError> {
    change(st, Some("broker"), KeyService::plan_tick).await
}

/// How often the key loop runs [`tick`]: at every interval while its steps are made,
/// then, after a failure, only once a delay has passed, doubling from 1 s up to
/// [`TickBackoff::MAX`] while they keep failing. Without it a scheduled rotation whose
/// record cannot be written makes and destroys a key at every tick (in a PKCS#11 token,
/// a key pair generated twice a second for as long as the audit log fails).
#[derive(Debug, Default)]
pub struct TickBackoff {
    failures: u32,
    not_before: Option<std::time::Instant>,
}

impl TickBackoff {
    /// The longest wait between two attempts.
    pub const MAX: std::time::Duration = std::time::Duration::from_secs(30);
    /// The wait after the first failure.
    const FIRST: std::time::Duration = std::time::Duration::from_secs(1);

    /// Whether a tick is to run at `now`.
    pub fn due(&self, now: std::time::Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }

    /// A tick failed at `now`: the next waits twice as long as the last (at most
    /// [`TickBackoff::MAX`]). Returns that wait.
    pub fn failed(&mut self, now: std::time::Instant) -> std::time::Duration {
        let wait = Self::FIRST
            .saturating_mul(1u32 << self.failures.min(16))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        self.not_before = Some(now + wait);
        wait
    }

    /// A tick succeeded: the next runs at the next interval.
    pub fn succeeded(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::TickBackoff;
    use std::time::{Duration, Instant};

    #[test]
    fn failed_ticks_wait_longer_each_time_up_to_the_cap_and_a_success_resets() {
        let t0 = Instant::now();
        let mut b = TickBackoff::default();
        assert!(b.due(t0), "the first tick runs");
        let waits: Vec<u64> = (0..8).map(|_| b.failed(t0).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert!(!b.due(t0 + Duration::from_secs(29)));
        assert!(b.due(t0 + TickBackoff::MAX));
        b.succeeded();
        assert!(b.due(t0), "after a success every tick runs again");
        assert_eq!(
            b.failed(t0),
            Duration::from_secs(1),
            "and the wait starts over"
        );
        assert!(!b.due(t0 + Duration::from_millis(999)));
        assert!(b.due(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn many_failures_never_overflow() {
        let t0 = Instant::now();
        let mut b = TickBackoff {
            failures: u32::MAX - 1,
            not_before: None,
        };
        assert_eq!(b.failed(t0), TickBackoff::MAX);
        assert_eq!(b.failed(t0), TickBackoff::MAX);
    }
}
