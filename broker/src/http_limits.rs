//! HTTP connection limits: how many connections the broker holds, from whom, and for how
//! long, so that no client (silent, slow, idle or flooding) keeps a slot from the others.
//! Every limit is set in the `[http]` config section ([`HttpFile`], validated into
//! [`HttpLimits`]) and documented in `docs/http-limits.md`.
//!
//! - Admission, at accept: [`ConnectionLimiter`] holds at most `max_connections` in all and
//!   `max_connections_per_source` from one source address (an IPv4 address, or an IPv6
//!   /64); a connection over either limit is closed at once, so the accept loop never
//!   stalls and every other client keeps being served.
//! - Time, per connection: [`Activity`] follows a connection's state (bytes read through
//!   [`ActivityIo`], requests through [`RequestGuard`]) and [`drive`] closes it when its
//!   current deadline passes: the first byte within `first_byte_timeout` and the first
//!   request head within `header_timeout` of accept (of the end of the TLS handshake, which
//!   has `tls_handshake_timeout`); later heads within `header_timeout` of their first
//!   byte; nothing in flight for `idle_timeout` (HTTP/1 keep-alive and HTTP/2 alike, after
//!   only the preface too); a response the client stops reading for `idle_timeout`. The
//!   deadlines start at accept, whatever the protocol, so protocol detection is bounded
//!   too.
//! - Size and pace, per request: headers by `max_header_bytes` and `max_headers` (431, by
//!   hyper), HTTP/2 streams by `http2_max_concurrent_streams`; a body through
//!   [`RequestBody`]: a `Content-Length` over the body limit is refused at once (413),
//!   and a body not received within `body_timeout` gets 408.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use crate::config::parse_duration;

/// A boxed body error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Default largest request head (request line and headers; HTTP/2: the header list), bytes.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Default most request header fields (HTTP/1).
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default time from accept to the first byte of the first request.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time from accept to the whole first request head (later requests: from their
/// first byte).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time from the request head to the end of its body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a connection may sit with no request in flight.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default most simultaneous connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default most simultaneous connections from one source address.
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 256;
/// Default most concurrent streams on one HTTP/2 connection.
pub const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Default interval of HTTP/2 keep-alive pings.
pub const DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Default wait for an HTTP/2 ping's acknowledgement before the connection is closed.
pub const DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time allowed for a TLS handshake.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// File descriptors kept for everything but client connections (audit segments, state
/// files, outbound HTTPS, the database): `max_connections` is lowered to the open-file
/// limit minus this.
pub const RESERVED_FDS: u64 = 256;
/// How long an expired HTTP/2 connection has to send its GOAWAY before it is dropped.
pub const HTTP2_GOAWAY_GRACE: Duration = Duration::from_secs(1);
/// Longest any of the `[http]` timeouts may be set to.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// `[http]`: connection and request limits, as written (every key optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    /// Largest request head, bytes (431 over it).
    #[serde(default)]
    pub max_header_bytes: Option<usize>,
    /// Most request header fields (431 over it).
    #[serde(default)]
    pub max_headers: Option<usize>,
    /// Time from accept to the first byte of the first request.
    #[serde(default)]
    pub first_byte_timeout: Option<String>,
    /// Time to receive a whole request head.
    #[serde(default)]
    pub header_timeout: Option<String>,
    /// Time from the request head to the end of its body (408 over it).
    #[serde(default)]
    pub body_timeout: Option<String>,
    /// Time a connection may sit with no request in flight.
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// Most simultaneous connections.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Most simultaneous connections from one source address (IPv6: one /64).
    #[serde(default)]
    pub max_connections_per_source: Option<usize>,
    /// Most concurrent streams on one HTTP/2 connection.
    #[serde(default)]
    pub http2_max_concurrent_streams: Option<u32>,
    /// Interval of HTTP/2 keep-alive pings.
    #[serde(default)]
    pub http2_keep_alive_interval: Option<String>,
    /// Wait for a ping's acknowledgement before the connection is closed.
    #[serde(default)]
    pub http2_keep_alive_timeout: Option<String>,
    /// Time allowed for a TLS handshake.
    #[serde(default)]
    pub tls_handshake_timeout: Option<String>,
}

