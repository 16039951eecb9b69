//! The record line format and the hash rule, shared by the writer and the verifier.
//!
//! A record line is the body object with a fixed-length `,"hash":"<64 hex>"` member spliced
//! in before its closing `}`:
//!
//! ```text
//! {"seq":7,"ts":"2025-01-02T03:04:05.678Z","prev":"<64 hex>","event":"issued",...,"hash":"<64 hex>"}\n
//! ```
//!
//! `hash = SHA-256(prev as 32 raw bytes || body)`, where `body` is the line without the
//! hash member (`{"seq":7,...}`). The verifier strips the fixed-length suffix textually, so
//! no JSON re-canonicalisation is ever needed. This module never does I/O.

use std::borrow::Cow;
use std::fmt;
use std::io::Write as _;

use aws_lc_rs::digest::{Context, SHA256};
use serde::Deserialize;

/// A SHA-256 chain hash.
pub(crate) type Hash = [u8; 32];

/// The `prev` of the first record: 32 zero bytes.
pub(crate) const GENESIS: Hash = [0; 32];

const HASH_OPEN: &[u8] = b",\"hash\":\"";
const HASH_CLOSE: &[u8] = b"\"}";
/// Length of `,"hash":"<64 hex>"}`.
const HASH_SUFFIX_LEN: usize = HASH_OPEN.len() + 64 + HASH_CLOSE.len();

/// Appends one complete record line (with its trailing `\n`) to `out` and returns its hash.
///
/// `event_json` is the serialized event object (`{"event":...}`); its fields are flattened
/// into the record after `prev`. `ts` must not need JSON escaping (RFC 3339 never does).
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    seq: u64,
    ts: &str,
    prev: &Hash,
    event_json: &[u8],
) -> Hash {
    let start = out.len();
    out.extend_from_slice(b"{\"seq\":");
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{seq}");
    out.extend_from_slice(b",\"ts\":\"");
    out.extend_from_slice(ts.as_bytes());
    out.extend_from_slice(b"\",\"prev\":\"");
    push_hex(out, prev);
    out.push(b'"');
    // `event_json` is `{...}`: keep its members and its closing brace.
    let members = event_json.get(1..).unwrap_or_default();
    if members.first() != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(members);
    let hash = hash_body(prev, &out[start..out.len() - 1]);
    out.pop(); // the closing `}`; the hash member brings its own
    out.extend_from_slice(HASH_OPEN);
    push_hex(out, &hash);
    out.extend_from_slice(HASH_CLOSE);
    out.push(b'\n');
    hash
}

/// `SHA-256(prev || body_without_closing_brace || "}")`.
fn hash_body(prev: &Hash, body_without_close: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(prev);
    ctx.update(body_without_close);
    ctx.update(b"}");
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// What is wrong with a record line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordProblem {
    /// The last line of a segment has no trailing newline (a write torn by a crash).
    Incomplete,
    /// The line is not a JSON object with `seq`, `ts`, `prev`, `event` and `hash`.
    BadJson(String),
    /// The line does not end with the `,"hash":"<64 lowercase hex>"}` member.
    NoHash,
    /// `seq` is not the one after the previous record's.
    SeqGap {
        /// The seq the chain expects here.
        expected: u64,
        /// The seq the line has.
        found: u64,
    },
    /// `prev` is not the previous record's hash.
    PrevMismatch {
        /// The previous record's hash, hex.
        expected: String,
        /// The line's `prev`, as written.
        found: String,
    },
    /// `hash` is not the SHA-256 of `prev` and the line's body.
    HashMismatch {
        /// The line's `hash`, hex.
        stored: String,
        /// What the line's content hashes to, hex.
        computed: String,
    },
}

impl fmt::Display for RecordProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Incomplete => f.write_str(
                "incomplete line (no trailing newline): a write torn by a crash; \
                 starting the broker cuts it off and records `log_repaired`",
            ),
            Self::BadJson(e) => write!(f, "bad JSON: {e}"),
            Self::NoHash => f.write_str(
                "bad record: the line does not end with a `\"hash\":\"<64 lowercase hex>\"` member",
            ),
            Self::SeqGap { expected, found } => {
                write!(f, "seq gap: expected seq {expected}, found seq {found}")
            }
            Self::PrevMismatch { expected, found } => write!(
                f,
                "prev mismatch: prev is {found} but the previous record's hash is {expected}"
            ),
            Self::HashMismatch { stored, computed } => write!(
                f,
                "hash mismatch: the record says {stored} but its content hashes to {computed}"
            ),
        }
    }
}

