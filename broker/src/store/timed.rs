//! [`Timed`]: a [`StateStore`] that forwards every call to the store it wraps and observes
//! how long the call took in `broker_store_operation_duration_seconds{op}`. The broker
//! wraps the store it opens once, at start, so every consumer's round-trips are timed in
//! one place. It never looks at what is stored.

use std::sync::Arc;
use std::time::Instant;

use super::{Event, Polled, StateChange, StateStore, StoreError};
use crate::audit::Checkpoint;
use crate::metrics::{StoreOp, StoreTimings};

/// A store whose calls are timed.
pub struct Timed {
    inner: Arc<dyn StateStore>,
    timings: StoreTimings,
}

impl Timed {
    /// Wraps `inner`; its calls are observed into `timings`.
    pub fn wrap(inner: Arc<dyn StateStore>, timings: StoreTimings) -> Arc<dyn StateStore> {
        Arc::new(Self { inner, timings })
    }

    fn time<T>(&self, op: StoreOp, call: impl FnOnce(&dyn StateStore) -> T) -> T {
        let started = Instant::now();
        let out = call(self.inner.as_ref());
        self.timings.observe(op, started.elapsed());
        out
    }
}

impl StateStore for Timed {
    fn append_all(&self, changes: &[StateChange]) -> Result<Vec<u64>, StoreError> {
        self.time(StoreOp::AppendAll, |s| s.append_all(changes))
    }
    fn append(&self, change: &StateChange) -> Result<u64, StoreError> {
        self.time(StoreOp::Append, |s| s.append(change))
    }
    fn append_decided(
        &self,
        after: u64,
        decide: &mut dyn FnMut(&[StateChange]) -> Vec<StateChange>,
    ) -> Result<Vec<Event>, StoreError> {
        self.time(StoreOp::AppendDecided, |s| s.append_decided(after, decide))
    }
    fn load(&self) -> Result<Vec<Event>, StoreError> {
        self.time(StoreOp::Load, |s| s.load())
    }
    fn shared(&self) -> bool {
        self.inner.shared()
    }
    fn poll(&self) -> Result<Polled, StoreError> {
        self.time(StoreOp::Poll, |s| s.poll())
    }
    fn wakeup(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.inner.wakeup()
    }
    fn record_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.time(StoreOp::RecordCheckpoint, |s| {
            s.record_checkpoint(checkpoint)
        })
    }
    fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.time(StoreOp::Checkpoints, |s| s.checkpoints())
    }
    fn last_checkpoint(&self, replica: &str) -> Result<Option<Checkpoint>, StoreError> {
        self.time(StoreOp::LastCheckpoint, |s| s.last_checkpoint(replica))
    }
    fn put_usage(&self, replica: &str, snapshot: &serde_json::Value) -> Result<(), StoreError> {
        self.time(StoreOp::PutUsage, |s| s.put_usage(replica, snapshot))
    }
    fn usage(&self) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        self.time(StoreOp::Usage, |s| s.usage())
    }
    fn first_use(
        &self,
        kind: &str,
        key: &[u8; 32],
        until: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.time(StoreOp::FirstUse, |s| s.first_use(kind, key, until, now))
    }
    fn first_use_async(
        &self,
        kind: &str,
        key: &[u8; 32],
        until: u64,
        now: u64,
    ) -> Option<super::FirstUseFuture> {
        let answer = self.inner.first_use_async(kind, key, until, now)?;
        let timings = self.timings.clone();
        let started = Instant::now();
        Some(Box::pin(async move {
            let out = answer.await;
            timings.observe(StoreOp::FirstUse, started.elapsed());
            out
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[test]
    fn the_contract_holds_through_the_wrapper() {
        let shared = MemoryStore::default();
        crate::store::contract::run(|| {
            Box::new(Timed {
                inner: Arc::new(shared.clone()),
                timings: StoreTimings::default(),
            })
        });
    }

    #[test]
    fn calls_are_timed_by_operation() {
        let timings = StoreTimings::default();
        let mut m = crate::metrics::Metrics::new();
        m.register_store(&timings);
        let s = Timed::wrap(Arc::new(MemoryStore::default()), timings);
        s.load().unwrap();
        s.load().unwrap();
        s.poll().unwrap();
        let text = m.render().unwrap();
        assert!(
            text.contains("broker_store_operation_duration_seconds_count{op=\"load\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("broker_store_operation_duration_seconds_count{op=\"poll\"} 1\n"),
            "{text}"
        );
    }
}
