//! Starting and serving the broker: [`start`] builds every part from a [`Config`] (keys,
//! audit log, policies, authenticator) and [`Broker::serve`] runs the accept loop until
//! shutdown.
//!
//! Connections are bounded by the `[http]` limits ([`crate::http_limits`]): admitted at
//! accept within a total and a per-source count (over either, closed at once, so the
//! accept loop never waits), then each driven by [`http_limits::drive`] under its
//! first-byte, header and idle deadlines; each TLS handshake runs in its own task under
//! its timeout, so a slow client never stalls the accept loop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::api::{self, AppState, Limits};
use crate::audit::event::{AuditEvent, EventKind};
use crate::audit::{AuditLog, AuditOptions};
use crate::authn::Authenticator;
use crate::authn::mtls::ClientCert;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, StoreKind};
use crate::http_limits::{self, Activity, ActivityIo, Ended, HttpLimits};
use crate::metrics::Metrics;
use crate::mint::Minter;
use crate::policy::LintError;
use crate::reload::{self, PolicyStore};
use crate::revocation::Revocations;
use crate::store::StateStore;
use crate::store::file::FileStore;
use crate::store::postgres::PostgresStore;
use crate::tls::{TlsReloader, TlsSpec};

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The random number generator failed making a secret.
    #[error("random number generator failed making {0}")]
    Random(&'static str),
    /// Signing keys.
    #[error("signing keys: {0}")]
    Keys(#[from] crate::mint::keys::KeyError),
    /// The audit log.
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// Invalid policy files.
    #[error("policy directory is invalid:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Policies(Vec<LintError>),
    /// Workload authentication setup.
    #[error("workload authentication: {0}")]
    Authn(#[from] crate::authn::AuthnError),
    /// TLS material.
    #[error("TLS: {0}")]
    Tls(String),
    /// The console's OpenID Connect client (`[console.oidc]`).
    #[error("{0}")]
    ConsoleOidc(String),
    /// The state store (revocations, disabled identities).
    #[error("state store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The signing-key lifecycle could not be reconciled with the key directory.
    #[error("signing keys: {0}")]
    KeyLifecycle(crate::mint::lifecycle::LifecycleError),
    /// `[signing] algorithm` or an audience's `algorithm` has no key in the key directory.
    #[error(
        "{setting} is {alg} but the key directory {dir} has no {alg} key: run `broker keygen --alg {alg} --dir {dir}` (or fix the setting)"
    )]
    NoKeyForAlgorithm {
        /// The setting that names it.
        setting: String,
        /// The algorithm.
        alg: &'static str,
        /// The key directory.
        dir: String,
    },
}

