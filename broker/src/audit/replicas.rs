//! `broker audit verify` over several replicas: each replica's log on its own (chain and
//! head anchor, as [`verify`]), then all of them against the checkpoints in the shared
//! store. Every replica that ever checkpointed must be given; each checkpoint chain must
//! be whole and signed; every checkpointed record must still be in its replica's log with
//! the same hash. The design and its threat model: `docs/audit-log.md`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::chain::{self, GENESIS};
use super::checkpoint::Checkpoint;
use super::verify::{VerifyError, VerifyReport, read_segment, segments, verify};
use crate::mint::keys::Jwks;

/// One replica's result.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaReport {
    /// The audit directory.
    pub dir: PathBuf,
    /// The replica its records name (`None`: a broker without `replica_id`).
    pub replica: Option<String>,
    /// The log's own verification.
    pub log: VerifyReport,
    /// Checkpoints found for it in the store, all matching its log.
    pub checkpoints: u64,
}

/// Why a set of replica logs does not verify against each other and the checkpoints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicasError {
    /// One log does not verify on its own.
    #[error("{dir}: {source}")]
    Log {
        /// The audit directory.
        dir: PathBuf,
        /// Why.
        source: VerifyError,
    },
    /// A log holds records of several replicas.
    #[error("{dir}: records of several replicas in one log: {replicas:?}")]
    Mixed {
        /// The audit directory.
        dir: PathBuf,
        /// The replica names found.
        replicas: Vec<String>,
    },
    /// Two directories are logs of one replica.
    #[error("{first} and {second} are both logs of replica {replica:?}")]
    Duplicate {
        /// The replica.
        replica: String,
        /// One directory.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// A replica checkpointed to the store but its log was not given (or is gone).
    #[error(
        "replica {replica:?} wrote {checkpoints} checkpoint(s) (up to seq {seq}) but its audit log was not given: pass its directory too"
    )]
    MissingReplica {
        /// The replica.
        replica: String,
        /// How many checkpoints it has.
        checkpoints: usize,
        /// The newest checkpointed seq.
        seq: u64,
    },
    /// A checkpoint chain is broken: a number missing, a `prev` that is not the previous
    /// signature, a bad signature, or a seq that went backwards.
    #[error("replica {replica:?} checkpoint {n}: {problem}")]
    Checkpoint {
        /// The replica.
        replica: String,
        /// The checkpoint's number.
        n: u64,
        /// What is wrong.
        problem: String,
    },
    /// A checkpointed record is not in the log with that hash: the log was rewritten,
    /// replaced or cut short after the checkpoint.
    #[error(
        "replica {replica:?} checkpoint {n} vouches for seq {seq} hash {hash}, but {}",
        describe(.found, .last_seq)
    )]
    NotInLog {
        /// The replica.
        replica: String,
        /// The checkpoint's number.
        n: u64,
        /// The checkpointed seq.
        seq: u64,
        /// The checkpointed hash.
        hash: String,
        /// The hash the log has at that seq, if it has that seq.
        found: Option<String>,
        /// The log's last seq.
        last_seq: u64,
    },
}

fn describe(found: &Option<String>, last_seq: &u64) -> String {
    match found {
        Some(h) => format!("the log has hash {h} there: records were rewritten"),
        None => format!("the log ends at seq {last_seq}: records were removed"),
    }
}

/// The fields of a record this check reads.
#[derive(Deserialize)]
struct RecordFields {
    seq: u64,
    hash: String,
    #[serde(default)]
    replica: Option<String>,
}

/// What [`scan`] found in one log.
struct Scan {
    /// Each distinct `replica` value, in order of first appearance.
    names: Vec<Option<String>>,
    /// The hashes of the records at the wanted seqs.
    hashes: HashMap<u64, String>,
}

/// The replica names in a log and the hashes at `wanted` seqs.
fn scan(dir: &Path, wanted: &HashSet<u64>) -> Result<Scan, VerifyError> {
    let mut names: Vec<Option<String>> = Vec::new();
    let mut hashes = HashMap::new();
    for (_, path) in segments(dir)? {
        let bytes = read_segment(&path)?;
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            // `verify` already checked every line; a torn tail is skipped here too.
            let Ok(r) = serde_json::from_slice::<RecordFields>(line) else {
                continue;
            };
            if !names.contains(&r.replica) {
                names.push(r.replica);
            }
            if wanted.contains(&r.seq) {
                hashes.insert(r.seq, r.hash);
            }
        }
    }
    Ok(Scan { names, hashes })
}

