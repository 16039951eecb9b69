//! Audit checkpoints: a replica's signed, chained statement "my audit log reached record
//! `seq`, whose hash is `hash`", written to the shared store about once a second.
//!
//! Each replica keeps its own hash-chained log and head anchor on its own disk (the
//! request path never waits for the database). The checkpoints, in an insert-only table
//! every replica and the verifier read, let `broker audit verify` check every replica's
//! log against the database: a log cut short, rewritten or replaced after a checkpoint no
//! longer contains the checkpointed record. Each checkpoint signs the previous one's
//! signature, so one cannot be removed or reordered unnoticed either (like CloudTrail's
//! digest chain). The threat model is in `docs/audit-log.md`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::mint::keys::{Jwks, KeyError, Signer, VerifyingKey};

/// One checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The replica whose log it vouches for.
    pub replica: String,
    /// 1 for the replica's first checkpoint, then one more each time.
    pub n: u64,
    /// The newest acknowledged record's seq.
    pub seq: u64,
    /// Its hash, hex.
    pub hash: String,
    /// The previous checkpoint's `sig` (empty for `n` = 1).
    pub prev: String,
    /// When it was made (unix seconds).
    pub at: u64,
    /// The signing key's id.
    pub kid: String,
    /// The signing algorithm.
    pub alg: String,
    /// base64url signature over [`Checkpoint::message`].
    pub sig: String,
}

/// What a checkpoint vouches for, before it is signed.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPoint<'a> {
    /// The replica.
    pub replica: &'a str,
    /// Its number.
    pub n: u64,
    /// The record's seq.
    pub seq: u64,
    /// The record's hash, hex.
    pub hash: &'a str,
    /// The previous checkpoint's signature.
    pub prev: &'a str,
    /// When.
    pub at: u64,
}

fn message(p: &CheckpointPoint<'_>) -> String {
    format!(
        "jit-broker-audit-checkpoint:v1:{}:{}:{}:{}:{}:{}",
        p.replica, p.n, p.seq, p.hash, p.prev, p.at
    )
}

impl Checkpoint {
    /// Signs a checkpoint for `point` with `signer`.
    pub fn sign(signer: &dyn Signer, point: CheckpointPoint<'_>) -> Result<Self, KeyError> {
        let sig = signer.sign(message(&point).as_bytes())?;
        Ok(Self {
            replica: point.replica.to_owned(),
            n: point.n,
            seq: point.seq,
            hash: point.hash.to_owned(),
            prev: point.prev.to_owned(),
            at: point.at,
            kid: signer.kid().to_owned(),
            alg: signer.algorithm().as_str().to_owned(),
            sig: URL_SAFE_NO_PAD.encode(sig),
        })
    }

    /// The bytes the signature covers.
    pub fn message(&self) -> String {
        message(&CheckpointPoint {
            replica: &self.replica,
            n: self.n,
            seq: self.seq,
            hash: &self.hash,
            prev: &self.prev,
            at: self.at,
        })
    }

    /// True when `sig` verifies with the `keys` entry of `kid`, whose algorithm is `alg`.
    pub fn signature_valid(&self, keys: &Jwks) -> bool {
        let Some(key) = VerifyingKey::in_set(keys, &self.kid) else {
            return false;
        };
        if key.algorithm().as_str() != self.alg {
            return false;
        }
        let Ok(sig) = URL_SAFE_NO_PAD.decode(&self.sig) else {
            return false;
        };
        key.verify(self.message().as_bytes(), &sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mint::keys::{KeyRing, SigningAlgorithm, generate};

    #[test]
    fn a_checkpoint_verifies_and_any_change_breaks_it() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), SigningAlgorithm::EdDSA, 1).unwrap();
        let ring = KeyRing::load_dir(dir.path()).unwrap();
        let cp = Checkpoint::sign(
            ring.current().as_ref(),
            CheckpointPoint {
                replica: "a",
                n: 2,
                seq: 10,
                hash: "ab",
                prev: "sig1",
                at: 5,
            },
        )
        .unwrap();
        let jwks = ring.jwks();
        assert!(cp.signature_valid(&jwks));
        for tampered in [
            Checkpoint {
                seq: 9,
                ..cp.clone()
            },
            Checkpoint {
                replica: "b".into(),
                ..cp.clone()
            },
            Checkpoint {
                prev: String::new(),
                ..cp.clone()
            },
            Checkpoint {
                kid: "other".into(),
                ..cp.clone()
            },
        ] {
            assert!(!tampered.signature_valid(&jwks), "{tampered:?}");
        }
    }
}