/// The validated connection and request limits (`[http]`); `Default` is the documented
/// safe defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request head, bytes.
    pub max_header_bytes: usize,
    /// Most request header fields.
    pub max_headers: usize,
    /// Time from accept (TLS: the end of the handshake) to the first byte of the first
    /// request.
    pub first_byte_timeout: Duration,
    /// Time from accept (TLS: the end of the handshake) to the whole first request head;
    /// for later requests on the connection, from their first byte.
    pub header_timeout: Duration,
    /// Time from the request head to the end of its body.
    pub body_timeout: Duration,
    /// Time a connection may sit with no request in flight, and a response may wait for
    /// the client to read it.
    pub idle_timeout: Duration,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// Most simultaneous connections from one source address.
    pub max_connections_per_source: usize,
    /// Most concurrent streams on one HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
    /// Interval of HTTP/2 keep-alive pings.
    pub http2_keep_alive_interval: Duration,
    /// Wait for a ping's acknowledgement.
    pub http2_keep_alive_timeout: Duration,
    /// Time allowed for a TLS handshake.
    pub tls_handshake_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_source: DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
            http2_max_concurrent_streams: DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
            http2_keep_alive_interval: DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL,
            http2_keep_alive_timeout: DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT,
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        }
    }
}

/// `"1h30m"`-style text of `d` (whole seconds, or milliseconds under a second).
fn show(d: Duration) -> String {
    if d.subsec_millis() != 0 || d.is_zero() {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

impl HttpFile {
    /// Validates the section into [`HttpLimits`]: unset keys take the defaults; a
    /// timeout of zero or over [`MAX_TIMEOUT`], a count out of its range, a
    /// `first_byte_timeout` over `header_timeout` or a per-source limit over the total
    /// is refused with a message naming the key.
    pub fn validate(&self) -> Result<HttpLimits, String> {
        let d = HttpLimits::default();
        let dur = |key: &str, v: &Option<String>, default: Duration| -> Result<Duration, String> {
            let Some(text) = v else { return Ok(default) };
            let t = parse_duration(text).map_err(|e| format!("http.{key}: {e}"))?;
            if t.is_zero() || t > MAX_TIMEOUT {
                return Err(format!(
                    "http.{key} = {text:?}: use a duration above zero and at most {}",
                    show(MAX_TIMEOUT)
                ));
            }
            Ok(t)
        };
        let count = |key: &str, v: Option<usize>, default: usize, min: usize, max: usize| match v {
            None => Ok(default),
            Some(n) if (min..=max).contains(&n) => Ok(n),
            Some(n) => Err(format!("http.{key} = {n}: use {min} to {max}")),
        };
        // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
        let max_header_bytes = count(
            "max_header_bytes",
            self.max_header_bytes,
            d.max_header_bytes,
            8 * 1024,
            1024 * 1024,
        )?;
        let max_headers = count("max_headers", self.max_headers, d.max_headers, 8, 1000)?;
        let max_connections = count(
            "max_connections",
            self.max_connections,
            d.max_connections,
            1,
            1_000_000,
        )?;
        let max_connections_per_source = count(
            "max_connections_per_source",
            self.max_connections_per_source,
            d.max_connections_per_source.min(max_connections),
            1,
            1_000_000,
        )?;
        if max_connections_per_source > max_connections {
            return Err(format!(
                "http.max_connections_per_source ({max_connections_per_source}) is over \
                 http.max_connections ({max_connections})"
            ));
        }
        let streams = count(
            "http2_max_concurrent_streams",
            self.http2_max_concurrent_streams.map(|n| n as usize),
            d.http2_max_concurrent_streams as usize,
            1,
            10_000,
        )?;
        let first_byte_timeout = dur(
            "first_byte_timeout",
            &self.first_byte_timeout,
            d.first_byte_timeout,
        )?;
        let header_timeout = dur("header_timeout", &self.header_timeout, d.header_timeout)?;
        if first_byte_timeout > header_timeout {
            return Err(format!(
                "http.first_byte_timeout ({}) is over http.header_timeout ({}): the first byte \
                 cannot be allowed longer than the whole head",
                show(first_byte_timeout),
                show(header_timeout)
            ));
        }
        Ok(HttpLimits {
            max_header_bytes,
            max_headers,
            first_byte_timeout,
            header_timeout,
            body_timeout: dur("body_timeout", &self.body_timeout, d.body_timeout)?,
            idle_timeout: dur("idle_timeout", &self.idle_timeout, d.idle_timeout)?,
            max_connections,
            max_connections_per_source,
            http2_max_concurrent_streams: u32::try_from(streams).unwrap_or(u32::MAX),
            http2_keep_alive_interval: dur(
                "http2_keep_alive_interval",
                &self.http2_keep_alive_interval,
                d.http2_keep_alive_interval,
            )?,
            http2_keep_alive_timeout: dur(
                "http2_keep_alive_timeout",
                &self.http2_keep_alive_timeout,
                d.http2_keep_alive_timeout,
            )?,
            tls_handshake_timeout: dur(
                "tls_handshake_timeout",
                &self.tls_handshake_timeout,
                d.tls_handshake_timeout,
            )?,
        })
    }
}

/// The validated `[http]` section, or the defaults when it is absent.
pub fn from_file(file: Option<&HttpFile>) -> Result<HttpLimits, String> {
    file.map_or_else(|| Ok(HttpLimits::default()), HttpFile::validate)
}

impl HttpLimits {
    /// The HTTP/1 + HTTP/2 connection builder with these limits. Header-read timing is
    /// left to [`drive`] (hyper's own HTTP/1 header timer starts only once a first byte
    /// arrives and knows nothing of HTTP/2); its 30 s default is turned off.
    pub fn connection_builder(&self) -> Builder<TokioExecutor> {
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(self.max_header_bytes)
            .max_headers(self.max_headers);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(self.http2_max_concurrent_streams)
            .keep_alive_interval(self.http2_keep_alive_interval)
            .keep_alive_timeout(self.http2_keep_alive_timeout);
        builder
    }
}

// Open files
// ---------------------------------------------------------------------------------------

/// Raises this process's soft open-file limit (RLIMIT_NOFILE) to its hard limit, so that
/// `max_connections` is not cut short by a low default (1024 on many systems). Returns
/// the soft limit now in force (`None`: unlimited or unknown).
pub fn raise_open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let now = getrlimit(Resource::Nofile);
        if now.current == now.maximum {
            return now.current;
        }
        let raised = Rlimit {
            current: now.maximum,
            maximum: now.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => now.maximum,
            Err(e) => {
                tracing::warn!(error = %e, soft = ?now.current, hard = ?now.maximum,
                    "could not raise the open-file limit to its hard limit");
                now.current
            }
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// `max_connections`, lowered when the open-file limit `soft` leaves too little room for
/// it beside [`RESERVED_FDS`] (at least 1).
pub fn connection_capacity(max_connections: usize, soft: Option<u64>) -> usize {
    match soft {
        Some(soft) => {
            let room = usize::try_from(soft.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
            max_connections.min(room).max(1)
        }
        None => max_connections,
    }
}

// Admission
// ---------------------------------------------------------------------------------------

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// `max_connections` are open.
    Total,
    /// `max_connections_per_source` are open from this source.
    PerSource,
}

impl Refusal {
    /// The setting that refused it.
    pub fn setting(self) -> &'static str {
        match self {
            Refusal::Total => "http.max_connections",
            Refusal::PerSource => "http.max_connections_per_source",
        }
    }
}

/// The source a connection counts against: an IPv4 address (IPv4-mapped IPv6 included)
/// or an IPv6 /64, the smallest block one client is usually given.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Admits connections within `max_connections` in all and `max_connections_per_source`
/// per [`source_key`]; a refused connection is for the caller to close at once.
#[derive(Debug)]
pub struct ConnectionLimiter {
    total: Arc<Semaphore>,
    max_total: usize,
    max_per_source: usize,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    /// Refusals since the last warning, and when it was written.
    refused: Mutex<(u64, Option<Instant>)>,
}

/// One admitted connection: its slots are given back when it is dropped.
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    limiter: Arc<ConnectionLimiter>,
    key: IpAddr,
}

/// How often refusals are reported in the log (with their count).
const REFUSAL_WARN_INTERVAL: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConnectionLimiter {
    /// A limiter of `max_total` connections, `max_per_source` from one source.
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        let max_total = max_total.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Self {
            total: Arc::new(Semaphore::new(max_total)),
            max_total,
            max_per_source: max_per_source.max(1),
            per_source: Mutex::new(HashMap::new()),
            refused: Mutex::new((0, None)),
        })
    }

    /// Admits a connection from `ip`, or says which limit it is over.
    pub fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refusal> {
        let key = source_key(ip);
        let mut map = lock(&self.per_source);
        let open = map.get(&key).copied().unwrap_or(0);
        if open >= self.max_per_source {
            return Err(Refusal::PerSource);
        }
        let permit = Arc::clone(&self.total)
            .try_acquire_owned()
            .map_err(|_| Refusal::Total)?;
        map.insert(key, open + 1);
        Ok(Admission {
            _permit: permit,
            limiter: Arc::clone(self),
            key,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max_total - self.total.available_permits()
    }

    /// Connections open now from `ip`'s source.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        lock(&self.per_source)
            .get(&source_key(ip))
            .copied()
            .unwrap_or(0)
    }

    /// Logs a refusal: a warning at most every `REFUSAL_WARN_INTERVAL` (10 s) with the count
    /// since the last one, each refusal at debug level.
    pub fn note_refusal(&self, refusal: Refusal, peer: SocketAddr) {
        tracing::debug!(%peer, limit = refusal.setting(), "connection refused at its limit");
        let mut r = lock(&self.refused);
        r.0 += 1;
        let now = Instant::now();
        if r.1
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_WARN_INTERVAL)
        {
            tracing::warn!(
                refused = r.0,
                limit = refusal.setting(),
                open = self.open(),
                "refusing new connections over a connection limit (closed at once)"
            );
            *r = (0, Some(now));
        }
    }

    /// Resolves once every admitted connection has been dropped.
    pub async fn drained(&self) {
        let all = u32::try_from(self.max_total).unwrap_or(u32::MAX);
        let _ = self.total.acquire_many(all).await;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut map = lock(&self.limiter.per_source);
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

// Per-connection deadlines
// ---------------------------------------------------------------------------------------

/// The protocol a connection speaks, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Not known yet (fewer bytes than the HTTP/2 preface, all matching it).
    Unknown,
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 with prior knowledge or after ALPN (the preface was read).
    Http2,
}

