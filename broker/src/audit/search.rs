//! Reading the audit log back for people: records matching a filter, newest first, a page
//! at a time (the console's audit search). It reads the segments from the newest
//! backwards and stops once the page is full, so a search near the head costs little
//! however long the log is. It only reads: whether the chain is intact is
//! [`super::verify`]'s to say.

use std::path::Path;

use serde_json::Value;

use super::segment::list_segments;

/// What to look for; every field set must match (exactly, except the times).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchFilter {
    /// `identity`.
    pub identity: Option<String>,
    /// `task`.
    pub task: Option<String>,
    /// `jti`.
    pub jti: Option<String>,
    /// `event` (e.g. `issued`, `revoked`).
    pub event: Option<String>,
    /// `actor` (e.g. `admin:secops`).
    pub actor: Option<String>,
    /// Records at or after this time: an RFC 3339 prefix (`2026-12-04`,
    /// `2026-12-04T10:00`), compared with the record's `ts`.
    pub from: Option<String>,
    /// Records before this time (same form).
    pub to: Option<String>,
}

impl SearchFilter {
    /// Whether `rec` matches.
    pub fn matches(&self, rec: &Value) -> bool {
        let field = |name: &str, want: &Option<String>| {
            want.as_deref()
                .is_none_or(|w| rec.get(name).and_then(Value::as_str) == Some(w))
        };
        let ts = rec.get("ts").and_then(Value::as_str).unwrap_or("");
        field("identity", &self.identity)
            && field("task", &self.task)
            && field("jti", &self.jti)
            && field("event", &self.event)
            && field("actor", &self.actor)
            && self.from.as_deref().is_none_or(|f| ts >= f)
            && self.to.as_deref().is_none_or(|t| ts < t)
    }
}

/// One page of matches.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    /// The matching records, newest first.
    pub records: Vec<Value>,
    /// Whether older matches exist past this page.
    pub more: bool,
}

/// Records are this long at most for the search (longer lines are skipped, not parsed).
const MAX_LINE: usize = 1 << 20;

/// Page `page` (from 0) of `per_page` matches of `filter` in the log in `dir`.
pub fn search(
    dir: &Path,
    filter: &SearchFilter,
    page: usize,
    per_page: usize,
) -> std::io::Result<SearchPage> {
    let skip = page.saturating_mul(per_page);
    let mut seen = 0usize;
    let mut records = Vec::with_capacity(per_page);
    for (_, path) in list_segments(dir)?.into_iter().rev() {
        let text = std::fs::read(&path)?;
        for line in text.split(|b| *b == b'\n').rev() {
            if line.is_empty() || line.len() > MAX_LINE {
                continue;
            }
            let Ok(rec) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            if !filter.matches(&rec) {
                continue;
            }
            seen += 1;
            if seen <= skip {
                continue;
            }
            if records.len() == per_page {
                return Ok(SearchPage {
                    records,
                    more: true,
                });
            }
            records.push(rec);
        }
    }
    Ok(SearchPage {
        records,
        more: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write_log(dir: &Path, segments: &[&[Value]]) {
        for (i, recs) in segments.iter().enumerate() {
            let mut text = String::new();
            for r in *recs {
                text.push_str(&r.to_string());
                text.push('\n');
            }
            let name = super::super::segment::segment_name(u32::try_from(i).unwrap() + 1);
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    fn rec(seq: u64, event: &str, identity: &str, jti: &str) -> Value {
        json!({"seq": seq, "ts": format!("2026-12-04T10:00:{seq:02}.000Z"), "event": event,
               "identity": identity, "jti": jti})
    }

    #[test]
    fn matches_come_newest_first_across_segments_a_page_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let first: Vec<Value> = (1..=3)
            .map(|i| rec(i, "issued", "a", &format!("j{i}")))
            .collect();
        let second: Vec<Value> = (4..=6)
            .map(|i| {
                rec(
                    i,
                    if i == 5 { "revoked" } else { "issued" },
                    "a",
                    &format!("j{i}"),
                )
            })
            .collect();
        write_log(d.path(), &[&first, &second]);
        let issued = SearchFilter {
            event: Some("issued".into()),
            ..Default::default()
        };
        let p0 = search(d.path(), &issued, 0, 2).unwrap();
        let seqs = |p: &SearchPage| {
            p.records
                .iter()
                .map(|r| r["seq"].as_u64().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!((seqs(&p0), p0.more), (vec![6, 4], true));
        let p1 = search(d.path(), &issued, 1, 2).unwrap();
        assert_eq!((seqs(&p1), p1.more), (vec![3, 2], true));
        let p2 = search(d.path(), &issued, 2, 2).unwrap();
        assert_eq!((seqs(&p2), p2.more), (vec![1], false));

        let by_jti = SearchFilter {
            jti: Some("j5".into()),
            ..Default::default()
        };
        assert_eq!(seqs(&search(d.path(), &by_jti, 0, 10).unwrap()), vec![5]);
        let window = SearchFilter {
            from: Some("2026-12-04T10:00:02".into()),
            to: Some("2026-12-04T10:00:04".into()),
            ..Default::default()
        };
        assert_eq!(seqs(&search(d.path(), &window, 0, 10).unwrap()), vec![3, 2]);
        let nobody = SearchFilter {
            identity: Some("b".into()),
            ..Default::default()
        };
        assert!(search(d.path(), &nobody, 0, 10).unwrap().records.is_empty());
    }
}
