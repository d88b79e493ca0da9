//! W3C trace context (`traceparent`, `tracestate`) and `baggage` in NATS headers and in
//! the event's own attributes: read through the application's global propagator (`init`
//! installs the one `OTEL_PROPAGATORS` names), written into headers directly on the
//! publish path. A service that installed no propagator (the global one is a no-op) still
//! gets W3C trace context and baggage on the bus's own headers: the SDK installs no
//! global itself, and a bus whose hops lose their parents would be no use in a trace.

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::global;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};
use std::str::FromStr;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};

use super::w3c;

use crate::event::Event;
use crate::headers::{BAGGAGE, TRACEPARENT, TRACESTATE};

/// Set once `init` installed the propagator `OTEL_PROPAGATORS` names (`none` included).
static INSTALLED_BY_INIT: AtomicBool = AtomicBool::new(false);

/// W3C trace context and baggage: what the bus reads and writes when the application
/// installed no propagator.
static W3C: LazyLock<TextMapCompositePropagator> = LazyLock::new(|| {
    TextMapCompositePropagator::new(vec![Box::new(w3c::TraceContext), Box::new(w3c::Baggage)])
});

/// Records that `init` installed the global propagator.
#[cfg(feature = "otlp")]
pub(crate) fn installed_by_init() {
    INSTALLED_BY_INIT.store(true, Ordering::Relaxed);
}

/// Runs `f` with the application's propagator; with W3C when it installed none.
fn with_propagator<T>(mut f: impl FnMut(&dyn TextMapPropagator) -> T) -> T {
    global::get_text_map_propagator(|p| {
        if INSTALLED_BY_INIT.load(Ordering::Relaxed) || p.fields().next().is_some() {
            f(p)
        } else {
            f(&*W3C)
        }
    })
}

/// Writes trace context into NATS headers.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` is no header at all, as on events.
        if value.is_empty() {
            return;
        }
        if let (Ok(k), Ok(v)) = (HeaderName::from_str(key), HeaderValue::from_str(&value)) {
            self.0.insert(k, v);
        }
    }
}

/// Reads trace context from NATS headers.
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        crate::headers::get_ignore_case(self.0, key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

struct EventCarrier<'a>(&'a mut Event);

impl Injector for EventCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.0.traceparent = Some(value),
            TRACESTATE => self.0.tracestate = (!value.is_empty()).then_some(value),
            _ => {}
        }
    }
}

/// A `traceparent`/`tracestate` pair (and a `baggage`) as a carrier.
struct Pair<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
    baggage: Option<&'a str>,
}

impl Extractor for Pair<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent,
            TRACESTATE => self.tracestate,
            BAGGAGE => self.baggage,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE, BAGGAGE]
    }
}

/// Writes `cx` into NATS headers as W3C `traceparent`/`tracestate` (the bus installs
/// the W3C propagator; this runs once per traced publish, so it writes the header itself
/// instead of going through the global propagator and its formatting).
pub fn inject_into_headers(sc: &SpanContext, headers: &mut HeaderMap) {
    if !sc.is_valid() {
        return;
    }
    headers.insert(TRACEPARENT_NAME, hex_header_value(traceparent(sc)));
    let state = trace_state_text(sc);
    if !state.is_empty()
        && let Ok(v) = HeaderValue::from_str(&state)
    {
        headers.insert(TRACESTATE_NAME, v);
    }
}

/// The W3C `baggage` header value of `cx`, written by the application's propagator (so
/// only when it propagates baggage; W3C when none is installed); `None` when `cx` has no
/// baggage.
pub fn baggage_value(cx: &Context) -> Option<String> {
    use opentelemetry::baggage::BaggageExt as _;
    if cx.baggage().is_empty() {
        return None;
    }
    struct Only(Option<String>);
    impl Injector for Only {
        fn set(&mut self, key: &str, value: String) {
            if key.eq_ignore_ascii_case(crate::headers::BAGGAGE) && !value.is_empty() {
                self.0 = Some(value);
            }
        }
    }
    let mut only = Only(None);
    with_propagator(|p| p.inject_context(cx, &mut only));
    // W3C: at most 8192 bytes, which the next hop's propagator enforces by dropping the
    // whole header; and a value a header can carry (NATS and HTTP alike).
    only.0.filter(|v| {
        v.len() <= MAX_BAGGAGE_BYTES && v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
    })
}

/// The W3C `baggage` header value a publish carries while no trace is recorded: the
/// current OpenTelemetry context's baggage (a handler's hop is its current context), else
/// the hop's; `None` without baggage (a thread-local read and a task-local one).
pub fn untraced_baggage() -> Option<String> {
    Context::map_current(baggage_value)
        .or_else(|| super::current_hop().and_then(|hop| baggage_value(&hop)))
}

/// The largest `baggage` header value W3C baggage allows.
pub const MAX_BAGGAGE_BYTES: usize = 8192;

/// Whether a `baggage` header from outside (an HTTP request) is worth extracting: within
/// [`MAX_BAGGAGE_BYTES`] and every entry a `key=value` (the propagator logs each malformed
/// entry, with the whole header, and a request need not be authenticated to carry one).
pub fn plausible_baggage(value: &str) -> bool {
    value.len() <= MAX_BAGGAGE_BYTES
        && value
            .split(',')
            .filter(|entry| !entry.trim().is_empty())
            .all(|entry| entry.split(';').next().is_some_and(|kv| kv.contains('=')))
}

/// `cx` as a W3C `traceparent` header value, for a request the bus makes (a webhook
/// attempt); `None` for an invalid context.
pub fn traceparent_value(sc: &SpanContext) -> Option<String> {
    sc.is_valid().then(|| traceparent(sc))
}

