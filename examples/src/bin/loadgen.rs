//! Closed-loop load generator for `POST /oauth2/token`.
//!
//! Opens `--connections` keep-alive HTTP/1.1 connections (TCP_NODELAY) to the broker and, on
//! each, sends RFC 8693 token-exchange requests one after another for `--warmup` plus
//! `--duration`. Only responses that complete inside the measured window (after the warm-up)
//! count. Reports issuances/s (200s only), latency percentiles of the 200s, status and error
//! counts, and, with `--pid`, the broker's peak RSS and CPU time.
//!
//! ```text
//! cargo run --release -p broker-examples --bin loadgen -- \
//!     --url http://127.0.0.1:PORT --subject-token-file jwt.txt --task demo \
//!     --connections 32 --duration 10s --pid BROKER_PID
//! ```
//!
//! The generator is kept cheap on purpose (one runtime thread by default, no per-request
//! allocation beyond what hyper needs) because it shares the machine with the broker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use broker_examples::{
    Percentiles, ProcSample, SystemCpu, Target, clock_ticks_per_sec, form_body,
    kernel_threads_cpu_secs, parse_duration, percentiles, proc_sample, system_cpu,
};
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Above this share of non-200 outcomes the result is flagged loudly.
const ERROR_RATE_ALARM: f64 = 0.01;
/// Above this much CPU (in cores) used by other processes during the window, the result is
/// flagged as contaminated: the broker and the generator are meant to have the machine.
const FOREIGN_CPU_ALARM: f64 = 0.15;

/// Drive POST /oauth2/token with N keep-alive connections and report issuances/s and latency.
#[derive(Parser, Debug)]
#[command(name = "loadgen", version)]
struct Args {
    /// Broker base URL (plain HTTP), e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// Path of the token endpoint under --url.
    #[arg(long, default_value = "/oauth2/token")]
    path: String,
    /// Concurrent keep-alive connections, one closed-loop worker each.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Measured window (after the warm-up), e.g. 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up before the measured window; its responses are not counted.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// File holding the workload JWT (read once, never printed). Several JWTs, one per
    /// line, are used in turn (each connection starts at a different one), so that a broker
    /// that caches verified JWTs has to verify each distinct one at least once.
    #[arg(long, required_unless_present = "client_credentials")]
    subject_token_file: Option<PathBuf>,
    /// Use `grant_type=client_credentials` (mTLS: the client certificate is the credential)
    /// instead of the token exchange.
    #[arg(long, requires = "cert")]
    client_credentials: bool,
    /// CA bundle (PEM) that signed the broker's certificate (https:// URLs).
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM) to present (mTLS).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Open a new connection for every request (measures full TLS handshakes).
    #[arg(long)]
    new_connections: bool,
    /// Task name to request.
    #[arg(long, default_value = "demo")]
    task: String,
    /// Narrow the scopes (space-separated).
    #[arg(long)]
    scope: Option<String>,
    /// Narrow the audience.
    #[arg(long)]
    audience: Option<String>,
    /// Ask for a shorter TTL, seconds.
    #[arg(long)]
    requested_ttl: Option<u64>,
    /// The broker's pid: report its peak RSS (VmHWM) and CPU time from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// Runtime threads of the generator (1 keeps it off the broker's second core as much
    /// as possible).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Per-request timeout; a request that takes longer counts as an error.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print one JSON object instead of the human-readable report.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Send a fresh DPoP proof (RFC 9449, Ed25519) with every request, so tokens are
    /// DPoP-bound; the proof is made in the generator, outside the measured broker.
    #[arg(long)]
    dpop: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let result = runtime
        .context("building the tokio runtime")
        .and_then(|rt| rt.block_on(run(&args)));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// What every worker needs, shared read-only.
