//! Unit tests of the `[http]` limits: parsing and validation, admission, the deadline
//! state machine, protocol sniffing, and the request and response body wrappers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::*;

#[test]
fn defaults_without_a_section() {
    let l = from_file(None).unwrap();
    assert_eq!(l, HttpLimits::default());
    assert_eq!(l.max_header_bytes, 16 * 1024);
    assert_eq!(l.first_byte_timeout, Duration::from_secs(5));
    assert_eq!(l.max_connections, 10_000);
    assert_eq!(l.max_connections_per_source, 256);
    assert_eq!(HttpFile::default().validate().unwrap(), l);
}

fn parse(text: &str) -> Result<HttpLimits, String> {
    let f: HttpFile = toml::from_str(text).map_err(|e| e.to_string())?;
    f.validate()
}

#[test]
fn every_key_is_read() {
    let l = parse(
        r#"
max_header_bytes = 9000
max_headers = 20
first_byte_timeout = "500ms"
header_timeout = "2s"
body_timeout = "3s"
idle_timeout = "4s"
max_connections = 50
max_connections_per_source = 5
http2_max_concurrent_streams = 7
http2_keep_alive_interval = "6s"
http2_keep_alive_timeout = "1s"
tls_handshake_timeout = "8s"
"#,
    )
    .unwrap();
    assert_eq!(
        l,
        HttpLimits {
            max_header_bytes: 9000,
            max_headers: 20,
            first_byte_timeout: Duration::from_millis(500),
            header_timeout: Duration::from_secs(2),
            body_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(4),
            max_connections: 50,
            max_connections_per_source: 5,
            http2_max_concurrent_streams: 7,
            http2_keep_alive_interval: Duration::from_secs(6),
            http2_keep_alive_timeout: Duration::from_secs(1),
            tls_handshake_timeout: Duration::from_secs(8),
        }
    );
}

#[test]
fn bad_values_are_refused_naming_the_key() {
    for (text, key) in [
        ("idle_timeout = \"0s\"", "http.idle_timeout"),
        ("body_timeout = \"2h\"", "http.body_timeout"),
        ("header_timeout = \"ten\"", "http.header_timeout"),
        ("max_header_bytes = 100", "http.max_header_bytes"),
        ("max_headers = 0", "http.max_headers"),
        ("max_connections = 0", "http.max_connections"),
        (
            "max_connections = 10\nmax_connections_per_source = 11",
            "http.max_connections_per_source",
        ),
        (
            "first_byte_timeout = \"20s\"\nheader_timeout = \"10s\"",
            "http.first_byte_timeout",
        ),
        (
            "http2_max_concurrent_streams = 0",
            "http.http2_max_concurrent_streams",
        ),
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.contains(key), "{text}: {e}");
    }
    assert!(parse("max_body = 3").unwrap_err().contains("unknown field"));
}

#[test]
fn a_small_total_lowers_the_default_per_source_limit() {
    let l = parse("max_connections = 100").unwrap();
    assert_eq!(l.max_connections_per_source, 100);
}

#[test]
fn capacity_leaves_room_for_other_files() {
    assert_eq!(connection_capacity(10_000, None), 10_000);
    assert_eq!(
        connection_capacity(10_000, Some(1024)),
        1024 - RESERVED_FDS as usize
    );
    assert_eq!(connection_capacity(100, Some(1_000_000)), 100);
    assert_eq!(connection_capacity(100, Some(10)), 1);
}

#[test]
fn sources_are_addresses_or_ipv6_slash_64s() {
    let v4 = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    assert_eq!(source_key(v4), v4);
    let mapped = IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped());
    assert_eq!(source_key(mapped), v4);
    let a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 6));
    let b = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 9, 9, 9, 9));
    let c = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 3, 4, 5, 6));
    assert_eq!(source_key(a), source_key(b));
    assert_ne!(source_key(a), source_key(c));
}

#[test]
fn admission_counts_total_and_per_source_and_gives_back() {
    let l = ConnectionLimiter::new(3, 2);
    let a: IpAddr = "127.0.0.1".parse().unwrap();
    let b: IpAddr = "127.0.0.2".parse().unwrap();
    let a1 = l.try_admit(a).unwrap();
    let a2 = l.try_admit(a).unwrap();
    assert_eq!(l.try_admit(a).unwrap_err(), Refusal::PerSource);
    let b1 = l.try_admit(b).unwrap();
    assert_eq!(l.open(), 3);
    assert_eq!(l.try_admit(b).unwrap_err(), Refusal::Total);
    assert_eq!(l.open_from(a), 2);
    drop(a1);
    assert_eq!(l.open_from(a), 1);
    let b2 = l.try_admit(b).unwrap();
    assert_eq!(l.try_admit(a).unwrap_err(), Refusal::Total);
    drop((a2, b1, b2));
    assert_eq!(l.open(), 0);
    assert_eq!(l.open_from(a), 0);
    assert!(lock(&l.per_source).is_empty(), "no entry left behind");
}

