//! JSON log lines (`BUS_LOG_FORMAT=json`), one object per event: `timestamp` (RFC 3339,
//! UTC), `level`, `target`, `message`, the event's own fields, the `tracing` spans it is
//! in as `tracing-subscriber`'s JSON format writes them (`span`: the innermost, `spans`:
//! all, outermost first, each its `name` and fields), and, inside a hop (a handler, an
//! HTTP request, a webhook attempt: whatever runs under a current OpenTelemetry context
//! with a valid span), its `trace_id` and `span_id`, so that a log line can be found from
//! its trace and a trace from its log line.
//!
//! A span's fields are those the fmt layer stored: as JSON values with
//! `.fmt_fields(JsonFields::new())` (what `init` sets), else as the text under `fields`.

use std::fmt;

use opentelemetry::trace::TraceContextExt as _;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats each event as one JSON object (see the module).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonWithTrace;

impl<S, N> FormatEvent<S, N> for JsonWithTrace
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        // The event's fields first: the line's own keys below win over a field of the
        // same name.
        event.record(&mut Fields(&mut line));
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        line.insert("timestamp".into(), Value::String(now));
        line.insert("level".into(), Value::String(meta.level().to_string()));
        line.insert("target".into(), Value::String(meta.target().to_owned()));
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| span_object::<_, N>(&span))
                .collect();
            if let Some(innermost) = spans.last() {
                line.insert("span".into(), innermost.clone());
            }
            line.insert("spans".into(), Value::Array(spans));
        }
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            line.insert("trace_id".into(), Value::String(sc.trace_id().to_string()));
            line.insert("span_id".into(), Value::String(sc.span_id().to_string()));
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// A span as `{"name": ..., <its fields>}`.
fn span_object<S, N>(span: &tracing_subscriber::registry::SpanRef<'_, S>) -> Value
where
    S: for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let mut object = Map::new();
    let extensions = span.extensions();
    if let Some(fields) = extensions.get::<FormattedFields<N>>() {
        match serde_json::from_str::<Value>(fields) {
            Ok(Value::Object(map)) => object.extend(map),
            _ if !fields.is_empty() => {
                object.insert("fields".into(), Value::String(fields.to_string()));
            }
            _ => {}
        }
    }
    object.insert("name".into(), Value::String(span.name().to_owned()));
    Value::Object(object)
}

/// An event's fields into the line (`message` included, as the field it is).
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(buffer: &Buffer) -> Vec<Value> {
        let bytes = buffer.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
            .collect()
    }

    #[test]
    fn given_a_hop_context_each_line_should_carry_its_trace_and_span_ids() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonWithTrace)
                .with_writer(move || writer.clone()),
        );
        let sc = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap_or(TraceId::INVALID),
            SpanId::from_hex("b7ad6b7169203331").unwrap_or(SpanId::INVALID),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(attempt = 2, group = "billing", "handled");
            let _hop = opentelemetry::Context::new()
                .with_remote_span_context(sc)
                .attach();
            tracing::warn!(ok = false, "inside a hop");
        });
        let got = lines(&buffer);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0]["message"], "handled");
        assert_eq!(got[0]["level"], "INFO");
        assert_eq!(got[0]["attempt"], 2);
        assert_eq!(got[0]["group"], "billing");
        assert!(got[0].get("trace_id").is_none(), "no hop, no trace id");
        assert_eq!(got[1]["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(got[1]["span_id"], "b7ad6b7169203331");
        assert_eq!(got[1]["ok"], false);
        assert!(
            got[1]["timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
    }

    #[test]
    fn given_spans_each_line_should_carry_their_names_and_fields() {
        let run = |json_fields: bool| {
            let buffer = Buffer::default();
            let writer = buffer.clone();
            let layer = tracing_subscriber::fmt::layer()
                .event_format(JsonWithTrace)
                .with_ansi(false)
                .with_writer(move || writer.clone());
            let emit = || {
                let order = tracing::info_span!("order", order_id = 7, tenant = "acme");
                let _order = order.enter();
                let charge = tracing::info_span!("charge", attempt = 2);
                let _charge = charge.enter();
                tracing::info!("charged");
            };
            if json_fields {
                let layer = layer.fmt_fields(tracing_subscriber::fmt::format::JsonFields::new());
                tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
            } else {
                tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
            }
            lines(&buffer)
        };
        let got = run(true);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["span"]["name"], "charge");
        assert_eq!(got[0]["span"]["attempt"], 2);
        assert_eq!(got[0]["spans"][0]["name"], "order");
        assert_eq!(got[0]["spans"][0]["order_id"], 7);
        assert_eq!(got[0]["spans"][0]["tenant"], "acme");
        assert_eq!(got[0]["spans"][1]["name"], "charge");
        // Without JSON fields, the fmt layer's text.
        let got = run(false);
        assert_eq!(got[0]["spans"][0]["fields"], "order_id=7 tenant=\"acme\"");
        assert_eq!(got[0]["span"]["fields"], "attempt=2");
    }
}
