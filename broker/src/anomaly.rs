//! Behavioural monitoring: anomalies in how an identity uses the broker.
//!
//! Kinds: a call volume far above the identity's own recent baseline
//! (`volume_spike`), a source network never used before (`new_source_network`), a task or
//! scope never requested before (`new_task`, `new_scope`), a policy reload that widens an
//! identity's grant (`policy_widened`), and first use after a dormant period
//! (`dormant_reactivated`). Each anomaly is an `anomaly` audit record with its evidence,
//! a metric and a webhook event (the caller of [`Monitor::observe`] does those). The
//! identity's action decides what else happens: `alert` (default) only reports; `deny`
//! refuses the identity's requests until an admin acknowledges the anomaly.
//!
//! Volume baselines are an exponentially weighted mean of requests per window; a window
//! over `factor` × baseline (and over `floor`) is a spike, reported once per window.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::{Value, json};

use std::sync::Arc;

use crate::store::{AnomalyChange, StateChange, StateStore, StoreError};
use crate::usage::Observation;

/// What to do about an identity's anomalies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyAction {
    /// Report only.
    #[default]
    Alert,
    /// Refuse the identity's requests until acknowledged.
    Deny,
}

impl AnomalyAction {
    /// Parses `alert` or `deny`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "alert" => Some(Self::Alert),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }
}

/// One detected anomaly.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Anomaly {
    /// Id (for acknowledgement).
    pub id: String,
    /// The identity.
    pub identity: String,
    /// Kind.
    pub kind: &'static str,
    /// Evidence.
    pub evidence: Value,
    /// When (unix seconds).
    pub at: u64,
    /// The action in force when detected.
    pub action: AnomalyAction,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
}

impl Anomaly {
    /// The anomaly as the admin API shows it.
    pub fn report(&self) -> broker_client::types::AnomalyReport {
        broker_client::types::AnomalyReport {
            id: self.id.clone(),
            identity: self.identity.clone(),
            kind: self.kind.to_owned(),
            evidence: self.evidence.clone(),
            at: self.at,
            action: match self.action {
                AnomalyAction::Alert => "alert",
                AnomalyAction::Deny => "deny",
            }
            .to_owned(),
            acknowledged_by: self.acknowledged_by.clone(),
        }
    }
}

/// The outcome of [`Monitor::acknowledge`].
#[derive(Debug, Clone, PartialEq)]
pub enum Acknowledged {
    /// Acknowledged (now, or before): the anomaly after.
    Done(Anomaly),
    /// No such anomaly anywhere.
    Unknown,
    /// The anomaly is not in the state expected (it was just raised elsewhere, or
    /// acknowledged meanwhile): nothing was appended; decide again on [`Monitor::get`].
    Changed,
}

/// Volume-spike settings.
#[derive(Debug, Clone, Copy)]
pub struct VolumeSettings {
    /// Window length, seconds.
    pub window_secs: u64,
    /// A window over `factor` × baseline is a spike...
    pub factor: f64,
    /// ...if it is also over this many requests.
    pub floor: u64,
}

impl Default for VolumeSettings {
    fn default() -> Self {
        Self {
            window_secs: 60,
            factor: 10.0,
            floor: 100,
        }
    }
}

#[derive(Debug, Default)]
struct Volume {
    window: u64,
    count: u64,
    baseline: Option<f64>,
    reported: bool,
}

#[derive(Debug, Default)]
struct Inner {
    volume: HashMap<String, Volume>,
    anomalies: Vec<Anomaly>,
}

impl Inner {
    /// Applies an anomaly change. Idempotent: a replica may see a change early (while
    /// deciding an acknowledgement) and again from the journal.
    fn apply(&mut self, c: StateChange) {
        match c {
            StateChange::Anomaly(AnomalyChange::Raised { id, .. })
                if self.anomalies.iter().any(|a| a.id == id) => {}
            StateChange::Anomaly(AnomalyChange::Raised {
                id,
                identity,
                kind,
                evidence,
                at,
                action,
            }) => self.anomalies.push(Anomaly {
                id,
                identity,
                kind: KINDS
                    .iter()
                    .find(|k| **k == kind)
                    .copied()
                    .unwrap_or("unknown"),
                evidence,
                at,
                action: AnomalyAction::parse(&action).unwrap_or(AnomalyAction::Deny),
                acknowledged_by: None,
            }),
            StateChange::Anomaly(AnomalyChange::Acknowledged { id, by, .. }) => {
                // The first acknowledgement counts.
                if let Some(a) = self.anomalies.iter_mut().find(|a| a.id == id)
                    && a.acknowledged_by.is_none()
                {
                    a.acknowledged_by = Some(by);
                }
            }
            _ => {}
        }
    }
}

