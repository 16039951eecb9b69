//! The PostgreSQL [`StateStore`]: the journal as the `broker_events` table, so that
//! several broker replicas can share one state.
//!
//! Each change is one row with a monotonic `id`. Appends take the table's write lock
//! (`LOCK TABLE … IN EXCLUSIVE MODE`, readers are not blocked) and number the row
//! `max(id) + 1` inside that transaction, so ids are gap-free and become visible in
//! commit order: a reader that remembers "the last id I applied" can never skip one (a
//! sequence would hand out ids that commit out of order). Every append also sends
//! `NOTIFY broker_events, '<id>'`, the wake-up for replicas that follow the table.
//!
//! The schema is created and migrated by the broker itself ([`migrate`], also run on
//! connect), versioned in `broker_schema_migrations`, under an advisory lock so that two
//! replicas starting together migrate once.
//!
//! The store interface is synchronous (the embedded file store syncs inline too), so the
//! database client runs on a thread of its own with a current-thread runtime; callers
//! block for one round trip. The connection is re-established on the next call after it
//! breaks, and a call that fails is an error for its caller (the change is not applied),
//! never a silent loss.
//!
//! The password never appears in the URL, in errors or in logs: it comes from a file or
//! an environment variable ([`PostgresOptions::password`]).

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::NoTls;
use zeroize::Zeroizing;

use super::{Event, Polled, StateChange, StateStore, StoreError, zip_events};

mod single_use;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one statement may take before the call fails.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Advisory-lock key held while migrating (any constant unique to the broker).
const MIGRATION_LOCK: i64 = 0x6a69_745f_6272_6b72; // "jit_brkr"

/// The schema, one step per version, applied in order and recorded.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE broker_events (
            id          bigint      PRIMARY KEY,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            change      jsonb       NOT NULL
        )",
    ),
    (
        2,
        "CREATE TABLE broker_audit_checkpoints (
            replica     text        NOT NULL,
            n           bigint      NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            checkpoint  jsonb       NOT NULL,
            PRIMARY KEY (replica, n)
        )",
    ),
    (
        3,
        "CREATE TABLE broker_usage (
            replica    text        PRIMARY KEY,
            updated_at timestamptz NOT NULL DEFAULT now(),
            snapshot   jsonb       NOT NULL
        )",
    ),
    (
        4,
        "CREATE TABLE broker_single_use (
            kind  text   NOT NULL,
            key   bytea  NOT NULL,
            until bigint NOT NULL,
            PRIMARY KEY (kind, key)
        );
        CREATE INDEX broker_single_use_until ON broker_single_use (until)",
    ),
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// TLS to the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgTls {
    /// Plain TCP or a unix socket (only for loopback or a socket directory).
    Disable,
    /// TLS, with the server certificate verified against `ca_file` and its name against
    /// the host (libpq's `verify-full`).
    VerifyFull {
        /// PEM bundle of the CAs that may sign the database's certificate.
        ca_file: PathBuf,
    },
}

/// Where the database is and how to reach it.
#[derive(Clone)]
pub struct PostgresOptions {
    /// A libpq URL or key/value string without a password.
    pub url: String,
    /// The password (from `password_file` or `password_env`), if any.
    pub password: Option<Zeroizing<String>>,
    /// TLS mode.
    pub tls: PgTls,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("tls", &self.tls)
            .finish()
    }
}

impl PostgresOptions {
    /// Parses the URL; a password inside it is refused (it would end up in config files,
    /// process listings and logs).
    pub fn config(&self) -> Result<tokio_postgres::Config, StoreError> {
        let mut cfg: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| db_error(format!("store.url is not a PostgreSQL URL: {e}")))?;
        if cfg.get_password().is_some() {
            return Err(db_error(
                "store.url must not contain a password: use store.password_file or store.password_env"
                    .into(),
            ));
        }
        if let Some(p) = &self.password {
            cfg.password(p.as_bytes());
        }
        cfg.connect_timeout(CONNECT_TIMEOUT);
        if cfg.get_application_name().is_none() {
            cfg.application_name("jit-broker");
        }
        Ok(cfg)
    }
}

fn db_error(message: String) -> StoreError {
    StoreError::Database { message }
}

fn pg_error(what: &str, e: &tokio_postgres::Error) -> StoreError {
    // tokio-postgres errors name the failing statement's cause, never the password.
    let detail = e
        .as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_owned());
    db_error(format!("{what}: {detail}"))
}

