//! [`AuditLog`]: opening (with torn-tail repair) and the group-commit writer.
//!
//! One dedicated thread owns the segment files and the head anchor. Callers serialize their
//! event on their own task and hand the bytes over through a mutex-protected queue; the
//! writer takes everything pending, assigns `seq`/`prev`/`hash` (hashing is sequential, so
//! it happens here), writes the batch with one `pwrite` per segment touched, makes it
//! durable with one `fdatasync`, rewrites the signed head anchor, and only then completes
//! each waiter. A failed write or sync is undone by truncating back to the last durable
//! length; if that fails too the log is marked failed and every later append errors until
//! restart. Nothing is acknowledged that is not durable.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::mem;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::SystemTime;

use tokio::sync::{oneshot, watch};

use super::chain::{self, GENESIS, Link, RecordProblem};
use super::event::{AuditEvent, EventKind};
use super::head::{Head, HeadWriter};
use super::segment::{self, segment_name};
use super::verify::{self, VerifyError};
use super::{AuditError, AuditOptions};
use crate::clock::Clock;
use crate::mint::keys::Signer;

/// The audit log: cheap to clone (an `Arc` inside); every clone appends to the same chain.
///
/// Dropping the last clone stops the writer after it has committed what is pending; call
/// [`AuditLog::close`] at shutdown to wait for that.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

struct Inner {
    queue: Arc<Queue>,
    done: watch::Receiver<bool>,
    #[cfg(test)]
    hooks: Arc<Hooks>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl AuditLog {
    /// Opens (creating the dir if needed), repairs a torn tail, checks the head anchor, starts
    /// the writer.
    ///
    /// Refuses to open when complete records the head anchor vouches for are missing or
    /// damaged, when records exist but `head.json` does not, when a segment is missing, or
    /// when the anchor's signature is bad (checked when the anchor's `kid` is `signer`'s).
    /// A torn tail after the anchor (a crash mid-write) is cut off and a `log_repaired`
    /// record saying where and how much is appended before anything else.
    pub fn open(
        opts: AuditOptions,
        signer: Arc<dyn Signer>,
        clock: Arc<dyn Clock>,
    ) -> Result<AuditLog, AuditError> {
        #[cfg(test)]
        let hooks = Arc::new(Hooks::default());
        let (mut writer, repair) = Writer::recover(
            opts,
            signer,
            clock,
            #[cfg(test)]
            Arc::clone(&hooks),
        )?;
        if let Some(repair) = repair {
            let mut event = AuditEvent::new(EventKind::LogRepaired);
            event.reason = Some(format!(
                "torn tail cut off at start: {} line {}: {}",
                repair.segment, repair.line, repair.problem
            ));
            event.detail = Some(serde_json::json!({
                "segment": repair.segment,
                "offset": repair.offset,
                "bytes_cut": repair.cut,
                "line": repair.line,
            }));
            let json = serde_json::to_vec(&event)?;
            if let (0, Some(err)) = writer.commit(&[json]) {
                return Err(err.to_error());
            }
        }
        let queue = Arc::new(Queue::default());
        let (done_tx, done) = watch::channel(false);
        let q = Arc::clone(&queue);
        thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(q, done_tx))
            .map_err(|source| AuditError::Io {
                op: "start the writer thread",
                path: PathBuf::new(),
                source,
            })?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                queue,
                done,
                #[cfg(test)]
                hooks,
            }),
        })
    }

    /// Appends one event; returns its sequence number only once the record is durable
    /// (fdatasync'd, and the head anchor rewritten).
    ///
    /// An `Err` means the record was not acknowledged: it is not in the log, or (if the
    /// anchor write failed after the log sync) it is in the log but unanchored. Either way
    /// the caller must fail closed. If the future is dropped after the event was queued, the
    /// record is still written.
    #[allow(clippy::needless_pass_by_value)] // the signature is the HTTP layer's contract
    pub async fn append(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let json = serde_json::to_vec(&event)?;
        let (tx, rx) = oneshot::channel();
        self.inner.queue.push(json, tx)?;
        rx.await.unwrap_or(Err(AuditError::Closed))
    }

    /// Flushes and stops the writer (idempotent). Appends queued before the call are
    /// committed (or failed) first; later appends return [`AuditError::Closed`].
    pub async fn close(&self) {
        self.inner.queue.close();
        let mut done = self.inner.done.clone();
        // Err only if the writer is gone, which is what we wait for anyway.
        let _ = done.wait_for(|stopped| *stopped).await;
    }

    #[cfg(test)]
    pub(crate) fn hooks(&self) -> &Hooks {
        &self.inner.hooks
    }
}