/// A started broker, ready to serve.
pub struct Broker {
    state: AppState,
    store: Arc<dyn StateStore>,
    /// This replica's name (`[store] replica_id`).
    replica: Option<String>,
    max_staleness: Duration,
    limits: Limits,
    http: HttpLimits,
    tls: Option<Arc<TlsReloader>>,
    policy_reload_interval: Duration,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

/// Builds every part of the broker from `config`: keys, audit log (repairing a torn
/// tail), policies, authenticator. Fails closed on any invalid part.
pub async fn start(config: &Config) -> Result<Broker, StartError> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// [`start`] with an explicit clock.
pub async fn start_with_clock(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<Broker, StartError> {
    let ring = crate::mint::pkcs11::key_ring(&config.key_dir, config.pkcs11.as_ref())?;
    let audit = AuditLog::open(
        AuditOptions {
            dir: config.audit_dir.clone(),
            segment_max_bytes: config.audit_segment_max_bytes,
            replica: config.replica_id.clone(),
        },
        ring.current(),
        Arc::clone(&clock),
    )?;
    let policies = PolicyStore::load(
        &config.policy_dir,
        &config.audiences,
        &config.trust_domains(),
        &config.client_ca_names(),
        config.third_party_max_registration,
    )
    .map_err(StartError::Policies)?;
    let store_timings = crate::metrics::StoreTimings::default();
    let store = crate::store::timed::Timed::wrap(open_store(config)?, store_timings.clone());
    // One load feeds every consumer, so they all start from the same journal position
    // (the one a shared store's polls continue from).
    let events = store.load()?;
    let revocations = Revocations::from_events(Arc::clone(&store), &events);
    revocations.set_clock_skew_margin(config.store_max_clock_skew.as_secs());
    let grants = crate::breakglass::Grants::from_events(Arc::clone(&store), &events);
    let monitor = crate::anomaly::Monitor::from_events(
        Arc::clone(&store),
        &events,
        config.volume,
        config.dormant_after.as_secs(),
    );
    let shared_uses = crate::single_use::SharedUses::of(&store);
    let authn = Authenticator::new(&config.trusted_issuers, Arc::clone(&clock))?
        .with_shared_uses(shared_uses.clone());
    let console_oidc = match &config.console_oidc {
        Some(s) => Some(
            crate::console::oidc::Oidc::new(s.clone(), Arc::clone(&clock))
                .map_err(StartError::ConsoleOidc)?,
        ),
        None => None,
    };
    for (issuer, e) in authn.preload().await {
        tracing::warn!(%issuer, error = %e, "issuer keys not loaded yet; tokens from it are refused until they load");
    }
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(
            TlsReloader::new(TlsSpec {
                cert: files.cert.clone(),
                key: files.key.clone(),
                client_cas: config.client_cas.clone(),
            })
            .map_err(StartError::Tls)?,
        )),
        None => None,
    };
    let kids: Vec<String> = ring.jwks().keys.into_iter().map(|k| k.kid).collect();
    let per_audience: Vec<(String, crate::mint::keys::SigningAlgorithm)> = config
        .audiences
        .iter()
        .filter_map(|a| a.algorithm.map(|alg| (a.uri.clone(), alg)))
        .collect();
    let minter = Minter::new(config.issuer.clone(), &ring, Arc::clone(&clock))
        .with_algorithms(config.algorithm, &per_audience)
        .map_err(|alg| StartError::NoKeyForAlgorithm {
            setting: if config.algorithm == Some(alg) {
                "signing.algorithm".into()
            } else {
                per_audience
                    .iter()
                    .find(|(_, a)| *a == alg)
                    .map(|(uri, _)| format!("audience {uri:?} algorithm"))
                    .unwrap_or_default()
            },
            alg: alg.as_str(),
            dir: config.key_dir.display().to_string(),
        })?;
    for e in &events {
        minter.apply_remote(&e.change);
    }
    let minter = Arc::new(minter);
    let (keys, key_audit) = crate::mint::lifecycle::KeyService::start(
        &config.key_dir,
        match &config.pkcs11 {
            Some(token) => crate::mint::lifecycle::KeyHome::Token(token.clone()),
            None => crate::mint::lifecycle::KeyHome::Files,
        },
        config.replica_id.as_deref().unwrap_or_default(),
        config.rotation,
        &ring,
        &events,
        Arc::clone(&store),
        Arc::clone(&minter),
        Arc::clone(&clock),
    )
    .map_err(StartError::KeyLifecycle)?;
    // From here only the lifecycle, what signs and the log's anchor key hold the private
    // keys loaded at start, so a key the lifecycle destroys is freed once its successor
    // signs, not kept in memory until a restart.
    drop(ring);
    keys.bind_audit(audit.clone());
    let identities = policies.current().len();

