//! The writer's pipeline: a batch is written to the segment and its `fdatasync` handed to
//! the sync thread while the batch before it is still syncing, so the disk never waits
//! for the writer to take, encode and write the next batch.
//!
//! The rules that keep every guarantee of the one-batch-at-a-time writer:
//!
//! - At most [`MAX_IN_FLIGHT`] batches are written and not yet answered; all in the
//!   current segment (a batch that would rotate waits until the pipeline is empty and is
//!   committed on its own, as before).
//! - Sync results are applied in the order the batches were written, whatever order they
//!   come back in: a batch counts as durable only when its own sync has finished and every
//!   earlier batch is durable.
//! - A batch's anchor (its end, and the durable point before it) is written only once every
//!   earlier batch is durable, so the anchor on disk never names more than one batch that
//!   is not durable — the batch a crash interrupted, which start-up recognises.
//! - Answers are released strictly in order, each batch's only after its own sync and its
//!   own anchor are durable.
//! - A failed sync takes that batch and every later one back (they follow it in the file
//!   and in the chain), truncating to the durable length and re-anchoring there.

use std::fs::File;
use std::io;
use std::mem;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::chain::Link;
use super::segment::segment_name;
use super::{BatchError, ExitGuard, IDLE_REANCHOR, Queue, Waiter, Writer};

/// Batches written and not yet answered, at most: one syncing and one written behind it
/// (its sync queued). More would only split what could be one batch into several syncs.
pub(super) const MAX_IN_FLIGHT: usize = 2;

/// One segment sync, numbered in the order they were started.
pub(super) struct SyncDone {
    pub(super) ticket: u64,
    pub(super) result: io::Result<()>,
    pub(super) took: Duration,
}

/// What the writer does next, as [`Queue::next`] found.
pub(super) enum Next {
    /// A batch to write; its events waited this long in the queue, together.
    Batch { waited: Duration },
    /// Sync results came back (or the sync thread stopped).
    Synced,
    /// Nothing queued and nothing in flight for the idle time asked for.
    Idle,
    /// The log is closing (or failed) and nothing is in flight: the writer stops.
    Stop,
}