// ---------------------------------------------------------------------------------------
// The hand-off queue.

type Waiter = oneshot::Sender<Result<u64, AuditError>>;

#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
}

#[derive(Default)]
struct QueueState {
    events: Vec<Vec<u8>>,
    waiters: Vec<Waiter>,
    /// The writer is (about to be) asleep on `wake`.
    idle: bool,
    closing: bool,
    failed: Option<String>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, json: Vec<u8>, tx: Waiter) -> Result<(), AuditError> {
        let mut st = self.lock();
        if let Some(reason) = &st.failed {
            return Err(AuditError::Failed {
                reason: reason.clone(),
            });
        }
        if st.closing {
            return Err(AuditError::Closed);
        }
        st.events.push(json);
        st.waiters.push(tx);
        let wake = mem::take(&mut st.idle);
        drop(st);
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Moves everything pending into the (empty) vectors; false when the writer should stop.
    fn take(&self, events: &mut Vec<Vec<u8>>, waiters: &mut Vec<Waiter>) -> bool {
        let mut st = self.lock();
        loop {
            if !st.events.is_empty() {
                st.idle = false;
                mem::swap(&mut st.events, events);
                mem::swap(&mut st.waiters, waiters);
                return true;
            }
            if st.closing || st.failed.is_some() {
                return false;
            }
            st.idle = true;
            st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn close(&self) {
        self.lock().closing = true;
        self.wake.notify_all();
    }

    /// Marks the log failed (keeping the first reason) and fails everything pending.
    fn fail(&self, reason: String) {
        let waiters = {
            let mut st = self.lock();
            let reason = st.failed.get_or_insert(reason).clone();
            st.events.clear();
            mem::take(&mut st.waiters)
                .into_iter()
                .map(|w| (w, reason.clone()))
                .collect::<Vec<_>>()
        };
        for (w, reason) in waiters {
            let _ = w.send(Err(AuditError::Failed { reason }));
        }
    }
}

/// Runs when the writer thread ends, normally or by panic: no caller is left waiting.
struct ExitGuard {
    queue: Arc<Queue>,
    done: watch::Sender<bool>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if thread::panicking() {
            self.queue.fail("the audit writer thread panicked".into());
        } else {
            let waiters = {
                let mut st = self.queue.lock();
                st.closing = true;
                st.events.clear();
                mem::take(&mut st.waiters)
            };
            for w in waiters {
                let _ = w.send(Err(AuditError::Closed));
            }
        }
        self.done.send_replace(true);
    }
}

// ---------------------------------------------------------------------------------------
// The writer.

/// Test-only fault injection at the I/O calls and counters; every injected fault is the
/// real `io::Error` the kernel would return, and an injected write failure first writes
/// half of the bytes for real, so the undo path has real work to do.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Hooks {
    pub(crate) fail_writes: std::sync::atomic::AtomicU32,
    pub(crate) fail_syncs: std::sync::atomic::AtomicU32,
    pub(crate) fail_truncates: std::sync::atomic::AtomicU32,
    pub(crate) fail_heads: std::sync::atomic::AtomicU32,
    pub(crate) batches: std::sync::atomic::AtomicU64,
}

