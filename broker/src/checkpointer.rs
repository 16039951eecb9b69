//! Writes this replica's audit checkpoints to the shared store (see
//! [`crate::audit::checkpoint`]): about once a second while the log grows, and once more
//! at a clean stop. A checkpoint that cannot be written is retried on the next tick; the
//! request path never waits for it (the local log and anchor stay the fail-closed record).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::audit::AuditLog;
use crate::audit::checkpoint::{Checkpoint, CheckpointPoint};
use crate::clock::Clock;
use crate::mint::Minter;
use crate::store::{StateStore, StoreError};

/// How often the newest acknowledged record is checkpointed (when it changed).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// The replica's checkpoint chain as far as it is written.
struct Chain {
    replica: String,
    /// Number and signature of the newest written checkpoint (0 and empty: none yet).
    n: u64,
    sig: String,
    /// The seq it vouched for.
    seq: Option<u64>,
}

impl Chain {
    /// Continues `replica`'s chain from the checkpoints already in `store`.
    fn resume(store: &dyn StateStore, replica: &str) -> Result<Self, StoreError> {
        Ok(match store.last_checkpoint(replica)? {
            Some(c) => Self {
                replica: replica.to_owned(),
                n: c.n,
                sig: c.sig,
                seq: Some(c.seq),
            },
            None => Self {
                replica: replica.to_owned(),
                n: 0,
                sig: String::new(),
                seq: None,
            },
        })
    }

    /// Signs and writes a checkpoint for `(seq, hash)` unless the newest one already
    /// vouches for `seq`.
    fn advance(
        &mut self,
        store: &dyn StateStore,
        minter: &Minter,
        (seq, hash): (u64, String),
        now: u64,
    ) -> Result<bool, String> {
        if self.seq == Some(seq) {
            return Ok(false);
        }
        let signer = minter
            .anchor_signer()
            .ok_or("no signing key is active to sign an audit checkpoint with")?;
        let cp = Checkpoint::sign(
            signer.as_ref(),
            CheckpointPoint {
                replica: &self.replica,
                n: self.n + 1,
                seq,
                hash: &hash,
                prev: &self.sig,
                at: now,
            },
        )
        .map_err(|e| format!("could not sign an audit checkpoint: {e}"))?;
        store.record_checkpoint(&cp).map_err(|e| e.to_string())?;
        self.n = cp.n;
        self.sig = cp.sig;
        self.seq = Some(seq);
        Ok(true)
    }
}

/// Writes checkpoints for one replica.
#[derive(Clone)]
pub struct Checkpointer {
    store: Arc<dyn StateStore>,
    minter: Arc<Minter>,
    clock: Arc<dyn Clock>,
    chain: Arc<std::sync::Mutex<Chain>>,
}

impl Checkpointer {
    /// Continues `replica`'s chain from the checkpoints already in `store`.
    pub async fn resume(
        store: Arc<dyn StateStore>,
        minter: Arc<Minter>,
        clock: Arc<dyn Clock>,
        replica: String,
    ) -> Result<Self, StoreError> {
        let s = Arc::clone(&store);
        let chain = tokio::task::spawn_blocking(move || Chain::resume(s.as_ref(), &replica))
            .await
            .map_err(|e| StoreError::Database {
                message: format!("checkpoint task failed: {e}"),
            })??;
        Ok(Self {
            store,
            minter,
            clock,
            chain: Arc::new(std::sync::Mutex::new(chain)),
        })
    }

    /// Checkpoints `point` (the log's newest acknowledged record) unless it already is.
    pub async fn write(&self, point: (u64, String)) -> Result<bool, String> {
        let me = self.clone();
        let now = self.clock.unix_secs();
        tokio::task::spawn_blocking(move || {
            let mut chain = me.chain.lock().unwrap_or_else(|e| e.into_inner());
            chain.advance(me.store.as_ref(), &me.minter, point, now)
        })
        .await
        .map_err(|e| format!("checkpoint task failed: {e}"))?
    }

    /// Checkpoints `audit` every [`CHECKPOINT_INTERVAL`] until `shutdown`; the caller
    /// writes the last one after closing the log.
    pub async fn run(&self, audit: AuditLog, shutdown: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            match self.write(audit.durable_point()).await {
                Ok(_) => last_error = None,
                Err(e) => {
                    if last_error.as_ref() != Some(&e) {
                        tracing::warn!(error = %e, "could not write an audit checkpoint; will retry");
                        last_error = Some(e);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mint::keys::{KeyRing, SigningAlgorithm, generate};
    use crate::store::memory::MemoryStore;

    /// A store that keeps checkpoints in memory (the PostgreSQL store's contract).
    #[derive(Default)]
    struct Kept(std::sync::Mutex<Vec<Checkpoint>>, MemoryStore);

    impl StateStore for Kept {
        fn append_all(&self, c: &[crate::store::StateChange]) -> Result<Vec<u64>, StoreError> {
            self.1.append_all(c)
        }
        fn load(&self) -> Result<Vec<crate::store::Event>, StoreError> {
            self.1.load()
        }
        fn record_checkpoint(&self, cp: &Checkpoint) -> Result<(), StoreError> {
            self.0.lock().unwrap().push(cp.clone());
            Ok(())
        }
        fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
            Ok(self.0.lock().unwrap().clone())
        }
    }

    #[test]
    fn checkpoints_chain_and_resume_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), SigningAlgorithm::EdDSA, 1).unwrap();
        let ring = KeyRing::load_dir(dir.path()).unwrap();
        let jwks = ring.jwks();
        let minter = Minter::new(
            "https://b".into(),
            &ring,
            Arc::new(crate::clock::SystemClock),
        );
        let store = Kept::default();
        let mut chain = Chain::resume(&store, "a").unwrap();
        assert!(
            chain
                .advance(&store, &minter, (3, "h3".into()), 10)
                .unwrap()
        );
        assert!(
            !chain
                .advance(&store, &minter, (3, "h3".into()), 11)
                .unwrap(),
            "unchanged: none"
        );
        assert!(
            chain
                .advance(&store, &minter, (5, "h5".into()), 12)
                .unwrap()
        );
        let mut again = Chain::resume(&store, "a").unwrap();
        assert!(
            again
                .advance(&store, &minter, (9, "h9".into()), 13)
                .unwrap()
        );
        let all = store.checkpoints().unwrap();
        assert_eq!(
            all.iter().map(|c| (c.n, c.seq)).collect::<Vec<_>>(),
            vec![(1, 3), (2, 5), (3, 9)]
        );
        assert_eq!(all[0].prev, "");
        assert_eq!(all[1].prev, all[0].sig);
        assert_eq!(
            all[2].prev, all[1].sig,
            "the chain continues across a restart"
        );
        assert!(all.iter().all(|c| c.signature_valid(&jwks)));
    }
}