impl Queue {
    /// Waits for work. Takes a batch only when `room` (the pipeline can take one); returns
    /// sync results first, since they release callers. With `busy` (batches in flight) it
    /// never stops or idles: their results are still to come.
    pub(super) fn next(
        &self,
        events: &mut Vec<Vec<u8>>,
        waiters: &mut Vec<Waiter>,
        synced: &mut Vec<SyncDone>,
        room: bool,
        busy: bool,
        idle_after: Option<Duration>,
    ) -> Next {
        let mut st = self.lock();
        let deadline = idle_after.map(|d| Instant::now() + d);
        loop {
            if !st.synced.is_empty() || (busy && st.sync_stopped) {
                synced.append(&mut st.synced);
                return Next::Synced;
            }
            if room && !st.events.is_empty() {
                st.idle = false;
                let now = Instant::now();
                let waited = st
                    .queued
                    .drain(..)
                    .map(|q| now.saturating_duration_since(q))
                    .sum();
                mem::swap(&mut st.events, events);
                mem::swap(&mut st.waiters, waiters);
                return Next::Batch { waited };
            }
            if !busy && (st.closing || st.failed.is_some()) && st.events.is_empty() {
                return Next::Stop;
            }
            // Only a push the writer can take should wake it.
            st.idle = room;
            st = match deadline.filter(|_| !busy) {
                None => self.wake.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                        st.idle = false;
                        return Next::Idle;
                    };
                    self.wake
                        .wait_timeout(st, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Blocks until a sync result is in and moves them all to `synced`; false when none
    /// will come (the sync thread stopped).
    fn collect_synced(&self, synced: &mut Vec<SyncDone>) -> bool {
        let mut st = self.lock();
        loop {
            if !st.synced.is_empty() {
                synced.append(&mut st.synced);
                return true;
            }
            if st.sync_stopped {
                return false;
            }
            st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn post_synced(&self, done: SyncDone) {
        self.lock().synced.push(done);
        self.wake.notify_all();
    }

    fn sync_thread_stopped(&self) {
        self.lock().sync_stopped = true;
        self.wake.notify_all();
    }
}

/// The thread that `fdatasync`s the segment while the writer thread writes and syncs the
/// anchor and the next batch, so a batch costs the longer of the two syncs instead of their
/// sum. Results go back through the queue. It stops when the writer (holding `jobs`) is
/// dropped.
pub(super) struct LogSync {
    jobs: mpsc::Sender<(u64, Arc<File>)>,
}

/// Tells the writer when the sync thread ends, however it ends.
struct SyncThreadExit(Arc<Queue>);

impl Drop for SyncThreadExit {
    fn drop(&mut self) {
        self.0.sync_thread_stopped();
    }
}

impl LogSync {
    pub(super) fn start(
        queue: Arc<Queue>,
        #[cfg(test)] hooks: Arc<super::Hooks>,
    ) -> io::Result<Self> {
        let (jobs, job_rx) = mpsc::channel::<(u64, Arc<File>)>();
        thread::Builder::new()
            .name("audit-log-sync".into())
            .spawn(move || {
                let exit = SyncThreadExit(queue);
                let sync = |(ticket, file): (u64, Arc<File>)| {
                    let started = Instant::now();
                    let result = file.sync_data();
                    #[cfg(test)]
                    let result = result.and_then(|()| {
                        if super::Hooks::take(&hooks.fail_thread_syncs) {
                            Err(io::Error::from_raw_os_error(libc::EIO))
                        } else {
                            Ok(())
                        }
                    });
                    #[cfg(test)]
                    hooks.trace(format!("synced {ticket}"));
                    exit.0.post_synced(SyncDone {
                        ticket,
                        result,
                        took: started.elapsed(),
                    });
                };
                while let Ok(job) = job_rx.recv() {
                    // Test only: hold this job until the next one is queued, then finish
                    // both, in order or the later one first, with a pause between (as a
                    // slow disk might).
                    #[cfg(test)]
                    {
                        let reverse = super::Hooks::take(&hooks.reorder_syncs);
                        if reverse || super::Hooks::take(&hooks.pair_syncs) {
                            let Ok(later) = job_rx.recv() else {
                                sync(job);
                                break;
                            };
                            let (one, two) = if reverse { (later, job) } else { (job, later) };
                            sync(one);
                            thread::sleep(Duration::from_millis(30));
                            sync(two);
                            continue;
                        }
                    }
                    sync(job);
                }
            })?;
        Ok(Self { jobs })
    }
}

/// A batch written to the segment whose sync (and perhaps anchor) is still to finish.
pub(super) struct InFlight {
    first: u64,
    waiters: Vec<Waiter>,
    /// The segment's length just past the batch, and its last record (every batch in
    /// flight is in the current segment).
    end_len: u64,
    last: Link,
    ticket: u64,
    /// `Some` once its sync's result is applied: `Err` when the batch was taken back.
    durable: Option<Result<(), BatchError>>,
    /// `Some` once its anchor was written (or failed).
    anchored: Option<Result<(), BatchError>>,
    log_sync: Duration,
    head: Duration,
    started: Instant,
}

impl InFlight {
    fn answered(&self) -> bool {
        matches!(self.durable, Some(Err(_))) || (self.durable.is_some() && self.anchored.is_some())
    }
}

/// A batch ready to be answered.
pub(super) struct Answer {
    pub(super) first: u64,
    pub(super) waiters: Vec<Waiter>,
    /// How many from the front are durable and acknowledged; the error for the rest.
    pub(super) ok: usize,
    pub(super) err: Option<BatchError>,
    /// The last acknowledged record (when `ok` > 0).
    pub(super) acked_to: Link,
    pub(super) started: Instant,
    pub(super) log_sync: Duration,
    pub(super) head: Duration,
}

impl Writer {
    /// The writer thread's body. `done` is signalled only once the writer and all it
    /// holds (files, the anchor key's handle) are dropped, so that a caller waiting in
    /// `close` never races this thread's drops: a PKCS#11 key closed after the process
    /// has begun to exit would crash in the module's own teardown.
    pub(super) fn run(self, queue: Arc<Queue>, done: watch::Sender<bool>) {
        let guard = ExitGuard { queue, done };
        // `self` is consumed and dropped inside (also when it unwinds), before `guard`.
        self.serve(&guard.queue);
    }

    fn serve(mut self, queue: &Arc<Queue>) {
        // What start-up left is durable and anchored.
        self.stats.set_durable(self.last.seq, self.last.hash);
        let mut events = Vec::new();
        let mut waiters = Vec::new();
        // Whether the anchor on disk has its durable point at its end.
        let mut settled = true;
        loop {
            let busy = !self.in_flight.is_empty();
            let idle_after = (!settled).then_some(IDLE_REANCHOR);
            #[cfg(test)]
            let idle_after = idle_after.filter(|_| {
                !self
                    .hooks
                    .never_idle
                    .load(std::sync::atomic::Ordering::Relaxed)
            });
            let room = self.in_flight.len() < MAX_IN_FLIGHT;
            match queue.next(
                &mut events,
                &mut waiters,
                &mut self.synced,
                room,
                busy,
                idle_after,
            ) {
                Next::Stop => break,
                // Nothing came back although it said so: the sync thread stopped, and
                // what is in flight fails (and is taken back) now.
                Next::Synced if self.synced.is_empty() => self.drain(),
                Next::Synced => {}
                Next::Batch { waited } => {
                    self.stats.queued(waited);
                    settled = false;
                    self.begin(&events, mem::take(&mut waiters));
                    events.clear();
                }
                Next::Idle => {
                    // Settled either way: a failure here is logged once, not retried in a
                    // loop; the next batch writes a new anchor anyway.
                    settled = true;
                    self.settle_anchor("while idle");
                    continue;
                }
            }
            let answered = self.progress();
            if let Some(reason) = self.poisoned.take() {
                self.fail_in_flight(&reason);
                tracing::error!(%reason, "audit log failed: appends refused until restart");
                queue.fail(reason);
                return;
            }
            if answered {
                // Let the callers just woken (on the runtime's threads) queue their next
                // records before the next batch is taken: measured, this turns alternating
                // batches of ~1 and ~30 into steady batches of ~30 (32 callers, 2 cores),
                // for one syscall per batch and no added wait when nothing else is runnable.
                thread::yield_now();
            }
        }
        // A clean stop leaves an anchor whose durable point is its end, so that the last
        // batch cut off later cannot pass for a commit interrupted by a crash.
        self.settle_anchor("at close");
    }

    /// Re-anchors with the durable point at the end; a failure is logged, not retried
    /// (the next batch writes a new anchor anyway).
    fn settle_anchor(&mut self, when: &'static str) {
        if let Err(e) = self.write_head() {
            tracing::warn!(
                op = e.op,
                path = %e.path.display(),
                error = %e.source,
                when,
                "audit log: could not re-anchor with the durable point at the end"
            );
        }
    }

    /// Writes `events` as the next batch behind those in flight and starts its sync; a
    /// batch that rotates, or whose write fails, waits for the pipeline to empty first.
    fn begin(&mut self, events: &[Vec<u8>], waiters: Vec<Waiter>) {
        #[cfg(test)]
        self.hooks
            .batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let (tail, tail_len) = self
            .in_flight
            .back()
            .map_or((self.last, self.len), |b| (b.last, b.end_len));
        let chunks = self.encode(events, tail, self.segment, tail_len);
        let last = match chunks.as_slice() {
            [chunk] if chunk.segment == self.segment => chunk.last,
            // It moves to a new segment: committed on its own (and encoded again, from
            // wherever the batches now in flight leave the chain).
            _ => return self.begin_alone(events, waiters),
        };
        let end_len = tail_len + self.buf.len() as u64;
        if let Err(source) = self.write_at(&self.buf, tail_len) {
            self.drain();
            let path = self.dir.join(segment_name(self.segment));
            let err = self.undo("write", source, path);
            return self.answer(Answer {
                first: tail.seq + 1,
                waiters,
                ok: 0,
                err: Some(err),
                acked_to: tail,
                started,
                log_sync: Duration::ZERO,
                head: Duration::ZERO,
            });
        }
        let ticket = self.start_sync();
        self.in_flight.push_back(InFlight {
            first: tail.seq + 1,
            waiters,
            end_len,
            last,
            ticket,
            durable: None,
            anchored: None,
            log_sync: Duration::ZERO,
            head: Duration::ZERO,
            started,
        });
    }

    /// Commits `events` with nothing else in flight (a batch that moves to a new segment).
    fn begin_alone(&mut self, events: &[Vec<u8>], waiters: Vec<Waiter>) {
        self.drain();
        let first = self.last.seq + 1;
        let started = Instant::now();
        let (ok, err) = self.commit(events);
        let log_sync = mem::take(&mut self.batch_log_sync);
        let head = mem::take(&mut self.batch_head);
        self.answer(Answer {
            first,
            waiters,
            ok,
            err,
            acked_to: self.last,
            started,
            log_sync,
            head,
        });
    }

    /// Applies what has come back, writes the anchors now due and answers the batches that
    /// are done, in order, until nothing moves. True when a batch was answered.
    fn progress(&mut self) -> bool {
        let mut answered = false;
        loop {
            let mut moved = false;
            while self.in_flight.front().is_some_and(InFlight::answered) {
                if let Some(b) = self.in_flight.pop_front() {
                    self.answer_batch(b);
                    answered = true;
                }
            }
            // The anchor due: the first batch without one, once every batch before it is
            // durable (so the anchor's durable point is at least the end of the batch
            // before, and the anchor never names two batches that are not durable).
            let due = self.in_flight.iter().position(|b| b.anchored.is_none());
            if let Some(i) = due
                && self
                    .in_flight
                    .range(..i)
                    .all(|b| matches!(b.durable, Some(Ok(()))))
                && self.in_flight[i].durable.as_ref().is_none_or(Result::is_ok)
            {
                let started = Instant::now();
                let anchored = self.write_head_to(self.in_flight[i].last, self.segment);
                #[cfg(test)]
                self.hooks
                    .trace(format!("anchored {}", self.in_flight[i].ticket));
                let b = &mut self.in_flight[i];
                b.head = started.elapsed();
                b.anchored = Some(anchored);
                moved = true;
            }
            // The next sync result, in the order the batches were written.
            if let Some(i) = self.in_flight.iter().position(|b| b.durable.is_none()) {
                let ticket = self.in_flight[i].ticket;
                if let Some(done) = self.take_synced(ticket) {
                    self.apply_sync(i, done);
                    moved = true;
                }
            }
            if !moved {
                return answered;
            }
        }
    }

    /// Batch `i` (every batch before it durable) finished its sync with `done`.
    fn apply_sync(&mut self, i: usize, done: SyncDone) {
        self.in_flight[i].log_sync = done.took;
        match done.result {
            Ok(()) => {
                let b = &mut self.in_flight[i];
                self.len = b.end_len;
                self.last = b.last;
                self.last_segment = self.segment;
                b.durable = Some(Ok(()));
            }
            Err(source) => {
                // Every later batch follows it in the file and in the chain: all go back.
                let path = self.dir.join(segment_name(self.segment));
                let error = self.undo_sync(source, path);
                for j in i + 1..self.in_flight.len() {
                    // Their syncs were started; their results must not be mistaken for
                    // those of batches written later.
                    let ticket = self.in_flight[j].ticket;
                    let _ = self.wait_synced(ticket);
                }
                for b in self.in_flight.range_mut(i..) {
                    b.durable = Some(Err(error.clone()));
                }
            }
        }
    }

    /// Waits until every batch in flight is answered.
    fn drain(&mut self) {
        while !self.in_flight.is_empty() {
            self.progress();
            let Some(b) = self.in_flight.iter().find(|b| b.durable.is_none()) else {
                continue;
            };
            let ticket = b.ticket;
            let done = self.wait_synced(ticket);
            self.synced.push(done);
        }
    }

    /// Fails every batch still in flight (the log is failing).
    fn fail_in_flight(&mut self, reason: &str) {
        for b in mem::take(&mut self.in_flight) {
            for tx in b.waiters {
                let _ = tx.send(Err(super::AuditError::Failed {
                    reason: reason.to_owned(),
                }));
            }
        }
    }

    fn answer_batch(&mut self, b: InFlight) {
        let err = match (b.durable, b.anchored) {
            (Some(Err(e)), _) | (_, Some(Err(e))) => Some(e),
            _ => None,
        };
        let ok = if err.is_some() { 0 } else { b.waiters.len() };
        self.answer(Answer {
            first: b.first,
            waiters: b.waiters,
            ok,
            err,
            acked_to: b.last,
            started: b.started,
            log_sync: b.log_sync,
            head: b.head,
        });
    }

    /// Sends each waiter its answer and counts the batch.
    fn answer(&mut self, a: Answer) {
        if a.ok > 0 {
            self.stats.set_durable(a.acked_to.seq, a.acked_to.hash);
        }
        self.stats
            .batch(a.waiters.len(), a.started.elapsed(), a.log_sync, a.head);
        // What `/readyz` says (no path: it is unauthenticated).
        self.stats.set_write_error(
            a.err
                .as_ref()
                .map(|e| format!("{} failed: {}", e.op, e.source)),
        );
        if let Some(e) = &a.err {
            tracing::error!(
                op = e.op,
                path = %e.path.display(),
                error = %e.source,
                failed = a.waiters.len() - a.ok,
                "audit log write failed; records not acknowledged"
            );
        }
        #[cfg(test)]
        self.hooks.trace(format!("answered {}", a.first));
        for (i, tx) in a.waiters.into_iter().enumerate() {
            let result = match &a.err {
                Some(e) if i >= a.ok => Err(e.to_error()),
                _ => Ok(a.first + i as u64),
            };
            let _ = tx.send(result);
        }
    }

    /// Hands the segment's `fdatasync` to the sync thread (or, if that is gone, does it
    /// here); its result comes back under the returned ticket.
    pub(super) fn start_sync(&mut self) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        #[cfg(test)]
        if super::Hooks::take(&self.hooks.fail_syncs) {
            self.synced.push(SyncDone {
                ticket,
                result: Err(io::Error::from_raw_os_error(libc::EIO)),
                took: Duration::ZERO,
            });
            return ticket;
        }
        if let Err(mpsc::SendError((_, file))) =
            self.log_sync.jobs.send((ticket, Arc::clone(&self.file)))
        {
            if !mem::replace(&mut self.sync_thread_gone, true) {
                tracing::error!(
                    "audit log sync thread is gone: syncing on the writer thread (each batch now costs both syncs in series)"
                );
            }
            let started = Instant::now();
            let result = file.sync_data();
            self.synced.push(SyncDone {
                ticket,
                result,
                took: started.elapsed(),
            });
        }
        ticket
    }

    /// The result of sync `ticket` if it is in.
    fn take_synced(&mut self, ticket: u64) -> Option<SyncDone> {
        let i = self.synced.iter().position(|d| d.ticket == ticket)?;
        Some(self.synced.swap_remove(i))
    }

    /// Waits for the result of sync `ticket`.
    pub(super) fn wait_synced(&mut self, ticket: u64) -> SyncDone {
        loop {
            if let Some(done) = self.take_synced(ticket) {
                return done;
            }
            if !self.queue.collect_synced(&mut self.synced) {
                return SyncDone {
                    ticket,
                    result: Err(io::Error::other("the audit log sync thread stopped")),
                    took: Duration::ZERO,
                };
            }
        }
    }
}
