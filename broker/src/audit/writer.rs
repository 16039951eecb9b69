//! [`AuditLog`]: opening (with torn-tail repair) and the group-commit writer.
//!
//! One dedicated thread owns the segment files and the head anchor. Callers serialize their
//! event on their own task and hand the bytes over through a mutex-protected queue; the
//! writer takes everything pending, assigns `seq`/`prev`/`hash` (hashing is sequential, so
//! it happens here), writes the batch with one `pwrite` per segment touched, then writes
//! the signed head anchor for the batch and makes both durable at the same time (the log's
//! `fdatasync` on a helper thread, the anchor's on the writer thread), and only then
//! completes each waiter. The anchor names the batch's end and the point that was already
//! durable before it (see `head.rs`), so a crash between the two syncs is recognisable at
//! start-up. A failed write or sync is undone by truncating back to the last durable length
//! (and re-anchoring there); if that fails too the log is marked failed and every later
//! append errors until restart. Nothing is acknowledged that is not durable and anchored.
//! The batches are pipelined (`pipeline.rs`): the next one is written and its sync started
//! while the one before is still syncing.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::mem;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{oneshot, watch};

#[path = "pipeline.rs"]
mod pipeline;

use std::collections::VecDeque;

use self::pipeline::{InFlight, LogSync, SyncDone};
use super::chain::{self, GENESIS, Link, RecordProblem};
use super::event::{AuditEvent, EventKind};
use super::head::{Head, HeadWriter, Point};
use super::segment::{self, segment_name};
use super::stats::{AuditStats, CommitCounters};
use super::verify::{self, VerifyError};
use super::{AuditError, AuditOptions};
use crate::clock::Clock;
use crate::mint::keys::{Signer, VerifyingKey};

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

/// Reads the writer's counters and `broker_audit_write_failing` at each scrape; nothing
/// once the log is gone.
pub(crate) struct AuditCollector {
    log: std::sync::Weak<Inner>,
}

impl std::fmt::Debug for AuditCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditCollector").finish_non_exhaustive()
    }
}

impl prometheus_client::collector::Collector for AuditCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric as _;
        let Some(inner) = self.log.upgrade() else {
            return Ok(());
        };
        let log = AuditLog { inner };
        log.stats().encode(&mut encoder)?;
        let failing = prometheus_client::metrics::gauge::ConstGauge::new(i64::from(
            log.write_failure().is_some(),
        ));
        failing.encode(encoder.encode_descriptor(
            "broker_audit_write_failing",
            "1 while the audit log cannot be written (issuance answers 503)",
            None,
            failing.metric_type(),
        )?)
    }
}

/// The key that signs head anchors, shared by the log and its writer thread, replaced
/// when the active signing key changes.
type AnchorSigner = Arc<std::sync::Mutex<Arc<dyn Signer>>>;