/// Which limit closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expiry {
    /// No byte within `first_byte_timeout`.
    FirstByte,
    /// No complete request head within `header_timeout`.
    Header,
    /// Nothing in flight for `idle_timeout`.
    Idle,
    /// A response the client did not read for `idle_timeout`.
    Send,
}

impl Expiry {
    /// The setting that closed the connection.
    pub fn setting(self) -> &'static str {
        match self {
            Expiry::FirstByte => "http.first_byte_timeout",
            Expiry::Header => "http.header_timeout",
            Expiry::Idle | Expiry::Send => "http.idle_timeout",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    first_byte: Duration,
    header: Duration,
    idle: Duration,
}

#[derive(Debug)]
struct State {
    /// Accept, or the end of the TLS handshake.
    started: Instant,
    in_flight: usize,
    served: u64,
    idle_since: Instant,
    /// First byte read since the connection became idle (the next head has started).
    head_started: Option<Instant>,
    protocol: Protocol,
    write_blocked_since: Option<Instant>,
}

impl State {
    /// The connection's next deadline and the limit behind it (`None`: a request is in
    /// flight and the socket takes writes, so the request's own timeouts apply).
    fn deadline(&self, t: Timeouts) -> Option<(Instant, Expiry)> {
        let phase = if self.in_flight > 0 {
            None
        } else if self.served == 0 {
            Some(match self.head_started {
                None => (self.started + t.first_byte, Expiry::FirstByte),
                Some(_) => (self.started + t.header, Expiry::Header),
            })
        } else if self.protocol == Protocol::Http2 {
            // PINGs and WINDOW_UPDATEs are bytes too: only a request ends HTTP/2 idleness.
            Some((self.idle_since + t.idle, Expiry::Idle))
        } else {
            Some(match self.head_started {
                None => (self.idle_since + t.idle, Expiry::Idle),
                Some(at) => (at + t.header, Expiry::Header),
            })
        };
        let send = self
            .write_blocked_since
            .map(|at| (at + t.idle, Expiry::Send));
        match (phase, send) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

/// What one connection is doing, for its deadline: bytes read (through [`ActivityIo`]),
/// requests in flight (through [`RequestGuard`]), writes blocked on a client that does
/// not read.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<State>,
    /// Set while the next byte read starts a request head (nothing in flight and no head
    /// byte yet), so that reads take the lock only then.
    awaiting_head: AtomicBool,
    changed: Notify,
    timeouts: Timeouts,
}

impl Activity {
    /// A connection starting now (at accept, or at the end of its TLS handshake).
    pub fn new(limits: &HttpLimits) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            state: Mutex::new(State {
                started: now,
                in_flight: 0,
                served: 0,
                idle_since: now,
                head_started: None,
                protocol: Protocol::Unknown,
                write_blocked_since: None,
            }),
            awaiting_head: AtomicBool::new(true),
            changed: Notify::new(),
            timeouts: Timeouts {
                first_byte: limits.first_byte_timeout,
                header: limits.header_timeout,
                idle: limits.idle_timeout,
            },
        })
    }

    fn on_read(&self) {
        if !self.awaiting_head.load(Ordering::Acquire) {
            return;
        }
        let mut s = lock(&self.state);
        if s.in_flight == 0 && s.head_started.is_none() {
            s.head_started = Some(Instant::now());
            self.changed.notify_one();
        }
        self.awaiting_head.store(false, Ordering::Release);
    }

    fn on_protocol(&self, protocol: Protocol) {
        lock(&self.state).protocol = protocol;
        self.changed.notify_one();
    }

    fn on_write_blocked(&self, blocked: bool) {
        let mut s = lock(&self.state);
        s.write_blocked_since = blocked.then(Instant::now);
        if blocked {
            self.changed.notify_one();
        }
    }

    /// A request head arrived: the connection is busy until the guard (held by the
    /// response body) is dropped.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        let mut s = lock(&self.state);
        s.in_flight += 1;
        s.head_started = None;
        self.awaiting_head.store(false, Ordering::Release);
        self.changed.notify_one();
        RequestGuard(Arc::clone(self))
    }

    fn request_finished(&self) {
        let mut s = lock(&self.state);
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.served += 1;
            s.idle_since = Instant::now();
            s.head_started = None;
            self.awaiting_head.store(true, Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// The connection's next deadline and the limit behind it.
    pub fn deadline(&self) -> Option<(Instant, Expiry)> {
        lock(&self.state).deadline(self.timeouts)
    }

    /// The protocol detected so far.
    pub fn protocol(&self) -> Protocol {
        lock(&self.state).protocol
    }
}

/// A request in flight on its connection; dropped when its response has been sent (or
/// abandoned).
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection's byte stream, reporting reads, the protocol (from the first bytes) and
/// blocked writes to its [`Activity`].
#[derive(Debug)]
pub struct ActivityIo<T> {
    inner: T,
    activity: Arc<Activity>,
    /// Preface bytes matched so far; `None` once the protocol is known.
    sniffed: Option<usize>,
    write_blocked: bool,
}

impl<T> ActivityIo<T> {
    /// Wraps `inner`, reporting to `activity`.
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            activity,
            sniffed: Some(0),
            write_blocked: false,
        }
    }

    fn wrote<R>(&mut self, r: &Poll<R>) {
        let blocked = r.is_pending();
        if blocked != self.write_blocked {
            self.write_blocked = blocked;
            self.activity.on_write_blocked(blocked);
        }
    }
}