struct Plan {
    authority: String,
    tls: Tls,
    /// Reconnect after every request (full handshakes).
    new_connections: bool,
    uri: Uri,
    host: HeaderValue,
    /// One request body per workload JWT.
    bodies: Vec<Bytes>,
    measure_from: Instant,
    stop_at: Instant,
    timeout: Duration,
    /// With `--dpop`: the key proofs are made with, and the `htu` they name.
    dpop: Option<(broker_client::dpop::DpopKey, String)>,
}

/// One worker's counts; merged at the end.
#[derive(Default)]
struct Tally {
    /// Latency of each 200 in the window, microseconds.
    latencies_us: Vec<u32>,
    /// 200s in the window whose body held an access token.
    ok: u64,
    /// Non-200 statuses in the window.
    statuses: BTreeMap<u16, u64>,
    /// Transport errors and timeouts in the window, by kind.
    errors: BTreeMap<String, u64>,
    /// 200s whose body did not look like a token response.
    bad_body: u64,
    /// Completed requests during warm-up (any outcome).
    warmup_completed: u64,
    /// 200s per second of the window.
    per_second: Vec<u32>,
    /// The first non-200 answer seen (status, OAuth error and description only).
    first_failure: Option<String>,
    /// Connections (re)opened after the first.
    reconnects: u64,
}

impl Tally {
    fn merge(&mut self, other: Self) {
        self.latencies_us.extend(other.latencies_us);
        self.ok += other.ok;
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.bad_body += other.bad_body;
        self.warmup_completed += other.warmup_completed;
        if self.per_second.len() < other.per_second.len() {
            self.per_second.resize(other.per_second.len(), 0);
        }
        for (a, b) in self.per_second.iter_mut().zip(other.per_second) {
            *a += b;
        }
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
        self.reconnects += other.reconnects;
    }

    fn error(&mut self, in_window: bool, kind: String) {
        if in_window {
            *self.errors.entry(kind).or_default() += 1;
        }
    }

    fn non_ok(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.errors.values().sum::<u64>() + self.bad_body
    }

    fn count_status(&self, pred: impl Fn(u16) -> bool) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| pred(**s))
            .map(|(_, n)| n)
            .sum()
    }
}

/// TLS settings of the connections: the connector and the server name to verify.
type Tls = Option<Arc<(tokio_rustls::TlsConnector, ServerName<'static>)>>;

async fn connect(authority: &str, tls: &Tls) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    let Some(tls) = tls else {
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake")?;
        // Drive the connection; its errors surface through `send_request`.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        return Ok(sender);
    };
    let stream = tls
        .0
        .connect(tls.1.clone(), stream)
        .await
        .context("TLS handshake")?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

fn pem_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", path.display()))
}