struct Inner {
    queue: Arc<Queue>,
    done: watch::Receiver<bool>,
    anchor: AnchorSigner,
    stats: Arc<CommitCounters>,
    /// Written into every record.
    replica: Option<String>,
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
        Self::open_inner(
            opts,
            signer,
            clock,
            #[cfg(test)]
            Arc::default(),
        )
    }

    /// [`AuditLog::open`] with faults armed before start-up runs.
    #[cfg(test)]
    pub(crate) fn open_with_hooks(
        opts: AuditOptions,
        signer: Arc<dyn Signer>,
        clock: Arc<dyn Clock>,
        hooks: Arc<Hooks>,
    ) -> Result<AuditLog, AuditError> {
        Self::open_inner(opts, signer, clock, hooks)
    }

    fn open_inner(
        opts: AuditOptions,
        signer: Arc<dyn Signer>,
        clock: Arc<dyn Clock>,
        #[cfg(test)] hooks: Arc<Hooks>,
    ) -> Result<AuditLog, AuditError> {
        let replica = opts.replica.clone();
        let queue = Arc::new(Queue::default());
        let (mut writer, repair) = Writer::recover(
            opts,
            signer,
            clock,
            Arc::clone(&queue),
            #[cfg(test)]
            Arc::clone(&hooks),
        )?;
        if let Some(repair) = repair {
            let mut event = repair.event();
            event.replica.clone_from(&replica);
            let json = serde_json::to_vec(&event)?;
            if let (0, Some(err)) = writer.commit(&[json]) {
                return Err(err.to_error());
            }
        }
        let stats = Arc::clone(&writer.stats);
        let anchor = Arc::clone(&writer.anchor);
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
                anchor,
                stats,
                replica,
                #[cfg(test)]
                hooks,
            }),
        })
    }

    /// Signs the head anchors from the next batch on with `signer` (the key lifecycle
    /// calls this when the active key changes, so that a retired or revoked key stops
    /// signing anchors once a successor signs; `audit verify` finds every key's public
    /// half in the JWKS or in the kept retired keys).
    pub fn set_anchor_signer(&self, signer: Arc<dyn Signer>) {
        let mut current = self
            .inner
            .anchor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.kid() != signer.kid() {
            tracing::info!(kid = %signer.kid(), "audit head anchors are now signed by a new key");
            *current = signer;
        }
    }

    /// The `kid` of the key that signs the head anchors.
    pub fn anchor_kid(&self) -> String {
        self.inner
            .anchor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .kid()
            .to_owned()
    }

    /// Appends one event; returns its sequence number only once the record is durable
    /// (fdatasync'd, and the head anchor rewritten).
    ///
    /// An `Err` means the record was not acknowledged: it is not in the log, or (if the
    /// anchor write failed after the log sync) it is in the log but unanchored. Either way
    /// the caller must fail closed. If the future is dropped after the event was queued, the
    /// record is still written.
    #[allow(clippy::needless_pass_by_value)] // the signature is the HTTP layer's contract
    pub async fn append(&self, mut event: AuditEvent) -> Result<u64, AuditError> {
        if event.replica.is_none() {
            event.replica.clone_from(&self.inner.replica);
        }
        let json = serde_json::to_vec(&event)?;
        let (tx, rx) = oneshot::channel();
        let queued = Instant::now();
        self.inner.queue.push(json, queued, tx)?;
        let result = rx.await.unwrap_or(Err(AuditError::Closed));
        self.inner
            .stats
            .acknowledged(queued.elapsed(), result.is_ok());
        result
    }

    /// The newest acknowledged record: its seq and hash (hex). What a checkpoint vouches
    /// for.
    pub fn durable_point(&self) -> (u64, String) {
        let (seq, hash) = self.inner.stats.durable();
        (seq, super::chain::to_hex(&hash))
    }

    /// Flushes and stops the writer (idempotent). Appends queued before the call are
    /// committed (or failed) first; later appends return [`AuditError::Closed`].
    pub async fn close(&self) {
        self.inner.queue.close();
        let mut done = self.inner.done.clone();
        // Err only if the writer is gone, which is what we wait for anyway.
        let _ = done.wait_for(|stopped| *stopped).await;
    }

    /// The group-commit writer's counters (for `/metrics`).
    pub fn stats(&self) -> AuditStats {
        self.inner.stats.snapshot()
    }

    /// Registers the writer's metrics in `registry`: the commit, log sync, anchor sync and
    /// batch size histograms, and a collector that reads the counters and the
    /// write-failure gauge at each scrape (it holds no strong reference to the log).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.inner.stats.histograms().register(registry);
        registry.register_collector(Box::new(AuditCollector {
            log: Arc::downgrade(&self.inner),
        }));
    }

    /// Why records cannot be made durable right now: the last batch's write or sync
    /// failed (a full disk, say; cleared by the next batch that is written), or the log
    /// failed for good (appends refused until restart). `None` when it is writing.
    pub fn write_failure(&self) -> Option<String> {
        if let Some(reason) = &self.inner.queue.lock().failed {
            return Some(format!("failed until restart: {reason}"));
        }
        self.inner.stats.write_error()
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
    /// When each event was queued.
    queued: Vec<Instant>,
    waiters: Vec<Waiter>,
    /// The writer is (about to be) asleep on `wake`.
    idle: bool,
    closing: bool,
    failed: Option<String>,
    /// Segment syncs the sync thread finished, not yet collected by the writer.
    synced: Vec<SyncDone>,
    /// The sync thread has stopped: results not in `synced` will not come.
    sync_stopped: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, json: Vec<u8>, queued: Instant, tx: Waiter) -> Result<(), AuditError> {
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
        st.queued.push(queued);
        st.waiters.push(tx);
        let wake = mem::take(&mut st.idle);
        drop(st);
        if wake {
            self.wake.notify_one();
        }
        Ok(())
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
            st.queued.clear();
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

/// How long the writer waits with nothing queued before it re-anchors with the durable
/// point at the end (closing the window in which the last batch, cut off after a crash,
/// would look like an interrupted commit). Under steady load it never waits this long.
const IDLE_REANCHOR: Duration = Duration::from_millis(50);

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
                st.queued.clear();
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
    /// The writer never re-anchors while idle (so a test can see a live anchor).
    pub(crate) never_idle: std::sync::atomic::AtomicBool,
    pub(crate) batches: std::sync::atomic::AtomicU64,
    /// The sync thread holds a sync until the next is queued, then finishes the later
    /// one first.
    pub(crate) reorder_syncs: std::sync::atomic::AtomicU32,
    /// The same, finishing both in order.
    pub(crate) pair_syncs: std::sync::atomic::AtomicU32,
    /// The sync thread's syncs report `EIO` (after syncing for real).
    pub(crate) fail_thread_syncs: std::sync::atomic::AtomicU32,
    /// What the writer and the sync thread did, in order, while `tracing` is set.
    pub(crate) tracing: std::sync::atomic::AtomicBool,
    pub(crate) trace: Mutex<Vec<String>>,
    /// The writer pauses as it is dropped, before it lets go of what it holds (as a
    /// thread descheduled at exit might).
    pub(crate) slow_drop: std::sync::atomic::AtomicBool,
}