enum Command {
    Append(
        Vec<StateChange>,
        mpsc::SyncSender<Result<Vec<u64>, StoreError>>,
    ),
    Load(mpsc::SyncSender<Result<Vec<Event>, StoreError>>),
    Poll(mpsc::SyncSender<Result<Polled, StoreError>>),
    Checkpoint(
        crate::audit::Checkpoint,
        mpsc::SyncSender<Result<(), StoreError>>,
    ),
    Checkpoints(mpsc::SyncSender<Result<Vec<crate::audit::Checkpoint>, StoreError>>),
    LastCheckpoint(
        String,
        mpsc::SyncSender<Result<Option<crate::audit::Checkpoint>, StoreError>>,
    ),
    PutUsage(
        String,
        serde_json::Value,
        mpsc::SyncSender<Result<(), StoreError>>,
    ),
    Usage(mpsc::SyncSender<Result<Vec<(String, serde_json::Value)>, StoreError>>),
    /// A checked append: lock, send the caller what other handles appended since its
    /// last poll, wait for its decision, append that, commit.
    Decide {
        after: u64,
        fresh: mpsc::SyncSender<Result<Vec<StateChange>, StoreError>>,
        decision: tokio::sync::oneshot::Receiver<Vec<StateChange>>,
        done: mpsc::SyncSender<Result<Vec<u64>, StoreError>>,
    },
}

/// What the client thread remembers between calls: the newest event id this handle has
/// seen (loaded, polled or appended), and the ids of its own appends not yet passed by a
/// poll. Commands run one at a time on that thread, so an append is recorded before any
/// later poll reads the table.
#[derive(Default)]
struct Cursor {
    seen: u64,
    own: std::collections::BTreeSet<u64>,
}

