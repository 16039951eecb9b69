//! The single-use checks' own connection ([`StateStore::first_use`]).
//!
//! The journal's calls run one at a time on their connection, and must (a poll reads what
//! the appends before it wrote). Single-use checks need no such order, but each is a
//! commit, and a commit waits for PostgreSQL's WAL flush: one at a time they would queue
//! behind each other (measured: under 1,300 checks a second) and behind the journal. So
//! they get a connection of their own, opened at the first check, and are committed in
//! groups: the checks that arrive while one statement runs are the next statement, one
//! transaction and one flush for all of them, each answered by its own row. Durability is
//! unchanged (`synchronous_commit` stays on). A connection that cannot be made fails the
//! checks at once for a second, so no queue builds up behind connection attempts to a
//! database that is away.
//!
//! [`StateStore::first_use`]: crate::store::StateStore::first_use

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::{Connector, db_error, pg};
use crate::store::StoreError;

/// How often (seconds, by the callers' `now`) expired single-use records are deleted;
/// they are refused as expired by then anyway.
const PRUNE_EVERY: u64 = 60;
/// After a failed connection attempt, checks fail at once for this long.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Where a check's answer goes: a thread blocked on it, or a task awaiting it.
enum Reply {
    Blocking(mpsc::SyncSender<Result<bool, StoreError>>),
    Async(tokio::sync::oneshot::Sender<Result<bool, StoreError>>),
}

impl Reply {
    fn send(self, answer: Result<bool, StoreError>) {
        // A caller that gave up waiting is not an error here.
        match self {
            Self::Blocking(tx) => drop(tx.send(answer)),
            Self::Async(tx) => drop(tx.send(answer)),
        }
    }
}

/// How long a caller waits for its answer before failing (a connection attempt and a
/// statement, each bounded, and a margin).
const ANSWER_WITHIN: Duration =
    Duration::from_secs(super::CONNECT_TIMEOUT.as_secs() + super::STATEMENT_TIMEOUT.as_secs() + 1);

/// One check, answered on `reply`.
struct Check {
    kind: String,
    key: [u8; 32],
    until: u64,
    now: u64,
    reply: Reply,
}

/// The checks' client thread.
pub(super) struct UseChecks {
    tx: tokio::sync::mpsc::UnboundedSender<Check>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl UseChecks {
    /// Starts the thread; it connects at the first check.
    pub(super) fn start(
        cfg: tokio_postgres::Config,
        connector: Connector,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| db_error(format!("could not start the single-use client: {e}")))?;
        let worker = std::thread::Builder::new()
            .name("broker-pg-single-use".into())
            .spawn(move || rt.block_on(serve(cfg, connector, rx)))
            .map_err(|e| db_error(format!("could not start the single-use client thread: {e}")))?;
        Ok(Self {
            tx,
            worker: Some(worker),
        })
    }

    /// Asks once; blocks for the answer (its group's statement).
    pub(super) fn first_use(
        &self,
        kind: &str,
        key: &[u8; 32],
        until: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.ask(kind, key, until, now, Reply::Blocking(reply))?;
        answer.recv_timeout(ANSWER_WITHIN).map_err(|_| late())?
    }

    /// Asks once; the answer, awaited without holding a thread.
    pub(super) fn first_use_async(
        &self,
        kind: &str,
        key: &[u8; 32],
        until: u64,
        now: u64,
    ) -> crate::store::FirstUseFuture {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let asked = self.ask(kind, key, until, now, Reply::Async(reply));
        Box::pin(async move {
            asked?;
            match tokio::time::timeout(ANSWER_WITHIN, answer).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) | Err(_) => Err(late()),
            }
        })
    }

    fn ask(
        &self,
        kind: &str,
        key: &[u8; 32],
        until: u64,
        now: u64,
        reply: Reply,
    ) -> Result<(), StoreError> {
        self.tx
            .send(Check {
                kind: kind.to_owned(),
                key: *key,
                until,
                now,
                reply,
            })
            .map_err(|_| db_error("the single-use client thread has stopped".into()))
    }
}