    let mut ev = AuditEvent::new(EventKind::BrokerStarted);
    ev.detail = Some(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "issuer": config.issuer,
        "kids": kids,
        "identities": identities,
        "tls": config.tls.is_some(),
        "client_cas": config.client_cas.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
    }));
    audit.append(ev).await?;
    for ev in key_audit {
        audit.append(ev).await?;
    }
    let mut ev = AuditEvent::new(EventKind::PolicyReloaded);
    ev.detail = Some(serde_json::json!({ "identities": identities, "trigger": "start" }));
    audit.append(ev).await?;

    let revocations = Arc::new(revocations);
    let mut metrics = Metrics::new();
    metrics.register_audit(&audit);
    metrics.register_store(&store_timings);
    metrics.register_state_view(Arc::clone(&revocations));

    let broker = Broker {
        store: Arc::clone(&store),
        replica: config.replica_id.clone(),
        max_staleness: config.store_max_staleness,
        state: AppState::new(crate::state::Services {
            authn: Arc::new(authn),
            policies: Arc::new(policies),
            minter,
            keys,
            jwks_max_age: config.jwks_max_age,
            dpop: Arc::new(
                crate::dpop::DpopService::new(config.dpop.clone())
                    .map_err(|_| StartError::Random("the DPoP nonce key"))?
                    .with_shared_uses(shared_uses),
            ),
            denials: Arc::new(crate::denial_budget::DenialBudget::new(
                crate::denial_budget::DenialBudgetConfig::default(),
            )),
            audit,
            clock,
            metrics: Arc::new(metrics),
            revocations,
            admins: Arc::new(config.admins.clone()),
            webhook: crate::breakglass::webhook::Webhook::new(config.break_glass_webhook.clone()),
            break_glass: Arc::new(crate::state::BreakGlass {
                grants: Arc::new(grants),
                pending_ttl_secs: config.break_glass_pending_ttl.as_secs(),
            }),
            governance: Arc::new(crate::state::Governance {
                rate_limiter: Arc::new(crate::ratelimit::RateLimiter::default()),
                identity_rate_limit: config.identity_rate_limit,
                expiring_window_secs: config.expiring_window.as_secs(),
                dormant_after_secs: config.dormant_after.as_secs(),
                usage: Arc::new(crate::usage::Usage::load(&config.state_dir)),
                monitor: Arc::new(monitor),
                anomaly_action: config.anomaly_action,
                monitoring: config.monitoring,
            }),
            console: Arc::new(crate::console::Console {
                state_dir: config.state_dir.clone(),
                audit_dir: config.audit_dir.clone(),
                key_dir: config.key_dir.clone(),
                secure_cookie: config.tls.is_some(),
                sessions: crate::console::session::Sessions::default(),
                oidc: console_oidc,
            }),
        }),
        limits: Limits {
            max_body_bytes: config.max_body_bytes,
            request_timeout: config.request_timeout,
        },
        http: config.http,
        tls,
        policy_reload_interval: config.policy_reload_interval,
    };
    // Grants whose end passed while the broker was down are closed, and their tokens
    // revoked, before the first request is served.
    let closed = crate::grant_lifecycle::close_due(&broker.state, true).await;
    if closed > 0 {
        tracing::warn!(closed, "closed overdue break-glass grants at start");
    }
    Ok(broker)
}

/// Opens the configured state store: the embedded journal, or PostgreSQL (connected and
/// migrated; the broker does not start without it).
pub fn open_store(config: &Config) -> Result<Arc<dyn StateStore>, StartError> {
    Ok(match &config.store {
        StoreKind::File => Arc::new(FileStore::open(&config.state_dir)?),
        StoreKind::Postgres(opts) => Arc::new(PostgresStore::connect(opts)?),
    })
}

impl Broker {
    /// The handlers' state (for in-process tests).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The router (for in-process tests).
    pub fn router(&self) -> Router {
        api::router(self.state.clone(), self.limits)
    }

    /// Serves on `listener` until `shutdown` resolves, then drains connections, records
    /// `broker_stopped` and closes the audit log.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()> + Send) {
        keep_sigxfsz_from_killing_us();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let watcher = {
            let mut rx = stop_rx.clone();
            tokio::spawn(reload::watch(
                Arc::clone(&self.state.policies),
                self.state.audit.clone(),
                Arc::clone(&self.state.metrics),
                reload::AnomalySink {
                    monitor: Arc::clone(&self.state.governance.monitor),
                    webhook: self.state.webhook.clone(),
                    clock: Arc::clone(&self.state.clock),
                },
                self.policy_reload_interval,
                async move {
                    let _ = rx.wait_for(|v| *v).await;
                },
            ))
        };