/// Verifies every log in `dirs` on its own, then all of them against `checkpoints` (from
/// the shared store; empty for a single broker). `keys` must hold every replica's public
/// keys (the JWKS any replica serves).
pub fn verify_replicas(
    dirs: &[PathBuf],
    keys: &Jwks,
    checkpoints: &[Checkpoint],
) -> Result<Vec<ReplicaReport>, ReplicasError> {
    let mut by_replica: BTreeMap<&str, Vec<&Checkpoint>> = BTreeMap::new();
    for cp in checkpoints {
        by_replica.entry(cp.replica.as_str()).or_default().push(cp);
    }
    for chain in by_replica.values_mut() {
        chain.sort_by_key(|c| c.n);
    }
    let wanted: HashSet<u64> = checkpoints.iter().map(|c| c.seq).collect();

    let mut reports = Vec::new();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for dir in dirs {
        let log = verify(dir, keys).map_err(|source| ReplicasError::Log {
            dir: dir.clone(),
            source,
        })?;
        let Scan { names, hashes } = scan(dir, &wanted).map_err(|source| ReplicasError::Log {
            dir: dir.clone(),
            source,
        })?;
        let named: Vec<String> = names.iter().flatten().cloned().collect();
        // Unnamed records may precede named ones (a broker given a replica_id later).
        if named.len() > 1 {
            return Err(ReplicasError::Mixed {
                dir: dir.clone(),
                replicas: names
                    .iter()
                    .map(|n| n.clone().unwrap_or_else(|| "(none)".into()))
                    .collect(),
            });
        }
        let replica = named.into_iter().next();
        if let Some(r) = &replica
            && let Some(first) = seen.insert(r.clone(), dir.clone())
        {
            return Err(ReplicasError::Duplicate {
                replica: r.clone(),
                first,
                second: dir.clone(),
            });
        }
        let chain = replica
            .as_deref()
            .and_then(|r| by_replica.get(r))
            .map_or(&[][..], Vec::as_slice);
        check_chain(chain, keys, &hashes, log.last_seq)?;
        reports.push(ReplicaReport {
            dir: dir.clone(),
            replica,
            log,
            checkpoints: chain.len() as u64,
        });
    }
    for (replica, chain) in &by_replica {
        if !seen.contains_key(*replica) {
            return Err(ReplicasError::MissingReplica {
                replica: (*replica).to_owned(),
                checkpoints: chain.len(),
                seq: chain.last().map_or(0, |c| c.seq),
            });
        }
    }
    Ok(reports)
}

fn check_chain(
    chain: &[&Checkpoint],
    keys: &Jwks,
    hashes: &HashMap<u64, String>,
    last_seq: u64,
) -> Result<(), ReplicasError> {
    let mut prev: Option<&Checkpoint> = None;
    for cp in chain {
        let broken = |problem: String| ReplicasError::Checkpoint {
            replica: cp.replica.clone(),
            n: cp.n,
            problem,
        };
        let expected_n = prev.map_or(1, |p| p.n + 1);
        if cp.n != expected_n {
            return Err(broken(format!(
                "expected checkpoint {expected_n} here: checkpoints were removed"
            )));
        }
        if cp.prev != prev.map_or("", |p| p.sig.as_str()) {
            return Err(broken(
                "its `prev` is not the previous checkpoint's signature".into(),
            ));
        }
        if !cp.signature_valid(keys) {
            return Err(broken(format!(
                "bad signature (key {:?} not in the JWKS, or it did not sign this)",
                cp.kid
            )));
        }
        if let Some(p) = prev
            && cp.seq < p.seq
        {
            return Err(broken(format!(
                "seq {} is before the previous checkpoint's {}",
                cp.seq, p.seq
            )));
        }
        let found = if cp.seq == 0 {
            Some(chain::to_hex(&GENESIS))
        } else {
            hashes.get(&cp.seq).cloned()
        };
        if found.as_deref() != Some(cp.hash.as_str()) {
            return Err(ReplicasError::NotInLog {
                replica: cp.replica.clone(),
                n: cp.n,
                seq: cp.seq,
                hash: cp.hash.clone(),
                found,
                last_seq,
            });
        }
        prev = Some(cp);
    }
    Ok(())
}
