//! The signed head anchor, `head.json`: where the log ends, signed.
//!
//! Without it, removing the final complete records of the log would leave a shorter,
//! perfectly chained log. The anchor names two points of the chain:
//!
//! - `seq`/`hash`/`segment`, the **end**: the last record of the batch being committed;
//! - `durable_seq`/`durable_hash`/`durable_segment`, the **durable point**: the last record
//!   that was already durable in the log when the anchor was written.
//!
//! Each group commit writes its batch to the log and its anchor to `head.json`, then syncs
//! both files at the same time, and answers the batch's callers only when both syncs are
//! done. So every acknowledged record is at or before a durable anchor's end, and a crash
//! between the two syncs can leave the anchor ahead of the log only by records that were
//! never acknowledged: the log still reaches the durable point. Start-up records that case
//! with a `log_repaired` record; `verify` reports it as a failure (from the files alone it
//! looks the same as the batch having been cut off).
//!
//! The file is a 512-byte slot (the JSON object padded with spaces and a final newline)
//! rewritten in place with one `pwrite` + `fdatasync`: a single-sector overwrite, the same
//! assumption PostgreSQL makes for `pg_control`. An anchor that does not fit in the slot
//! (a very long `kid`), the first anchor, and the first write after a failed one go
//! through `head.json.tmp` + rename + directory fsync instead.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::chain::{self, Hash};
use super::segment::{self, HEAD_FILE, HEAD_TMP_FILE};
use crate::mint::keys::{KeyError, Signer, VerifyingKey};

/// Size of the in-place slot.
const SLOT: usize = 512;

/// One point of the chain: a record's seq, its hash and the segment holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Point<'a> {
    /// The record's seq (0: before the first record).
    pub(crate) seq: u64,
    /// Its hash ([`chain::GENESIS`] for seq 0).
    pub(crate) hash: &'a Hash,
    /// The segment holding it (the first segment for seq 0).
    pub(crate) segment: &'a str,
}

/// The anchor as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Head {
    /// Seq of the anchored end (0: the log is empty).
    pub(crate) seq: u64,
    /// Its hash, hex (64 zeros when `seq` is 0).
    pub(crate) hash: String,
    /// The segment holding it.
    pub(crate) segment: String,
    /// Seq of the last record already durable when the anchor was written (≤ `seq`).
    pub(crate) durable_seq: u64,
    /// Its hash, hex.
    pub(crate) durable_hash: String,
    /// The segment holding it.
    pub(crate) durable_segment: String,
    /// The signing key's id.
    pub(crate) kid: String,
    /// The signing algorithm.
    pub(crate) alg: String,
    /// base64url signature over [`message`].
    pub(crate) sig: String,
    /// Format version: 2, or 1 for an anchor written before the durable point existed
    /// (read only; its durable point is its end and it signs [`message_v1`]).
    #[serde(skip, default = "current_version")]
    pub(crate) version: u8,
}

fn current_version() -> u8 {
    2
}

/// A version-1 anchor as stored (no durable point).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadV1 {
    seq: u64,
    hash: String,
    segment: String,
    kid: String,
    alg: String,
    sig: String,
}

/// The bytes a version-1 anchor's signature covers.
fn message_v1(seq: u64, hash_hex: &str, segment: &str) -> String {
    format!("jit-broker-audit-head:v1:{seq}:{hash_hex}:{segment}")
}

/// The exact bytes the anchor's signature covers.
pub(crate) fn message(
    (seq, hash_hex, segment): (u64, &str, &str),
    (durable_seq, durable_hex, durable_segment): (u64, &str, &str),
) -> String {
    format!(
        "jit-broker-audit-head:v2:{seq}:{hash_hex}:{segment}:{durable_seq}:{durable_hex}:{durable_segment}"
    )
}

impl Head {
    /// Signs an anchor whose end is `end` and whose durable point is `durable`.
    pub(crate) fn sign(
        signer: &dyn Signer,
        end: Point<'_>,
        durable: Point<'_>,
    ) -> Result<Self, KeyError> {
        let hash = chain::to_hex(end.hash);
        let durable_hash = chain::to_hex(durable.hash);
        let sig = signer.sign(
            message(
                (end.seq, &hash, end.segment),
                (durable.seq, &durable_hash, durable.segment),
            )
            .as_bytes(),
        )?;
        Ok(Self {
            seq: end.seq,
            hash,
            segment: end.segment.to_owned(),
            durable_seq: durable.seq,
            durable_hash,
            durable_segment: durable.segment.to_owned(),
            kid: signer.kid().to_owned(),
            alg: signer.algorithm().as_str().to_owned(),
            sig: URL_SAFE_NO_PAD.encode(sig),
            version: current_version(),
        })
    }