        let tls_watcher = self.tls.as_ref().map(|tls| {
            let mut rx = stop_rx.clone();
            tokio::spawn(watch_tls(
                Arc::clone(tls),
                self.state.audit.clone(),
                self.policy_reload_interval,
                async move {
                    let _ = rx.wait_for(|v| *v).await;
                },
            ))
        });

        let sweeper = {
            let mut rx = stop_rx.clone();
            let revocations = Arc::clone(&self.state.revocations);
            let denials = Arc::clone(&self.state.denials);
            let audit = self.state.audit.clone();
            let limiter = Arc::clone(&self.state.governance.rate_limiter);
            let usage = Arc::clone(&self.state.governance.usage);
            let clock = Arc::clone(&self.state.clock);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = rx.wait_for(|v| *v) => return,
                        _ = tick.tick() => {}
                    }
                    // File write + fsync + rename: off the request workers, so that a slow
                    // disk never stalls the connections scheduled on one of them.
                    let u = Arc::clone(&usage);
                    match tokio::task::spawn_blocking(move || u.save()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "could not snapshot usage"),
                        Err(e) => tracing::warn!(error = %e, "usage snapshot task failed"),
                    }
                    revocations.sweep(clock.unix_secs());
                    let now = clock
                        .now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64());
                    for summary in denials.flush(now, 10.0) {
                        if let Err(e) = audit.append(summary).await {
                            tracing::error!(error = %e, "could not record a denial summary");
                        }
                    }
                    limiter.sweep(std::time::Instant::now(), Duration::from_secs(3600));
                }
            })
        };
        let key_ticker = {
            let mut rx = stop_rx.clone();
            let state = self.state.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                let mut backoff = crate::admin_changes::keys::TickBackoff::default();
                loop {
                    let stop = async {
                        let _ = rx.wait_for(|v| *v).await;
                    };
                    tokio::select! {
                        _ = stop => return,
                        _ = tick.tick() => {
                            if !backoff.due(std::time::Instant::now()) {
                                continue;
                            }
                            // Recorded first: a step whose record fails is not made, and is
                            // due again once the backoff has passed.
                            match crate::admin_changes::keys::tick(&state).await {
                                Ok(_) => backoff.succeeded(),
                                Err(e) => {
                                    let wait = backoff.failed(std::time::Instant::now());
                                    tracing::warn!(
                                        error = ?e,
                                        retry_in_ms = wait.as_millis() as u64,
                                        "signing-key lifecycle step not made; retrying"
                                    );
                                }
                            }
                        }
                    }
                }
            })
        };
        let grant_closer = {
            let mut rx = stop_rx.clone();
            let state = self.state.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    let stop = async {
                        let _ = rx.wait_for(|v| *v).await;
                    };
                    tokio::select! {
                        _ = stop => return,
                        _ = tick.tick() => {
                            crate::grant_lifecycle::close_due(&state, false).await;
                        }
                    }
                }
            })
        };

        let follower = self.store.shared().then(|| {
            let mut rx = stop_rx.clone();
            tokio::spawn(follow_store(
                Arc::clone(&self.store),
                self.state.clone(),
                self.max_staleness,
                async move {
                    let _ = rx.wait_for(|v| *v).await;
                },
            ))
        });

        let usage_sync = match (&self.replica, self.store.shared()) {
            (Some(replica), true) => {
                let mut rx = stop_rx.clone();
                let (store, usage, replica) = (
                    Arc::clone(&self.store),
                    Arc::clone(&self.state.governance.usage),
                    replica.clone(),
                );
                Some(tokio::spawn(async move {
                    sync_usage(store, usage, replica, async move {
                        let _ = rx.wait_for(|v| *v).await;
                    })
                    .await;
                }))
            }
            _ => None,
        };
        let checkpointer = match (&self.replica, self.store.shared()) {
            (Some(replica), true) => match crate::checkpointer::Checkpointer::resume(
                Arc::clone(&self.store),
                Arc::clone(&self.state.minter),
                Arc::clone(&self.state.clock),
                replica.clone(),
            )
            .await
            {
                Ok(c) => {
                    let mut rx = stop_rx.clone();
                    let (cp, audit) = (c.clone(), self.state.audit.clone());
                    let task = tokio::spawn(async move {
                        cp.run(audit, async move {
                            let _ = rx.wait_for(|v| *v).await;
                        })
                        .await;
                    });
                    Some((c, task))
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not read the audit checkpoints; none will be written");
                    None
                }
            },
            _ => None,
        };

        let router = self.router();
        let http = self.http;
        let capacity = http_limits::connection_capacity(
            http.max_connections,
            http_limits::raise_open_files_limit(),
        );
        if capacity < http.max_connections {
            tracing::warn!(
                configured = http.max_connections,
                capacity,
                reserved = http_limits::RESERVED_FDS,
                "http.max_connections is over what the open-file limit allows: serving at most \
                 `capacity` connections; raise the limit (systemd LimitNOFILE=, ulimit -n)"
            );
        }
        let limiter = http_limits::ConnectionLimiter::new(
            capacity,
            http.max_connections_per_source.min(capacity),
        );
        let builder = Arc::new(http.connection_builder());
        let (conns_stop_tx, conns_stop) = tokio::sync::watch::channel(false);
        let conn_template = ConnTemplate {
            router,
            max_body_bytes: self.limits.max_body_bytes,
            body_timeout: http.body_timeout,
        };
        tokio::pin!(shutdown);

        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors (EMFILE) or the like: pause rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let admission = match limiter.try_admit(peer.ip()) {
                Ok(a) => a,
                Err(refusal) => {
                    limiter.note_refusal(refusal, peer);
                    drop(tcp);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let builder = Arc::clone(&builder);
            let stop = conns_stop.clone();
            match &self.tls {
                None => {
                    let activity = Activity::new(&http);
                    let svc = conn_template.service(peer, None, &activity);
                    tokio::spawn(async move {
                        let io = TokioIo::new(ActivityIo::new(tcp, Arc::clone(&activity)));
                        let conn = builder.serve_connection(io, svc);
                        let ended =
                            http_limits::drive(conn, activity, stop, |c| c.graceful_shutdown())
                                .await;
                        log_ended(peer, &ended);
                        drop(admission);
                    });
                }
                Some(tls) => {
                    let material = tls.current();
                    let template = conn_template.clone();
                    let audit = self.state.audit.clone();
                    tokio::spawn(async move {
                        let (handshake, presented) = crate::tls::PRESENTED_CERT
                            .scope(std::cell::RefCell::new(None), async {
                                let r = tokio::time::timeout(
                                    http.tls_handshake_timeout,
                                    material.acceptor().accept(tcp),
                                )
                                .await;
                                (r, crate::tls::PRESENTED_CERT.with(|c| c.take()))
                            })
                            .await;
                        let stream = match handshake {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                audit_handshake_failure(&audit, peer, presented, &e).await;
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, limit = "http.tls_handshake_timeout", "TLS handshake timed out; connection closed");
                                return;
                            }
                        };
                        let client_cert = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .map(|chain| ClientCert(Arc::new(material.client_cert(chain))));
                        // The connection's deadlines start when its handshake is done.
                        let activity = Activity::new(&http);
                        let svc = template.service(peer, client_cert, &activity);
                        let io = TokioIo::new(ActivityIo::new(stream, Arc::clone(&activity)));
                        let conn = builder.serve_connection(io, svc);
                        let ended =
                            http_limits::drive(conn, activity, stop, |c| c.graceful_shutdown())
                                .await;
                        log_ended(peer, &ended);
                        drop(admission);
                    });
                }
            }
        }

        drop(listener);
        // Every connection finishes what it has in flight and closes (idle ones at once).
        let _ = conns_stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), limiter.drained()).await;
        let _ = stop_tx.send(true);
        let _ = watcher.await;
        let _ = sweeper.await;
        let _ = grant_closer.await;
        let _ = key_ticker.await;
        if let Some(f) = follower {
            let _ = f.await;
        }
        if let Some(u) = usage_sync {
            let _ = u.await;
        }
        if let Some(w) = tls_watcher {
            let _ = w.await;
        }
        if let Err(e) = self.state.governance.usage.save() {
            tracing::warn!(error = %e, "could not snapshot usage at shutdown");
        }
        // Refusals counted but not yet summarized would be lost with the process.
        for summary in self.state.denials.drain() {
            if let Err(e) = self.state.audit.append(summary).await {
                tracing::error!(error = %e, "could not record a denial summary at shutdown");
            }
        }
        let ev = AuditEvent::new(EventKind::BrokerStopped);
        if let Err(e) = self.state.audit.append(ev).await {
            tracing::error!(error = %e, "could not record broker_stopped");
        }
        self.state.audit.close().await;
        if let Some((c, task)) = checkpointer {
            let _ = task.await;
            if let Err(e) = c.write(self.state.audit.durable_point()).await {
                tracing::warn!(error = %e, "could not write the closing audit checkpoint");
            }
        }
    }
}