/// The PostgreSQL journal. Cheap to share (`Arc`); dropping the last handle stops its
/// client thread.
pub struct PostgresStore {
    tx: Mutex<mpsc::Sender<Command>>,
    worker: Option<std::thread::JoinHandle<()>>,
    /// Woken by `NOTIFY broker_events` (see [`super::listen`]).
    wake: Arc<tokio::sync::Notify>,
    /// Stops the listener thread.
    stop_listener: Option<tokio::sync::oneshot::Sender<()>>,
    listener: Option<std::thread::JoinHandle<()>>,
    /// Single-use checks, on their own connection.
    uses: single_use::UseChecks,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, migrates the schema to [`SCHEMA_VERSION`], and starts the client
    /// thread. Fails if the database cannot be reached or migrated.
    pub fn connect(opts: &PostgresOptions) -> Result<Self, StoreError> {
        let cfg = opts.config()?;
        let connector = Connector::new(&opts.tls)?;
        let (tx, rx) = mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), StoreError>>(1);
        // The client runs on its own thread (with its own runtime), so that connecting
        // works from inside or outside an async context.
        let worker = std::thread::Builder::new()
            .name("broker-pg-store".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(db_error(format!(
                            "could not start the database client: {e}"
                        ))));
                        return;
                    }
                };
                let first = rt.block_on(async {
                    let client = connector.connect(&cfg).await?;
                    migrate_client(&client).await?;
                    Ok::<_, StoreError>(client)
                });
                let mut client = match first {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let mut cursor = Cursor::default();
                while let Ok(cmd) = rx.recv() {
                    rt.block_on(async {
                        if client.is_closed() {
                            match connector.connect(&cfg).await {
                                Ok(c) => client = c,
                                Err(e) => {
                                    tracing::warn!(error = %e, "state store: reconnect failed");
                                }
                            }
                        }
                        match cmd {
                            Command::Append(changes, reply) => {
                                let r = append(&mut client, &changes).await;
                                if let Ok(ids) = &r {
                                    cursor.own.extend(ids);
                                }
                                let _ = reply.send(r);
                            }
                            Command::Decide {
                                after,
                                fresh,
                                decision,
                                done,
                            } => {
                                let r = decide(&mut client, after, &fresh, decision).await;
                                if let Ok(ids) = &r {
                                    cursor.own.extend(ids);
                                }
                                let _ = done.send(r);
                            }
                            Command::Checkpoint(cp, reply) => {
                                let _ = reply.send(insert_checkpoint(&client, &cp).await);
                            }
                            Command::Checkpoints(reply) => {
                                let _ = reply.send(read_checkpoints(&client, None).await);
                            }
                            Command::LastCheckpoint(replica, reply) => {
                                let r = read_checkpoints(&client, Some(&replica)).await;
                                let _ = reply.send(r.map(|mut v| v.pop()));
                            }
                            Command::PutUsage(replica, snapshot, reply) => {
                                let _ = reply.send(put_usage(&client, &replica, &snapshot).await);
                            }
                            Command::Usage(reply) => {
                                let _ = reply.send(read_usage(&client).await);
                            }
                            Command::Load(reply) => {
                                let r = load(&client, 0).await.inspect(|events| {
                                    cursor.seen = events.last().map_or(0, |e| e.id);
                                    cursor.own.clear();
                                });
                                let _ = reply.send(r);
                            }
                            Command::Poll(reply) => {
                                let r = load(&client, cursor.seen).await.map(|events| {
                                    let mut out = Vec::new();
                                    for e in events {
                                        cursor.seen = e.id;
                                        if !cursor.own.remove(&e.id) {
                                            out.push(e);
                                        }
                                    }
                                    Polled {
                                        events: out,
                                        through: cursor.seen,
                                    }
                                });
                                let _ = reply.send(r);
                            }
                        }
                    });
                }
            })
            .map_err(|e| db_error(format!("could not start the database client thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| db_error("the database client thread stopped".into()))??;
        let wake = Arc::new(tokio::sync::Notify::new());
        let (stop_listener, stop_rx) = tokio::sync::oneshot::channel();
        let listener = {
            let (cfg, connector, wake) = (
                opts.config()?,
                Connector::new(&opts.tls)?,
                Arc::clone(&wake),
            );
            std::thread::Builder::new()
                .name("broker-pg-listen".into())
                .spawn(move || {
                    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    else {
                        tracing::error!("state store: could not start the listener; polling only");
                        return;
                    };
                    let connector = &connector;
                    let cfg = &cfg;
                    let w = Arc::clone(&wake);
                    rt.block_on(super::listen::run(
                        move || connector.listen(cfg, Arc::clone(&w)),
                        wake,
                        stop_rx,
                    ));
                })
                .map_err(|e| {
                    db_error(format!("could not start the database listener thread: {e}"))
                })?
        };
        let uses = single_use::UseChecks::start(opts.config()?, Connector::new(&opts.tls)?)?;
        Ok(Self {
            tx: Mutex::new(tx),
            worker: Some(worker),
            wake,
            stop_listener: Some(stop_listener),
            listener: Some(listener),
            uses,
        })
    }

    fn call<T>(
        &self,
        make: impl FnOnce(mpsc::SyncSender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(make(reply_tx))
            .map_err(|_| db_error("the database client thread has stopped".into()))?;
        reply_rx
            .recv_timeout(CONNECT_TIMEOUT + STATEMENT_TIMEOUT + Duration::from_secs(1))
            .map_err(|_| db_error("the database did not answer in time".into()))?
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        let (dead, _) = mpsc::channel();
        *self.tx.lock().unwrap_or_else(|e| e.into_inner()) = dead;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        if let Some(stop) = self.stop_listener.take() {
            let _ = stop.send(());
        }
        if let Some(l) = self.listener.take() {
            let _ = l.join();
        }
    }
}

impl StateStore for PostgresStore {
    /// One transaction: every replica sees all of `changes` or none.
    fn append_all(&self, changes: &[StateChange]) -> Result<Vec<u64>, StoreError> {
        let changes = changes.to_vec();
        self.call(|reply| Command::Append(changes, reply))
    }

    fn load(&self) -> Result<Vec<Event>, StoreError> {
        self.call(Command::Load)
    }

    /// The check runs while this transaction holds the journal's lock, against every
    /// change other replicas committed before it: no append can come between them.
    fn append_decided(
        &self,
        after: u64,
        decide: &mut dyn FnMut(&[StateChange]) -> Vec<StateChange>,
    ) -> Result<Vec<Event>, StoreError> {
        let (fresh_tx, fresh_rx) = mpsc::sync_channel(1);
        let (decision_tx, decision_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Command::Decide {
                after,
                fresh: fresh_tx,
                decision: decision_rx,
                done: done_tx,
            })
            .map_err(|_| db_error("the database client thread has stopped".into()))?;
        let wait = CONNECT_TIMEOUT + STATEMENT_TIMEOUT + Duration::from_secs(1);
        let fresh = fresh_rx
            .recv_timeout(wait)
            .map_err(|_| db_error("the database did not answer in time".into()))??;
        let changes = decide(&fresh);
        // If the thread gave up waiting, it rolled back and `done` says so.
        let _ = decision_tx.send(changes.clone());
        let ids = done_rx
            .recv_timeout(wait)
            .map_err(|_| db_error("the database did not answer in time".into()))??;
        Ok(zip_events(ids, changes))
    }

    fn shared(&self) -> bool {
        true
    }

    fn record_checkpoint(&self, checkpoint: &crate::audit::Checkpoint) -> Result<(), StoreError> {
        let cp = checkpoint.clone();
        self.call(|reply| Command::Checkpoint(cp, reply))
    }

    fn checkpoints(&self) -> Result<Vec<crate::audit::Checkpoint>, StoreError> {
        self.call(Command::Checkpoints)
    }

    /// One row, by the primary key: start-up does not read the whole table.
    fn last_checkpoint(
        &self,
        replica: &str,
    ) -> Result<Option<crate::audit::Checkpoint>, StoreError> {
        let replica = replica.to_owned();
        self.call(|reply| Command::LastCheckpoint(replica, reply))
    }

    fn put_usage(&self, replica: &str, snapshot: &serde_json::Value) -> Result<(), StoreError> {
        let (replica, snapshot) = (replica.to_owned(), snapshot.clone());
        self.call(|reply| Command::PutUsage(replica, snapshot, reply))
    }

    fn usage(&self) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        self.call(Command::Usage)
    }

    fn wakeup(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(Arc::clone(&self.wake))
    }

    /// On a connection of its own, committed in groups ([`single_use`]).
    fn first_use(
        &self,
        kind: &str,
        key: &[u8; 32],
        until: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.uses.first_use(kind, key, until, now)
    }

    fn first_use_async(
        &self,
        kind: &str,
        key: &[u8; 32],
        until: u64,
        now: u64,
    ) -> Option<super::FirstUseFuture> {
        Some(self.uses.first_use_async(kind, key, until, now))
    }

    fn poll(&self) -> Result<Polled, StoreError> {
        self.call(Command::Poll)
    }
}

/// Connects once and migrates the schema (`broker store migrate`); returns the version
/// the database was at before and the one it is at now.
pub fn migrate(opts: &PostgresOptions) -> Result<(i32, i32), StoreError> {
    let cfg = opts.config()?;
    let connector = Connector::new(&opts.tls)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| db_error(format!("could not start the database client: {e}")))?;
    rt.block_on(async {
        let client = connector.connect(&cfg).await?;
        let before = migrate_client(&client).await?;
        Ok((before, SCHEMA_VERSION))
    })
}

