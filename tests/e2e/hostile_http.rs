//! Hostile HTTP clients against the real broker (issue 19): silent, slowloris, idle
//! HTTP/2 and flooding connections, oversized heads and declared bodies. Each test sets
//! short `[http]` limits so that it stays fast, and checks both halves of the contract: the
//! hostile connection is refused or closed within its limit, and a well-behaved client
//! keeps being served meanwhile.
//!
//! Times are measured on real sockets; the bounds allow scheduling slack on a busy
//! machine (never a sleep standing in for the broker's behaviour).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_tests::{
    IssuerKey, Options, SUBJECT, TASK, TestBroker, TokenRequest, http_client,
    raise_open_files_limit, sign, workload_claims,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// A broker with `[http]` set to `http` (TOML lines).
fn broker(http: &str) -> TestBroker {
    TestBroker::start(Options {
        extra_toml: format!("\n[http]\n{http}\n"),
        ..Options::default()
    })
}

fn addr(b: &TestBroker) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], b.port()))
}

/// A TCP connection to the broker from `source` (a loopback address: 127.0.0.2 is a
/// second source on Linux).
async fn connect_from(b: &TestBroker, source: [u8; 4]) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("binding the source address");
    socket.connect(addr(b)).await.expect("connecting")
}

/// Reads (discarding) until the peer closes; the time that took, or `None` if it was
/// still open after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// Whether the broker still holds `stream` open (nothing to read, no EOF).
fn still_open(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(stream.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// An HTTP/1.1 response read off a raw socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: String,
}

/// Writes `request` and reads one response (head, then a `Content-Length` body).
async fn raw_exchange(stream: &mut TcpStream, request: &[u8]) -> RawResponse {
    stream
        .write_all(request)
        .await
        .expect("writing the request");
    read_response(stream).await
}

async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).await.expect("reading the response");
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&data)
        );
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while data.len() < head_end + length {
        let n = stream.read(&mut buf).await.expect("reading the body");
        assert!(n > 0, "connection closed inside the body");
        data.extend_from_slice(&buf[..n]);
    }
    RawResponse {
        status,
        head,
        body: String::from_utf8_lossy(&data[head_end..head_end + length]).into_owned(),
    }
}

fn healthz_request() -> &'static [u8] {
    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
}

/// Issues one token with a fresh client (a new connection): `true` on 200.
async fn issues_a_token(b: &TestBroker) -> bool {
    let token = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
    let res = http_client()
        .post(format!("{}/oauth2/token", b.base_url()))
        .form(&TokenRequest::exchange(&token, TASK).params)
        .send()
        .await;
    matches!(res, Ok(r) if r.status() == 200)
}

async fn healthz_ok(b: &TestBroker) -> bool {
    let res = http_client()
        .get(format!("{}/healthz", b.base_url()))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    matches!(res, Ok(r) if r.status() == 200)
}