#[cfg(test)]
impl Hooks {
    fn take(counter: &std::sync::atomic::AtomicU32) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        counter
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn trace(&self, step: String) {
        if self.tracing.load(std::sync::atomic::Ordering::SeqCst) {
            self.trace
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(step);
        }
    }
}

/// What open found to repair: a torn tail to cut off, records of an interrupted commit, or
/// both.
#[derive(Default)]
struct Repair {
    torn: Option<TornTail>,
    interrupted: Option<Interrupted>,
}

/// A torn tail after the last valid record.
struct TornTail {
    segment: String,
    offset: u64,
    cut: u64,
    line: u64,
    problem: RecordProblem,
}

/// The anchor's end is past the log's end, but the log reaches the anchor's durable point:
/// the broker stopped while committing `first..=last` (of which `first..=in_log` are in the
/// log), and none of them was acknowledged — unless the log was cut afterwards, which the
/// files alone cannot tell apart.
struct Interrupted {
    first: u64,
    last: u64,
    in_log: u64,
    hash: String,
}

impl Repair {
    /// The `log_repaired` record saying what was repaired.
    fn event(&self) -> AuditEvent {
        let mut event = AuditEvent::new(EventKind::LogRepaired);
        let mut reasons = Vec::new();
        let mut detail = serde_json::Map::new();
        if let Some(t) = &self.torn {
            reasons.push(format!(
                "torn tail cut off at start: {} line {}: {}",
                t.segment, t.line, t.problem
            ));
            detail.insert("segment".into(), t.segment.clone().into());
            detail.insert("offset".into(), t.offset.into());
            detail.insert("bytes_cut".into(), t.cut.into());
            detail.insert("line".into(), t.line.into());
        }
        if let Some(i) = &self.interrupted {
            let present = if i.in_log >= i.first {
                format!(
                    "seq {} to {} are in the log, the rest are not",
                    i.first, i.in_log
                )
            } else {
                "none of them is in the log".to_owned()
            };
            reasons.push(format!(
                "the head anchor names seq {} to {} as the batch being committed but the log ends at seq {} ({present}): the broker stopped before that batch was durable, so none of it was acknowledged, or the log was cut",
                i.first, i.last, i.in_log
            ));
            detail.insert(
                "unacknowledged".into(),
                serde_json::json!({
                    "first": i.first,
                    "last": i.last,
                    "in_log": i.in_log,
                    "anchored_hash": i.hash,
                }),
            );
        }
        event.reason = Some(reasons.join("; "));
        event.detail = Some(detail.into());
        event
    }
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
    anchor: AnchorSigner,
    clock: Arc<dyn Clock>,
    /// The segment being appended to, its file and its durable length.
    segment: u32,
    file: Arc<File>,
    len: u64,
    /// Syncs the segment while this thread writes and syncs the anchor.
    log_sync: LogSync,
    /// The next sync's ticket, and the results come back not yet applied.
    next_ticket: u64,
    synced: Vec<SyncDone>,
    /// Batches written whose syncs or anchors are pending, oldest first.
    in_flight: VecDeque<InFlight>,
    /// Where appends come from and sync results come back.
    queue: Arc<Queue>,
    /// Counters, and this batch's time in the log sync and in the anchor.
    stats: Arc<CommitCounters>,
    batch_log_sync: Duration,
    batch_head: Duration,
    /// The last durable record and its segment.
    last: Link,
    last_segment: u32,
    head: HeadWriter,
    buf: Vec<u8>,
    /// Set when a failed write could not be undone.
    poisoned: Option<String>,
    /// Set (and logged) once when the sync thread is found gone.
    sync_thread_gone: bool,
    #[cfg(test)]
    hooks: Arc<Hooks>,
}