/// Matches `data` against the rest of the HTTP/2 preface after `pos` bytes.
fn sniff(pos: &mut Option<usize>, data: &[u8]) -> Option<Protocol> {
    let p = (*pos)?;
    let want = &H2_PREFACE[p..];
    let n = want.len().min(data.len());
    if data[..n] != want[..n] {
        *pos = None;
        return Some(Protocol::Http1);
    }
    if p + n == H2_PREFACE.len() {
        *pos = None;
        Some(Protocol::Http2)
    } else {
        *pos = Some(p + n);
        None
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                if let Some(p) = sniff(&mut this.sniffed, new) {
                    this.activity.on_protocol(p);
                }
                this.activity.on_read();
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&r);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.wrote(&r);
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// How a driven connection ended.
#[derive(Debug)]
pub enum Ended<E> {
    /// The connection future finished (the client closed, or an error).
    Finished(Result<(), E>),
    /// A limit closed it.
    Expired(Expiry),
}

/// Runs `conn` until it finishes or its [`Activity`] deadline passes, whichever is first.
/// When `stop` turns true, `graceful` is called once (finish what is in flight, accept no
/// more) and the connection keeps its deadlines. An HTTP/2 connection past its deadline
/// is shut down gracefully (GOAWAY) within [`HTTP2_GOAWAY_GRACE`]; any other is dropped
/// at once (the socket closed).
pub async fn drive<C, E, G>(
    conn: C,
    activity: Arc<Activity>,
    mut stop: watch::Receiver<bool>,
    graceful: G,
) -> Ended<E>
where
    C: Future<Output = Result<(), E>>,
    G: Fn(Pin<&mut C>),
{
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let deadline = activity.deadline();
        let expired = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = conn.as_mut() => return Ended::Finished(r),
            () = activity.changed.notified() => {}
            () = expired => {
                // Recomputed: the connection may have moved on since.
                let Some((at, why)) = activity.deadline() else { continue };
                if at > Instant::now() {
                    continue;
                }
                if activity.protocol() == Protocol::Http2 {
                    graceful(conn.as_mut());
                    let _ = tokio::time::timeout(HTTP2_GOAWAY_GRACE, conn.as_mut()).await;
                }
                return Ended::Expired(why);
            }
            () = async { let _ = stop.wait_for(|v| *v).await; }, if !stopping => {
                stopping = true;
                graceful(conn.as_mut());
            }
        }
    }
}