/// The chain fields of a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Link {
    /// Its sequence number.
    pub(crate) seq: u64,
    /// Its hash.
    pub(crate) hash: Hash,
}

#[derive(Deserialize)]
struct RecordFields<'a> {
    seq: u64,
    #[serde(borrow)]
    prev: Cow<'a, str>,
    #[allow(dead_code)] // required to be present; not otherwise checked here
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[allow(dead_code)]
    #[serde(borrow)]
    hash: Cow<'a, str>,
}

/// Checks one line (without its `\n`). With `expect = Some(prev link)` the line must be the
/// record right after it; with `None` only the line's own consistency is checked.
#[cfg(test)]
pub(crate) fn check_line(line: &[u8], expect: Option<&Link>) -> Result<Link, RecordProblem> {
    check_record(line, expect).map(|(link, _)| link)
}

/// [`check_line`], also saying whether the record is a `log_repaired` one.
fn check_record(line: &[u8], expect: Option<&Link>) -> Result<(Link, bool), RecordProblem> {
    let fields: RecordFields<'_> =
        serde_json::from_slice(line).map_err(|e| RecordProblem::BadJson(e.to_string()))?;
    if line.len() < HASH_SUFFIX_LEN + 2 {
        return Err(RecordProblem::NoHash);
    }
    let (body, suffix) = line.split_at(line.len() - HASH_SUFFIX_LEN);
    let hex = &suffix[HASH_OPEN.len()..HASH_OPEN.len() + 64];
    let stored = match (
        suffix.starts_with(HASH_OPEN),
        suffix.ends_with(HASH_CLOSE),
        parse_hex(hex),
    ) {
        (true, true, Some(h)) => h,
        _ => return Err(RecordProblem::NoHash),
    };
    if let Some(prev) = expect {
        let expected = prev.seq + 1;
        if fields.seq != expected {
            return Err(RecordProblem::SeqGap {
                expected,
                found: fields.seq,
            });
        }
    }
    let prev_hash = parse_hex(fields.prev.as_bytes());
    if let Some(prev) = expect
        && prev_hash != Some(prev.hash)
    {
        return Err(RecordProblem::PrevMismatch {
            expected: to_hex(&prev.hash),
            found: fields.prev.into_owned(),
        });
    }
    let Some(prev_hash) = prev_hash else {
        return Err(RecordProblem::BadJson(
            "`prev` is not 64 lowercase hex digits".into(),
        ));
    };
    let computed = hash_body(&prev_hash, body);
    if computed != stored {
        return Err(RecordProblem::HashMismatch {
            stored: to_hex(&stored),
            computed: to_hex(&computed),
        });
    }
    Ok((
        Link {
            seq: fields.seq,
            hash: stored,
        },
        fields.event == "log_repaired",
    ))
}

/// The result of walking one segment's bytes.
#[derive(Debug, Default)]
pub(crate) struct SegmentScan {
    /// Number of valid records.
    pub(crate) records: u64,
    /// The last valid record.
    pub(crate) last: Option<Link>,
    /// Number of lines in the valid prefix.
    pub(crate) lines: u64,
    /// Byte length of the valid prefix.
    pub(crate) good_len: u64,
    /// The first bad line (1-based) and what is wrong; the scan stops there.
    pub(crate) bad: Option<(u64, RecordProblem)>,
    /// Number of valid `log_repaired` records.
    pub(crate) repairs: u64,
    /// For each wanted seq, the record with it, if met: its line (1-based) and link.
    pub(crate) found: [Option<(u64, Link)>; 2],
}

