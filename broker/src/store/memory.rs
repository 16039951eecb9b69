//! In-memory [`StateStore`] for tests: shares its journal between handles made from one
//! [`MemoryStore`] so that "reopening" can be simulated.

use std::sync::{Arc, Mutex};

use super::{StateChange, StateStore, StoreError};

/// A journal in memory.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    changes: Arc<Mutex<Vec<StateChange>>>,
}

impl StateStore for MemoryStore {
    fn append(&self, change: &StateChange) -> Result<(), StoreError> {
        self.changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(change.clone());
        Ok(())
    }

    fn load(&self) -> Result<Vec<StateChange>, StoreError> {
        Ok(self
            .changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone())
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
