//! W3C trace context (`traceparent`, `tracestate`) in NATS headers and in the event's
//! own attributes, through the globally installed propagator.

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::global;
use opentelemetry::propagation::{Extractor, Injector};
use std::str::FromStr;

use crate::event::Event;
use crate::headers::{TRACEPARENT, TRACESTATE};

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

/// A `traceparent`/`tracestate` pair as a carrier.
struct Pair<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
}

impl Extractor for Pair<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent,
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// Writes `cx` into NATS headers as `traceparent`/`tracestate`.
pub fn inject_into_headers(cx: &Context, headers: &mut HeaderMap) {
    global::get_text_map_propagator(|p| p.inject_context(cx, &mut HeaderInjector(headers)));
}

/// Sets the event's `traceparent`/`tracestate` to `cx` (they travel as headers).
pub fn inject_into_event(cx: &Context, event: &mut Event) {
    global::get_text_map_propagator(|p| p.inject_context(cx, &mut EventCarrier(event)));
}

/// The context carried by a NATS message's `traceparent`/`tracestate` headers; the
/// current context when they carry none.
pub fn context_from_headers(headers: &HeaderMap) -> Context {
    global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// The context carried by the event's own `traceparent`/`tracestate`.
pub fn context_from_event(event: &Event) -> Context {
    extract_with(event.traceparent.as_deref(), event.tracestate.as_deref())
}

/// Extracts a context from a `traceparent` and `tracestate` (HTTP headers, other carriers).
pub fn extract_with(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    let pair = Pair {
        traceparent,
        tracestate,
    };
    global::get_text_map_propagator(|p| p.extract(&pair))
}
