//! The live policy set and its hot reload.
//!
//! [`PolicyStore`] holds an `Arc<PolicySet>`; a reload builds a complete new set from the
//! directory and swaps the `Arc` only if every file is valid. A broken file keeps the old
//! set live, and the audit log and the logs say why. Reloads happen on SIGHUP and when the
//! directory's files change (polled: no inotify dependency, works on every filesystem).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::audit::AuditLog;
use crate::audit::event::{AuditEvent, EventKind};
use crate::breakglass::policy::BreakGlassPolicies;
use crate::config::AudienceEntry;
use crate::metrics::Metrics;
use crate::policy::{self, LintError, PolicySet};

/// What the directory looked like when last loaded: (file name, modified, length).
type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// The live policy set.
#[derive(Debug)]
pub struct PolicyStore {
    current: RwLock<Arc<PolicySet>>,
    break_glass: RwLock<Arc<BreakGlassPolicies>>,
    dir: PathBuf,
    audiences: Vec<AudienceEntry>,
    trust_domains: Vec<String>,
    seen: Mutex<Fingerprint>,
}

fn fingerprint(dir: &Path) -> Fingerprint {
    let mut out: Fingerprint = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let md = e.metadata().ok()?;
                    Some((e.path(), md.modified().ok(), md.len()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.extend(
        std::fs::read_dir(dir.join("break-glass"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let md = e.metadata().ok()?;
                        Some((e.path(), md.modified().ok(), md.len()))
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
    );
    out.sort();
    out
}

impl PolicyStore {
    /// Loads the directory; every lint error is returned if it is invalid.
    pub fn load(
        dir: &Path,
        audiences: &[AudienceEntry],
        trust_domains: &[String],
    ) -> Result<Self, Vec<LintError>> {
        let seen = fingerprint(dir);
        let set = policy::load_dir(dir, audiences, trust_domains)?;
        let bg = crate::breakglass::policy::load(dir, audiences)?;
        Ok(Self {
            current: RwLock::new(Arc::new(set)),
            break_glass: RwLock::new(Arc::new(bg)),
            dir: dir.to_path_buf(),
            audiences: audiences.to_vec(),
            trust_domains: trust_domains.to_vec(),
            seen: Mutex::new(seen),
        })
    }

    /// A store over an already-built set (tests, `policy explain`).
    pub fn from_set(set: PolicySet) -> Self {
        Self {
            current: RwLock::new(Arc::new(set)),
            break_glass: RwLock::new(Arc::new(BreakGlassPolicies::default())),
            dir: PathBuf::new(),
            audiences: Vec::new(),
            trust_domains: Vec::new(),
            seen: Mutex::new(Vec::new()),
        }
    }

    /// The live set.
    pub fn current(&self) -> Arc<PolicySet> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The live break-glass policies.
    pub fn break_glass(&self) -> Arc<BreakGlassPolicies> {
        Arc::clone(&self.break_glass.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// True when files in the directory changed since the last load attempt.
    pub fn changed_on_disk(&self) -> bool {
        let now = fingerprint(&self.dir);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen != now {
            *seen = now;
            true
        } else {
            false
        }
    }

    /// Rebuilds the set; swaps it in only if valid. Returns the new identity count.
    pub fn reload(&self) -> Result<usize, Vec<LintError>> {
        let set = policy::load_dir(&self.dir, &self.audiences, &self.trust_domains)?;
        let bg = crate::breakglass::policy::load(&self.dir, &self.audiences)?;
        let n = set.len();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        *self.break_glass.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(bg);
        Ok(n)
    }
}

/// Reloads on change or SIGHUP until `shutdown` resolves, auditing each outcome.
pub async fn watch(
    store: Arc<PolicyStore>,
    audit: AuditLog,
    metrics: Arc<Metrics>,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let hup_fut = async {
            #[cfg(unix)]
            if let Some(h) = hup.as_mut() {
                h.recv().await;
                return;
            }
            std::future::pending::<()>().await
        };
        let trigger = tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {
                if !store.changed_on_disk() { continue; }
                "file_change"
            }
            _ = hup_fut => { store.changed_on_disk(); "sighup" }
        };
        reload_and_audit(&store, &audit, &metrics, trigger).await;
    }
}

/// One reload with its audit record.
pub async fn reload_and_audit(
    store: &PolicyStore,
    audit: &AuditLog,
    metrics: &Metrics,
    trigger: &str,
) {
    let mut ev;
    match store.reload() {
        Ok(n) => {
            tracing::info!(identities = n, trigger, "policies reloaded");
            metrics.policy_reload(true);
            ev = AuditEvent::new(EventKind::PolicyReloaded);
            ev.detail = Some(serde_json::json!({ "identities": n, "trigger": trigger }));
        }
        Err(errors) => {
            let msgs: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            tracing::error!(errors = ?msgs, trigger, "policy reload rejected; the previous set stays live");
            metrics.policy_reload(false);
            ev = AuditEvent::new(EventKind::PolicyReloadFailed);
            ev.reason = Some("invalid policy files; the previous set stays live".into());
            ev.detail = Some(serde_json::json!({ "errors": msgs, "trigger": trigger }));
        }
    }
    if let Err(e) = audit.append(ev).await {
        tracing::error!(error = %e, "could not audit a policy reload");
    }
}