#[cfg(test)]
impl Drop for Writer {
    fn drop(&mut self) {
        if self
            .hooks
            .slow_drop
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            thread::sleep(Duration::from_millis(300));
        }
    }
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
        queue: Arc<Queue>,
        #[cfg(test)] hooks: Arc<Hooks>,
    ) -> Result<(Self, Option<Repair>), AuditError> {
        let dir = opts.dir;
        fs::create_dir_all(&dir).map_err(io_err("create the directory", &dir))?;
        let head = verify::read_head(&dir)?;
        if let Some(h) = head.as_ref().filter(|h| h.kid == signer.kid()) {
            let key = VerifyingKey::from_jwk(&signer.public_jwk());
            if !key.is_some_and(|k| h.signature_valid(&k)) {
                return Err(VerifyError::BadSignature {
                    kid: h.kid.clone(),
                    seq: h.seq,
                    hash: h.hash.clone(),
                }
                .into());
            }
        }
        // The anchor's end and durable point: the records the scans look for.
        let wants = head.as_ref().map_or([0, 0], |h| [h.seq, h.durable_seq]);
        let segs = verify::segments(&dir)?;

        // The last segment: find its valid prefix.
        let mut last: Option<(u32, u64, Link)> = None; // segment, line, link
        let mut found: [Option<(u32, u64, Link)>; 2] = [None, None];
        let mut torn = None;
        let (segment, len) = match segs.split_last() {
            None => (1, 0),
            Some(((index, path), older)) => {
                let bytes = verify::read_segment(path)?;
                let scan = chain::scan_segment(&bytes, None, wants);
                if let Some(l) = scan.last {
                    last = Some((*index, scan.lines, l));
                }
                note_found(&mut found, *index, &scan);
                if let Some((line, problem)) = scan.bad {
                    torn = Some(TornTail {
                        segment: segment_name(*index),
                        offset: scan.good_len,
                        cut: bytes.len() as u64 - scan.good_len,
                        line,
                        problem,
                    });
                }
                // Older segments, newest first, while the last record or a wanted record is
                // still to be found. They must be entirely valid: a batch never moves to a
                // new segment before the old one is synced.
                for (index, path) in older.iter().rev() {
                    let last_seq = last.map(|(_, _, l)| l.seq);
                    let [end, durable] = wants;
                    // The end's record if the log reaches it; otherwise the durable point's.
                    let need_end =
                        end > 0 && found[0].is_none() && last_seq.is_none_or(|s| s >= end);
                    let need_durable = durable > 0
                        && found[1].is_none()
                        && last_seq.is_some_and(|s| s < end && s >= durable);
                    if last.is_some() && !need_end && !need_durable {
                        break;
                    }
                    let name = segment_name(*index);
                    let bytes = verify::read_segment(path)?;
                    let scan = chain::scan_segment(&bytes, None, wants);
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
                    note_found(&mut found, *index, &scan);
                }
                (*index, scan.good_len)
            }
        };

        // The anchor must be covered by the valid log: up to its end, or (after a crash
        // between a batch's two syncs) at least up to its durable point.
        let last_seq = last.map_or(0, |(_, _, l)| l.seq);
        let mut interrupted = None;
        match &head {
            None if last.is_some() => {
                return Err(VerifyError::HeadMissing {
                    path: dir.join(segment::HEAD_FILE),
                }
                .into());
            }
            None => {}
            Some(h) if h.seq > last_seq => {
                if h.durable_seq > last_seq {
                    return Err(match torn {
                        // Damage at or before the durable point is not a torn write.
                        Some(t) => VerifyError::BadRecord {
                            segment: t.segment,
                            line: t.line,
                            problem: t.problem,
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
                if h.durable_seq > 0 {
                    check_anchored(h.durable_seq, &h.durable_hash, &h.durable_segment, found[1])?;
                }
                interrupted = Some(Interrupted {
                    first: h.durable_seq + 1,
                    last: h.seq,
                    in_log: last_seq,
                    hash: h.hash.clone(),
                });
            }
            Some(h) if h.seq > 0 => check_anchored(h.seq, &h.hash, &h.segment, found[0])?,
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
        } else {
            // After a process kill (no power loss) the tail just read may still be only in
            // the page cache; it is about to become the durable point of the next anchor.
            file.sync_data().map_err(io_err("sync segment", &path))?;
        }
        if let Some(t) = &torn {
            tracing::warn!(
                segment = %t.segment,
                offset = t.offset,
                bytes_cut = t.cut,
                line = t.line,
                problem = %t.problem,
                "audit log: cutting off a torn tail"
            );
            file.set_len(len)
                .and_then(|()| file.sync_all())
                .map_err(io_err("cut the torn tail of", &path))?;
        }
        if let Some(i) = &interrupted {
            tracing::warn!(
                first = i.first,
                last = i.last,
                "audit log: the broker stopped while committing these records; they were never acknowledged"
            );
        }
        let repair =
            (torn.is_some() || interrupted.is_some()).then_some(Repair { torn, interrupted });

        let mut head_writer = HeadWriter::new(&dir);
        if head.is_none() {
            let first = segment_name(1);
            let start = Point {
                seq: 0,
                hash: &GENESIS,
                segment: &first,
            };
            let genesis =
                Head::sign(signer.as_ref(), start, start).map_err(|e| AuditError::Io {
                    op: "sign the head anchor",
                    path: head_writer.path(),
                    source: io::Error::other(e.to_string()),
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
        let log_sync = LogSync::start(
            Arc::clone(&queue),
            #[cfg(test)]
            Arc::clone(&hooks),
        )
        .map_err(|source| AuditError::Io {
            op: "start the log sync thread",
            path: PathBuf::new(),
            source,
        })?;
        let mut writer = Writer {
            dir,
            max: opts.segment_max_bytes,
            anchor: Arc::new(std::sync::Mutex::new(signer)),
            clock,
            segment,
            file: Arc::new(file),
            len,
            log_sync,
            next_ticket: 0,
            synced: Vec::new(),
            in_flight: VecDeque::new(),
            queue,
            stats: Arc::default(),
            batch_log_sync: Duration::ZERO,
            batch_head: Duration::ZERO,
            last,
            last_segment,
            head: head_writer,
            buf: Vec::new(),
            poisoned: None,
            sync_thread_gone: false,
            #[cfg(test)]
            hooks,
        };
        if repair.as_ref().is_some_and(|r| r.interrupted.is_some()) {
            // The anchor names records the log does not have (or has with other content
            // once the repair record takes the next seq): move it back to the log's end
            // before anything is appended, so no crash can leave it naming a reused seq.
            writer.write_head().map_err(|e| e.to_error())?;
        }
        Ok((writer, repair))
    }
}

impl Writer {
    /// Writes `events` (serialized `AuditEvent`s) as one batch. Returns how many of them,
    /// from the front, are durable and acknowledged, and the error for the rest.
    fn commit(&mut self, events: &[Vec<u8>]) -> (usize, Option<BatchError>) {
        let chunks = self.encode(events, self.last, self.segment, self.len);
        // Every chunk but the last is written and synced on its own: a batch moves to a new
        // segment only once the old one is durable (start-up relies on it).
        let Some((last_chunk, earlier)) = chunks.split_last() else {
            return (0, None);
        };
        let mut durable = 0;
        let mut start = 0;
        for chunk in earlier {
            let written = self
                .enter(chunk.segment)
                .and_then(|()| self.write_durably(start..chunk.end));
            if let Err(e) = written {
                return self.anchor_durable(durable, e);
            }
            self.advance(chunk, start);
            durable = chunk.count;
            start = chunk.end;
        }
        // The last chunk and the anchor for the whole batch, synced at the same time.
        let written = self
            .enter(last_chunk.segment)
            .and_then(|()| self.write_and_anchor(start, last_chunk));
        match written {
            Ok(()) => (last_chunk.count, None),
            Err(e) => self.anchor_durable(durable, e),
        }
    }

    /// Encodes and chains `events` into the batch buffer after `link`, which ends at `len`
    /// in `segment`; split where segments rotate.
    fn encode(
        &mut self,
        events: &[Vec<u8>],
        mut link: Link,
        mut segment: u32,
        len: u64,
    ) -> Vec<Chunk> {
        let ts = format_ts(self.clock.now());
        self.buf.clear();
        let mut chunks: Vec<Chunk> = Vec::with_capacity(1);
        let mut seg_len = len;
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
        chunks
    }

    /// After `failure`: anchors the `durable` records of the batch that are durable (those
    /// of chunks before a failed one) and acknowledges them, or none if that fails too.
    fn anchor_durable(
        &mut self,
        durable: usize,
        failure: BatchError,
    ) -> (usize, Option<BatchError>) {
        if durable > 0
            && let Err(e) = self.write_head()
        {
            return (0, Some(e));
        }
        (durable, Some(failure))
    }

    /// Moves to segment `index` if the chunk belongs there.
    fn enter(&mut self, index: u32) -> Result<(), BatchError> {
        if index == self.segment {
            Ok(())
        } else {
            self.rotate(index)
        }
    }

    /// Records `chunk` (which started at `start` in the batch buffer) as durable.
    fn advance(&mut self, chunk: &Chunk, start: usize) {
        self.len += (chunk.end - start) as u64;
        self.last = chunk.last;
        self.last_segment = chunk.segment;
    }

    /// Writes `chunk` at the durable end, then signs and writes the anchor for its last
    /// record; the segment's `fdatasync` runs on the sync thread while this thread writes
    /// and syncs the anchor. Returns once both are durable (the chunk then counts as
    /// durable) or one failed. A failed log write or sync truncates the segment back and
    /// re-anchors at the durable point; a failed anchor leaves the chunk durable but
    /// unanchored (until the next batch's anchor), so it is not acknowledged.
    fn write_and_anchor(&mut self, start: usize, chunk: &Chunk) -> Result<(), BatchError> {
        let path = self.dir.join(segment_name(self.segment));
        if let Err(source) = self.write_at(&self.buf[start..chunk.end], self.len) {
            return Err(self.undo("write", source, path));
        }
        let ticket = self.start_sync();
        let started = Instant::now();
        let anchored = self.write_head_to(chunk.last, chunk.segment);
        self.batch_head += started.elapsed();
        let synced = self.wait_synced(ticket);
        self.batch_log_sync += synced.took;
        match synced.result {
            Ok(()) => {
                self.advance(chunk, start);
                anchored
            }
            Err(source) => Err(self.undo_sync(source, path)),
        }
    }

    /// Writes `buf[range]` at the durable end and fdatasyncs; on failure truncates back.
    fn write_durably(&mut self, range: std::ops::Range<usize>) -> Result<(), BatchError> {
        let path = self.dir.join(segment_name(self.segment));
        let result = self
            .write_at(&self.buf[range], self.len)
            .map_err(|e| ("write", e))
            .and_then(|()| self.sync().map_err(|e| ("fdatasync", e)));
        match result {
            Ok(()) => Ok(()),
            Err((op, source)) => Err(self.undo(op, source, path)),
        }
    }

    /// After a failed `fdatasync` of the segment at `path`: truncates it back (as
    /// [`Writer::undo`]) and, since the anchor may vouch for what was just taken back,
    /// anchors the durable point again before anything else is written (marking the log
    /// failed if that fails).
    fn undo_sync(&mut self, source: io::Error, path: PathBuf) -> BatchError {
        let error = self.undo("fdatasync", source, path);
        if self.poisoned.is_none()
            && let Err(e) = self.write_head()
        {
            self.poisoned = Some(format!(
                "{} failed ({}) and re-anchoring at seq {} failed ({})",
                error.op, error.source, self.last.seq, e.source
            ));
        }
        error
    }

    /// After a failed `op` on the segment at `path`: truncates it back to its durable
    /// length (marking the log failed if that fails too); the error for the batch.
    fn undo(&mut self, op: &'static str, source: io::Error, path: PathBuf) -> BatchError {
        if let Err(undo) = self.truncate_back() {
            self.poisoned = Some(format!(
                "{op} of {} failed ({source}) and truncating back to {} bytes failed ({undo})",
                path.display(),
                self.len
            ));
        }
        BatchError {
            op,
            path,
            source: Arc::new(source),
        }
    }

    fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        #[cfg(test)]
        if Hooks::take(&self.hooks.fail_writes) {
            self.file.write_all_at(&bytes[..bytes.len() / 2], offset)?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.file.write_all_at(bytes, offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if Hooks::take(&self.hooks.fail_syncs) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let started = Instant::now();
        let result = self.file.sync_data();
        self.batch_log_sync += started.elapsed();
        result
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
        self.file = Arc::new(file);
        self.len = 0;
        Ok(())
    }

    /// Anchors the durable point: end and durable point both at the last durable record.
    fn write_head(&mut self) -> Result<(), BatchError> {
        self.write_head_to(self.last, self.last_segment)
    }

    /// Signs and writes (and syncs) an anchor whose end is `end` in segment `end_segment`
    /// and whose durable point is the last durable record.
    fn write_head_to(&mut self, end: Link, end_segment: u32) -> Result<(), BatchError> {
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
        let end_segment = segment_name(end_segment);
        let durable_segment = segment_name(self.last_segment);
        let signer = Arc::clone(
            &self
                .anchor
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let head = Head::sign(
            signer.as_ref(),
            Point {
                seq: end.seq,
                hash: &end.hash,
                segment: &end_segment,
            },
            Point {
                seq: self.last.seq,
                hash: &self.last.hash,
                segment: &durable_segment,
            },
        )
        .map_err(|e| fail("sign head anchor", io::Error::other(e.to_string())))?;
        self.head
            .write(&head)
            .map_err(|e| fail("write head anchor", e))
    }
}

/// Notes, for each wanted seq, where `scan` (of segment `index`) met it.
fn note_found(found: &mut [Option<(u32, u64, Link)>; 2], index: u32, scan: &chain::SegmentScan) {
    for (f, hit) in found.iter_mut().zip(scan.found) {
        if let Some((line, link)) = hit {
            *f = Some((index, line, link));
        }
    }
}

/// Checks that the anchored `(seq, hash)` was found with that hash, in the named segment.
fn check_anchored(
    seq: u64,
    hash_hex: &str,
    segment: &str,
    found: Option<(u32, u64, Link)>,
) -> Result<(), AuditError> {
    match found {
        Some((s, line, link)) if chain::to_hex(&link.hash) != hash_hex => {
            Err(VerifyError::AnchorMismatch {
                seq,
                hash: hash_hex.to_owned(),
                segment: segment_name(s),
                line,
                found: chain::to_hex(&link.hash),
            }
            .into())
        }
        Some((s, line, _)) if segment_name(s) != segment => Err(VerifyError::AnchorSegment {
            seq,
            anchor_segment: segment.to_owned(),
            segment: segment_name(s),
            line,
        }
        .into()),
        Some(_) => Ok(()),
        None => Err(VerifyError::AnchorNotFound {
            seq,
            segment: segment.to_owned(),
        }
        .into()),
    }
}

/// RFC 3339, UTC, milliseconds: `2025-01-02T03:04:05.678Z`.
fn format_ts(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
