//! How identities actually behave: last issuance, tokens per hour for the last day, and
//! when each task and scope was last used. Feeds the inventory and the least-privilege
//! report.
//!
//! Kept in memory (one lock, small updates per issuance) and snapshotted to
//! `<state dir>/usage.json` every few seconds and at shutdown (write to a temp file, then
//! rename), so usage survives restarts; a crash loses at most the last interval.
//!
//! With replicas on a shared store, each replica also writes its snapshot there about
//! once a second and reads everyone else's ([`Usage::set_peers`]): what the inventory
//! shows and what behavioural monitoring compares with is the merge of every replica's
//! usage, at most a couple of seconds old (write-behind).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Usage of one identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityUsage {
    /// Last issuance (unix seconds).
    pub last_issued: Option<u64>,
    /// (hour since the epoch, tokens issued in it), last 24 hours.
    pub hourly: VecDeque<(u64, u64)>,
    /// Task → last use.
    pub tasks: BTreeMap<String, u64>,
    /// Scope → last use.
    pub scopes: BTreeMap<String, u64>,
    /// Source network (IPv4 /24, IPv6 /64) → last use.
    #[serde(default)]
    pub sources: BTreeMap<String, u64>,
}

/// What an issuance reveals about behaviour, compared with the identity's history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// The identity had issued before.
    pub has_history: bool,
    /// Seconds since the previous issuance, if any.
    pub idle_secs: Option<u64>,
    /// The task was never requested before.
    pub new_task: bool,
    /// Scopes never requested before.
    pub new_scopes: Vec<String>,
    /// The source network was never seen before (with history).
    pub new_source: Option<String>,
}

