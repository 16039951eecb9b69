//! In-memory [`StateStore`] for tests: shares its journal between handles made from one
//! [`MemoryStore`] so that "reopening" can be simulated.

use std::sync::{Arc, Mutex};

use super::{Event, StateChange, StateStore, StoreError};

/// A journal in memory.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    changes: Arc<Mutex<Vec<StateChange>>>,
}

impl StateStore for MemoryStore {
    fn append_all(&self, changes: &[StateChange]) -> Result<Vec<u64>, StoreError> {
        let mut journal = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let first = journal.len() as u64 + 1;
        journal.extend_from_slice(changes);
        Ok((first..first + changes.len() as u64).collect())
    }

    fn load(&self) -> Result<Vec<Event>, StoreError> {
        let journal = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        Ok(journal
            .iter()
            .enumerate()
            .map(|(i, change)| Event {
                id: i as u64 + 1,
                change: change.clone(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meets_the_store_contract() {
        let shared = MemoryStore::default();
        super::super::contract::run(|| Box::new(shared.clone()));
    }
}