/// The monitor.
pub struct Monitor {
    inner: Mutex<Inner>,
    volume: VolumeSettings,
    dormant_after_secs: u64,
    store: Arc<dyn StateStore>,
    /// Every journal change up to this event id is applied here.
    through: std::sync::atomic::AtomicU64,
    /// Held across a recorded-first acknowledgement, so that acknowledgements on this
    /// replica never race each other's records.
    acks: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").finish_non_exhaustive()
    }
}

/// Anomaly kinds, for replaying the journal into `&'static str`s (and the metric's
/// children, made at start).
pub(crate) const KINDS: &[&str] = &[
    "volume_spike",
    "new_source_network",
    "new_task",
    "new_scope",
    "policy_widened",
    "dormant_reactivated",
];

impl Monitor {
    /// A monitor with these settings, replaying anomalies from `store`.
    pub fn open(
        store: Arc<dyn StateStore>,
        volume: VolumeSettings,
        dormant_after_secs: u64,
    ) -> Result<Self, StoreError> {
        let events = store.load()?;
        Ok(Self::from_events(
            store,
            &events,
            volume,
            dormant_after_secs,
        ))
    }

    /// A monitor built from `events` (the journal as loaded once at start).
    pub fn from_events(
        store: Arc<dyn StateStore>,
        events: &[crate::store::Event],
        volume: VolumeSettings,
        dormant_after_secs: u64,
    ) -> Self {
        let mut inner = Inner::default();
        for e in events {
            inner.apply(e.change.clone());
        }
        // Acknowledged anomalies stay: they mark behaviour an admin accepted.
        Self {
            inner: Mutex::new(inner),
            volume,
            dormant_after_secs,
            store,
            through: std::sync::atomic::AtomicU64::new(events.last().map_or(0, |e| e.id)),
            acks: tokio::sync::Mutex::new(()),
        }
    }

    /// Records that every journal change up to event `id` has been applied.
    pub fn confirm_through(&self, id: u64) {
        self.through
            .fetch_max(id, std::sync::atomic::Ordering::AcqRel);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies an anomaly change another replica made (already durable in the shared
    /// store).
    pub fn apply_remote(&self, change: &StateChange) {
        self.lock().apply(change.clone());
    }

    /// The unacknowledged `deny` anomaly blocking `identity`, if any.
    pub fn blocking(&self, identity: &str) -> Option<Anomaly> {
        self.lock()
            .anomalies
            .iter()
            .find(|a| {
                a.identity == identity
                    && a.action == AnomalyAction::Deny
                    && a.acknowledged_by.is_none()
            })
            .cloned()
    }

    /// Open (unacknowledged) anomalies of `identity`.
    pub fn open_for(&self, identity: &str) -> Vec<Anomaly> {
        self.lock()
            .anomalies
            .iter()
            .filter(|a| a.identity == identity && a.acknowledged_by.is_none())
            .cloned()
            .collect()
    }

    /// Every anomaly kept, newest first (the console's list).
    pub fn all(&self) -> Vec<Anomaly> {
        let mut all = self.lock().anomalies.clone();
        all.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| b.id.cmp(&a.id)));
        all
    }

    /// Waits for this replica's other acknowledgements (see [`Monitor::acknowledge`]).
    pub async fn one_ack_at_a_time(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.acks.lock().await
    }

    /// Anomaly `id` as this replica knows it.
    pub fn get(&self, id: &str) -> Option<Anomaly> {
        self.lock().anomalies.iter().find(|a| a.id == id).cloned()
    }

