//! Segment file names and directory helpers.
//!
//! Segments are `audit-000001.log`, `audit-000002.log`, ... in the audit directory; the
//! chain runs through them in numeric order. Other files in the directory are ignored.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// The head anchor's file name.
pub(crate) const HEAD_FILE: &str = "head.json";
/// The temporary file the head anchor is written to before a rename.
pub(crate) const HEAD_TMP_FILE: &str = "head.json.tmp";

/// The file name of segment `index` (1-based).
pub(crate) fn segment_name(index: u32) -> String {
    format!("audit-{index:06}.log")
}

/// The index of a segment file name, if `name` is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("audit-")?.strip_suffix(".log")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&i| i > 0)
}

/// Every segment in `dir`, sorted by index.
pub(crate) fn list_segments(dir: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(index) = name.to_str().and_then(parse_segment_name) {
            out.push((index, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The first missing segment name and the segment found in its place, if the indexes
/// are not exactly `1..=n`.
pub(crate) fn first_gap(segments: &[(u32, PathBuf)]) -> Option<(String, String)> {
    (1u32..)
        .zip(segments)
        .find(|(want, (index, _))| index != want)
        .map(|(want, (index, _))| (segment_name(want), segment_name(*index)))
}

/// fsyncs a directory, making file creations and renames in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_name(1), "audit-000001.log");
        assert_eq!(parse_segment_name("audit-000001.log"), Some(1));
        assert_eq!(
            parse_segment_name(&segment_name(1_234_567)),
            Some(1_234_567)
        );
        for bad in [
            "audit-1.log",
            "audit-000000.log",
            "audit-00000a.log",
            "head.json",
            "audit-000001.log.tmp",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn gaps_are_found() {
        let seg = |i| (i, PathBuf::new());
        assert_eq!(first_gap(&[seg(1), seg(2)]), None);
        assert_eq!(
            first_gap(&[seg(1), seg(3)]),
            Some(("audit-000002.log".into(), "audit-000003.log".into()))
        );
        assert_eq!(
            first_gap(&[seg(2)]).map(|g| g.0),
            Some("audit-000001.log".into())
        );
    }
}
