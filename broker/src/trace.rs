//! Trace context of the OAuth endpoints (token, introspection, revocation): a W3C Trace
//! Context `traceparent` per request, a `request` span carrying its `trace_id`, the
//! `traceparent` returned on the response, and the JSON log format that puts `trace_id`
//! at the top of every line logged inside that span.
//!
//! An incoming `traceparent` is kept only if it parses strictly (W3C Trace Context
//! level 1, §3.2: lowercase hex, no all-zero ids, version `ff` refused, at most
//! [`MAX_TRACEPARENT_LEN`] bytes, exactly one header); otherwise a new trace id is drawn
//! from the operating system's generator ([`crate::ids::id_bytes`]). Either way the
//! broker's own span gets a fresh span id, which the response's `traceparent` names as the
//! parent for whatever the caller does next. A generator failure leaves the request
//! without trace context (logged), never unanswered.
//!
//! The span records ids and the path only: never a header value other than a valid
//! `traceparent`, never a token, a key or a form field.

use std::fmt;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::ids::{RandomError, id_bytes};

/// The name of the header, in requests and responses.
pub const TRACEPARENT: &str = "traceparent";

/// Longest `traceparent` value read (a version-00 value is 55 bytes; later versions may
/// append fields); longer values are refused unread.
pub const MAX_TRACEPARENT_LEN: usize = 256;

/// A parsed `traceparent`: who called us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id (16 bytes, not all zero).
    pub trace_id: [u8; 16],
    /// The caller's span id (8 bytes, not all zero).
    pub parent_id: [u8; 8],
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parses one header value strictly; `None` when it is not a valid `traceparent`.
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < 55 || value.len() > MAX_TRACEPARENT_LEN {
            return None;
        }
        let version = hex_byte(&value[0..2])?;
        // `ff` is forbidden; version 00 has exactly four fields; a later version may add
        // fields after a `-`, and its first four are read as version 00's.
        if version == 0xff
            || (version == 0 && value.len() != 55)
            || (value.len() > 55 && value[55] != b'-')
        {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
        }
        let mut parent_id = [0u8; 8];
        for (i, b) in parent_id.iter_mut().enumerate() {
            *b = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&value[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The request's `traceparent`: `None` unless exactly one header is there and valid.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let mut all = headers.get_all(TRACEPARENT).iter();
        match (all.next(), all.next()) {
            (Some(v), None) => Self::parse(v.as_bytes()),
            _ => None,
        }
    }
}

/// Two lowercase hex digits.
fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    match two {
        [h, l] => Some(digit(*h)? << 4 | digit(*l)?),
        _ => None,
    }
}

/// The broker's span of one request: the trace it belongs to and its own span id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

impl TraceContext {
    /// A span in `parent`'s trace (keeping its sampled flag), or in a new trace when there
    /// is no valid parent.
    pub fn child_of(parent: Option<TraceParent>) -> Result<Self, RandomError> {
        let span_id = nonzero(id_bytes::<8>)?;
        Ok(match parent {
            Some(p) => Self {
                trace_id: p.trace_id,
                span_id,
                flags: p.flags & 0x01,
            },
            None => Self {
                trace_id: nonzero(id_bytes::<16>)?,
                span_id,
                flags: 0,
            },
        })
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> Hex<16> {
        Hex(self.trace_id)
    }

    /// This span's id, 16 lowercase hex digits.
    pub fn span_id(&self) -> Hex<8> {
        Hex(self.span_id)
    }

    /// The `traceparent` to return: version 00, this trace, this span as the parent.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id(),
            self.span_id(),
            self.flags
        )
    }
}

/// A W3C id is all-zero with probability 2^-64 or less; draw again rather than send one.
fn nonzero<const N: usize>(
    draw: fn() -> Result<[u8; N], RandomError>,
) -> Result<[u8; N], RandomError> {
    loop {
        let b = draw()?;
        if b != [0; N] {
            return Ok(b);
        }
    }
}

/// Bytes shown as lowercase hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hex<const N: usize>([u8; N]);

impl<const N: usize> fmt::Display for Hex<N> {
    /// Digits encoded on the stack and written with one `write_str` per 32 bytes: a
    /// `write!` per byte cost ~6,500 instructions per id, twice a request (BENCHMARKS.md,
    /// issue 13).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 64];
        for chunk in self.0.chunks(32) {
            let out = &mut buf[..2 * chunk.len()];
            for (pair, b) in out.chunks_exact_mut(2).zip(chunk) {
                pair[0] = DIGITS[usize::from(b >> 4)];
                pair[1] = DIGITS[usize::from(b & 0x0f)];
            }
            // Only ASCII digits were written.
            f.write_str(std::str::from_utf8(out).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

/// Middleware of the OAuth endpoints: runs the request inside its `request` span (with
/// `trace_id` and `span_id`) and returns `traceparent`.
pub async fn layer(req: Request, next: Next) -> Response {
    let parent = TraceParent::from_headers(req.headers());
    let ctx = match TraceContext::child_of(parent) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no trace id for this request");
            return next.run(req).await;
        }
    };
    let span = tracing::info_span!(
        "request",
        trace_id = %ctx.trace_id(),
        span_id = %ctx.span_id(),
        path = req.uri().path(),
    );
    let mut res = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&ctx.traceparent()) {
        res.headers_mut().insert(TRACEPARENT, v);
    }
    res
}