/// The source network of an address: IPv4 /24, IPv6 /64.
pub fn source_network(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => source_network(std::net::IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

impl IdentityUsage {
    /// Tokens issued in the 24 hours before `now`.
    pub fn tokens_24h(&self, now: u64) -> u64 {
        let hour = now / 3600;
        self.hourly
            .iter()
            .filter(|(h, _)| *h + 24 > hour)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Usage of every identity.
#[derive(Debug)]
pub struct Usage {
    map: Mutex<HashMap<String, IdentityUsage>>,
    /// Other replicas' snapshots: replica → identity → usage.
    peers: Mutex<HashMap<String, HashMap<String, IdentityUsage>>>,
    path: PathBuf,
}

impl IdentityUsage {
    /// Adds `other`'s usage (another replica's) to this one: the latest time of each
    /// use, and the hourly counts summed.
    pub fn merge(&mut self, other: &IdentityUsage) {
        self.last_issued = self.last_issued.max(other.last_issued);
        let mut hours: BTreeMap<u64, u64> = self.hourly.iter().copied().collect();
        for (h, n) in &other.hourly {
            *hours.entry(*h).or_default() += n;
        }
        self.hourly = hours.into_iter().collect();
        for (mine, theirs) in [
            (&mut self.tasks, &other.tasks),
            (&mut self.scopes, &other.scopes),
            (&mut self.sources, &other.sources),
        ] {
            for (k, t) in theirs {
                let e = mine.entry(k.clone()).or_default();
                *e = (*e).max(*t);
            }
        }
    }
}

impl Usage {
    /// Loads the snapshot in `state_dir` (a missing or unreadable one starts empty).
    pub fn load(state_dir: &Path) -> Self {
        let path = state_dir.join("usage.json");
        let map = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            map: Mutex::new(map),
            peers: Mutex::new(HashMap::new()),
            path,
        }
    }

    /// This replica's own usage, for the shared store.
    pub fn snapshot(&self) -> serde_json::Value {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::to_value(&*map).unwrap_or_default()
    }

    /// Replaces the other replicas' usage with `rows` (replica, snapshot) from the
    /// shared store; `own` (this replica's row) is skipped, and so is an unreadable one.
    pub fn set_peers(&self, own: &str, rows: Vec<(String, serde_json::Value)>) {
        let mut peers = HashMap::new();
        for (replica, snapshot) in rows {
            if replica == own {
                continue;
            }
            match serde_json::from_value(snapshot) {
                Ok(map) => {
                    peers.insert(replica, map);
                }
                Err(e) => {
                    tracing::warn!(%replica, error = %e, "unreadable usage snapshot of a replica; ignored")
                }
            }
        }
        *self.peers.lock().unwrap_or_else(|e| e.into_inner()) = peers;
    }

    /// `identity`'s usage as every replica saw it.
    fn merged(&self, identity: &str) -> Option<IdentityUsage> {
        let own = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(identity)
            .cloned();
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .values()
            .filter_map(|m| m.get(identity))
            .fold(own, |acc, other| {
                let mut u = acc.unwrap_or_default();
                u.merge(other);
                Some(u)
            })
    }

    /// Records one issuance (from an unknown source network).
    pub fn record(&self, identity: &str, task: &str, scopes: &[String], now: u64) {
        self.record_issued(identity, task, scopes, None, now);
    }

    /// Compares an issuance with the identity's history (nothing is recorded).
    pub fn observe(
        &self,
        identity: &str,
        task: &str,
        scopes: &[String],
        source: Option<&str>,
        now: u64,
    ) -> Observation {
        let Some(u) = self.merged(identity) else {
            return Observation::default();
        };
        let has_history = u.last_issued.is_some();
        Observation {
            has_history,
            idle_secs: u.last_issued.map(|t| now.saturating_sub(t)),
            new_task: has_history && !u.tasks.contains_key(task),
            new_scopes: if has_history {
                scopes
                    .iter()
                    .filter(|s| !u.scopes.contains_key(*s))
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            },
            new_source: source
                .filter(|s| has_history && !u.sources.contains_key(*s))
                .map(str::to_owned),
        }
    }

    /// Records one issued token (call once its `issued` record is durable).
    pub fn record_issued(
        &self,
        identity: &str,
        task: &str,
        scopes: &[String],
        source: Option<&str>,
        now: u64,
    ) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let u = match map.get_mut(identity) {
            Some(u) => u,
            None => map.entry(identity.to_owned()).or_default(),
        };
        if let Some(src) = source {
            match u.sources.get_mut(src) {
                Some(t) => *t = now,
                None => {
                    u.sources.insert(src.to_owned(), now);
                }
            }
        }
        u.last_issued = Some(now);
        let hour = now / 3600;
        match u.hourly.back_mut() {
            Some((h, n)) if *h == hour => *n += 1,
            _ => {
                u.hourly.push_back((hour, 1));
                while u.hourly.front().is_some_and(|(h, _)| *h + 24 <= hour) {
                    u.hourly.pop_front();
                }
            }
        }
        match u.tasks.get_mut(task) {
            Some(t) => *t = now,
            None => {
                u.tasks.insert(task.to_owned(), now);
            }
        }
        for s in scopes {
            match u.scopes.get_mut(s) {
                Some(t) => *t = now,
                None => {
                    u.scopes.insert(s.clone(), now);
                }
            }
        }
    }

    /// One identity's usage.
    pub fn get(&self, identity: &str) -> IdentityUsage {
        self.merged(identity).unwrap_or_default()
    }

    /// Writes the snapshot (temp file + rename).
    pub fn save(&self) -> std::io::Result<()> {
        let bytes = {
            let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            serde_json::to_vec(&*map).map_err(std::io::Error::other)?
        };
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_and_survives_a_snapshot() {
        let d = tempfile::tempdir().unwrap();
        let u = Usage::load(d.path());
        let day = 86_400 * 1000;
        u.record("a", "t", &["s1".into()], day);
        u.record("a", "t", &["s1".into(), "s2".into()], day + 10);
        assert_eq!(u.get("a").tokens_24h(day + 20), 2);
        u.record("a", "u", &[], day + 3600 * 30);
        let a = u.get("a");
        assert_eq!(a.tokens_24h(day + 3600 * 30), 1, "older hours fall out");
        assert_eq!(a.scopes["s2"], day + 10);
        u.save().unwrap();
        let again = Usage::load(d.path());
        assert_eq!(again.get("a"), a);
    }

    #[test]
    fn other_replicas_usage_is_merged() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (Usage::load(d.path()), Usage::load(&d.path().join("b")));
        let day = 86_400 * 1000;
        a.record("x", "t", &["s1".into()], day);
        b.record("x", "u", &["s2".into()], day + 5);
        b.record("x", "t", &[], day + 7);
        assert!(a.observe("x", "u", &[], None, day + 9).new_task);
        a.set_peers(
            "a",
            vec![("a".into(), a.snapshot()), ("b".into(), b.snapshot())],
        );
        let x = a.get("x");
        assert_eq!(x.last_issued, Some(day + 7));
        assert_eq!(x.tokens_24h(day + 9), 3, "counts from both replicas");
        assert_eq!(x.tasks["t"], day + 7, "the latest use anywhere");
        assert_eq!(x.scopes.len(), 2);
        assert!(
            !a.observe("x", "u", &[], None, day + 9).new_task,
            "B used task u"
        );
        // The own row is not counted twice, and an unreadable row is skipped.
        a.set_peers(
            "a",
            vec![
                ("a".into(), a.snapshot()),
                ("c".into(), serde_json::json!(7)),
            ],
        );
        assert_eq!(a.get("x").tokens_24h(day + 9), 1);
    }
}