/// What every connection's service shares: the router and the body limits.
#[derive(Clone)]
struct ConnTemplate {
    router: Router,
    max_body_bytes: usize,
    body_timeout: Duration,
}

impl ConnTemplate {
    fn service(
        &self,
        peer: SocketAddr,
        client_cert: Option<ClientCert>,
        activity: &Arc<Activity>,
    ) -> ConnService {
        ConnService {
            template: self.clone(),
            peer,
            client_cert,
            activity: Arc::clone(activity),
        }
    }
}

/// Logs how a connection ended, at debug level (a limit's name, never request content).
fn log_ended<E: std::fmt::Display>(peer: SocketAddr, ended: &Ended<E>) {
    match ended {
        Ended::Expired(why) => {
            tracing::debug!(%peer, limit = why.setting(), "connection closed at its time limit");
        }
        Ended::Finished(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended"),
        Ended::Finished(Ok(())) => {}
    }
}

/// Per-connection service: stamps the peer address (and client certificate) on each
/// request, marks the connection busy until the response has been sent, bounds the body
/// (a declared length over the limit fails at once; `body_timeout`), then routes it.
#[derive(Clone)]
struct ConnService {
    template: ConnTemplate,
    peer: SocketAddr,
    client_cert: Option<ClientCert>,
    activity: Arc<Activity>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send>,
    >;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        let guard = self.activity.request_started();
        req.extensions_mut().insert(ConnectInfo(self.peer));
        if let Some(c) = &self.client_cert {
            req.extensions_mut().insert(c.clone());
        }
        let http1 = req.version() < hyper::Version::HTTP_2;
        let (parts, incoming) = req.into_parts();
        let body = http_limits::RequestBody::new(
            incoming,
            http_limits::declared_length(&parts.headers),
            self.template.max_body_bytes,
        );
        let (over_limit, progress) = (body.over_limit(), body.progress());
        let routed = self
            .template
            .router
            .clone()
            .oneshot(hyper::Request::from_parts(
                parts,
                axum::body::Body::new(body),
            ));
        let body_timeout = self.template.body_timeout;
        Box::pin(async move {
            let mut timed_out = false;
            let mut res = tokio::select! {
                biased;
                r = routed => match r {
                    Ok(res) => res,
                    Err(never) => match never {},
                },
                () = progress.overdue(body_timeout) => {
                    timed_out = true;
                    crate::error::ApiError::new(
                        axum::http::StatusCode::REQUEST_TIMEOUT,
                        "invalid_request",
                        format!(
                            "request body not received within {} ms (http.body_timeout)",
                            body_timeout.as_millis()
                        ),
                    )
                    .into_response()
                }
            };
            if http1 && (over_limit || timed_out) {
                // The rest of the body is unread: the connection cannot carry another request.
                res.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok(res.map(|b| axum::body::Body::new(http_limits::TrackedBody::new(b, guard))))
        })
    }
}

/// How often a replica on a shared store reads the changes other replicas made when the
/// store wakes it on each change (PostgreSQL's `LISTEN`): the fallback for a lost
/// notification, and the heartbeat that confirms the view is current.
pub const STORE_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The same, for a shared store without a wake-up.
pub const STORE_POLL_INTERVAL_UNWOKEN: Duration = Duration::from_millis(10);

/// Follows a shared store: applies every change other replicas append to revocations,
/// grants, anomalies and published keys, in journal order, and marks the view stale
/// (issuance and introspection refuse) while no read has succeeded within
/// `max_staleness`. A read starts when the store signals a change, and on a timer; one
/// runs at a time (a read that hangs, the database unreachable, is waited for, never
/// duplicated), and a signal that arrives during a read starts another one after it.
/// Staleness is judged from the start of the last read that succeeded.
async fn follow_store(
    store: Arc<dyn StateStore>,
    state: AppState,
    max_staleness: Duration,
    shutdown: impl Future<Output = ()>,
) {
    type Done = (
        std::time::Instant,
        Result<crate::store::Polled, crate::store::StoreError>,
    );
    let wake = store.wakeup();
    let mut tick = tokio::time::interval(if wake.is_some() {
        STORE_POLL_INTERVAL
    } else {
        STORE_POLL_INTERVAL_UNWOKEN
    });
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<Done>(1);
    tokio::pin!(shutdown);
    let mut confirmed = std::time::Instant::now();
    let mut in_flight = false;
    let mut again = false;
    let mut last_error: Option<String> = None;
    loop {
        let woken = async {
            match &wake {
                Some(w) => w.notified().await,
                None => std::future::pending().await,
            }
        };
        let read_wanted = tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => true,
            () = woken => true,
            Some((started, result)) = done_rx.recv() => {
                in_flight = false;
                match result {
                    Ok(polled) => {
                        for e in &polled.events {
                            state.revocations.apply_remote(e);
                            state.break_glass.grants.apply_remote(&e.change);
                            state.governance.monitor.apply_remote(&e.change);
                            state.minter.apply_remote(&e.change);
                            let key_audit = if matches!(e.change, crate::store::StateChange::Key(_)) {
                                // Not between a local key change's plan and its commit.
                                let _one = state.keys.one_change_at_a_time().await;
                                state.keys.apply_remote(&e.change)
                            } else {
                                Vec::new()
                            };
                            crate::mint::lifecycle::KeyService::record(&state.audit, key_audit).await;
                        }
                        state.revocations.confirm_through(polled.through);
                        state.break_glass.grants.confirm_through(polled.through);
                        state.governance.monitor.confirm_through(polled.through);
                        confirmed = started;
                        last_error = None;
                    }
                    Err(e) => {
                        let e = e.to_string();
                        if last_error.as_ref() != Some(&e) {
                            tracing::warn!(error = %e, "could not read the shared state store");
                            last_error = Some(e);
                        }
                    }
                }
                std::mem::take(&mut again)
            }
        };
        if read_wanted {
            if in_flight {
                again = true;
            } else {
                in_flight = true;
                let (s, tx) = (Arc::clone(&store), done_tx.clone());
                let started = std::time::Instant::now();
                tokio::task::spawn_blocking(move || {
                    let _ = tx.blocking_send((started, s.poll()));
                });
            }
        }
        let stale = confirmed.elapsed() > max_staleness;
        if stale != state.revocations.is_stale() {
            state.revocations.set_stale(stale);
            if stale {
                tracing::error!(
                    max_staleness_ms = max_staleness.as_millis() as u64,
                    "state store view is stale: refusing to issue or introspect until it is current"
                );
            } else {
                tracing::info!("state store view is current again: serving");
            }
        }
    }
}