/// The `trace_id` of a span, kept in its extensions by [`TraceIdLayer`].
#[derive(Debug, Clone)]
struct SpanTraceId(String);

/// Keeps the `trace_id` field of each new span in the span's extensions, for
/// [`TraceIdJson`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceIdLayer;

impl<S> Layer<S> for TraceIdLayer
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().fields().field("trace_id").is_none() {
            return;
        }
        let mut v = TraceIdVisitor(None);
        attrs.record(&mut v);
        if let (Some(t), Some(span)) = (v.0, ctx.span(id)) {
            span.extensions_mut().insert(SpanTraceId(t));
        }
    }
}

struct TraceIdVisitor(Option<String>);

impl Visit for TraceIdVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "trace_id" {
            self.0 = Some(value.to_owned());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "trace_id" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

/// A JSON event format that adds `"trace_id"` as the first key of every line logged
/// inside a span that has one (needs [`TraceIdLayer`]); other lines are left as `F`
/// writes them.
#[derive(Debug, Clone)]
pub struct TraceIdJson<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for TraceIdJson<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let trace_id = ctx.event_scope().and_then(|scope| {
            scope
                .from_root()
                .find_map(|span| span.extensions().get::<SpanTraceId>().cloned())
        });
        let Some(SpanTraceId(id)) = trace_id else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            // The id is 32 hex digits (it came from `TraceContext`): nothing to escape.
            Some(rest) => write!(writer, "{{\"trace_id\":\"{id}\",{rest}"),
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_parses() {
        let p = TraceParent::parse(VALID.as_bytes()).unwrap();
        assert_eq!(
            Hex(p.trace_id).to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(Hex(p.parent_id).to_string(), "00f067aa0ba902b7");
        // Every byte value, against the standard formatter.
        let all: [u8; 32] = std::array::from_fn(|i| (i * 8 + 7) as u8);
        let want: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(Hex(all).to_string(), want);
        for b in 0..=255u8 {
            assert_eq!(Hex([b]).to_string(), format!("{b:02x}"));
        }
        // Longer than one 32-byte chunk.
        let long: [u8; 70] = std::array::from_fn(|i| (i * 37) as u8);
        let want: String = long.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(Hex(long).to_string(), want);
        assert_eq!(p.flags, 1);
        // A later version may append fields after a dash.
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra";
        assert!(TraceParent::parse(v1.as_bytes()).is_some());
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        let long = format!("01-{}", "a".repeat(MAX_TRACEPARENT_LEN));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-+1",
            long.as_str(),
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn two_headers_are_no_parent() {
        let mut h = HeaderMap::new();
        h.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert!(TraceParent::from_headers(&h).is_some());
        h.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert_eq!(TraceParent::from_headers(&h), None);
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_its_own_span() {
        let p = TraceParent::parse(VALID.as_bytes()).unwrap();
        let c = TraceContext::child_of(Some(p)).unwrap();
        let tp = c.traceparent();
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{tp}"
        );
        assert!(tp.ends_with("-01"), "{tp}");
        assert_ne!(c.span_id().to_string(), "00f067aa0ba902b7");
        let back = TraceParent::parse(tp.as_bytes()).unwrap();
        assert_eq!(back.parent_id, c.span_id);

        let fresh = TraceContext::child_of(None).unwrap();
        let other = TraceContext::child_of(None).unwrap();
        assert_ne!(fresh.trace_id, other.trace_id);
        assert!(TraceParent::parse(fresh.traceparent().as_bytes()).is_some());
        assert!(fresh.traceparent().ends_with("-00"));
    }

    #[test]
    fn json_lines_in_a_traced_span_start_with_the_trace_id() {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt as _;

        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let fmt = tracing_subscriber::fmt::layer()
            .json()
            .event_format(TraceIdJson(tracing_subscriber::fmt::format().json()))
            .with_writer(move || out.clone());
        let subscriber = tracing_subscriber::registry().with(TraceIdLayer).with(fmt);
        tracing::subscriber::with_default(subscriber, || {
            let ctx = TraceContext::child_of(None).unwrap();
            tracing::info_span!("request", trace_id = %ctx.trace_id()).in_scope(|| {
                tracing::info_span!("token").in_scope(|| tracing::info!("inside"));
            });
            tracing::info!("outside");
            let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(lines.len(), 2, "{text}");
            assert_eq!(lines[0]["trace_id"], ctx.trace_id().to_string(), "{text}");
            assert_eq!(lines[0]["fields"]["message"], "inside");
            assert!(lines[1].get("trace_id").is_none(), "{text}");
        });
    }
}