    /// Parses `head.json` (version 2, or version 1 from an older broker), checking field
    /// shapes (not the signature).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        let head: Self = match serde_json::from_slice(bytes) {
            Ok(head) => head,
            Err(e) => match serde_json::from_slice::<HeadV1>(bytes) {
                Ok(v1) => Self {
                    durable_seq: v1.seq,
                    durable_hash: v1.hash.clone(),
                    durable_segment: v1.segment.clone(),
                    seq: v1.seq,
                    hash: v1.hash,
                    segment: v1.segment,
                    kid: v1.kid,
                    alg: v1.alg,
                    sig: v1.sig,
                    version: 1,
                },
                Err(_) => return Err(e.to_string()),
            },
        };
        for (name, seq, hash, segment) in [
            ("", head.seq, &head.hash, &head.segment),
            (
                "durable_",
                head.durable_seq,
                &head.durable_hash,
                &head.durable_segment,
            ),
        ] {
            if chain::parse_hex(hash.as_bytes()).is_none() {
                return Err(format!("`{name}hash` is not 64 lowercase hex digits"));
            }
            if segment::parse_segment_name(segment).is_none() {
                return Err(format!("`{name}segment` {segment:?} is not a segment name"));
            }
            if seq == 0 && *hash != chain::to_hex(&chain::GENESIS) {
                return Err(format!("`{name}seq` 0 with a non-zero hash"));
            }
        }
        if head.durable_seq > head.seq {
            return Err(format!(
                "`durable_seq` {} is after `seq` {}",
                head.durable_seq, head.seq
            ));
        }
        Ok(head)
    }

    /// The anchored end's hash.
    pub(crate) fn hash_bytes(&self) -> Hash {
        chain::parse_hex(self.hash.as_bytes()).unwrap_or_default()
    }

    /// The durable point's hash.
    pub(crate) fn durable_hash_bytes(&self) -> Hash {
        chain::parse_hex(self.durable_hash.as_bytes()).unwrap_or_default()
    }

    /// True when `sig` is `key`'s signature over this anchor and `alg` is `key`'s.
    pub(crate) fn signature_valid(&self, key: &VerifyingKey) -> bool {
        if key.algorithm().as_str() != self.alg {
            return false;
        }
        let Ok(sig) = URL_SAFE_NO_PAD.decode(&self.sig) else {
            return false;
        };
        if self.version == 1 {
            return key.verify(
                message_v1(self.seq, &self.hash, &self.segment).as_bytes(),
                &sig,
            );
        }
        key.verify(
            message(
                (self.seq, &self.hash, &self.segment),
                (self.durable_seq, &self.durable_hash, &self.durable_segment),
            )
            .as_bytes(),
            &sig,
        )
    }
}

