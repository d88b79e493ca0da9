//! W3C trace context (`traceparent`, `tracestate`) and W3C baggage as propagators: what
//! the bus reads and writes on its own headers when the application installed no
//! propagator ([`super::propagation`]).
//!
//! The OpenTelemetry SDK has both (`TraceContextPropagator`, `BaggagePropagator`), but
//! the SDK is what a service that brings its own pipeline, or uses only the event
//! envelope, does not link (the `otlp` feature holds it). These read what the SDK's read
//! on every input the W3C specifications allow (tests compare them, the SDK being a
//! dev-dependency), with two differences: a `traceparent` whose fields are not exactly
//! 2, 32, 16 and 2 lowercase hex digits is refused (the SDK takes shorter ids and other
//! spellings of the version and flags), and a malformed baggage
//! entry is skipped without a log line (the SDK logs the whole header, which comes from
//! whoever sent the request).

use std::sync::LazyLock;

use opentelemetry::Context;
use opentelemetry::baggage::{BaggageExt as _, KeyValueMetadata};
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceState;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use crate::headers::{BAGGAGE, TRACEPARENT, TRACESTATE};

/// What a baggage key or value is written with: as the SDK, controls, space, `"`, `;`,
/// `,` and `=` percent-encoded (and every non-ASCII byte).
const BAGGAGE_ESCAPED: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b';').add(b',').add(b'=');

/// W3C baggage: at most 8192 bytes (a longer header is dropped whole) and 64 entries
/// (the rest are dropped).
const MAX_BAGGAGE_BYTES: usize = 8192;
const MAX_BAGGAGE_ENTRIES: usize = 64;

static TRACE_CONTEXT_FIELDS: LazyLock<[String; 2]> =
    LazyLock::new(|| [TRACEPARENT.to_owned(), TRACESTATE.to_owned()]);
static BAGGAGE_FIELDS: LazyLock<[String; 1]> = LazyLock::new(|| [BAGGAGE.to_owned()]);

/// `traceparent` and `tracestate`.
#[derive(Debug, Default)]
pub(crate) struct TraceContext;

/// `baggage`.
#[derive(Debug, Default)]
pub(crate) struct Baggage;

impl TextMapPropagator for TraceContext {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        injector.set(TRACEPARENT, super::propagation::traceparent(sc));
        let state = super::propagation::trace_state_text(sc);
        if !state.is_empty() {
            injector.set(TRACESTATE, state);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let Some(traceparent) = extractor.get(TRACEPARENT) else {
            return cx.clone();
        };
        match span_context(traceparent, extractor.get(TRACESTATE)) {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&*TRACE_CONTEXT_FIELDS)
    }
}

/// The remote span context a `traceparent` (and `tracestate`) carry: version `00` with
/// exactly four fields, a later version (not `ff`) with four or more (the first four are
/// read); ids in lowercase hex, not all zeros; only the sampled flag is kept. A
/// `tracestate` that does not parse is dropped, the parent kept.
fn span_context(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let parts: Vec<&str> = traceparent.trim().split_terminator('-').collect();
    let [version, trace_id, span_id, flags, rest @ ..] = parts.as_slice() else {
        return None;
    };
    let version = lower_hex(version, 2).and_then(|v| u8::from_str_radix(v, 16).ok())?;
    if version == 0xff || (version == 0 && !rest.is_empty()) {
        return None;
    }
    let trace_id = TraceId::from_hex(lower_hex(trace_id, 32)?).ok()?;
    let span_id = SpanId::from_hex(lower_hex(span_id, 16)?).ok()?;
    let flags = lower_hex(flags, 2).and_then(|f| u8::from_str_radix(f, 16).ok())?;
    let state = tracestate
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    let sc = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        state,
    );
    sc.is_valid().then_some(sc)
}