#[tokio::test(start_paused = true)]
async fn drained_waits_for_every_connection() {
    let l = ConnectionLimiter::new(4, 4);
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let held = l.try_admit(ip).unwrap();
    let waiter = {
        let l = Arc::clone(&l);
        tokio::spawn(async move { l.drained().await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiter.is_finished());
    drop(held);
    waiter.await.unwrap();
    let _ = SocketAddr::from(([127, 0, 0, 1], 1));
}

fn limits() -> HttpLimits {
    HttpLimits {
        first_byte_timeout: Duration::from_secs(1),
        header_timeout: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(5),
        ..HttpLimits::default()
    }
}

fn due(a: &Activity) -> (Duration, Expiry) {
    let (at, why) = a.deadline().expect("a deadline");
    (at - lock(&a.state).started, why)
}

#[tokio::test(start_paused = true)]
async fn deadlines_follow_the_connection() {
    let a = Activity::new(&limits());
    let s = |d| Duration::from_secs(d);
    // Silent: the first byte is due at first_byte_timeout.
    assert_eq!(due(&a), (s(1), Expiry::FirstByte));
    // A first byte: the whole head is due at header_timeout from accept.
    tokio::time::advance(s(0)).await;
    a.on_read();
    assert_eq!(due(&a), (s(3), Expiry::Header));
    // A request in flight: no connection deadline.
    let g = a.request_started();
    assert!(a.deadline().is_none());
    tokio::time::advance(s(10)).await;
    drop(g);
    // Idle since 10 s: closed at 10 + idle_timeout.
    assert_eq!(due(&a), (s(15), Expiry::Idle));
    // HTTP/1: a byte of the next head at 12 s: the head is due at 12 + header_timeout.
    tokio::time::advance(s(2)).await;
    a.on_read();
    assert_eq!(due(&a), (s(15), Expiry::Header));
    // More bytes do not move it.
    tokio::time::advance(s(1)).await;
    a.on_read();
    assert_eq!(due(&a), (s(15), Expiry::Header));
}

#[tokio::test(start_paused = true)]
async fn http2_idleness_ignores_control_frames() {
    let a = Activity::new(&limits());
    a.on_protocol(Protocol::Http2);
    a.on_read();
    drop(a.request_started());
    assert_eq!(due(&a), (Duration::from_secs(5), Expiry::Idle));
    tokio::time::advance(Duration::from_secs(4)).await;
    a.on_read(); // a PING
    assert_eq!(due(&a), (Duration::from_secs(5), Expiry::Idle));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_closed() {
    let a = Activity::new(&limits());
    let g = a.request_started();
    tokio::time::advance(Duration::from_secs(2)).await;
    a.on_write_blocked(true);
    assert_eq!(due(&a), (Duration::from_secs(7), Expiry::Send));
    a.on_write_blocked(false);
    assert!(a.deadline().is_none());
    drop(g);
}

#[test]
fn the_preface_is_recognised_in_pieces() {
    let mut pos = Some(0);
    assert_eq!(sniff(&mut pos, b"PRI * HTTP/2.0\r\n"), None);
    assert_eq!(
        sniff(&mut pos, b"\r\nSM\r\n\r\n\0\0\x12"),
        Some(Protocol::Http2)
    );
    assert_eq!(pos, None);
    let mut pos = Some(0);
    assert_eq!(sniff(&mut pos, b"PR"), None);
    assert_eq!(sniff(&mut pos, b"OPFIND / HTTP/1.1"), Some(Protocol::Http1));
    let mut pos = Some(0);
    assert_eq!(
        sniff(&mut pos, b"GET / HTTP/1.1\r\n"),
        Some(Protocol::Http1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_at_the_first_byte_timeout() {
    let a = Activity::new(&limits());
    let (_client, server) = tokio::io::duplex(64);
    let mut io = ActivityIo::new(server, Arc::clone(&a));
    let conn = async move {
        let mut buf = [0u8; 16];
        let _ = tokio::io::AsyncReadExt::read(&mut io, &mut buf).await;
        std::future::pending::<Result<(), io::Error>>().await
    };
    let (_tx, rx) = watch::channel(false);
    let started = Instant::now();
    let ended = drive(conn, a, rx, |_| {}).await;
    assert!(
        matches!(ended, Ended::Expired(Expiry::FirstByte)),
        "{ended:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn bytes_reported_through_the_io_move_the_deadline() {
    let a = Activity::new(&limits());
    let (mut client, server) = tokio::io::duplex(64);
    let mut io = ActivityIo::new(server, Arc::clone(&a));
    let conn = async move {
        let mut buf = [0u8; 16];
        loop {
            match tokio::io::AsyncReadExt::read(&mut io, &mut buf).await {
                Ok(0) | Err(_) => return Ok::<(), io::Error>(()),
                Ok(_) => {}
            }
        }
    };
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HT").await;
        std::future::pending::<()>().await;
    });
    let (_tx, rx) = watch::channel(false);
    let started = Instant::now();
    let ended = drive(conn, Arc::clone(&a), rx, |_| {}).await;
    assert!(matches!(ended, Ended::Expired(Expiry::Header)), "{ended:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert_eq!(a.protocol(), Protocol::Http1);
}

#[tokio::test(start_paused = true)]
async fn stop_shuts_down_gracefully_once() {
    let a = Activity::new(&limits());
    let guard = a.request_started();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (tx, rx) = watch::channel(false);
    let conn = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok::<(), io::Error>(())
    };
    let c = Arc::clone(&calls);
    let task = tokio::spawn(drive(conn, a, rx, move |_| {
        c.fetch_add(1, Ordering::SeqCst);
    }));
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(true).unwrap();
    let ended = task.await.unwrap();
    assert!(matches!(ended, Ended::Finished(Ok(()))), "{ended:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    drop(guard);
}

#[tokio::test]
async fn a_declared_length_over_the_limit_fails_at_once_as_a_length_limit() {
    use http_body_util::BodyExt;
    // A body that never delivers a byte: the refusal must not wait for one.
    let never = Never;
    let body = RequestBody::new(never, Some(10_737_418_240), 16 * 1024);
    assert!(body.over_limit());
    let progress = body.progress();
    let err = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("refused without waiting")
        .unwrap_err();
    assert!(
        err.downcast_ref::<http_body_util::LengthLimitError>()
            .is_some(),
        "{err}"
    );
    assert!(progress.done());
}

#[tokio::test]
async fn the_length_limit_error_reaches_axum_as_413() {
    use axum::extract::FromRequest;
    let never = Never;
    let body = RequestBody::new(never, Some(1 << 20), 1024);
    let req = hyper::Request::post("/")
        .body(axum::body::Body::new(body))
        .unwrap();
    let rej = axum::body::Bytes::from_request(req, &()).await.unwrap_err();
    assert_eq!(rej.status(), axum::http::StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_body_within_the_limit_passes_and_is_marked_done() {
    use http_body_util::BodyExt;
    let full = http_body_util::Full::new(Bytes::from_static(b"grant_type=x"));
    let body = RequestBody::new(full, Some(12), 1024);
    let progress = body.progress();
    assert!(!body.over_limit());
    let bytes = body.collect().await.unwrap().to_bytes();
    assert_eq!(&bytes[..], b"grant_type=x");
    assert!(progress.done());
    let empty = RequestBody::new(http_body_util::Empty::<Bytes>::new(), None, 1024);
    assert!(
        empty.progress().done(),
        "an empty body is done from the start"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unfinished_body_is_overdue_at_the_body_timeout() {
    let never = Never;
    let body = RequestBody::new(never, Some(100), 1024);
    let progress = body.progress();
    let started = Instant::now();
    progress.overdue(Duration::from_secs(2)).await;
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    drop(body);
}

#[tokio::test]
async fn a_tracked_body_frees_its_request_at_the_end() {
    use http_body_util::BodyExt;
    let a = Activity::new(&limits());
    let g = a.request_started();
    let body = TrackedBody::new(http_body_util::Full::new(Bytes::from_static(b"{}")), g);
    assert!(a.deadline().is_none(), "busy while the response is sent");
    let _ = body.collect().await.unwrap();
    assert!(a.deadline().is_some(), "idle once it has been");
}

/// A request body that never delivers a byte.
struct Never;

impl Body for Never {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Pending
    }
}

#[test]
fn the_shipped_example_shows_the_defaults() {
    let example: toml::Table =
        toml::from_str(include_str!("../../../broker.example.toml")).unwrap();
    let http: HttpFile = example["http"].clone().try_into().unwrap();
    assert_eq!(http.validate().unwrap(), HttpLimits::default());
}