/// How often a replica on a shared store writes its usage snapshot there and reads the
/// other replicas' (the staleness of the merged inventory and monitoring view).
pub const USAGE_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Writes this replica's usage to the shared store and reads every other replica's,
/// every [`USAGE_SYNC_INTERVAL`] until `shutdown` (and once more then).
async fn sync_usage(
    store: Arc<dyn StateStore>,
    usage: Arc<crate::usage::Usage>,
    replica: String,
    shutdown: impl Future<Output = ()>,
) {
    let once = || {
        let (store, usage, replica) = (Arc::clone(&store), Arc::clone(&usage), replica.clone());
        tokio::task::spawn_blocking(move || -> Result<(), crate::store::StoreError> {
            store.put_usage(&replica, &usage.snapshot())?;
            usage.set_peers(&replica, store.usage()?);
            Ok(())
        })
    };
    let mut tick = tokio::time::interval(USAGE_SYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut last_error: Option<String> = None;
    loop {
        let stopping = tokio::select! {
            _ = &mut shutdown => true,
            _ = tick.tick() => false,
        };
        match once().await {
            Ok(Ok(())) => last_error = None,
            Ok(Err(e)) => {
                let e = e.to_string();
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "could not share usage through the state store; will retry");
                    last_error = Some(e);
                }
            }
            Err(e) => tracing::error!(error = %e, "usage sync task failed"),
        }
        if stopping {
            return;
        }
    }
}