// --- silent and slow connections --------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn silent_connection_is_closed_at_the_first_byte_timeout() {
    let b = broker("first_byte_timeout = \"1s\"\nheader_timeout = \"3s\"");
    let mut silent = TcpStream::connect(addr(&b)).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(10))
        .await
        .expect("a silent connection must be closed (it was kept open forever)");
    eprintln!("silent connection closed after {took:?}");
    assert!(
        took >= Duration::from_millis(900),
        "closed at {took:?}, before first_byte_timeout"
    );
    assert!(
        took < Duration::from_millis(2900),
        "closed at {took:?}: by first_byte_timeout (1 s), not header_timeout (3 s)"
    );
    assert!(healthz_ok(&b).await, "the broker still serves");
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_connections_are_closed_within_the_header_timeout_while_a_client_gets_tokens() {
    const SLOW: usize = 50;
    let b = broker("first_byte_timeout = \"1s\"\nheader_timeout = \"2s\"");
    let mut slow = JoinSet::new();
    for _ in 0..SLOW {
        let stream = TcpStream::connect(addr(&b)).await.unwrap();
        slow.spawn(async move {
            let started = Instant::now();
            let (mut rd, mut wr) = stream.into_split();
            let drip = async move {
                // A request head one byte every 200 ms, never finished.
                for byte in b"POST /oauth2/token HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
                    .iter()
                    .cycle()
                {
                    if wr.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                std::future::pending::<()>().await;
            };
            let closed = async {
                let mut buf = [0u8; 1024];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => return started.elapsed(),
                        Ok(_) => {}
                    }
                }
            };
            tokio::select! {
                took = closed => Some(took),
                () = drip => None,
                () = tokio::time::sleep(Duration::from_secs(15)) => None,
            }
        });
    }
    // Meanwhile a normal client keeps issuing tokens on its keep-alive connection.
    let token = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
    let req = TokenRequest::exchange(&token, TASK);
    let mut issued = 0;
    for _ in 0..20 {
        let reply = b.token(&req).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        issued += 1;
    }
    let mut times = Vec::new();
    while let Some(r) = slow.join_next().await {
        times.push(
            r.unwrap()
                .expect("a slowloris connection was not closed within 15 s"),
        );
    }
    let (min, max) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
    eprintln!(
        "{SLOW} slowloris connections closed after {min:?}..{max:?}; {issued} tokens issued meanwhile"
    );
    assert!(
        min >= Duration::from_millis(1900),
        "a slowloris connection closed at {min:?}, before header_timeout"
    );
    assert!(
        max < Duration::from_millis(3500),
        "a slowloris connection was held {max:?}, past header_timeout (2 s)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_body_gets_408_at_the_body_timeout() {
    let b = broker("body_timeout = \"1s\"");
    let mut s = TcpStream::connect(addr(&b)).await.unwrap();
    let started = Instant::now();
    let res = raw_exchange(
        &mut s,
        b"POST /oauth2/token HTTP/1.1\r\nHost: 127.0.0.1\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_type",
    )
    .await;
    let took = started.elapsed();
    eprintln!("slow body answered {} after {took:?}", res.status);
    assert_eq!(res.status, 408, "{res:?}");
    assert!(res.body.contains("invalid_request"), "{res:?}");
    assert!(res.body.contains("http.body_timeout"), "{res:?}");
    assert!(
        took < Duration::from_secs(5),
        "answered at {took:?}: by body_timeout (1 s), not request_timeout (10 s)"
    );
    assert!(
        res.head.to_ascii_lowercase().contains("connection: close"),
        "{res:?}"
    );
    assert!(
        closed_within(&mut s, Duration::from_secs(5))
            .await
            .is_some()
    );
}

// --- sizes ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_content_length_gets_413_at_once() {
    // Generous body and request timeouts: only an immediate refusal passes.
    let b = broker("body_timeout = \"30s\"");
    let mut s = TcpStream::connect(addr(&b)).await.unwrap();
    let started = Instant::now();
    let res = raw_exchange(
        &mut s,
        b"POST /oauth2/token HTTP/1.1\r\nHost: 127.0.0.1\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 10737418240\r\n\r\n\
          grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange",
    )
    .await;
    let took = started.elapsed();
    eprintln!(
        "Content-Length 10737418240 answered {} after {took:?}",
        res.status
    );
    assert_eq!(res.status, 413, "{res:?}");
    assert!(res.body.contains("\"invalid_request\""), "{res:?}");
    assert!(
        took < Duration::from_secs(5),
        "answered after {took:?}: the body was waited for"
    );
    assert!(
        res.head.to_ascii_lowercase().contains("connection: close"),
        "the unread body cannot be followed by another request: {res:?}"
    );
    assert!(
        closed_within(&mut s, Duration::from_secs(5))
            .await
            .is_some()
    );
    // A well-sized request is served as before.
    assert!(issues_a_token(&b).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_headers_get_431() {
    let b = broker("max_header_bytes = 16384\nmax_headers = 50");
    // One header over max_header_bytes.
    let mut s = TcpStream::connect(addr(&b)).await.unwrap();
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let res = raw_exchange(&mut s, big.as_bytes()).await;
    assert_eq!(res.status, 431, "{res:?}");
    // More header fields than max_headers.
    let mut s = TcpStream::connect(addr(&b)).await.unwrap();
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for i in 0..60 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let res = raw_exchange(&mut s, many.as_bytes()).await;
    assert_eq!(res.status, 431, "{res:?}");
    // Within both limits: served.
    let mut s = TcpStream::connect(addr(&b)).await.unwrap();
    let res = raw_exchange(&mut s, healthz_request()).await;
    assert_eq!(res.status, 200, "{res:?}");
}

// --- HTTP/2 -----------------------------------------------------------------------------

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const H2_DATA: u8 = 0x0;
const H2_HEADERS: u8 = 0x1;
const H2_SETTINGS: u8 = 0x4;
const H2_GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `GET /healthz` as an HPACK block (static-table indexes and literals, no Huffman).
fn h2_get_healthz() -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    block.push(0x44); // :path, literal with indexing
    block.push(8);
    block.extend_from_slice(b"/healthz");
    block.push(0x41); // :authority
    block.push(9);
    block.extend_from_slice(b"127.0.0.1");
    block
}