/// A check not answered in time (or its thread gone).
fn late() -> StoreError {
    db_error("the database did not answer the single-use check in time".into())
}

impl Drop for UseChecks {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        let (dead, _) = tokio::sync::mpsc::unbounded_channel();
        self.tx = dead;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Checks answered by one statement at most.
const MAX_BATCH: usize = 1024;

/// The thread's loop: group commit. The checks that arrived while the previous statement
/// ran are one statement and one commit (one WAL flush for all of them, instead of one
/// each).
async fn serve(
    cfg: tokio_postgres::Config,
    connector: Connector,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Check>,
) {
    let mut conn = Conn::default();
    let mut pruned_at = 0u64;
    let mut prunes = tokio::task::JoinSet::new();
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(check) => batch.push(check),
                Err(_) => break,
            }
        }
        let answers = match conn.session(&cfg, &connector).await {
            Ok(session) => {
                let now = batch.iter().map(|c| c.now).max().unwrap_or_default();
                if now >= pruned_at.saturating_add(PRUNE_EVERY) && prunes.is_empty() {
                    pruned_at = now;
                    let client = Arc::clone(&session.client);
                    prunes.spawn(async move {
                        if let Err(e) = prune(&client, now).await {
                            tracing::warn!(error = %e, "state store: expired single-use records not deleted; retried later");
                        }
                    });
                }
                first_uses(&session, &batch)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(why) => Err(why),
        };
        while prunes.try_join_next().is_some() {}
        for (i, check) in batch.drain(..).enumerate() {
            let answer = match &answers {
                Ok(firsts) => Ok(firsts[i]),
                Err(why) => Err(db_error(why.clone())),
            };
            check.reply.send(answer);
        }
    }
    while prunes.join_next().await.is_some() {}
}

/// The checks' statement, prepared once per connection (parsed and planned once, and
/// one round trip per batch instead of two).
const FIRST_USES: &str = "INSERT INTO broker_single_use (kind, key, until)
     SELECT kind, key, until
       FROM unnest($1::text[], $2::bytea[], $3::bigint[]) AS t(kind, key, until)
      ORDER BY kind, key
     ON CONFLICT (kind, key) DO UPDATE SET until = EXCLUDED.until
     WHERE broker_single_use.until < $4
     RETURNING kind, key";

/// An open connection with its prepared statement.
#[derive(Clone)]
struct Session {
    client: Arc<tokio_postgres::Client>,
    first_uses: tokio_postgres::Statement,
}

/// The checks' connection, made again after it breaks.
#[derive(Default)]
struct Conn {
    session: Option<Session>,
    failed: Option<(Instant, String)>,
}

impl Conn {
    /// The open connection, or a new one; within [`RECONNECT_AFTER`] of a failed attempt,
    /// that attempt's error at once.
    async fn session(
        &mut self,
        cfg: &tokio_postgres::Config,
        connector: &Connector,
    ) -> Result<Session, String> {
        if let Some(s) = self.session.as_ref().filter(|s| !s.client.is_closed()) {
            return Ok(s.clone());
        }
        self.session = None;
        if let Some((at, why)) = &self.failed
            && at.elapsed() < RECONNECT_AFTER
        {
            return Err(why.clone());
        }
        let opened = async {
            let client = connector.connect(cfg).await?;
            let first_uses = client
                .prepare(FIRST_USES)
                .await
                .map_err(pg("could not prepare the single-use statement"))?;
            Ok::<_, StoreError>(Session {
                client: Arc::new(client),
                first_uses,
            })
        };
        match opened.await {
            Ok(s) => {
                self.session = Some(s.clone());
                self.failed = None;
                Ok(s)
            }
            Err(e) => {
                tracing::warn!(error = %e, "state store: the single-use connection failed");
                let why = e.to_string();
                self.failed = Some((Instant::now(), why.clone()));
                Err(why)
            }
        }
    }
}