    /// Acknowledges anomaly `id` durably if its newest shared state (this replica's view
    /// plus what other replicas committed, read in the append's transaction) is still
    /// `expected` (what the caller recorded the acknowledgement from): an anomaly another
    /// replica raised a moment ago is found, and racing acknowledgements record one.
    pub fn acknowledge(
        &self,
        id: &str,
        by: &str,
        now: u64,
        expected: Option<&Anomaly>,
    ) -> Result<Acknowledged, StoreError> {
        let mut inner = self.lock();
        let mut fresh_changes = Vec::new();
        let mut newest = None;
        let after = self.through.load(std::sync::atomic::Ordering::Acquire);
        let appended = self.store.append_decided(after, &mut |fresh| {
            fresh_changes = fresh.to_vec();
            let mut scratch = Inner::default();
            scratch
                .anomalies
                .extend(inner.anomalies.iter().find(|a| a.id == id).cloned());
            for c in fresh {
                scratch.apply(c.clone());
            }
            newest = scratch.anomalies.into_iter().find(|a| a.id == id);
            match (&newest, expected) {
                (Some(n), Some(e)) if n == e && n.acknowledged_by.is_none() => {
                    vec![StateChange::Anomaly(AnomalyChange::Acknowledged {
                        id: id.to_owned(),
                        by: by.to_owned(),
                        at: now,
                    })]
                }
                _ => Vec::new(),
            }
        })?;
        for c in fresh_changes
            .into_iter()
            .chain(appended.into_iter().map(|e| e.change))
        {
            inner.apply(c);
        }
        let now_known = inner.anomalies.iter().find(|a| a.id == id).cloned();
        Ok(match (newest, expected, now_known) {
            (None, None, _) => Acknowledged::Unknown,
            (Some(n), Some(e), Some(a)) if &n == e => Acknowledged::Done(a),
            _ => Acknowledged::Changed,
        })
    }

    /// Adds an anomaly found elsewhere (a widening policy reload).
    pub fn raise(
        &self,
        identity: &str,
        kind: &'static str,
        evidence: Value,
        at: u64,
        action: AnomalyAction,
    ) -> Result<Anomaly, crate::ids::RandomError> {
        let a = Anomaly {
            id: crate::ids::random_id("an")?,
            identity: identity.to_owned(),
            kind,
            evidence,
            at,
            action,
            acknowledged_by: None,
        };
        // Kept in memory even if the journal write fails: a `deny` hold fails closed.
        if let Err(e) = self
            .store
            .append(&StateChange::Anomaly(AnomalyChange::Raised {
                id: a.id.clone(),
                identity: a.identity.clone(),
                kind: a.kind.to_owned(),
                evidence: a.evidence.clone(),
                at,
                action: match action {
                    AnomalyAction::Alert => "alert".into(),
                    AnomalyAction::Deny => "deny".into(),
                },
            }))
        {
            tracing::error!(error = %e, anomaly = %a.id, "could not persist an anomaly");
        }
        self.lock().anomalies.push(a.clone());
        Ok(a)
    }