/// What the broker sent on a raw HTTP/2 connection, until it closed it.
#[derive(Debug, Default)]
struct H2Trace {
    /// When stream 1's response ended, since the start.
    response_done: Option<Duration>,
    /// `:status` 200 (HPACK static index 8) on stream 1.
    status_200: bool,
    goaway: bool,
    /// When the broker closed the connection, since the start.
    closed: Option<Duration>,
}

/// Reads frames (acknowledging the broker's SETTINGS) until the connection closes or
/// `limit` passes.
async fn h2_trace(s: &mut TcpStream, started: Instant, limit: Duration) -> H2Trace {
    let mut trace = H2Trace::default();
    let mut data = Vec::new();
    let mut buf = [0u8; 16384];
    let _ = tokio::time::timeout(limit, async {
        loop {
            while data.len() >= 9 {
                let len =
                    usize::from(data[0]) << 16 | usize::from(data[1]) << 8 | usize::from(data[2]);
                if data.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (data[3], data[4]);
                let stream = u32::from_be_bytes([data[5] & 0x7f, data[6], data[7], data[8]]);
                let payload = data[9..9 + len].to_vec();
                data.drain(..9 + len);
                match kind {
                    H2_SETTINGS if flags & 0x1 == 0 => {
                        let _ = s.write_all(&h2_frame(H2_SETTINGS, 0x1, 0, &[])).await;
                    }
                    H2_HEADERS if stream == 1 => {
                        trace.status_200 |= payload.first() == Some(&0x88);
                        if flags & END_STREAM != 0 {
                            trace.response_done = Some(started.elapsed());
                        }
                    }
                    H2_DATA if stream == 1 && flags & END_STREAM != 0 => {
                        trace.response_done = Some(started.elapsed());
                    }
                    H2_GOAWAY => trace.goaway = true,
                    _ => {}
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    trace.closed = Some(started.elapsed());
                    return;
                }
                Ok(n) => data.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    trace
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_http2_connections_are_closed_after_one_request_and_after_only_the_preface() {
    let b = broker("first_byte_timeout = \"1s\"\nheader_timeout = \"2s\"\nidle_timeout = \"1s\"");

    // One request, then idle: closed idle_timeout after the response.
    let mut s = TcpStream::connect(addr(&b)).await.unwrap();
    let started = Instant::now();
    let mut hello = H2_PREFACE.to_vec();
    hello.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
    hello.extend(h2_frame(H2_HEADERS, 0x4 | END_STREAM, 1, &h2_get_healthz()));
    s.write_all(&hello).await.unwrap();
    let t = h2_trace(&mut s, started, Duration::from_secs(15)).await;
    eprintln!("HTTP/2 after one request: {t:?}");
    assert!(t.status_200, "GET /healthz over HTTP/2 was served: {t:?}");
    let done = t.response_done.expect("the response ended");
    let closed = t
        .closed
        .expect("an idle HTTP/2 connection must be closed (it was kept forever)");
    let idle = closed - done;
    assert!(t.goaway, "closed with a GOAWAY: {t:?}");
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_millis(3500),
        "closed {idle:?} after the response; idle_timeout is 1 s"
    );

    // Only the preface (and SETTINGS), never a request: closed by header_timeout.
    let mut s = TcpStream::connect(addr(&b)).await.unwrap();
    let started = Instant::now();
    let mut hello = H2_PREFACE.to_vec();
    hello.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    let t = h2_trace(&mut s, started, Duration::from_secs(15)).await;
    eprintln!("HTTP/2 preface only: {t:?}");
    let closed = t
        .closed
        .expect("a preface-only HTTP/2 connection must be closed");
    assert!(
        closed >= Duration::from_millis(1900) && closed < Duration::from_millis(4500),
        "closed after {closed:?}; header_timeout is 2 s"
    );

    // Half a preface (protocol detection never finishes): closed by header_timeout too.
    let mut s = TcpStream::connect(addr(&b)).await.unwrap();
    s.write_all(&H2_PREFACE[..10]).await.unwrap();
    let took = closed_within(&mut s, Duration::from_secs(15))
        .await
        .expect("a connection stuck in protocol detection must be closed");
    assert!(
        took < Duration::from_millis(3500),
        "half a preface held {took:?}"
    );

    // A real HTTP/2 client (prior knowledge) is served, tokens included.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let res = h2
        .get(format!("{}/healthz", b.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    let token = sign(IssuerKey::Rsa, &workload_claims(SUBJECT));
    let res = h2
        .post(format!("{}/oauth2/token", b.base_url()))
        .form(&TokenRequest::exchange(&token, TASK).params)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "{}",
        res.text().await.unwrap_or_default()
    );
}

// --- connection counts ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_idle_connections_do_not_stop_a_new_client() {
    const IDLE: usize = 2000;
    if let Err(e) = raise_open_files_limit(IDLE as u64 + 500) {
        panic!("this test holds {IDLE} sockets: {e}");
    }
    // Long enough that every idle connection is still held while the new client is served.
    let b = broker(
        "first_byte_timeout = \"60s\"\nheader_timeout = \"60s\"\nidle_timeout = \"60s\"\n\
         max_connections_per_source = 5000",
    );
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let mut s = TcpStream::connect(addr(&b)).await.unwrap();
        // Half silent, half idle after a served request on a keep-alive connection.
        if i % 2 == 1 {
            let res = raw_exchange(&mut s, healthz_request()).await;
            assert_eq!(res.status, 200);
        }
        idle.push(s);
    }
    let started = Instant::now();
    assert!(
        healthz_ok(&b).await,
        "/healthz answered with {IDLE} idle connections open"
    );
    assert!(
        issues_a_token(&b).await,
        "a token issued with {IDLE} idle connections open"
    );
    let served_in = started.elapsed();
    let open = idle.iter().filter(|s| still_open(s)).count();
    eprintln!("{open} of {IDLE} idle connections held; new client served in {served_in:?}");
    assert_eq!(open, IDLE, "every idle connection was still held");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_max_connections_are_closed_at_once_and_service_resumes() {
    let b = broker(
        "max_connections = 20\nmax_connections_per_source = 20\n\
         first_byte_timeout = \"2s\"\nheader_timeout = \"2s\"",
    );
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(addr(&b)).await.unwrap());
    }
    // No wait needed: the listener accepts in connection order, so the twenty are admitted
    // (and counted) before the accept loop reaches the next one.
    let started = Instant::now();
    let mut extra = TcpStream::connect(addr(&b)).await.unwrap();
    let _ = extra.write_all(healthz_request()).await;
    let took = closed_within(&mut extra, Duration::from_secs(10))
        .await
        .expect("the connection over the limit was closed");
    eprintln!("connection over max_connections closed after {took:?}");
    assert!(
        took < Duration::from_millis(1500),
        "closed after {took:?}: at once, not after the held ones time out (2 s)"
    );
    // Once the silent ones are closed by their deadline, new clients are served again.
    let deadline = started + Duration::from_secs(15);
    loop {
        if healthz_ok(&b).await {
            break;
        }
        assert!(Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed = started.elapsed();
    eprintln!("served again after {resumed:?}");
    assert!(
        held.iter().all(|s| !still_open(s)),
        "the silent ones were closed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn per_source_limit_refuses_the_extra_connection_while_another_source_is_served() {
    const PER_SOURCE: usize = 10;
    let b = broker(&format!(
        "max_connections_per_source = {PER_SOURCE}\n\
         first_byte_timeout = \"60s\"\nheader_timeout = \"60s\"\nidle_timeout = \"60s\""
    ));
    let flooder = [127, 0, 0, 2];
    let mut held = Vec::new();
    for _ in 0..PER_SOURCE {
        let mut s = connect_from(&b, flooder).await;
        // Each is admitted and served (so each is counted before the next one).
        let res = raw_exchange(&mut s, healthz_request()).await;
        assert_eq!(res.status, 200);
        held.push(s);
    }
    // One more from the same source: closed at once.
    let mut extra = connect_from(&b, flooder).await;
    let _ = extra.write_all(healthz_request()).await;
    let took = closed_within(&mut extra, Duration::from_secs(10))
        .await
        .expect("the connection over the per-source limit was closed");
    eprintln!(
        "connection {} from 127.0.0.2 closed after {took:?}",
        PER_SOURCE + 1
    );
    assert!(
        took < Duration::from_secs(2),
        "closed at once, not after {took:?}"
    );
    // Another source is served meanwhile: /healthz and a token.
    assert!(healthz_ok(&b).await);
    assert!(issues_a_token(&b).await);
    let mut other = connect_from(&b, [127, 0, 0, 1]).await;
    assert_eq!(
        raw_exchange(&mut other, healthz_request()).await.status,
        200
    );
    assert!(
        held.iter().all(still_open),
        "the admitted ones are still served"
    );
    // A slot given back is reusable by the first source.
    drop(held.pop());
    let started = Instant::now();
    loop {
        let mut s = connect_from(&b, flooder).await;
        let _ = s.write_all(healthz_request()).await;
        let mut buf = [0u8; 12];
        if let Ok(Ok(12)) =
            tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await
        {
            assert_eq!(&buf, b"HTTP/1.1 200");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the freed slot was never reused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// --- TLS --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn tls_handshake_and_first_byte_are_timed_out() {
    use broker_tests::pki::{self, LeafSpec, Pki};
    if !pki::tools_present("tls_handshake_and_first_byte_are_timed_out", &["openssl"]) {
        return;
    }
    let pki = Pki::new();
    let ca = pki.ca("server-ca", "Hostile HTTP Test CA");
    let server = ca.issue(&LeafSpec::server("server", "broker.test"));
    let b = TestBroker::start(Options {
        tls: Some(broker_tests::TlsOptions {
            cert: server.cert.clone(),
            key: server.key.clone(),
            server_ca: ca.cert.clone(),
            client_cas: Vec::new(),
        }),
        extra_toml: "\n[http]\ntls_handshake_timeout = \"1s\"\nfirst_byte_timeout = \"2s\"\n\
                     header_timeout = \"3s\"\n"
            .to_owned(),
        ..Options::default()
    });

    // No ClientHello: closed at the handshake timeout.
    let mut silent = TcpStream::connect(addr(&b)).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(10))
        .await
        .expect("a connection that never starts its handshake must be closed");
    eprintln!("no ClientHello: closed after {took:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1900),
        "closed after {took:?}; tls_handshake_timeout is 1 s"
    );

    // A finished handshake, then nothing: closed at the first-byte timeout after it.
    let ca_pem = std::fs::read(&ca.cert).unwrap();
    let port = b.port();
    let took = tokio::task::spawn_blocking(move || tls_then_silence(&ca_pem, port))
        .await
        .unwrap();
    eprintln!("handshake then silence: closed {took:?} after the handshake");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(2900),
        "closed {took:?} after the handshake; first_byte_timeout is 2 s"
    );
    assert_eq!(
        b.client()
            .get(format!("{}/healthz", b.base_url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// Completes a TLS handshake (rustls, blocking) and then sends nothing; returns how long
/// after the handshake the broker closed the connection.
fn tls_then_silence(ca_pem: &[u8], port: u16) -> Duration {
    use rustls::pki_types::pem::PemObject;
    use std::io::Read;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .expect("the TLS handshake");
    }
    let done = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return done.elapsed(),
            Ok(_) => {}
        }
    }
}
