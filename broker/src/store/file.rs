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

use super::{Event, StateChange, StateStore, StoreError};

/// The journal file store.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    /// The file and the id its next change gets.
    file: Mutex<(File, u64)>,
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
            file: Mutex::new((file, 1)),
        };
        store.cut_torn_tail()?;
        let next = store.load()?.last().map_or(1, |e| e.id + 1);
        store.file.lock().unwrap_or_else(|e| e.into_inner()).1 = next;
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
        let guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let file = &guard.0;
        file.set_len(keep as u64)
            .and_then(|()| file.sync_data())
            .map_err(|source| StoreError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

impl StateStore for FileStore {
    /// One `write` and one `fdatasync` for all of them.
    fn append_all(&self, changes: &[StateChange]) -> Result<Vec<u64>, StoreError> {
        let mut line = Vec::new();
        for change in changes {
            serde_json::to_writer(&mut line, change).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                line: 0,
                message: e.to_string(),
            })?;
            line.push(b'\n');
        }
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let (file, next) = &mut *guard;
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .map_err(|source| StoreError::Io {
                path: self.path.clone(),
                source,
            })?;
        let ids = (*next..*next + changes.len() as u64).collect();
        *next += changes.len() as u64;
        Ok(ids)
    }

    /// Ids count the complete, non-empty lines.
    fn load(&self) -> Result<Vec<Event>, StoreError> {
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
            let change = serde_json::from_str(line).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                line: i + 1,
                message: e.to_string(),
            })?;
            out.push(Event {
                id: out.len() as u64 + 1,
                change,
            });
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
        let changes = |s: &FileStore| -> Vec<StateChange> {
            s.load().unwrap().into_iter().map(|e| e.change).collect()
        };
        assert_eq!(changes(&s), vec![c.clone()]);
        assert_eq!(s.append(&c).unwrap(), 2);
        assert_eq!(changes(&s), vec![c.clone(), c]);
    }
}