#[cfg(test)]
impl Hooks {
    fn take(counter: &std::sync::atomic::AtomicU32) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        counter
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// What open cut off.
struct Repair {
    segment: String,
    offset: u64,
    cut: u64,
    line: u64,
    problem: RecordProblem,
}

/// Why a batch (or its tail) was not acknowledged.
#[derive(Clone)]
struct BatchError {
    op: &'static str,
    path: PathBuf,
    source: Arc<io::Error>,
}

impl BatchError {
    fn to_error(&self) -> AuditError {
        AuditError::Write {
            op: self.op,
            path: self.path.clone(),
            source: Arc::clone(&self.source),
        }
    }
}

/// Records of one batch that go to one segment.
struct Chunk {
    segment: u32,
    /// End offset in the batch buffer.
    end: usize,
    /// Number of batch records up to and including this chunk.
    count: usize,
    /// The chunk's last record.
    last: Link,
}

struct Writer {
    dir: PathBuf,
    max: u64,
    signer: Arc<dyn Signer>,
    clock: Arc<dyn Clock>,
    /// The segment being appended to, its file and its durable length.
    segment: u32,
    file: File,
    len: u64,
    /// The last durable record and its segment.
    last: Link,
    last_segment: u32,
    head: HeadWriter,
    buf: Vec<u8>,
    /// Set when a failed write could not be undone.
    poisoned: Option<String>,
    #[cfg(test)]
    hooks: Arc<Hooks>,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> AuditError {
    let path = path.to_path_buf();
    move |source| AuditError::Io { op, path, source }
}

impl Writer {
    /// Scans the tail, checks the anchor, cuts a torn tail; the writer is ready to append.
    fn recover(
        opts: AuditOptions,
        signer: Arc<dyn Signer>,
        clock: Arc<dyn Clock>,
        #[cfg(test)] hooks: Arc<Hooks>,
    ) -> Result<(Self, Option<Repair>), AuditError> {
        let dir = opts.dir;
        fs::create_dir_all(&dir).map_err(io_err("create the directory", &dir))?;
        let head = verify::read_head(&dir)?;
        if let Some(h) = head.as_ref().filter(|h| h.kid == signer.kid()) {
            let key = signer.public_jwk().verifying_key();
            if !key.is_some_and(|k| h.signature_valid(&k)) {
                return Err(VerifyError::BadSignature {
                    kid: h.kid.clone(),
                    seq: h.seq,
                    hash: h.hash.clone(),
                }
                .into());
            }
        }
        let want = head.as_ref().map_or(0, |h| h.seq);
        let segs = verify::segments(&dir)?;

        // The last segment: find its valid prefix.
        let mut last: Option<(u32, u64, Link)> = None; // segment, line, link
        let mut anchored: Option<(u32, u64, Link)> = None;
        let mut repair = None;
        let (segment, len) = match segs.split_last() {
            None => (1, 0),
            Some(((index, path), older)) => {
                let bytes = verify::read_segment(path)?;
                let scan = chain::scan_segment(&bytes, None, want);
                if let Some(l) = scan.last {
                    last = Some((*index, scan.lines, l));
                }
                if let Some((line, link)) = scan.found {
                    anchored = Some((*index, line, link));
                }
                if let Some((line, problem)) = scan.bad {
                    repair = Some(Repair {
                        segment: segment_name(*index),
                        offset: scan.good_len,
                        cut: bytes.len() as u64 - scan.good_len,
                        line,
                        problem,
                    });
                }
                // Older segments, newest first, while the last record or the anchored
                // record is still to be found. They must be entirely valid: a batch never
                // moves to a new segment before the old one is synced.
                let anchor_segment = head.as_ref().map(|h| h.segment.clone());
                for (index, path) in older.iter().rev() {
                    let need_anchor = want > 0
                        && anchored.is_none()
                        && last.is_none_or(|(_, _, l)| l.seq >= want);
                    if last.is_some() && !need_anchor {
                        break;
                    }
                    let name = segment_name(*index);
                    let bytes = verify::read_segment(path)?;
                    let scan = chain::scan_segment(&bytes, None, want);
                    if let Some((line, problem)) = scan.bad {
                        return Err(VerifyError::BadRecord {
                            segment: name,
                            line,
                            problem,
                        }
                        .into());
                    }
                    if let (None, Some(l)) = (last, scan.last) {
                        last = Some((*index, scan.lines, l));
                    }
                    if let Some((line, link)) = scan.found {
                        anchored = Some((*index, line, link));
                    }
                    if last.is_some() && anchor_segment.as_deref() == Some(name.as_str()) {
                        break;
                    }
                }
                (*index, scan.good_len)
            }
        };

        // The anchor must be covered by the valid log.
        let last_seq = last.map_or(0, |(_, _, l)| l.seq);
        match &head {
            None if last.is_some() => {
                return Err(VerifyError::HeadMissing {
                    path: dir.join(segment::HEAD_FILE),
                }
                .into());
            }
            None => {}
            Some(h) if h.seq > last_seq => {
                return Err(match repair {
                    // Damage at or before the anchored record is not a torn write.
                    Some(r) => VerifyError::BadRecord {
                        segment: r.segment,
                        line: r.line,
                        problem: r.problem,
                    },
                    None => VerifyError::AnchorBeyondLog {
                        seq: h.seq,
                        hash: h.hash.clone(),
                        last_seq,
                        last: last.map(|(s, line, _)| (segment_name(s), line)),
                    },
                }
                .into());
            }
            Some(h) if h.seq > 0 => match anchored {
                Some((s, line, link)) if link.hash != h.hash_bytes() => {
                    return Err(VerifyError::AnchorMismatch {
                        seq: h.seq,
                        hash: h.hash.clone(),
                        segment: segment_name(s),
                        line,
                        found: chain::to_hex(&link.hash),
                    }
                    .into());
                }
                Some(_) => {}
                None => {
                    return Err(VerifyError::AnchorNotFound {
                        seq: h.seq,
                        segment: h.segment.clone(),
                    }
                    .into());
                }
            },
            Some(_) => {}
        }

        // Open (or create) the segment to append to, and cut a torn tail.
        let path = dir.join(segment_name(segment));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open segment", &path))?;
        if segs.is_empty() {
            segment::sync_dir(&dir).map_err(io_err("sync directory", &dir))?;
        }
        if let Some(r) = &repair {
            tracing::warn!(
                segment = %r.segment,
                offset = r.offset,
                bytes_cut = r.cut,
                line = r.line,
                problem = %r.problem,
                "audit log: cutting off a torn tail"
            );
            file.set_len(len)
                .and_then(|()| file.sync_all())
                .map_err(io_err("cut the torn tail of", &path))?;
        }

        let mut head_writer = HeadWriter::new(&dir);
        if head.is_none() {
            let genesis =
                Head::sign(signer.as_ref(), 0, &GENESIS, &segment_name(1)).map_err(|e| {
                    AuditError::Io {
                        op: "sign the head anchor",
                        path: head_writer.path(),
                        source: io::Error::other(e.to_string()),
                    }
                })?;
            head_writer
                .write(&genesis)
                .map_err(io_err("write the head anchor", &head_writer.path()))?;
        }

        let (last_segment, last) = match last {
            Some((s, _, l)) => (s, l),
            None => (
                1,
                Link {
                    seq: 0,
                    hash: GENESIS,
                },
            ),
        };
        let writer = Writer {
            dir,
            max: opts.segment_max_bytes,
            signer,
            clock,
            segment,
            file,
            len,
            last,
            last_segment,
            head: head_writer,
            buf: Vec::new(),
            poisoned: None,
            #[cfg(test)]
            hooks,
        };
        Ok((writer, repair))
    }

