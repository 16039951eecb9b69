//! `broker audit verify`: checks a whole audit directory against the chain and the signed
//! head anchor. Read-only; safe to run against a live log (the anchor is read first, and
//! the writer writes each batch to the log before it writes the batch's anchor).

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::chain::{self, GENESIS, Link, RecordProblem};
use super::head::{self, Head};
use super::segment::{self, HEAD_FILE};
use crate::mint::keys::{Jwks, VerifyingKey};

/// What a successful [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Number of records.
    pub records: u64,
    /// Number of segment files.
    pub segments: usize,
    /// Seq of the last record (0: empty log).
    pub last_seq: u64,
    /// Hash of the last record, hex (64 zeros: empty log).
    pub last_hash: String,
    /// Seq the head anchor vouches for.
    pub anchor_seq: u64,
    /// The key id that signed the anchor.
    pub anchor_kid: String,
    /// Records after the anchor's end (after a crash that made a batch durable but not
    /// its anchor, after a failed anchor write, or while the log is being written).
    pub unanchored: u64,
    /// `log_repaired` records: each says what start-up repaired after an unclean stop (a
    /// torn tail cut off, a batch whose commit was interrupted). Read them: an interrupted
    /// commit cannot be told apart from the log's last batch cut off while the broker was
    /// stopped.
    pub repairs: u64,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ok: {} records in {} segments; last seq {} hash {}; head anchor at seq {} signed by {}",
            self.records,
            self.segments,
            self.last_seq,
            self.last_hash,
            self.anchor_seq,
            self.anchor_kid
        )?;
        if self.unanchored > 0 {
            write!(
                f,
                " ({} records after the anchor: a crash or failed write before the anchor was durable, or a live log)",
                self.unanchored
            )?;
        }
        if self.repairs > 0 {
            write!(
                f,
                "; note: {} log_repaired record(s): start-up repairs after unclean stops, read them",
                self.repairs
            )?;
        }
        Ok(())
    }
}

/// Why an audit directory does not verify. The message names the first bad record's segment
/// and 1-based line where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// There is no `head.json`.
    #[error("{path}: no head anchor: the log cannot be checked for removed records")]
    HeadMissing {
        /// Where it should be.
        path: PathBuf,
    },
    /// `head.json` is not a valid anchor.
    #[error("{path}: bad head anchor: {reason}")]
    HeadInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A segment file is missing from the sequence.
    #[error(
        "segment {missing} is missing (the next segment present is {next}): records were removed"
    )]
    MissingSegment {
        /// The missing file name.
        missing: String,
        /// The file found in its place.
        next: String,
    },
    /// A record is malformed or does not chain.
    #[error("{segment} line {line}: {problem}")]
    BadRecord {
        /// Segment file name.
        segment: String,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        problem: RecordProblem,
    },
    /// The anchor vouches for a record the log no longer has.
    #[error(
        "head anchor says seq {seq} hash {hash} but log ends at {last_seq} ({}): records were removed from the end",
        describe_end(.last)
    )]
    AnchorBeyondLog {
        /// Anchored seq.
        seq: u64,
        /// Anchored hash.
        hash: String,
        /// Seq of the log's last record.
        last_seq: u64,
        /// Segment and line of the log's last record, if any.
        last: Option<(String, u64)>,
    },
    /// The log ends after the anchor's durable point but before its end: the anchored
    /// batch's records were removed, or the broker stopped while committing them.
    #[error(
        "head anchor says seq {seq} hash {hash} but log ends at {last_seq} ({}): records {} to {seq} were removed from the end, or the broker stopped while committing them (then they were never acknowledged, and the broker's next start records a log_repaired)",
        describe_end(.last), .last_seq + 1
    )]
    CommitInterrupted {
        /// Anchored seq.
        seq: u64,
        /// Anchored hash.
        hash: String,
        /// Seq of the log's last record (at or after the anchor's durable point).
        last_seq: u64,
        /// Segment and line of the log's last record, if any.
        last: Option<(String, u64)>,
    },
    /// The record at the anchored seq has another hash.
    #[error("head anchor says seq {seq} hash {hash} but {segment} line {line} has hash {found}")]
    AnchorMismatch {
        /// Anchored seq.
        seq: u64,
        /// Anchored hash.
        hash: String,
        /// Where the record with that seq is.
        segment: String,
        /// Its line.
        line: u64,
        /// Its hash.
        found: String,
    },
    /// The record at the anchored seq is in another segment than the anchor says.
    #[error("head anchor says seq {seq} is in {anchor_segment} but it is in {segment} line {line}")]
    AnchorSegment {
        /// Anchored seq.
        seq: u64,
        /// Segment named by the anchor.
        anchor_segment: String,
        /// Where it is.
        segment: String,
        /// Its line.
        line: u64,
    },
    /// The segment the anchor names has no record with the anchored seq.
    #[error("head anchor says seq {seq} is in {segment} but that segment has no such record")]
    AnchorNotFound {
        /// Anchored seq.
        seq: u64,
        /// Segment named by the anchor.
        segment: String,
    },
    /// The anchor's `kid` is not in the JWKS.
    #[error("head anchor is signed by unknown key id {kid:?}: it is not in the broker's JWKS")]
    UnknownKid {
        /// The anchor's key id.
        kid: String,
    },
    /// The anchor's signature does not verify.
    #[error("bad head anchor signature: key {kid:?} did not sign seq {seq} hash {hash}")]
    BadSignature {
        /// The anchor's key id.
        kid: String,
        /// Anchored seq.
        seq: u64,
        /// Anchored hash.
        hash: String,
    },
}

