//! The embedded [`StateStore`]: one JSON line per change in `<state dir>/changes.jsonl`,
//! each appended with `fdatasync` before it is acknowledged. A torn last line (a crash
//! mid-write) is ignored on load and cut off on the next append.
//!
//! Changes are rare (admin actions, self-revocations), so one sync per change is fine.
//! Expired revocations stay in the journal; compaction is left for when it matters.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{StateChange, StateStore, StoreError};

/// The journal file store.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    file: Mutex<File>,
}

impl FileStore {
    /// Opens (creating) `dir/changes.jsonl`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join("changes.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let store = Self {
            path,
            file: Mutex::new(file),
        };
        store.cut_torn_tail()?;
        Ok(store)
    }

    fn cut_torn_tail(&self) -> Result<(), StoreError> {
        let bytes = std::fs::read(&self.path).map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })?;
        if bytes.is_empty() || bytes.ends_with(b"\n") {
            return Ok(());
        }
        let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.set_len(keep as u64)
            .and_then(|()| file.sync_data())
            .map_err(|source| StoreError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

impl StateStore for FileStore {
    fn append(&self, change: &StateChange) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(change).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            line: 0,
            message: e.to_string(),
        })?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .map_err(|source| StoreError::Io {
                path: self.path.clone(),
                source,
            })
    }

    fn load(&self) -> Result<Vec<StateChange>, StoreError> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })?;
        let mut out = Vec::new();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        for (i, line) in complete.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            out.push(serde_json::from_str(line).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                line: i + 1,
                message: e.to_string(),
            })?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meets_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        super::super::contract::run(|| Box::new(FileStore::open(dir.path()).unwrap()));
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_cut() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path()).unwrap();
        let c = StateChange::Enable {
            identity: "x".into(),
            at: 1,
            actor: "a".into(),
        };
        s.append(&c).unwrap();
        drop(s);
        let path = dir.path().join("changes.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"change\":\"ena").unwrap();
        drop(f);
        let s = FileStore::open(dir.path()).unwrap();
        assert_eq!(s.load().unwrap(), vec![c.clone()]);
        s.append(&c).unwrap();
        assert_eq!(s.load().unwrap(), vec![c.clone(), c]);
    }
}