    fn run(mut self, queue: Arc<Queue>, done: watch::Sender<bool>) {
        let guard = ExitGuard { queue, done };
        let queue = &guard.queue;
        let mut events = Vec::new();
        let mut waiters = Vec::new();
        while queue.take(&mut events, &mut waiters) {
            let first = self.last.seq + 1;
            let (ok, err) = self.commit(&events);
            if let Some(e) = &err {
                tracing::error!(
                    op = e.op,
                    path = %e.path.display(),
                    error = %e.source,
                    failed = events.len() - ok,
                    "audit log write failed; records not acknowledged"
                );
            }
            for (i, tx) in waiters.drain(..).enumerate() {
                let result = match &err {
                    Some(e) if i >= ok => Err(e.to_error()),
                    _ => Ok(first + i as u64),
                };
                let _ = tx.send(result);
            }
            events.clear();
            if let Some(reason) = self.poisoned.take() {
                tracing::error!(%reason, "audit log failed: appends refused until restart");
                queue.fail(reason);
                break;
            }
            // Let the callers just woken (on the runtime's threads) queue their next
            // records before the next batch is taken: measured, this turns alternating
            // batches of ~1 and ~30 into steady batches of ~30 (32 callers, 2 cores),
            // for one syscall per batch and no added wait when nothing else is runnable.
            thread::yield_now();
        }
    }
}

impl Writer {
    /// Writes `events` (serialized `AuditEvent`s) as one batch. Returns how many of them,
    /// from the front, are durable and acknowledged, and the error for the rest.
    fn commit(&mut self, events: &[Vec<u8>]) -> (usize, Option<BatchError>) {
        #[cfg(test)]
        self.hooks
            .batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ts = format_ts(self.clock.now());

        // Encode and chain every record; split the batch where segments rotate.
        self.buf.clear();
        let mut chunks: Vec<Chunk> = Vec::with_capacity(1);
        let mut link = self.last;
        let mut segment = self.segment;
        let mut seg_len = self.len;
        for (i, event) in events.iter().enumerate() {
            let start = self.buf.len();
            let hash = chain::encode_record(&mut self.buf, link.seq + 1, &ts, &link.hash, event);
            let n = (self.buf.len() - start) as u64;
            if seg_len > 0 && seg_len + n > self.max {
                if i > 0 {
                    chunks.push(Chunk {
                        segment,
                        end: start,
                        count: i,
                        last: link,
                    });
                }
                segment += 1;
                seg_len = 0;
            }
            seg_len += n;
            link = Link {
                seq: link.seq + 1,
                hash,
            };
        }
        chunks.push(Chunk {
            segment,
            end: self.buf.len(),
            count: events.len(),
            last: link,
        });

        // Write and sync chunk by chunk.
        let mut durable = 0;
        let mut start = 0;
        let mut failure = None;
        for chunk in &chunks {
            if chunk.segment != self.segment
                && let Err(e) = self.rotate(chunk.segment)
            {
                failure = Some(e);
                break;
            }
            if let Err(e) = self.write_durably(start..chunk.end) {
                failure = Some(e);
                break;
            }
            self.len += (chunk.end - start) as u64;
            self.last = chunk.last;
            self.last_segment = chunk.segment;
            durable = chunk.count;
            start = chunk.end;
        }

        // Anchor what is durable, then acknowledge it.
        if durable > 0
            && let Err(e) = self.write_head()
        {
            return (0, Some(e));
        }
        (durable, failure)
    }