/// `field` when it is `len` lowercase hex digits.
fn lower_hex(field: &str, len: usize) -> Option<&str> {
    (field.len() == len
        && field
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    .then_some(field)
}

impl TextMapPropagator for Baggage {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let baggage = cx.baggage();
        if baggage.is_empty() {
            return;
        }
        let mut header = String::new();
        for (key, (value, metadata)) in baggage {
            if !header.is_empty() {
                header.push(',');
            }
            header.extend(utf8_percent_encode(key.as_str().trim(), BAGGAGE_ESCAPED));
            header.push('=');
            header.extend(utf8_percent_encode(value.as_str().trim(), BAGGAGE_ESCAPED));
            let metadata = metadata.as_str().trim();
            if !metadata.is_empty() {
                header.push(';');
                header.push_str(metadata);
            }
        }
        injector.set(BAGGAGE, header);
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match extractor.get(BAGGAGE) {
            Some(header) if header.len() <= MAX_BAGGAGE_BYTES => cx.with_baggage(
                header
                    .split(',')
                    .take(MAX_BAGGAGE_ENTRIES)
                    .filter_map(baggage_entry),
            ),
            _ => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&*BAGGAGE_FIELDS)
    }
}

/// One `key=value;property;...` entry, percent-decoded and trimmed; `None` when it has no
/// `=` or is not UTF-8 once decoded.
fn baggage_entry(entry: &str) -> Option<KeyValueMetadata> {
    let mut fields = entry.split(';');
    let mut pair = fields.next()?.split('=');
    let (key, value) = (pair.next()?, pair.next()?);
    let key = percent_decode_str(key).decode_utf8().ok()?;
    let value = percent_decode_str(value).decode_utf8().ok()?;
    let properties: Vec<String> = fields
        .filter_map(|p| percent_decode_str(p).decode_utf8().ok())
        .map(|p| p.trim().to_owned())
        .collect();
    Some(KeyValueMetadata::new(
        key.trim().to_owned(),
        value.trim().to_owned(),
        properties.join(";"),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::baggage::BaggageExt as _;
    use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

    use super::*;

    struct Carrier(HashMap<String, String>);

    impl Extractor for Carrier {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).map(String::as_str)
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(String::as_str).collect()
        }
    }

    impl Injector for Carrier {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key.to_owned(), value);
        }
    }

    fn carrier(pairs: &[(&str, &str)]) -> Carrier {
        Carrier(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn span_of(cx: &Context) -> SpanContext {
        cx.span().span_context().clone()
    }

    fn baggage_of(cx: &Context) -> HashMap<String, (String, String)> {
        cx.baggage()
            .iter()
            .map(|(k, (v, m))| {
                (
                    k.as_str().to_owned(),
                    (v.as_str().to_owned(), m.as_str().to_owned()),
                )
            })
            .collect()
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn traceparents_the_specification_allows_read_as_the_sdk_reads_them() {
        let valid = [
            format!("00-{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}-00"),
            format!("00-{TRACE}-{SPAN}-09"),
            format!("00-{TRACE}-{SPAN}-01-"),
            format!(" 00-{TRACE}-{SPAN}-01 "),
            format!("02-{TRACE}-{SPAN}-01"),
            format!("02-{TRACE}-{SPAN}-08-XYZxsf09"),
            format!("cc-{TRACE}-{SPAN}-01-what-the-future-adds"),
        ];
        let states = [
            None,
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
            Some("=bad"),
        ];
        for tp in &valid {
            for state in states {
                let mut pairs = vec![("traceparent", tp.as_str())];
                pairs.extend(state.map(|s| ("tracestate", s)));
                let c = carrier(&pairs);
                let ours = span_of(&TraceContext.extract(&c));
                let sdk = span_of(&TraceContextPropagator::new().extract(&c));
                assert!(ours.is_valid(), "{tp} {state:?}");
                assert_eq!(ours, sdk, "{tp} {state:?}");
            }
        }
    }

    #[test]
    fn malformed_traceparents_leave_the_context_as_it_was() {
        let invalid = [
            format!("00-{TRACE}-{SPAN}"),
            format!("00-{TRACE}-{SPAN}-"),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("0-{TRACE}-{SPAN}-01"),
            format!("000-{TRACE}-{SPAN}-01"),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{}-01", SPAN.to_uppercase()),
            format!("00-{TRACE}-{SPAN}-0A"),
            format!("00-{TRACE}-{SPAN}-001"),
            format!("00-ab-{SPAN}-01"),
            format!("00-{TRACE}-ab-01"),
            format!("00-{TRACE}00-{SPAN}-01"),
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("00-{TRACE}-{SPAN}-qw"),
            "00-+bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01".to_owned(),
            String::new(),
        ];
        for tp in &invalid {
            let c = carrier(&[("traceparent", tp.as_str())]);
            assert!(!span_of(&TraceContext.extract(&c)).is_valid(), "{tp:?}");
        }
    }

    #[test]
    fn trace_context_is_written_as_the_sdk_writes_it() {
        for state in ["", "congo=t61rcWkgMzE"] {
            for flags in [TraceFlags::SAMPLED, TraceFlags::default()] {
                let sc = SpanContext::new(
                    TraceId::from_hex(TRACE).unwrap_or(TraceId::INVALID),
                    SpanId::from_hex(SPAN).unwrap_or(SpanId::INVALID),
                    flags,
                    true,
                    state.parse().unwrap_or_default(),
                );
                let cx = Context::new().with_remote_span_context(sc);
                let (mut ours, mut sdk) = (carrier(&[]), carrier(&[]));
                TraceContext.inject_context(&cx, &mut ours);
                TraceContextPropagator::new().inject_context(&cx, &mut sdk);
                // The SDK writes an empty `tracestate`; every carrier of the bus drops it.
                sdk.0.retain(|_, v| !v.is_empty());
                assert_eq!(ours.0, sdk.0);
            }
        }
        let mut none = carrier(&[]);
        TraceContext.inject_context(&Context::new(), &mut none);
        assert!(none.0.is_empty());
    }

    #[test]
    fn baggage_reads_as_the_sdk_reads_it() {
        let long_value = "v".repeat(200);
        let many: String = (0..80).map(|i| format!("k{i}=v{i},")).collect();
        let headers = [
            "tenant=acme".to_owned(),
            "tenant=acme,region=eu".to_owned(),
            " tenant = acme , region=eu ".to_owned(),
            "key1=val1;prop1;propKey=propVal,key2=val2".to_owned(),
            "user_id=a%2Cb%3Dc%3B%22d%20e;ttl=5,emoji=%E2%9C%93".to_owned(),
            "bad,good=yes".to_owned(),
            "a=b=c".to_owned(),
            "invalid=%FF,ok=1".to_owned(),
            "tenant=acme,".to_owned(),
            "same=1,same=2".to_owned(),
            format!("long={long_value}"),
            many,
            "k=v,".repeat(3000),
            String::new(),
        ];
        for h in &headers {
            let c = carrier(&[("baggage", h.as_str())]);
            let ours = baggage_of(&Baggage.extract(&c));
            let sdk = baggage_of(&BaggagePropagator::new().extract(&c));
            assert_eq!(ours, sdk, "{h:?}");
        }
    }

    #[test]
    fn baggage_is_written_as_the_sdk_writes_it() {
        let cx = Context::new().with_baggage([
            KeyValueMetadata::new("tenant", "acme", ""),
            KeyValueMetadata::new("user_id", "a,b=c;d\" e", "ttl=5"),
            KeyValueMetadata::new("emoji", "✓", ""),
        ]);
        let (mut ours, mut sdk) = (carrier(&[]), carrier(&[]));
        Baggage.inject_context(&cx, &mut ours);
        BaggagePropagator::new().inject_context(&cx, &mut sdk);
        let entries = |c: &Carrier| {
            let mut e: Vec<String> = c.0["baggage"].split(',').map(str::to_owned).collect();
            e.sort();
            e
        };
        assert_eq!(entries(&ours), entries(&sdk));
        assert_eq!(entries(&ours).len(), 3, "every entry written: {:?}", ours.0);
        // And it reads back to the same baggage.
        let back = Baggage.extract(&ours);
        assert_eq!(baggage_of(&back), baggage_of(&cx));
        let mut none = carrier(&[]);
        Baggage.inject_context(&Context::new(), &mut none);
        assert!(none.0.is_empty());
    }
}