/// Seconds as a `bigint` (dates past the year 292 billion are clamped).
fn sql_secs(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// One statement for `checks`, in one transaction: for each, whether it was first.
///
/// An insert that, on a live earlier use (`until` not before the oldest `now` of the
/// batch), changes nothing and returns no row. Concurrent inserts of one key wait for
/// each other on the primary key, so exactly one of them returns the row; rows are
/// inserted in key order, so that two replicas' batches lock them in the same order and
/// never deadlock. The same credential twice in one batch: the first may be first, the
/// second is a replay (a statement may not touch one row twice).
async fn first_uses(session: &Session, checks: &[Check]) -> Result<Vec<bool>, StoreError> {
    let mut seen = std::collections::HashSet::new();
    let mut candidate = Vec::with_capacity(checks.len());
    let (mut kinds, mut keys, mut untils) = (Vec::new(), Vec::new(), Vec::new());
    for c in checks {
        let new = seen.insert((c.kind.as_str(), c.key));
        candidate.push(new);
        if new {
            kinds.push(c.kind.as_str());
            keys.push(c.key.as_slice());
            untils.push(sql_secs(c.until));
        }
    }
    let now = checks.iter().map(|c| c.now).min().unwrap_or_default();
    let rows = session
        .client
        .query(
            &session.first_uses,
            &[&kinds, &keys, &untils, &sql_secs(now)],
        )
        .await
        .map_err(pg("could not record the use of a single-use credential"))?;
    let firsts: std::collections::HashSet<(String, Vec<u8>)> = rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
        .collect();
    Ok(checks
        .iter()
        .zip(candidate)
        .map(|(c, new)| new && firsts.contains(&(c.kind.clone(), c.key.to_vec())))
        .collect())
}

/// Rows one delete takes at most, so that a large backlog is never one long statement.
const PRUNE_BATCH: i64 = 10_000;

/// Deletes every record expired before `now`, in batches; returns how many.
async fn prune(client: &tokio_postgres::Client, now: u64) -> Result<u64, StoreError> {
    let mut deleted = 0;
    loop {
        let n = client
            .execute(
                "DELETE FROM broker_single_use WHERE ctid IN (
                     SELECT ctid FROM broker_single_use WHERE until < $1 LIMIT $2)",
                &[&sql_secs(now), &PRUNE_BATCH],
            )
            .await
            .map_err(pg("could not delete expired single-use records"))?;
        deleted += n;
        if n < PRUNE_BATCH as u64 {
            return Ok(deleted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::{migrate, test_options};
    use crate::store::testpg::TestPostgres;

    /// A check whose answer nobody waits for (the statement is called directly).
    fn check(kind: &str, key: u8, until: u64, now: u64) -> Check {
        Check {
            kind: kind.into(),
            key: [key; 32],
            until,
            now,
            reply: Reply::Blocking(mpsc::sync_channel(1).0),
        }
    }

    #[test]
    fn one_statement_answers_each_check_and_a_second_in_the_same_batch_is_a_replay() {
        let Some(pg) = TestPostgres::start() else {
            return;
        };
        migrate(&test_options(&pg)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let cfg = test_options(&pg).config().unwrap();
            let session = Conn::default()
                .session(&cfg, &Connector::Plain)
                .await
                .unwrap();
            let batch = [
                check("jwt", 1, 100, 10),
                check("jwt", 2, 100, 10),
                check("jwt", 1, 100, 10),
                check("dpop", 1, 100, 10),
            ];
            assert_eq!(
                first_uses(&session, &batch).await.unwrap(),
                [true, true, false, true]
            );
            let batch = [
                check("jwt", 2, 100, 11),
                check("jwt", 3, 100, 11),
                check("jwt", 1, 300, 101),
            ];
            assert_eq!(
                first_uses(&session, &batch).await.unwrap(),
                [false, true, false],
                "the oldest `now` of a batch decides what has expired"
            );
            let batch = [check("jwt", 1, 300, 101)];
            assert_eq!(first_uses(&session, &batch).await.unwrap(), [true]);
            assert_eq!(
                prune(&session.client, 200).await.unwrap(),
                3,
                "jwt 2, jwt 3, dpop 1"
            );
        });
    }
}