fn describe_end(last: &Option<(String, u64)>) -> String {
    match last {
        Some((segment, line)) => format!("{segment} line {line}"),
        None => "the log is empty".to_owned(),
    }
}

/// Checks that the record found at an anchored seq has the anchored hash and is in the
/// anchored segment.
fn check_point(
    (segment, line, link): (String, u64, Link),
    seq: u64,
    hash_hex: &str,
    hash: chain::Hash,
    anchor_segment: &str,
) -> Result<(), VerifyError> {
    if link.hash != hash {
        return Err(VerifyError::AnchorMismatch {
            seq,
            hash: hash_hex.to_owned(),
            segment,
            line,
            found: chain::to_hex(&link.hash),
        });
    }
    if segment != anchor_segment {
        return Err(VerifyError::AnchorSegment {
            seq,
            anchor_segment: anchor_segment.to_owned(),
            segment,
            line,
        });
    }
    Ok(())
}

/// Reads and parses `dir/head.json`.
pub(crate) fn read_head(dir: &Path) -> Result<Option<Head>, VerifyError> {
    let path = dir.join(HEAD_FILE);
    let bytes = head::read(dir).map_err(|source| VerifyError::Io {
        path: path.clone(),
        source,
    })?;
    bytes
        .map(|b| Head::parse(&b).map_err(|reason| VerifyError::HeadInvalid { path, reason }))
        .transpose()
}

/// Lists segments and checks they run `audit-000001.log`, `audit-000002.log`, ... with no gap.
pub(crate) fn segments(dir: &Path) -> Result<Vec<(u32, PathBuf)>, VerifyError> {
    let segs = segment::list_segments(dir).map_err(|source| VerifyError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if let Some((missing, next)) = segment::first_gap(&segs) {
        return Err(VerifyError::MissingSegment { missing, next });
    }
    Ok(segs)
}

/// Reads a whole segment.
pub(crate) fn read_segment(path: &Path) -> Result<Vec<u8>, VerifyError> {
    fs::read(path).map_err(|source| VerifyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Verifies every segment in `dir` against the chain and the signed head anchor; `keys` is
/// the broker's JWKS (public keys).
///
/// Checks, in order: the anchor parses; segments run from `audit-000001.log` with no gap;
/// every line is a well-formed record, seqs run from 1 with no gap, each `prev` is the
/// previous record's hash and each `hash` is right; the anchor's signature verifies with
/// the JWKS key of its `kid`; the anchored `(seq, hash)` is in the log, in the segment it
/// names. Records after the anchored seq are accepted (they must still chain). A log that
/// ends between the anchor's durable point and its end fails with
/// [`VerifyError::CommitInterrupted`].
pub fn verify(dir: &Path, keys: &Jwks) -> Result<VerifyReport, VerifyError> {
    // The anchor first: on a live log the segments read later are at least as long.
    let head_path = dir.join(HEAD_FILE);
    let head = read_head(dir)?.ok_or(VerifyError::HeadMissing { path: head_path })?;
    let segs = segments(dir)?;

    let mut prev = Link {
        seq: 0,
        hash: GENESIS,
    };
    let mut records = 0u64;
    let mut repairs = 0u64;
    let mut last_at: Option<(String, u64)> = None;
    let mut anchored: Option<(String, u64, Link)> = None;
    let mut durable: Option<(String, u64, Link)> = None;
    for (index, path) in &segs {
        let name = segment::segment_name(*index);
        let bytes = read_segment(path)?;
        let scan = chain::scan_segment(&bytes, Some(prev), [head.seq, head.durable_seq]);
        if let Some((line, link)) = scan.found[0] {
            anchored = Some((name.clone(), line, link));
        }
        if let Some((line, link)) = scan.found[1] {
            durable = Some((name.clone(), line, link));
        }
        if let Some((line, problem)) = scan.bad {
            return Err(VerifyError::BadRecord {
                segment: name,
                line,
                problem,
            });
        }
        if let Some(last) = scan.last {
            prev = last;
            last_at = Some((name, scan.lines));
        }
        records += scan.records;
        repairs += scan.repairs;
    }

    // The signature before the positions: only a genuine anchor's positions mean anything.
    let key = VerifyingKey::in_set(keys, &head.kid).ok_or_else(|| VerifyError::UnknownKid {
        kid: head.kid.clone(),
    })?;
    if !head.signature_valid(&key) {
        return Err(VerifyError::BadSignature {
            kid: head.kid.clone(),
            seq: head.seq,
            hash: head.hash.clone(),
        });
    }
    if head.seq > 0 {
        let Some(at) = anchored else {
            // The log ends before the anchored end. Where it ends decides the message.
            if head.durable_seq > 0 {
                let Some(at) = durable else {
                    return Err(VerifyError::AnchorBeyondLog {
                        seq: head.seq,
                        hash: head.hash,
                        last_seq: prev.seq,
                        last: last_at,
                    });
                };
                check_point(
                    at,
                    head.durable_seq,
                    &head.durable_hash,
                    head.durable_hash_bytes(),
                    &head.durable_segment,
                )?;
            }
            return Err(VerifyError::CommitInterrupted {
                seq: head.seq,
                hash: head.hash,
                last_seq: prev.seq,
                last: last_at,
            });
        };
        check_point(at, head.seq, &head.hash, head.hash_bytes(), &head.segment)?;
    }
    Ok(VerifyReport {
        records,
        segments: segs.len(),
        last_seq: prev.seq,
        last_hash: chain::to_hex(&prev.hash),
        anchor_seq: head.seq,
        anchor_kid: head.kid,
        unanchored: prev.seq - head.seq,
        repairs,
    })
}