/// Walks `bytes` line by line, chaining from `expect` (or from the first line when `None`),
/// stopping at the first bad line. Notes the records whose seqs are in `wants` (the head
/// anchor's end and durable point).
pub(crate) fn scan_segment(bytes: &[u8], mut expect: Option<Link>, wants: [u64; 2]) -> SegmentScan {
    let mut scan = SegmentScan::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        let line_no = scan.lines + 1;
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            scan.bad = Some((line_no, RecordProblem::Incomplete));
            break;
        };
        match check_record(&rest[..nl], expect.as_ref()) {
            Ok((link, repair)) => {
                scan.repairs += u64::from(repair);
                for (want, found) in wants.iter().zip(&mut scan.found) {
                    if link.seq == *want {
                        *found = Some((line_no, link));
                    }
                }
                scan.records += 1;
                scan.lines = line_no;
                scan.good_len += nl as u64 + 1;
                scan.last = Some(link);
                expect = Some(link);
                rest = &rest[nl + 1..];
            }
            Err(problem) => {
                scan.bad = Some((line_no, problem));
                break;
            }
        }
    }
    scan
}

use crate::hex::push_hex;
pub(crate) use crate::hex::to_hex;

/// Parses exactly 64 lowercase hex digits.
pub(crate) fn parse_hex(hex: &[u8]) -> Option<Hash> {
    if hex.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_check_round_trips_and_hash_excludes_the_hash_member() {
        let mut out = Vec::new();
        let h1 = encode_record(
            &mut out,
            1,
            "2025-01-01T00:00:00.000Z",
            &GENESIS,
            br#"{"event":"issued","jti":"a"}"#,
        );
        let line = &out[..out.len() - 1];
        let text = std::str::from_utf8(line).unwrap();
        assert!(text.starts_with(r#"{"seq":1,"ts":"2025-01-01T00:00:00.000Z","prev":"0000"#));
        assert!(text.ends_with(&format!(r#","jti":"a","hash":"{}"}}"#, to_hex(&h1))));
        // The hash rule, spelled out independently.
        let body = &text[..text.len() - HASH_SUFFIX_LEN];
        let mut ctx = Context::new(&SHA256);
        ctx.update(&GENESIS);
        ctx.update(format!("{body}}}").as_bytes());
        assert_eq!(ctx.finish().as_ref(), &h1);

        let link = check_line(line, None).unwrap();
        assert_eq!(link, Link { seq: 1, hash: h1 });
        let genesis = Link {
            seq: 0,
            hash: GENESIS,
        };
        assert_eq!(check_line(line, Some(&genesis)).unwrap(), link);
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        assert_eq!(v["hash"], to_hex(&h1));
    }

    #[test]
    fn check_line_names_the_problem() {
        let mut out = Vec::new();
        encode_record(&mut out, 5, "t", &[7; 32], br#"{"event":"denied"}"#);
        let line = out[..out.len() - 1].to_vec();
        let prev = Link {
            seq: 4,
            hash: [7; 32],
        };
        assert!(check_line(&line, Some(&prev)).is_ok());
        let wrong_seq = Link { seq: 5, ..prev };
        assert!(matches!(
            check_line(&line, Some(&wrong_seq)),
            Err(RecordProblem::SeqGap {
                expected: 6,
                found: 5
            })
        ));
        let wrong_prev = Link {
            hash: [8; 32],
            ..prev
        };
        assert!(matches!(
            check_line(&line, Some(&wrong_prev)),
            Err(RecordProblem::PrevMismatch { .. })
        ));
        let tampered = String::from_utf8(line.clone())
            .unwrap()
            .replace("denied", "issued");
        assert!(matches!(
            check_line(tampered.as_bytes(), Some(&prev)),
            Err(RecordProblem::HashMismatch { .. })
        ));
        assert!(matches!(
            check_line(&line[..line.len() - 3], None),
            Err(RecordProblem::BadJson(_))
        ));
        let reordered = br#"{"seq":1,"ts":"t","prev":"0000000000000000000000000000000000000000000000000000000000000000","hash":"0000000000000000000000000000000000000000000000000000000000000000","event":"issued"}"#;
        assert_eq!(check_line(reordered, None), Err(RecordProblem::NoHash));
    }

    #[test]
    fn hex_round_trip_and_rejects_uppercase() {
        let h = [0xab; 32];
        assert_eq!(parse_hex(to_hex(&h).as_bytes()), Some(h));
        assert_eq!(parse_hex(to_hex(&h).to_uppercase().as_bytes()), None);
        assert_eq!(parse_hex(b"ab"), None);
    }
}