/// How connections are made: plain, or rustls with the configured CAs.
#[derive(Clone)]
enum Connector {
    Plain,
    Tls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl Connector {
    fn new(tls: &PgTls) -> Result<Self, StoreError> {
        match tls {
            PgTls::Disable => Ok(Self::Plain),
            PgTls::VerifyFull { ca_file } => {
                use rustls_pki_types::CertificateDer;
                use rustls_pki_types::pem::PemObject;
                let bad = |e: String| db_error(format!("store.ca_file {}: {e}", ca_file.display()));
                let mut roots = rustls::RootCertStore::empty();
                for cert in
                    CertificateDer::pem_file_iter(ca_file).map_err(|e| bad(e.to_string()))?
                {
                    roots
                        .add(cert.map_err(|e| bad(e.to_string()))?)
                        .map_err(|e| bad(e.to_string()))?;
                }
                let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| bad(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
                Ok(Self::Tls(tokio_postgres_rustls::MakeRustlsConnect::new(
                    config,
                )))
            }
        }
    }

    async fn connect(
        &self,
        cfg: &tokio_postgres::Config,
    ) -> Result<tokio_postgres::Client, StoreError> {
        let connect_failed = |e| pg_error("could not connect to the state database", &e);
        let client = match self {
            Self::Plain => {
                let (client, conn) = cfg.connect(NoTls).await.map_err(connect_failed)?;
                drive(conn);
                client
            }
            Self::Tls(tls) => {
                let (client, conn) = cfg.connect(tls.clone()).await.map_err(connect_failed)?;
                drive(conn);
                client
            }
        };
        client
            .batch_execute(&format!(
                "SET statement_timeout = {}",
                STATEMENT_TIMEOUT.as_millis()
            ))
            .await
            .map_err(|e| pg_error("could not set the statement timeout", &e))?;
        Ok(client)
    }
}

impl Connector {
    /// A connection that `LISTEN`s on the journal's channel, its I/O run by
    /// [`super::listen::pump`] (which wakes `wake` on each notification).
    async fn listen(
        &self,
        cfg: &tokio_postgres::Config,
        wake: Arc<tokio::sync::Notify>,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
        ),
        StoreError,
    > {
        let connect_failed = |e| pg_error("could not connect to the state database", &e);
        let (client, pump) = match self {
            Self::Plain => {
                let (client, conn) = cfg.connect(NoTls).await.map_err(connect_failed)?;
                (client, tokio::spawn(super::listen::pump(conn, wake)))
            }
            Self::Tls(tls) => {
                let (client, conn) = cfg.connect(tls.clone()).await.map_err(connect_failed)?;
                (client, tokio::spawn(super::listen::pump(conn, wake)))
            }
        };
        client
            .batch_execute(&format!("LISTEN {}", super::listen::CHANNEL))
            .await
            .map_err(|e| pg_error("could not listen for changes", &e))?;
        Ok((client, pump))
    }
}

/// Runs a connection's I/O until it closes (the `Client` talks to it).
fn drive(
    conn: impl std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
) {
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "state database connection closed");
        }
    });
}