/// rustls on aws-lc-rs, trusting `--cacert`, presenting `--cert/--key` when given.
fn tls_settings(args: &Args, target: &Target) -> anyhow::Result<Tls> {
    if !target.tls {
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore::empty();
    let ca = args.cacert.as_ref().context("https:// needs --cacert")?;
    for c in pem_certs(ca)? {
        roots.add(c).context("adding the CA")?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match (&args.cert, &args.key) {
        (Some(c), Some(k)) => {
            let key = PrivateKeyDer::from_pem_file(k)
                .with_context(|| format!("reading {}", k.display()))?;
            builder.with_client_auth_cert(pem_certs(c)?, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    let host = target
        .authority
        .rsplit_once(':')
        .map_or(target.authority.as_str(), |(h, _)| h)
        .trim_matches(|c| c == '[' || c == ']')
        .to_owned();
    let name = ServerName::try_from(host).context("server name")?;
    Ok(Some(Arc::new((
        tokio_rustls::TlsConnector::from(Arc::new(config)),
        name,
    ))))
}

/// The OAuth error of a failed response, without anything else from the body.
fn describe_failure(status: StatusCode, body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(|s| s.chars().take(200).collect::<String>())
    };
    match (field("error"), field("error_description")) {
        (Some(e), Some(d)) => format!("{} {e}: {d}", status.as_u16()),
        (Some(e), None) => format!("{} {e}", status.as_u16()),
        _ => format!("{} (non-OAuth body, {} bytes)", status.as_u16(), body.len()),
    }
}

fn looks_like_token_response(body: &[u8], thorough: bool) -> bool {
    if thorough {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return false;
        };
        v.get("access_token").and_then(|t| t.as_str()).is_some()
            && matches!(
                v.get("token_type").and_then(|t| t.as_str()),
                Some("Bearer" | "DPoP")
            )
    } else {
        const NEEDLE: &[u8] = b"\"access_token\"";
        body.windows(NEEDLE.len()).any(|w| w == NEEDLE)
    }
}

async fn worker(plan: Arc<Plan>, first: SendRequest<Full<Bytes>>, index: usize) -> Tally {
    let mut tally = Tally {
        latencies_us: Vec::with_capacity(16 * 1024),
        ..Tally::default()
    };
    let mut sender = Some(first);
    let mut checked_body = false;
    let mut next_body = index % plan.bodies.len().max(1);
    loop {
        let now = Instant::now();
        if now >= plan.stop_at {
            break;
        }
        let in_window = now >= plan.measure_from;
        let s = match sender.as_mut() {
            Some(s) => s,
            None => match connect(&plan.authority, &plan.tls).await {
                Ok(s) => {
                    tally.reconnects += 1;
                    sender.insert(s)
                }
                Err(e) => {
                    tally.error(in_window, format!("connect: {e:#}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if s.ready().await.is_err() {
            // The broker closed the connection (or it broke): open a new one.
            sender = None;
            continue;
        }
        let body = match plan.bodies.get(next_body) {
            Some(b) => b.clone(),
            None => break,
        };
        next_body = (next_body + 1) % plan.bodies.len();
        let mut request = Request::builder();
        if let Some((key, htu)) = &plan.dpop {
            match key.proof("POST", htu, None, None) {
                Ok(p) => request = request.header("dpop", p),
                Err(e) => {
                    tally.error(true, format!("DPoP proof: {e}"));
                    break;
                }
            }
        }
        let request = request
            .method(Method::POST)
            .uri(plan.uri.clone())
            .header(header::HOST, plan.host.clone())
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            )
            .header(header::ACCEPT, HeaderValue::from_static("application/json"))
            .body(Full::new(body));
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                tally.error(true, format!("building request: {e}"));
                break;
            }
        };
        let started = Instant::now();
        let exchange = async {
            let response = s.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        let outcome = tokio::time::timeout(plan.timeout, exchange).await;
        let done = Instant::now();
        if done < plan.measure_from {
            tally.warmup_completed += 1;
            if !matches!(outcome, Ok(Ok(_))) {
                sender = None;
            }
            continue;
        }
        if done > plan.stop_at {
            // Completed after the window closed: not counted.
            break;
        }
        match outcome {
            Ok(Ok((status, body))) if status == StatusCode::OK => {
                if plan.new_connections {
                    sender = None;
                }
                if looks_like_token_response(&body, !checked_body) {
                    checked_body = true;
                    tally.ok += 1;
                    let us = done.duration_since(started).as_micros();
                    tally
                        .latencies_us
                        .push(u32::try_from(us).unwrap_or(u32::MAX));
                    let sec = done.duration_since(plan.measure_from).as_secs() as usize;
                    if tally.per_second.len() <= sec {
                        tally.per_second.resize(sec + 1, 0);
                    }
                    tally.per_second[sec] += 1;
                } else {
                    tally.bad_body += 1;
                    if tally.first_failure.is_none() {
                        tally.first_failure = Some("200 without a token response body".to_owned());
                    }
                }
            }
            Ok(Ok((status, body))) => {
                *tally.statuses.entry(status.as_u16()).or_default() += 1;
                if tally.first_failure.is_none() {
                    tally.first_failure = Some(describe_failure(status, &body));
                }
            }
            Ok(Err(e)) => {
                let kind = if e.is_closed() || e.is_incomplete_message() {
                    "connection closed mid-request".to_owned()
                } else {
                    format!("http: {e}")
                };
                tally.error(true, kind);
                sender = None;
            }
            Err(_) => {
                tally.error(true, format!("timeout after {:?}", plan.timeout));
                // The connection may still carry the late answer: drop it.
                sender = None;
            }
        }
    }
    tally
}

/// Samples of the broker and of this process at the window's start and end.
#[derive(Default)]
struct Monitor {
    broker_start: Option<ProcSample>,
    broker_end: Option<ProcSample>,
    self_start: Option<ProcSample>,
    self_end: Option<ProcSample>,
    system_start: Option<SystemCpu>,
    system_end: Option<SystemCpu>,
    kthreads_start: f64,
    kthreads_end: f64,
}

async fn monitor(pid: Option<u32>, plan: Arc<Plan>, hz: f64) -> Monitor {
    let sample = |who: Option<String>| who.and_then(|p| proc_sample(&p, hz).ok());
    let broker = pid.map(|p| p.to_string());
    let mut m = Monitor::default();
    tokio::time::sleep_until(plan.measure_from.into()).await;
    m.broker_start = sample(broker.clone());
    m.self_start = sample(Some("self".to_owned()));
    m.system_start = system_cpu(hz).ok();
    m.kthreads_start = kernel_threads_cpu_secs(hz);
    tokio::time::sleep_until(plan.stop_at.into()).await;
    m.broker_end = sample(broker);
    m.self_end = sample(Some("self".to_owned()));
    m.system_end = system_cpu(hz).ok();
    m.kthreads_end = kernel_threads_cpu_secs(hz);
    m
}

async fn run(args: &Args) -> anyhow::Result<ExitCode> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.duration.is_zero() {
        bail!("--duration must be positive");
    }
    let target = Target::parse(&args.url)?;
    let tls = tls_settings(args, &target)?;
    let tokens = match &args.subject_token_file {
        Some(f) if !args.client_credentials => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        // client_credentials: one body, no subject token.
        _ => "-".to_owned(),
    };
    let ttl = args.requested_ttl.map(|t| t.to_string());
    let bodies: Vec<Bytes> = tokens
        .lines()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|token| {
            let mut pairs = if args.client_credentials {
                vec![
                    ("grant_type", "client_credentials"),
                    ("task", args.task.as_str()),
                ]
            } else {
                vec![
                    ("grant_type", GRANT_TYPE),
                    ("subject_token", token),
                    ("subject_token_type", JWT_TOKEN_TYPE),
                    ("task", args.task.as_str()),
                ]
            };
            if let Some(scope) = &args.scope {
                pairs.push(("scope", scope));
            }
            if let Some(audience) = &args.audience {
                pairs.push(("audience", audience));
            }
            if let Some(ttl) = &ttl {
                pairs.push(("requested_ttl", ttl));
            }
            Bytes::from(form_body(pairs))
        })
        .collect();
    if bodies.is_empty() {
        bail!("--subject-token-file holds no token");
    }
    let path = format!("{}{}", target.base_path, args.path);
    let uri: Uri = path
        .parse()
        .with_context(|| format!("bad request path {path:?}"))?;
    let host = HeaderValue::from_str(&target.authority).context("bad host in --url")?;
    let hz = clock_ticks_per_sec();
    if let Some(pid) = args.pid {
        proc_sample(&pid.to_string(), hz)
            .with_context(|| format!("--pid {pid}: cannot read the broker's /proc entry"))?;
    }

    // Open every connection before the clock starts.
    let mut senders = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        senders.push(connect(&target.authority, &tls).await?);
    }
    let start = Instant::now();
    let plan = Arc::new(Plan {
        authority: target.authority.clone(),
        tls: tls.clone(),
        new_connections: args.new_connections,
        uri,
        host,
        bodies,
        measure_from: start + args.warmup,
        stop_at: start + args.warmup + args.duration,
        timeout: args.timeout,
        dpop: if args.dpop {
            let key = broker_client::dpop::DpopKey::generate_ed25519()
                .map_err(|e| anyhow::anyhow!("DPoP key: {e}"))?;
            Some((
                key,
                format!("{}{}", args.url.trim_end_matches('/'), args.path),
            ))
        } else {
            None
        },
    });
    let mon = tokio::spawn(monitor(args.pid, Arc::clone(&plan), hz));
    let workers: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, s)| tokio::spawn(worker(Arc::clone(&plan), s, i)))
        .collect();
    let mut total = Tally::default();
    for w in workers {
        total.merge(w.await.context("worker panicked")?);
    }
    let mon = mon.await.context("monitor panicked")?;
    let broker_final = match args.pid {
        Some(pid) => proc_sample(&pid.to_string(), hz).ok(),
        None => None,
    };

    let window = args.duration.as_secs_f64();
    let lat = percentiles(&mut total.latencies_us);
    let report = Report {
        args,
        tokens: plan.bodies.len(),
        window,
        total: &total,
        lat,
        mon: &mon,
        broker_final,
    };
    if let Some(path) = &args.json_out {
        std::fs::write(path, format!("{:#}\n", report.json()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    if args.json {
        for alarm in report.alarms() {
            eprintln!("{alarm}");
        }
    }
    Ok(if total.ok == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Where the machine's CPU went during the window, in cores.
struct Machine {
    /// All processes and kernel threads (user + system time).
    busy: f64,
    broker: f64,
    loadgen: f64,
    kthreads: f64,
    /// Everything else: processes that are neither the broker nor the generator.
    other: f64,
    /// Interrupt and softirq time (loopback TCP, block I/O completions).
    irq: f64,
    steal: f64,
}

struct Report<'a> {
    args: &'a Args,
    tokens: usize,
    window: f64,
    total: &'a Tally,
    lat: Percentiles,
    mon: &'a Monitor,
    broker_final: Option<ProcSample>,
}

fn ms(us: u32) -> f64 {
    f64::from(us) / 1000.0
}

fn cpu_delta(a: Option<ProcSample>, b: Option<ProcSample>) -> Option<f64> {
    Some(b?.cpu_secs - a?.cpu_secs)
}

impl Report<'_> {
    fn attempts(&self) -> u64 {
        self.total.ok + self.total.non_ok()
    }

    fn non_ok_rate(&self) -> f64 {
        let n = self.attempts();
        if n == 0 {
            0.0
        } else {
            self.total.non_ok() as f64 / n as f64
        }
    }

    fn rate(&self) -> f64 {
        self.total.ok as f64 / self.window
    }

    fn broker_cpu_window(&self) -> Option<f64> {
        cpu_delta(self.mon.broker_start, self.mon.broker_end)
    }

    fn self_cpu_window(&self) -> Option<f64> {
        cpu_delta(self.mon.self_start, self.mon.self_end)
    }

    /// Busy CPU of the whole machine in the window, and the part of it that was neither the
    /// broker nor this generator, in cores; and steal, in cores.
    fn machine(&self) -> Option<Machine> {
        let (a, b) = (self.mon.system_start?, self.mon.system_end?);
        let w = self.window;
        let busy = (b.busy_secs - a.busy_secs) / w;
        let broker = self.broker_cpu_window().unwrap_or(0.0) / w;
        let loadgen = self.self_cpu_window().unwrap_or(0.0) / w;
        let kthreads = (self.mon.kthreads_end - self.mon.kthreads_start).max(0.0) / w;
        Some(Machine {
            busy,
            broker,
            loadgen,
            kthreads,
            other: (busy - broker - loadgen - kthreads).max(0.0),
            irq: (b.irq_secs - a.irq_secs) / w,
            steal: (b.steal_secs - a.steal_secs) / w,
        })
    }

    fn alarms(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(a) = self.error_alarm() {
            out.push(a);
        }
        if let Some(m) = self.machine()
            && m.steal > FOREIGN_CPU_ALARM
        {
            out.push(format!(
                "\n!!! THE HYPERVISOR TOOK {:.2} CORES (steal) DURING THE WINDOW: the host was busy, the\n\
                 !!! figures understate the broker. Re-run when steal is near zero.",
                m.steal
            ));
        }
        if let Some(m) = self.machine() {
            let foreign = m.other;
            // Only meaningful when the broker's own CPU is known (--pid).
            if self.args.pid.is_some() && foreign > FOREIGN_CPU_ALARM {
                out.push(format!(
                    "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                     !!! OTHER PROCESSES USED {foreign:.2} CORES DURING THE WINDOW: the machine was not\n\
                     !!! quiet, the figures understate the broker. Re-run on an idle machine.\n\
                     !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
                ));
            }
        }
        out
    }

    fn error_alarm(&self) -> Option<String> {
        let rate = self.non_ok_rate();
        if self.attempts() > 0 && rate <= ERROR_RATE_ALARM {
            return None;
        }
        let first = self
            .total
            .first_failure
            .as_deref()
            .or_else(|| self.total.errors.keys().next().map(String::as_str))
            .unwrap_or("no response at all");
        Some(format!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! {:.2}% OF REQUESTS DID NOT ISSUE A TOKEN ({} of {}): the figures are not valid\n\
             !!! first failure: {first}\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
            rate * 100.0,
            self.total.non_ok(),
            self.attempts(),
        ))
    }

    fn text(&self) -> String {
        let a = self.args;
        let t = self.total;
        let l = self.lat;
        let mut out = String::new();
        out.push_str(&format!(
            "loadgen: POST {}{} task={} connections={} warmup={:?} measured={:?} threads={} subject tokens={}\n",
            a.url, a.path, a.task, a.connections, a.warmup, a.duration, a.threads, self.tokens
        ));
        out.push_str(&format!(
            "issuances/s      {:>10.0}   ({} tokens in {:.2} s; {} more during warm-up)\n",
            self.rate(),
            t.ok,
            self.window,
            t.warmup_completed
        ));
        out.push_str(&format!(
            "latency (200s)   p50 {:.3} ms   p90 {:.3} ms   p99 {:.3} ms   p99.9 {:.3} ms   max {:.3} ms   mean {:.3} ms\n",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            ms(l.mean)
        ));
        out.push_str(&format!(
            "responses        200: {}   4xx: {}   503: {}   other 5xx: {}   transport errors: {}   bad 200 bodies: {}   reconnects: {}\n",
            t.ok,
            t.count_status(|s| (400..500).contains(&s)),
            t.count_status(|s| s == 503),
            t.count_status(|s| s >= 500 && s != 503),
            t.errors.values().sum::<u64>(),
            t.bad_body,
            t.reconnects
        ));
        if !t.statuses.is_empty() {
            let list: Vec<String> = t
                .statuses
                .iter()
                .map(|(s, n)| format!("{s}: {n}"))
                .collect();
            out.push_str(&format!("non-200 statuses {}\n", list.join("   ")));
        }
        for (kind, n) in &t.errors {
            out.push_str(&format!("error            {n} x {kind}\n"));
        }
        if let Some(f) = &t.first_failure {
            out.push_str(&format!("first failure    {f}\n"));
        }
        if let (Some(pid), Some(fin)) = (a.pid, self.broker_final) {
            let cpu_w = self.broker_cpu_window();
            out.push_str(&format!(
                "broker (pid {pid})  peak RSS {:.1} MiB (now {:.1} MiB)   CPU {:.2} s total",
                fin.peak_rss_kib as f64 / 1024.0,
                fin.rss_kib as f64 / 1024.0,
                fin.cpu_secs
            ));
            if let Some(c) = cpu_w {
                out.push_str(&format!(
                    ", {c:.2} s in window = {:.2} cores, {:.1} µs CPU per issuance",
                    c / self.window,
                    per_issuance_us(c, t.ok)
                ));
            }
            out.push('\n');
        }
        if let Some(c) = self.self_cpu_window() {
            out.push_str(&format!(
                "loadgen          CPU {c:.2} s in window = {:.2} cores, {:.1} µs per request\n",
                c / self.window,
                per_issuance_us(c, self.attempts())
            ));
        }
        if !t.per_second.is_empty() {
            let list: Vec<String> = t.per_second.iter().map(u32::to_string).collect();
            out.push_str(&format!("200s per second  {}\n", list.join(" ")));
        }
        if let Some(m) = self.machine() {
            out.push_str(&format!(
                "machine          cores busy in window: {:.2} processes (broker {:.2}, loadgen {:.2}, kernel threads {:.2}, OTHER {:.2}) + {:.2} irq/softirq; steal {:.2}\n",
                m.busy, m.broker, m.loadgen, m.kthreads, m.other, m.irq, m.steal
            ));
        }
        if a.pid.is_none() {
            out.push_str("(no --pid: broker RSS and CPU not measured)\n");
        }
        for alarm in self.alarms() {
            out.push_str(&alarm);
            out.push('\n');
        }
        out
    }

    fn json(&self) -> serde_json::Value {
        let a = self.args;
        let t = self.total;
        let l = self.lat;
        let fin = self.broker_final;
        serde_json::json!({
            "url": format!("{}{}", a.url, a.path),
            "task": a.task,
            "distinct_subject_tokens": self.tokens,
            "connections": a.connections,
            "threads": a.threads,
            "warmup_secs": a.warmup.as_secs_f64(),
            "duration_secs": self.window,
            "issuances": t.ok,
            "issuances_per_sec": self.rate(),
            "latency_ms": {
                "p50": ms(l.p50), "p90": ms(l.p90), "p99": ms(l.p99),
                "p99_9": ms(l.p999), "max": ms(l.max), "min": ms(l.min), "mean": ms(l.mean),
            },
            "responses": {
                "ok": t.ok,
                "status_4xx": t.count_status(|s| (400..500).contains(&s)),
                "status_503": t.count_status(|s| s == 503),
                "status_5xx_other": t.count_status(|s| s >= 500 && s != 503),
                "by_status": t.statuses.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
                "errors": t.errors.values().sum::<u64>(),
                "errors_by_kind": &t.errors,
                "bad_body": t.bad_body,
                "reconnects": t.reconnects,
                "warmup_completed": t.warmup_completed,
                "non_ok_rate": self.non_ok_rate(),
                "first_failure": t.first_failure,
            },
            "per_second_ok": t.per_second,
            "broker": fin.map(|f| serde_json::json!({
                "pid": a.pid,
                "peak_rss_mib": f.peak_rss_kib as f64 / 1024.0,
                "rss_mib": f.rss_kib as f64 / 1024.0,
                "cpu_secs_total": f.cpu_secs,
                "cpu_secs_window": self.broker_cpu_window(),
                "cpu_us_per_issuance": self.broker_cpu_window().map(|c| per_issuance_us(c, t.ok)),
            })),
            "loadgen_cpu_secs_window": self.self_cpu_window(),
            "machine_cores": self.machine().map(|m| serde_json::json!({
                "processes_busy": m.busy, "broker": m.broker, "loadgen": m.loadgen,
                "kernel_threads": m.kthreads, "other_processes": m.other,
                "irq_softirq": m.irq, "steal": m.steal,
            })),
            "alarms": self.alarms(),
        })
    }
}

fn per_issuance_us(cpu_secs: f64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        cpu_secs * 1e6 / n as f64
    }
}