/// Reads `dir/head.json`, `None` if it does not exist.
pub(crate) fn read(dir: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(dir.join(HEAD_FILE)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes the anchor; owned by the log writer.
pub(crate) struct HeadWriter {
    dir: PathBuf,
    /// An open handle on `head.json` when it is a full slot that can be rewritten in place.
    slot: Option<File>,
}

impl HeadWriter {
    /// A writer for `dir/head.json`, reusing the existing file's slot if it has one.
    pub(crate) fn new(dir: &Path) -> Self {
        let slot = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(HEAD_FILE))
            .ok()
            .filter(|f| f.metadata().is_ok_and(|m| m.len() == SLOT as u64));
        Self {
            dir: dir.to_path_buf(),
            slot,
        }
    }

    /// The path written.
    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join(HEAD_FILE)
    }

    /// Durably replaces the anchor with `head`.
    pub(crate) fn write(&mut self, head: &Head) -> io::Result<()> {
        let mut buf = serde_json::to_vec(head).map_err(io::Error::other)?;
        if buf.len() < SLOT {
            buf.resize(SLOT - 1, b' ');
            buf.push(b'\n');
        }
        let result = match self.slot.as_ref() {
            Some(file) if buf.len() == SLOT => {
                file.write_all_at(&buf, 0).and_then(|()| file.sync_data())
            }
            _ => self.replace(&buf),
        };
        if result.is_err() {
            // State unknown: the next write rewrites the whole file.
            self.slot = None;
        }
        result
    }

    fn replace(&mut self, buf: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(HEAD_TMP_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(buf)?;
        file.sync_data()?;
        fs::rename(&tmp, self.path())?;
        segment::sync_dir(&self.dir)?;
        self.slot = (buf.len() == SLOT).then_some(file);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mint::keys::{KeyRing, SigningAlgorithm, generate};

    #[test]
    fn sign_write_read_verify() {
        let keys = tempfile::tempdir().unwrap();
        generate(keys.path(), SigningAlgorithm::EdDSA, 1).unwrap();
        let ring = KeyRing::load_dir(keys.path()).unwrap();
        let signer = ring.current();
        let dir = tempfile::tempdir().unwrap();
        let mut w = HeadWriter::new(dir.path());
        for seq in [0u64, 1, 12_345_678_901] {
            let hash = if seq == 0 {
                chain::GENESIS
            } else {
                [seq as u8; 32]
            };
            let end = Point {
                seq,
                hash: &hash,
                segment: "audit-000001.log",
            };
            let durable = Point {
                seq: seq.saturating_sub(1),
                hash: if seq <= 1 { &chain::GENESIS } else { &hash },
                segment: "audit-000001.log",
            };
            let head = Head::sign(signer.as_ref(), end, durable).unwrap();
            w.write(&head).unwrap();
            let bytes = read(dir.path()).unwrap().unwrap();
            assert_eq!(bytes.len(), SLOT);
            let back = Head::parse(&bytes).unwrap();
            assert_eq!(back, head);
            let vk = VerifyingKey::in_set(&ring.jwks(), &back.kid).unwrap();
            assert!(back.signature_valid(&vk));
            let forged = Head {
                seq: seq + 1,
                ..back.clone()
            };
            assert!(!forged.signature_valid(&vk));
            let forged = Head {
                durable_seq: back.durable_seq + 1,
                ..back
            };
            assert!(!forged.signature_valid(&vk));
        }
        assert!(w.slot.is_some(), "later writes go in place");
        assert!(!dir.path().join(HEAD_TMP_FILE).exists());

        // An anchor written by a version-1 broker still parses and verifies; its durable
        // point is its end.
        let hash = [7u8; 32];
        let hex = chain::to_hex(&hash);
        let sig = signer
            .sign(message_v1(9, &hex, "audit-000002.log").as_bytes())
            .unwrap();
        let v1 = serde_json::json!({
            "seq": 9, "hash": hex, "segment": "audit-000002.log",
            "kid": signer.kid(), "alg": signer.algorithm().as_str(),
            "sig": URL_SAFE_NO_PAD.encode(&sig),
        });
        let back = Head::parse(&serde_json::to_vec(&v1).unwrap()).unwrap();
        assert_eq!((back.version, back.durable_seq), (1, 9));
        assert_eq!(back.durable_segment, "audit-000002.log");
        let vk = VerifyingKey::in_set(&ring.jwks(), &back.kid).unwrap();
        assert!(back.signature_valid(&vk));
        assert!(!Head { seq: 10, ..back }.signature_valid(&vk));
    }

    #[test]
    fn malformed_durable_points_are_refused() {
        let keys = tempfile::tempdir().unwrap();
        generate(keys.path(), SigningAlgorithm::EdDSA, 1).unwrap();
        let signer = KeyRing::load_dir(keys.path()).unwrap().current();
        let hash = [3u8; 32];
        let seg = "audit-000001.log";
        let end = Point {
            seq: 5,
            hash: &hash,
            segment: seg,
        };
        let good = serde_json::to_value(Head::sign(signer.as_ref(), end, end).unwrap()).unwrap();
        let mutate = |field: &str, value: serde_json::Value| {
            let mut v = good.clone();
            v[field] = value;
            Head::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err()
        };
        assert!(mutate("durable_seq", 6.into()).contains("after `seq`"));
        assert!(mutate("durable_hash", "xyz".into()).contains("`durable_hash`"));
        assert!(mutate("durable_segment", "nope".into()).contains("`durable_segment`"));
        assert!(mutate("durable_seq", 0.into()).contains("`durable_seq` 0"));
    }
}
