//! Single use across replicas: the record, in the shared state store, of the single-use
//! credentials (`jti`s of client assertions and single-use workload JWTs, DPoP proofs)
//! that some replica already accepted.
//!
//! Each replica first checks its own memory ([`crate::authn::replay`], the DPoP replay
//! guard): a replay at the same replica costs nothing more. A credential that passes it is
//! then recorded in the store ([`StateStore::first_use`]); another replica's earlier use
//! refuses it. With a store of one process there is nobody else and nothing is asked.
//!
//! The store is asked for a SHA-256 digest of the credential's names (issuer or key
//! thumbprint, and `jti`), never the credential. When it cannot answer, the credential is
//! refused (503, retry with a new one): accepting it could accept a replay.

use std::sync::Arc;

use crate::store::{StateStore, StoreError};

/// Which memory a credential's use is recorded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UseKind {
    /// A single-use JWT (client assertion, single-use workload identity), by `iss` and
    /// `jti`.
    Jwt,
    /// A DPoP proof, by its key's thumbprint and `jti`.
    DpopProof,
}

impl UseKind {
    /// The store's namespace for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::DpopProof => "dpop",
        }
    }
}

/// The replicas' shared record of used credentials, or nothing to ask (one process).
#[derive(Clone, Default)]
pub struct SharedUses {
    store: Option<Arc<dyn StateStore>>,
}

impl std::fmt::Debug for SharedUses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedUses")
            .field("shared", &self.is_shared())
            .finish()
    }
}

impl SharedUses {
    /// The record in `store` when other replicas append to it too; else nothing to ask.
    pub fn of(store: &Arc<dyn StateStore>) -> Self {
        Self {
            store: store.shared().then(|| Arc::clone(store)),
        }
    }

    /// Whether uses are recorded for other replicas.
    pub fn is_shared(&self) -> bool {
        self.store.is_some()
    }

    /// Records that the credential named by `issuer` (or key thumbprint) and `jti`,
    /// valid until `until`, is used now: `Ok(true)` when no replica used it before,
    /// `Ok(false)` when one did. Always `Ok(true)` without a shared store. Awaited
    /// without holding a thread where the store can; else on a blocking thread.
    pub async fn first_use(
        &self,
        kind: UseKind,
        issuer: &str,
        jti: &str,
        until: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let Some(store) = &self.store else {
            return Ok(true);
        };
        let key = digest(issuer, jti);
        if let Some(answer) = store.first_use_async(kind.as_str(), &key, until, now) {
            return answer.await;
        }
        let store = Arc::clone(store);
        tokio::task::spawn_blocking(move || store.first_use(kind.as_str(), &key, until, now))
            .await
            .map_err(|_| StoreError::Database {
                message: "the single-use check stopped before the store answered".into(),
            })?
    }
}

/// SHA-256 of the two names, length-prefixed so that no two pairs share a digest.
fn digest(issuer: &str, jti: &str) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [issuer, jti] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[test]
    fn names_are_length_prefixed_so_pairs_never_collide() {
        assert_ne!(digest("ab", "c"), digest("a", "bc"));
        assert_eq!(digest("a", "bc"), digest("a", "bc"));
    }

    #[tokio::test]
    async fn a_store_of_one_process_is_not_asked() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
        let uses = SharedUses::of(&store);
        assert!(!uses.is_shared());
        for _ in 0..2 {
            assert!(uses.first_use(UseKind::Jwt, "i", "j", 10, 1).await.unwrap());
        }
    }
}