    /// Checks one issuance; returns the new anomalies.
    pub fn observe(
        &self,
        identity: &str,
        task: &str,
        obs: &Observation,
        now: u64,
        action: AnomalyAction,
    ) -> Result<Vec<Anomaly>, crate::ids::RandomError> {
        let mut found: Vec<(&'static str, Value)> = Vec::new();
        if let Some(idle) = obs.idle_secs
            && idle >= self.dormant_after_secs
        {
            found.push((
                "dormant_reactivated",
                json!({ "idle_secs": idle, "dormant_after_secs": self.dormant_after_secs }),
            ));
        }
        if let Some(src) = &obs.new_source {
            found.push(("new_source_network", json!({ "network": src })));
        }
        if obs.new_task {
            found.push(("new_task", json!({ "task": task })));
        }
        if !obs.new_scopes.is_empty() {
            found.push((
                "new_scope",
                json!({ "task": task, "scopes": obs.new_scopes }),
            ));
        }
        {
            let mut inner = self.lock();
            // Behaviour an admin acknowledged is accepted: the same identity, kind and
            // evidence is not raised again (dormancy: not again before the next issuance).
            let last_issued = obs.idle_secs.map(|i| now.saturating_sub(i)).unwrap_or(0);
            found.retain(|(kind, evidence)| {
                !inner.anomalies.iter().any(|a| {
                    a.identity == identity
                        && a.kind == *kind
                        && a.acknowledged_by.is_some()
                        && (a.evidence == *evidence
                            || (*kind == "dormant_reactivated" && a.at >= last_issued))
                })
            });
            let v = match inner.volume.get_mut(identity) {
                Some(v) => v,
                None => inner.volume.entry(identity.to_owned()).or_default(),
            };
            let window = now / self.volume.window_secs.max(1);
            if window != v.window {
                // Close the finished window into the baseline (idle windows count as 0).
                let gap = window.saturating_sub(v.window).min(32);
                let mut base = v.baseline;
                if v.window != 0 {
                    let mut b = base.map_or(v.count as f64, |b| 0.7 * b + 0.3 * v.count as f64);
                    for _ in 1..gap {
                        b *= 0.7;
                    }
                    base = Some(b);
                }
                *v = Volume {
                    window,
                    count: 0,
                    baseline: base,
                    reported: false,
                };
            }
            v.count += 1;
            if let Some(b) = v.baseline
                && !v.reported
                && v.count > self.volume.floor
                && (v.count as f64) > self.volume.factor * b.max(1.0)
            {
                v.reported = true;
                found.push((
                    "volume_spike",
                    json!({ "requests_this_window": v.count, "window_secs": self.volume.window_secs, "baseline": b }),
                ));
            }
        }
        found
            .into_iter()
            .map(|(kind, evidence)| self.raise(identity, kind, evidence, now, action))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn monitor(volume: VolumeSettings, dormant: u64) -> Monitor {
        Monitor::open(Arc::new(MemoryStore::default()), volume, dormant).unwrap()
    }

    fn obs() -> Observation {
        Observation {
            has_history: true,
            idle_secs: Some(1),
            ..Default::default()
        }
    }

    #[test]
    fn volume_spike_against_the_identitys_own_baseline() {
        let m = monitor(
            VolumeSettings {
                window_secs: 10,
                factor: 5.0,
                floor: 10,
            },
            1_000_000,
        );
        // Baseline: 2 requests per window for a few windows.
        for w in 1..5u64 {
            for _ in 0..2 {
                assert!(
                    m.observe("a", "t", &obs(), w * 10, AnomalyAction::Alert)
                        .unwrap()
                        .is_empty()
                );
            }
        }
        let mut spikes = 0;
        for _ in 0..40 {
            spikes += m
                .observe("a", "t", &obs(), 50, AnomalyAction::Alert)
                .unwrap()
                .iter()
                .filter(|a| a.kind == "volume_spike")
                .count();
        }
        assert_eq!(spikes, 1, "reported once per window");
        assert!(
            m.observe("b", "t", &obs(), 50, AnomalyAction::Alert)
                .unwrap()
                .is_empty(),
            "per identity"
        );
    }

    #[test]
    fn deny_blocks_until_acknowledged() {
        let store = MemoryStore::default();
        let m = Monitor::open(Arc::new(store.clone()), VolumeSettings::default(), 100).unwrap();
        let mut o = obs();
        o.new_source = Some("10.1.2.0/24".into());
        let a = m.observe("a", "t", &o, 5, AnomalyAction::Deny).unwrap();
        assert_eq!(a[0].kind, "new_source_network");
        assert!(m.blocking("a").is_some());
        let reopened =
            Monitor::open(Arc::new(store.clone()), VolumeSettings::default(), 100).unwrap();
        assert!(
            reopened.blocking("a").is_some(),
            "a hold survives a restart"
        );
        let expected = m.get(&a[0].id);
        assert!(matches!(
            m.acknowledge(&a[0].id, "admin:x", 6, expected.as_ref())
                .unwrap(),
            Acknowledged::Done(_)
        ));
        assert!(m.blocking("a").is_none());
        let reopened = Monitor::open(Arc::new(store), VolumeSettings::default(), 100).unwrap();
        assert!(
            reopened.blocking("a").is_none(),
            "so does its acknowledgement"
        );
        assert!(m.open_for("a").is_empty());
    }

    #[test]
    fn dormancy_and_privilege_expansion() {
        let m = monitor(VolumeSettings::default(), 100);
        let o = Observation {
            has_history: true,
            idle_secs: Some(500),
            new_task: true,
            new_scopes: vec!["x".into()],
            new_source: None,
        };
        let kinds: Vec<&str> = m
            .observe("a", "t", &o, 5, AnomalyAction::Alert)
            .unwrap()
            .iter()
            .map(|a| a.kind)
            .collect();
        assert_eq!(kinds, vec!["dormant_reactivated", "new_task", "new_scope"]);
    }
}