/// `text`, which holds only hex digits and dashes, as a header value.
///
/// `HeaderValue::from` scans every character for CR and LF (570 instructions for a
/// `traceparent`, once per traced publish; BENCHMARKS.md "Profile, fifth round"). A
/// `HeaderValue` deserializes (serde, transparent) from the `String` itself, unscanned:
/// right for text this module wrote, never for input.
fn hex_header_value(text: String) -> HeaderValue {
    use serde::Deserialize as _;
    use serde::de::IntoDeserializer as _;
    let de: serde::de::value::StringDeserializer<serde::de::value::Error> =
        text.into_deserializer();
    // A `String` deserializer gives its `String`, which cannot fail (the test below
    // compares the header with the one the W3C propagator writes).
    HeaderValue::deserialize(de).unwrap_or_default()
}

/// How many headers [`inject_into_headers`] writes for `sc`.
pub fn header_count(sc: &SpanContext) -> usize {
    if !sc.is_valid() {
        0
    } else if trace_state_text(sc).is_empty() {
        1
    } else {
        2
    }
}

const TRACEPARENT_NAME: HeaderName = HeaderName::from_static(TRACEPARENT);
const TRACESTATE_NAME: HeaderName = HeaderName::from_static(TRACESTATE);

/// `00-<trace id>-<span id>-<flags>`, as `TraceContextPropagator` writes it (only the
/// sampled flag is propagated).
pub(super) fn traceparent(sc: &SpanContext) -> String {
    let mut out = [b'-'; 55];
    out[..2].copy_from_slice(b"00");
    put_hex(&mut out[3..35], &sc.trace_id().to_bytes());
    put_hex(&mut out[36..52], &sc.span_id().to_bytes());
    put_hex(
        &mut out[53..],
        &[(sc.trace_flags() & TraceFlags::SAMPLED).to_u8()],
    );
    // Hex digits and dashes only: always UTF-8.
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// The `tracestate` text of `sc`: empty for the usual empty state, without building it.
pub(super) fn trace_state_text(sc: &SpanContext) -> String {
    if *sc.trace_state() == TraceState::NONE {
        String::new()
    } else {
        sc.trace_state().header()
    }
}

/// Each byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [HEX[i >> 4], HEX[i & 0x0f]];
        i += 1;
    }
    pairs
};

/// Writes `bytes` as lowercase hex into `out`, which is twice as long.
fn put_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// Sets the event's `traceparent`/`tracestate` to `sc` (they travel as headers).
pub fn inject_into_event(sc: &SpanContext, event: &mut Event) {
    let cx = Context::new().with_remote_span_context(sc.clone());
    with_propagator(|p| p.inject_context(&cx, &mut EventCarrier(&mut *event)));
}

/// The context carried by a NATS message's `traceparent`/`tracestate` headers; the
/// current context when they carry none.
pub fn context_from_headers(headers: &HeaderMap) -> Context {
    with_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// The context carried by the event's own `traceparent`/`tracestate`.
pub fn context_from_event(event: &Event) -> Context {
    extract_with(event.traceparent.as_deref(), event.tracestate.as_deref())
}

/// Extracts a context from a `traceparent` and `tracestate` (HTTP headers, other carriers).
pub fn extract_with(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    extract_with_baggage(traceparent, tracestate, None)
}

/// Extracts a context from a `traceparent`, `tracestate` and W3C `baggage` (an HTTP
/// request's headers), through the application's propagator.
pub fn extract_with_baggage(
    traceparent: Option<&str>,
    tracestate: Option<&str>,
    baggage: Option<&str>,
) -> Context {
    if traceparent.is_none() && baggage.is_none() {
        // What the propagator gives for a carrier without one (it runs on every publish
        // of an event without a trace context, so skip its parsing).
        return Context::current();
    }
    let pair = Pair {
        traceparent,
        tracestate,
        baggage,
    };
    with_propagator(|p| p.extract(&pair))
}

#[cfg(test)]
mod tests {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{SpanId, TraceId, TraceState};
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    fn written_by_propagator(cx: &Context) -> HeaderMap {
        let mut h = HeaderMap::new();
        TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(&mut h));
        h
    }

    #[test]
    fn baggage_from_outside_is_extracted_only_when_each_entry_is_a_key_value() {
        assert!(plausible_baggage("tenant=acme,region=eu;ttl=5"));
        assert!(plausible_baggage("tenant=acme,"));
        assert!(!plausible_baggage("a,a,a"));
        assert!(!plausible_baggage(&"k=v,".repeat(3000)));
    }

    #[test]
    fn headers_match_what_the_w3c_propagator_writes() {
        let state = TraceState::from_key_value([("congo", "t61rcWkgMzE")]).ok();
        for (flags, state) in [
            (TraceFlags::SAMPLED, TraceState::default()),
            (TraceFlags::default(), TraceState::default()),
            (TraceFlags::SAMPLED, state.unwrap_or_default()),
        ] {
            let sc = SpanContext::new(
                TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap_or(TraceId::INVALID),
                SpanId::from_hex("b7ad6b7169203331").unwrap_or(SpanId::INVALID),
                flags,
                true,
                state,
            );
            let cx = Context::new().with_remote_span_context(sc);
            let mut ours = HeaderMap::new();
            inject_into_headers(cx.span().span_context(), &mut ours);
            assert_eq!(ours, written_by_propagator(&cx));
            assert_eq!(header_count(cx.span().span_context()), ours.len());
        }
        let mut none = HeaderMap::new();
        inject_into_headers(&SpanContext::empty_context(), &mut none);
        assert!(none.is_empty(), "no span context, no headers");
        assert_eq!(header_count(&SpanContext::empty_context()), 0);
    }
}