/// Records a handshake that failed over the client certificate (unknown CA, expired,
/// not yet valid, wrong usage, bad signature) as a `denied` audit record. Other handshake
/// failures (port scans, plain HTTP on the TLS port) are only logged, so that noise
/// cannot flood the audit log.
async fn audit_handshake_failure(
    audit: &AuditLog,
    peer: SocketAddr,
    cert_sha256: Option<String>,
    e: &std::io::Error,
) {
    let rustls_err = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let Some(rustls::Error::InvalidCertificate(cert_err)) = rustls_err else {
        tracing::debug!(%peer, error = %e, "TLS handshake failed");
        return;
    };
    let what = match cert_err {
        rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. } => {
            "the client certificate has expired".to_owned()
        }
        rustls::CertificateError::NotValidYet
        | rustls::CertificateError::NotValidYetContext { .. } => {
            "the client certificate is not valid yet".to_owned()
        }
        rustls::CertificateError::UnknownIssuer => {
            "the client certificate does not chain to a configured client_ca".to_owned()
        }
        other => format!("the client certificate was refused: {other}"),
    };
    tracing::info!(
        %peer,
        reason = %what,
        cert_sha256 = cert_sha256.as_deref().unwrap_or(""),
        "client certificate refused at TLS handshake"
    );
    let mut ev = AuditEvent::new(EventKind::Denied);
    ev.decision = Some(crate::audit::event::Decision::Deny);
    ev.rule = Some("client_certificate_rejected".into());
    ev.reason = Some(format!("TLS handshake refused: {what}"));
    ev.source = Some(peer.ip().to_string());
    ev.evidence = Some(crate::audit::event::Evidence {
        kind: "mtls",
        cert_sha256,
        ..Default::default()
    });
    if let Err(e) = audit.append(ev).await {
        tracing::error!(error = %e, "could not audit a refused handshake");
    }
}