    /// Writes `buf[range]` at the durable end and fdatasyncs; on failure truncates back.
    fn write_durably(&mut self, range: std::ops::Range<usize>) -> Result<(), BatchError> {
        let path = self.dir.join(segment_name(self.segment));
        let result = self
            .write_at(&self.buf[range], self.len)
            .map_err(|e| ("write", e))
            .and_then(|()| self.sync().map_err(|e| ("fdatasync", e)));
        let Err((op, source)) = result else {
            return Ok(());
        };
        if let Err(undo) = self.truncate_back() {
            self.poisoned = Some(format!(
                "{op} of {} failed ({source}) and truncating back to {} bytes failed ({undo})",
                path.display(),
                self.len
            ));
        }
        Err(BatchError {
            op,
            path,
            source: Arc::new(source),
        })
    }

    fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        #[cfg(test)]
        if Hooks::take(&self.hooks.fail_writes) {
            self.file.write_all_at(&bytes[..bytes.len() / 2], offset)?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.file.write_all_at(bytes, offset)
    }

    fn sync(&self) -> io::Result<()> {
        #[cfg(test)]
        if Hooks::take(&self.hooks.fail_syncs) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.file.sync_data()
    }

    fn truncate_back(&self) -> io::Result<()> {
        #[cfg(test)]
        if Hooks::take(&self.hooks.fail_truncates) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.file.set_len(self.len)?;
        self.file.sync_data()
    }

    /// Starts segment `index`: creates the file and fsyncs the directory.
    fn rotate(&mut self, index: u32) -> Result<(), BatchError> {
        let path = self.dir.join(segment_name(index));
        let fail = |op, source| BatchError {
            op,
            path: path.clone(),
            source: Arc::new(source),
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| fail("create segment", e))?;
        if let Err(e) = segment::sync_dir(&self.dir) {
            // Not durably created: take it away again so that a retry starts clean.
            let _ = fs::remove_file(&path);
            return Err(fail("sync directory after creating segment", e));
        }
        self.segment = index;
        self.file = file;
        self.len = 0;
        Ok(())
    }

    fn write_head(&mut self) -> Result<(), BatchError> {
        let path = self.head.path();
        let fail = |op, source| BatchError {
            op,
            path: path.clone(),
            source: Arc::new(source),
        };
        #[cfg(test)]
        if Hooks::take(&self.hooks.fail_heads) {
            return Err(fail(
                "write head anchor",
                io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        let head = Head::sign(
            self.signer.as_ref(),
            self.last.seq,
            &self.last.hash,
            &segment_name(self.last_segment),
        )
        .map_err(|e| fail("sign head anchor", io::Error::other(e.to_string())))?;
        self.head
            .write(&head)
            .map_err(|e| fail("write head anchor", e))
    }
}

/// RFC 3339, UTC, milliseconds: `2025-01-02T03:04:05.678Z`.
fn format_ts(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
