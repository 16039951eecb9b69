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

/// Per identity, what a reload granted beyond the previous set.
pub type Widenings = Vec<(String, Vec<String>)>;

/// The live policy set.
#[derive(Debug)]
pub struct PolicyStore {
    third_party_max: Option<Duration>,
    current: RwLock<Arc<PolicySet>>,
    break_glass: RwLock<Arc<BreakGlassPolicies>>,
    dir: PathBuf,
    audiences: Vec<AudienceEntry>,
    trust_domains: Vec<String>,
    client_cas: Vec<String>,
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
        client_cas: &[String],
        third_party_max: Option<Duration>,
    ) -> Result<Self, Vec<LintError>> {
        let seen = fingerprint(dir);
        let set = policy::load_dir(dir, audiences, trust_domains)?;
        check_against_config(&set, third_party_max, client_cas)?;
        let bg = crate::breakglass::policy::load(dir, audiences)?;
        Ok(Self {
            third_party_max,
            current: RwLock::new(Arc::new(set)),
            break_glass: RwLock::new(Arc::new(bg)),
            dir: dir.to_path_buf(),
            audiences: audiences.to_vec(),
            trust_domains: trust_domains.to_vec(),
            client_cas: client_cas.to_vec(),
            seen: Mutex::new(seen),
        })
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

    /// Rebuilds the set; swaps it in only if valid. Returns the new identity count and,
    /// per identity, what the new set grants that the old one did not.
    pub fn reload(&self) -> Result<(usize, Widenings), Vec<LintError>> {
        let set = policy::load_dir(&self.dir, &self.audiences, &self.trust_domains)?;
        check_against_config(&set, self.third_party_max, &self.client_cas)?;
        let bg = crate::breakglass::policy::load(&self.dir, &self.audiences)?;
        let n = set.len();
        let widened = widenings(&self.current(), &set);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        *self.break_glass.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(bg);
        Ok((n, widened))
    }
}

/// The checks that need the config: third-party registration periods and the client CAs
/// that certificate matchers name.
fn check_against_config(
    set: &PolicySet,
    third_party_max: Option<Duration>,
    client_cas: &[String],
) -> Result<(), Vec<LintError>> {
    let mut errors = policy::check_client_ca_names(set, client_cas);
    if let Some(max) = third_party_max {
        errors.extend(policy::check_third_party_registration(
            set,
            max,
            crate::clock::Clock::now(&crate::clock::SystemClock),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// What `new` grants each existing identity beyond `old`: new tasks, new scopes of a
/// task, longer `max_ttl`s. (New identities are not widenings: they had nothing.)
fn widenings(old: &PolicySet, new: &PolicySet) -> Widenings {
    let mut out = Vec::new();
    for id in new.identities() {
        let Some(before) = old.identity(&id.id) else {
            continue;
        };
        let mut added = Vec::new();
        for t in &id.tasks {
            match before.task(&t.name) {
                None => added.push(format!("task {}", t.name)),
                Some(bt) => {
                    for s in &t.scopes {
                        if !bt.scopes.contains(s) {
                            added.push(format!("scope {s} in task {}", t.name));
                        }
                    }
                    if t.max_ttl > bt.max_ttl {
                        added.push(format!(
                            "max_ttl of task {} from {}s to {}s",
                            t.name,
                            bt.max_ttl.as_secs(),
                            t.max_ttl.as_secs()
                        ));
                    }
                }
            }
        }
        if !added.is_empty() {
            out.push((id.id.clone(), added));
        }
    }
    out
}

/// Who to tell about anomalies found at reload.
#[derive(Clone)]
pub struct AnomalySink {
    /// The monitor.
    pub monitor: Arc<crate::anomaly::Monitor>,
    /// The webhook.
    pub webhook: crate::breakglass::webhook::Webhook,
    /// Time.
    pub clock: Arc<dyn crate::clock::Clock>,
}

impl std::fmt::Debug for AnomalySink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnomalySink").finish_non_exhaustive()
    }
}

/// Reloads on change or SIGHUP until `shutdown` resolves, auditing each outcome.
pub async fn watch(
    store: Arc<PolicyStore>,
    audit: AuditLog,
    metrics: Arc<Metrics>,
    anomalies: AnomalySink,
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
        reload_and_audit(&store, &audit, &metrics, &anomalies, trigger).await;
    }
}

/// One reload with its audit record.
pub async fn reload_and_audit(
    store: &PolicyStore,
    audit: &AuditLog,
    metrics: &Metrics,
    anomalies: &AnomalySink,
    trigger: &str,
) {
    let mut ev;
    match store.reload() {
        Ok((n, widened)) => {
            let now = anomalies.clock.unix_secs();
            for (identity, added) in widened {
                let a = match anomalies.monitor.raise(
                    &identity,
                    "policy_widened",
                    serde_json::json!({ "added": added, "trigger": trigger }),
                    now,
                    crate::anomaly::AnomalyAction::Alert,
                ) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::error!(error = %e, %identity, "could not raise a policy_widened anomaly");
                        continue;
                    }
                };
                metrics.anomaly(a.kind);
                let mut rec = AuditEvent::new(EventKind::Anomaly);
                rec.identity = Some(identity.clone());
                rec.rule = Some(a.kind.to_owned());
                rec.reason = Some(format!(
                    "a policy reload widened identity {identity}'s grant"
                ));
                rec.detail = Some(
                    serde_json::json!({ "anomaly": a.id, "evidence": a.evidence, "action": a.action }),
                );
                if let Err(e) = audit.append(rec).await {
                    tracing::error!(error = %e, "could not audit an anomaly");
                }
                anomalies
                    .webhook
                    .send(serde_json::json!({ "event": "anomaly", "anomaly": a }));
            }
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