// Request and response bodies
// ---------------------------------------------------------------------------------------

/// The declared `Content-Length` of a request, if any and well-formed.
pub fn declared_length(headers: &hyper::HeaderMap) -> Option<u64> {
    headers
        .get(hyper::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether a request body has been read to its end (or failed), shared between the
/// body and the service that races the handler against `body_timeout`.
#[derive(Debug, Default)]
pub struct BodyProgress {
    done: AtomicBool,
}

impl BodyProgress {
    /// Whether the body has been read to its end, or has failed.
    pub fn done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Resolves when `timeout` has passed and the body is still not read to its end;
    /// never once it has been.
    pub async fn overdue(&self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
        if self.done() {
            std::future::pending::<()>().await;
        }
    }
}

/// A request body under the body limit: a declared `Content-Length` over `max_bytes`
/// fails at the first read, without waiting for a byte, with the same length-limit error
/// the router's body limit gives (so the handler answers 413 and records it as it does
/// for any oversized body).
#[derive(Debug)]
pub struct RequestBody<B> {
    inner: B,
    over_limit: bool,
    progress: Arc<BodyProgress>,
}

impl<B: Body> RequestBody<B> {
    /// Wraps `inner`, whose declared length is `declared`.
    pub fn new(inner: B, declared: Option<u64>, max_bytes: usize) -> Self {
        let over_limit = declared.is_some_and(|n| n > max_bytes as u64);
        let progress = Arc::new(BodyProgress::default());
        if inner.is_end_stream() && !over_limit {
            progress.done.store(true, Ordering::Release);
        }
        Self {
            inner,
            over_limit,
            progress,
        }
    }

    /// Whether the declared length is over the limit.
    pub fn over_limit(&self) -> bool {
        self.over_limit
    }

    /// The body's progress, for [`BodyProgress::overdue`].
    pub fn progress(&self) -> Arc<BodyProgress> {
        Arc::clone(&self.progress)
    }
}

/// `http_body_util`'s length-limit error (which has no public constructor), the one
/// axum's body extractors turn into 413: obtained from a one-byte body limited to zero.
fn length_limit_error(cx: &mut Context<'_>) -> BoxError {
    let mut probe =
        http_body_util::Limited::new(http_body_util::Full::new(Bytes::from_static(b"\0")), 0);
    match Pin::new(&mut probe).poll_frame(cx) {
        Poll::Ready(Some(Err(e))) => e,
        _ => Box::new(io::Error::other("length limit exceeded")),
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.over_limit {
            this.progress.done.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(length_limit_error(cx))));
        }
        let r = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => None,
            Poll::Ready(Some(Ok(frame))) => Some(Ok(frame)),
            Poll::Ready(Some(Err(e))) => Some(Err(e.into())),
        };
        if r.as_ref().is_none_or(Result::is_err) || this.inner.is_end_stream() {
            this.progress.done.store(true, Ordering::Release);
        }
        Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        !self.over_limit && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.over_limit {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

/// A response body that holds its request's [`RequestGuard`] until it has been sent to
/// its end (or dropped), so that the connection counts as busy, not idle, meanwhile.
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    guard: Option<RequestGuard>,
}

impl<B> TrackedBody<B> {
    /// `inner`, keeping `guard` until its end.
    pub fn new(inner: B, guard: RequestGuard) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guard = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