/// Reloads TLS material when its files change, auditing each outcome.
async fn watch_tls(
    tls: Arc<TlsReloader>,
    audit: AuditLog,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        if !tls.changed_on_disk() {
            continue;
        }
        let ev = match tls.reload() {
            Ok(()) => {
                tracing::info!("TLS material reloaded");
                let mut ev = AuditEvent::new(EventKind::TlsReloaded);
                ev.detail = Some(serde_json::json!({ "files": tls.files() }));
                ev
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS reload rejected; the previous material stays live");
                let mut ev = AuditEvent::new(EventKind::TlsReloadFailed);
                ev.reason = Some(format!("{e}; the previous TLS material stays live"));
                ev
            }
        };
        if let Err(e) = audit.append(ev).await {
            tracing::error!(error = %e, "could not audit a TLS reload");
        }
    }
}

/// With a file-size limit (RLIMIT_FSIZE) the kernel sends SIGXFSZ, whose default action
/// kills the process; with a handler installed the write fails with EFBIG instead and
/// the audit log fails closed (503) rather than the broker dying.
fn keep_sigxfsz_from_killing_us() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut s) = signal(SignalKind::from_raw(libc::SIGXFSZ)) {
            tokio::spawn(async move { while s.recv().await.is_some() {} });
        }
    }
}

/// Runs a broker from `config` on `listener` until `shutdown` resolves.
pub async fn run(
    config: &Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let broker = start(config).await?;
    broker.serve(listener, shutdown).await;
    Ok(())
}