/// Applies every migration newer than the database's version, in one transaction under
/// an advisory lock; returns the version found.
async fn migrate_client(client: &tokio_postgres::Client) -> Result<i32, StoreError> {
    let e = |what: &'static str| move |err: tokio_postgres::Error| pg_error(what, &err);
    client
        .batch_execute(&format!(
            "BEGIN;
             SELECT pg_advisory_xact_lock({MIGRATION_LOCK});
             CREATE TABLE IF NOT EXISTS broker_schema_migrations (
                 version    integer     PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .await
        .map_err(e("could not lock the schema for migration"))?;
    let result = async {
        let row = client
            .query_one(
                "SELECT coalesce(max(version), 0) FROM broker_schema_migrations",
                &[],
            )
            .await
            .map_err(e("could not read the schema version"))?;
        let before: i32 = row.get(0);
        if before > SCHEMA_VERSION {
            return Err(db_error(format!(
                "the state database is at schema version {before}, newer than this broker \
                 ({SCHEMA_VERSION}): upgrade the broker"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > before) {
            client
                .batch_execute(sql)
                .await
                .map_err(e("could not apply a schema migration"))?;
            client
                .execute(
                    "INSERT INTO broker_schema_migrations (version) VALUES ($1)",
                    &[version],
                )
                .await
                .map_err(e("could not record a schema migration"))?;
            tracing::info!(version, "state database migrated");
        }
        Ok(before)
    }
    .await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    client
        .batch_execute(end)
        .await
        .map_err(e("could not commit the schema migration"))?;
    result
}

async fn append(
    client: &mut tokio_postgres::Client,
    changes: &[StateChange],
) -> Result<Vec<u64>, StoreError> {
    let tx = begin_locked(client).await?;
    let ids = insert(&tx, changes).await?;
    commit(tx).await?;
    Ok(ids)
}

fn pg(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |err| pg_error(what, &err)
}

/// Begins a transaction holding the journal's lock: one writer at a time, so ids are
/// assigned and become visible in commit order.
async fn begin_locked(
    client: &mut tokio_postgres::Client,
) -> Result<tokio_postgres::Transaction<'_>, StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(pg("could not begin a state transaction"))?;
    tx.batch_execute("LOCK TABLE broker_events IN EXCLUSIVE MODE")
        .await
        .map_err(pg("could not lock the event table"))?;
    Ok(tx)
}

async fn insert(
    tx: &tokio_postgres::Transaction<'_>,
    changes: &[StateChange],
) -> Result<Vec<u64>, StoreError> {
    let mut ids = Vec::with_capacity(changes.len());
    for change in changes {
        let json = serde_json::to_value(change)
            .map_err(|err| db_error(format!("could not encode a state change: {err}")))?;
        let row = tx
            .query_one(
                "INSERT INTO broker_events (id, change)
                 SELECT coalesce(max(id), 0) + 1, $1 FROM broker_events
                 RETURNING id",
                &[&json],
            )
            .await
            .map_err(pg("could not append a state change"))?;
        let id: i64 = row.get(0);
        ids.push(u64::try_from(id).unwrap_or(0));
    }
    if let Some(last) = ids.last() {
        tx.execute(
            "SELECT pg_notify('broker_events', $1)",
            &[&last.to_string()],
        )
        .await
        .map_err(pg("could not notify replicas"))?;
    }
    Ok(ids)
}

async fn commit(tx: tokio_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.commit()
        .await
        .map_err(pg("could not commit a state change"))
}

/// How long a checked append may hold the journal's lock waiting for its caller.
const DECIDE_TIMEOUT: Duration = Duration::from_secs(5);

async fn decide(
    client: &mut tokio_postgres::Client,
    after: u64,
    fresh: &mpsc::SyncSender<Result<Vec<StateChange>, StoreError>>,
    decision: tokio::sync::oneshot::Receiver<Vec<StateChange>>,
) -> Result<Vec<u64>, StoreError> {
    let tx = match begin_locked(client).await {
        Ok(tx) => tx,
        Err(e) => {
            let _ = fresh.send(Err(db_error(e.to_string())));
            return Err(e);
        }
    };
    // Everything committed after `after` before the lock was granted.
    let others = match load(&tx, after).await {
        Ok(events) => events.into_iter().map(|e| e.change).collect(),
        Err(e) => {
            let _ = fresh.send(Err(db_error(e.to_string())));
            return Err(e);
        }
    };
    let _ = fresh.send(Ok(others));
    let changes = tokio::time::timeout(DECIDE_TIMEOUT, decision)
        .await
        .map_err(|_| db_error("a checked append was not decided in time".into()))?
        .map_err(|_| db_error("a checked append was abandoned".into()))?;
    if changes.is_empty() {
        // Dropping the transaction rolls it back.
        return Ok(Vec::new());
    }
    let ids = insert(&tx, &changes).await?;
    commit(tx).await?;
    Ok(ids)
}

async fn insert_checkpoint(
    client: &tokio_postgres::Client,
    cp: &crate::audit::Checkpoint,
) -> Result<(), StoreError> {
    let json = serde_json::to_value(cp)
        .map_err(|err| db_error(format!("could not encode a checkpoint: {err}")))?;
    let n = i64::try_from(cp.n).unwrap_or(i64::MAX);
    client
        .execute(
            "INSERT INTO broker_audit_checkpoints (replica, n, checkpoint) VALUES ($1, $2, $3)",
            &[&cp.replica, &n, &json],
        )
        .await
        .map_err(pg("could not record an audit checkpoint"))?;
    Ok(())
}

async fn put_usage(
    client: &tokio_postgres::Client,
    replica: &str,
    snapshot: &serde_json::Value,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO broker_usage (replica, snapshot) VALUES ($1, $2)
             ON CONFLICT (replica) DO UPDATE SET snapshot = $2, updated_at = now()",
            &[&replica, snapshot],
        )
        .await
        .map_err(pg("could not write the usage snapshot"))?;
    Ok(())
}

async fn read_usage(
    client: &tokio_postgres::Client,
) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
    let rows = client
        .query(
            "SELECT replica, snapshot FROM broker_usage ORDER BY replica",
            &[],
        )
        .await
        .map_err(pg("could not read the usage snapshots"))?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Every checkpoint by replica and number, or only `replica`'s newest one.
async fn read_checkpoints(
    client: &tokio_postgres::Client,
    newest_of: Option<&str>,
) -> Result<Vec<crate::audit::Checkpoint>, StoreError> {
    let rows = match newest_of {
        None => {
            client
                .query(
                    "SELECT checkpoint FROM broker_audit_checkpoints ORDER BY replica, n",
                    &[],
                )
                .await
        }
        Some(replica) => {
            client
                .query(
                    "SELECT checkpoint FROM broker_audit_checkpoints WHERE replica = $1
                     ORDER BY n DESC LIMIT 1",
                    &[&replica],
                )
                .await
        }
    }
    .map_err(pg("could not read the audit checkpoints"))?;
    rows.into_iter()
        .map(|row| {
            let json: serde_json::Value = row.get(0);
            serde_json::from_value(json)
                .map_err(|err| db_error(format!("an audit checkpoint is not readable: {err}")))
        })
        .collect()
}

async fn load(
    client: &impl tokio_postgres::GenericClient,
    after: u64,
) -> Result<Vec<Event>, StoreError> {
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let rows = client
        .query(
            "SELECT id, change FROM broker_events WHERE id > $1 ORDER BY id",
            &[&after],
        )
        .await
        .map_err(|e| pg_error("could not read the state journal", &e))?;
    rows.into_iter()
        .map(|row| {
            let id: i64 = row.get(0);
            let json: serde_json::Value = row.get(1);
            let change = serde_json::from_value(json).map_err(|err| {
                db_error(format!("state event {id} is not a readable change: {err}"))
            })?;
            Ok(Event {
                id: u64::try_from(id).unwrap_or(0),
                change,
            })
        })
        .collect()
}

/// Options for a test server started by [`crate::store::testpg::TestPostgres`].
#[cfg(test)]
pub(crate) fn test_options(pg: &crate::store::testpg::TestPostgres) -> PostgresOptions {
    PostgresOptions {
        url: pg.url(),
        password: None,
        tls: PgTls::Disable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testpg::TestPostgres;

    use super::test_options as options;

    /// A distinct change for test `i`.
    fn enable(i: u64) -> StateChange {
        StateChange::Enable {
            identity: format!("x{i}"),
            at: i,
            actor: "a".into(),
        }
    }

    #[test]
    fn meets_the_store_contract() {
        let Some(pg) = TestPostgres::start() else {
            return;
        };
        let opts = options(&pg);
        super::super::contract::run(|| Box::new(PostgresStore::connect(&opts).unwrap()));
    }

    #[test]
    fn two_handles_see_one_journal_with_gap_free_ids() {
        let Some(pg) = TestPostgres::start() else {
            return;
        };
        let a = PostgresStore::connect(&options(&pg)).unwrap();
        let b = PostgresStore::connect(&options(&pg)).unwrap();
        let change = enable;
        let ids: Vec<u64> = (0..10)
            .map(|i| {
                let store = if i % 2 == 0 { &a } else { &b };
                store.append(&change(i)).unwrap()
            })
            .collect();
        assert_eq!(ids, (1..=10).collect::<Vec<_>>());
        assert_eq!(a.load().unwrap(), b.load().unwrap());
        assert_eq!(a.load().unwrap().len(), 10);
    }

    #[test]
    fn poll_returns_what_other_handles_appended_once_and_never_our_own() {
        let Some(pg) = TestPostgres::start() else {
            return;
        };
        let a = PostgresStore::connect(&options(&pg)).unwrap();
        let b = PostgresStore::connect(&options(&pg)).unwrap();
        assert!(a.shared());
        let change = enable;
        let ev = |id: u64| Event {
            id,
            change: change(id - 1),
        };
        let polled = |events: Vec<Event>, through: u64| Polled { events, through };
        a.append(&change(0)).unwrap();
        assert_eq!(b.load().unwrap(), vec![ev(1)]);
        assert_eq!(a.load().unwrap(), vec![ev(1)]);
        b.append(&change(1)).unwrap();
        a.append(&change(2)).unwrap();
        b.append(&change(3)).unwrap();
        assert_eq!(a.poll().unwrap(), polled(vec![ev(2), ev(4)], 4));
        assert_eq!(
            a.poll().unwrap(),
            polled(vec![], 4),
            "each change is returned once"
        );
        assert_eq!(b.poll().unwrap(), polled(vec![ev(3)], 4));
        assert_eq!(b.poll().unwrap(), polled(vec![], 4));
    }

    #[test]
    fn a_checked_append_decides_against_every_change_committed_before_it() {
        let Some(pg) = TestPostgres::start() else {
            return;
        };
        let a = PostgresStore::connect(&options(&pg)).unwrap();
        let b = PostgresStore::connect(&options(&pg)).unwrap();
        let change = enable;
        assert_eq!(a.load().unwrap(), vec![]);
        b.append(&change(1)).unwrap();
        a.append(&change(2)).unwrap();
        // The caller has applied nothing past event 0: the decision sees both changes.
        let mut seen = Vec::new();
        a.append_decided(0, &mut |fresh| {
            seen = fresh.to_vec();
            Vec::new()
        })
        .unwrap();
        assert_eq!(seen, vec![change(1), change(2)]);
        // Past event 1: only what came after.
        let appended = a
            .append_decided(1, &mut |fresh| {
                seen = fresh.to_vec();
                vec![change(3)]
            })
            .unwrap();
        assert_eq!(seen, vec![change(2)]);
        assert_eq!(
            appended,
            vec![Event {
                id: 3,
                change: change(3)
            }]
        );
        // The fresh change is still delivered by poll (every consumer must apply it);
        // the decided one is a's own and is not.
        assert_eq!(
            a.poll().unwrap().events,
            vec![Event {
                id: 1,
                change: change(1)
            }]
        );
        // An empty decision appends nothing.
        assert_eq!(b.append_decided(3, &mut |_| Vec::new()).unwrap(), vec![]);
        assert_eq!(b.load().unwrap().len(), 3);
        // Two handles deciding at once are serialised: the second sees the first.
        let b = std::sync::Arc::new(b);
        let racer = {
            let b = b.clone();
            std::thread::spawn(move || {
                let mut saw = Vec::new();
                b.append_decided(3, &mut |fresh| {
                    saw = fresh.to_vec();
                    std::thread::sleep(Duration::from_millis(200));
                    vec![change(4)]
                })
                .unwrap();
                saw
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let mut a_saw = Vec::new();
        a.append_decided(3, &mut |fresh| {
            a_saw = fresh.to_vec();
            vec![change(5)]
        })
        .unwrap();
        let b_saw = racer.join().unwrap();
        assert!(b_saw.is_empty(), "{b_saw:?}");
        assert_eq!(a_saw, vec![change(4)], "a decided after b committed");
        assert_eq!(a.load().unwrap().len(), 5);
    }

    #[test]
    fn another_handles_append_wakes_this_one_also_after_a_restart() {
        let Some(mut pg) = TestPostgres::start() else {
            return;
        };
        let a = PostgresStore::connect(&options(&pg)).unwrap();
        let b = PostgresStore::connect(&options(&pg)).unwrap();
        let wake = b.wakeup().expect("the PostgreSQL store has a wake-up");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let woken = |wake: &tokio::sync::Notify| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), wake.notified())
                    .await
                    .is_ok()
            })
        };
        // The wake-up on (re)connecting, then one per append.
        assert!(woken(&wake), "woken when the listener connects");
        let c = StateChange::Enable {
            identity: "x".into(),
            at: 1,
            actor: "a".into(),
        };
        a.append(&c).unwrap();
        assert!(woken(&wake), "woken by a's append");
        // The listener reconnects after a database restart and wakes once more.
        pg.restart();
        assert!(woken(&wake), "woken after the listener reconnected");
        let mut appended = false;
        for _ in 0..3 {
            appended = a.append(&c).is_ok();
            if appended {
                break;
            }
        }
        assert!(appended);
        assert!(woken(&wake), "woken by an append after the restart");
    }

    #[test]
    fn usage_snapshots_are_one_row_per_replica() {
        let Some(pg) = TestPostgres::start() else {
            return;
        };
        let a = PostgresStore::connect(&options(&pg)).unwrap();
        a.put_usage("a", &serde_json::json!({"x": 1})).unwrap();
        a.put_usage("b", &serde_json::json!({"y": 2})).unwrap();
        a.put_usage("a", &serde_json::json!({"x": 3})).unwrap();
        assert_eq!(
            a.usage().unwrap(),
            vec![
                ("a".into(), serde_json::json!({"x": 3})),
                ("b".into(), serde_json::json!({"y": 2}))
            ]
        );
    }

    /// Rows of `broker_single_use`, read over a connection of the test's own.
    fn single_use_rows(pg: &TestPostgres) -> i64 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, conn) = options(pg).config().unwrap().connect(NoTls).await.unwrap();
            tokio::spawn(conn);
            let row = client
                .query_one("SELECT count(*) FROM broker_single_use", &[])
                .await
                .unwrap();
            row.get::<_, i64>(0)
        })
    }

    #[test]
    fn a_single_use_is_first_once_across_handles_until_it_expires() {
        let Some(pg) = TestPostgres::start() else {
            return;
        };
        let a = PostgresStore::connect(&options(&pg)).unwrap();
        let b = PostgresStore::connect(&options(&pg)).unwrap();
        let k = [7u8; 32];
        assert!(a.first_use("jwt", &k, 100, 10).unwrap());
        assert!(
            !b.first_use("jwt", &k, 100, 20).unwrap(),
            "another handle sees it"
        );
        assert!(
            b.first_use("dpop", &k, 100, 20).unwrap(),
            "kinds are namespaces"
        );
        assert!(b.first_use("jwt", &[8u8; 32], 100, 20).unwrap());
        assert_eq!(single_use_rows(&pg), 3);
        // Each handle deletes expired records once a minute (by the callers' clock):
        // `a` now (at 100), which finds none, since `until` is inclusive.
        assert!(
            !a.first_use("jwt", &k, 100, 100).unwrap(),
            "`until` is inclusive"
        );
        assert_eq!(single_use_rows(&pg), 3);
        assert!(
            a.first_use("jwt", &k, 300, 101).unwrap(),
            "an expired use no longer counts"
        );
        // `b` at 102 deletes the `dpop` row and key 8's, not `k`'s (now until 300), beside
        // its check.
        assert!(!b.first_use("jwt", &k, 300, 102).unwrap());
        let start = std::time::Instant::now();
        while single_use_rows(&pg) != 1 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "expired records not deleted: {} rows",
                single_use_rows(&pg)
            );
            std::thread::sleep(Duration::from_millis(10));
        }

        // Racing first uses of the same keys from two replicas, four callers each, in
        // both orders (so that statements carry several keys, and the same key twice):
        // one wins each.
        let keys: Vec<[u8; 32]> = (0u8..200).map(|i| [i; 32]).collect();
        let race = |store: &PostgresStore, reverse: bool| {
            let mut order: Vec<&[u8; 32]> = keys.iter().collect();
            if reverse {
                order.reverse();
            }
            order
                .into_iter()
                .filter_map(|key| {
                    store
                        .first_use("race", key, 1_000, 200)
                        .unwrap()
                        .then_some(key[0])
                })
                .collect::<Vec<u8>>()
        };
        let mut wins: Vec<u8> = std::thread::scope(|s| {
            let callers: Vec<_> = [&a, &b]
                .into_iter()
                .flat_map(|store| [false, true, false, true].map(|rev| (store, rev)))
                .map(|(store, rev)| s.spawn(move || race(store, rev)))
                .collect();
            callers
                .into_iter()
                .flat_map(|c| c.join().unwrap())
                .collect()
        });
        wins.sort_unstable();
        assert_eq!(
            wins,
            (0u8..200).collect::<Vec<u8>>(),
            "each key won exactly once"
        );
    }

    #[test]
    fn migration_is_versioned_and_idempotent() {
        let Some(pg) = TestPostgres::start() else {
            return;
        };
        assert_eq!(migrate(&options(&pg)).unwrap(), (0, SCHEMA_VERSION));
        assert_eq!(
            migrate(&options(&pg)).unwrap(),
            (SCHEMA_VERSION, SCHEMA_VERSION)
        );
    }

    #[test]
    fn a_password_in_the_url_is_refused_and_never_echoed() {
        let opts = PostgresOptions {
            url: "postgres://broker:hunter2@127.0.0.1/broker".into(),
            password: None,
            tls: PgTls::Disable,
        };
        let err = PostgresStore::connect(&opts).unwrap_err().to_string();
        assert!(err.contains("password_file"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let opts = PostgresOptions {
            url: "postgres://broker@127.0.0.1/broker".into(),
            password: Some(Zeroizing::new("hunter2".into())),
            tls: PgTls::Disable,
        };
        assert!(!format!("{opts:?}").contains("hunter2"));
    }

    #[test]
    fn an_unreachable_database_is_an_error_not_a_hang() {
        // A closed port on loopback: connection refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let opts = PostgresOptions {
            url: format!("postgres://broker@127.0.0.1:{port}/broker"),
            password: None,
            tls: PgTls::Disable,
        };
        let err = PostgresStore::connect(&opts).unwrap_err().to_string();
        assert!(err.contains("could not connect"), "{err}");
    }

    #[test]
    fn a_broken_connection_fails_the_call_then_recovers() {
        let Some(mut pg) = TestPostgres::start() else {
            return;
        };
        let store = PostgresStore::connect(&options(&pg)).unwrap();
        let c = StateChange::Enable {
            identity: "x".into(),
            at: 1,
            actor: "a".into(),
        };
        store.append(&c).unwrap();
        pg.restart();
        // The first call after the restart may find the old connection dead: it fails
        // (the caller is told), and a later call reconnects. Nothing acknowledged is lost.
        let mut ok = false;
        for _ in 0..3 {
            if store.append(&c).is_ok() {
                ok = true;
                break;
            }
        }
        assert!(ok, "the store reconnects after the database restarts");
        assert_eq!(store.load().unwrap().len(), 2);
    }
}
