//! nats-server's own message tracing (ADR-41, servers 2.11 and later), and how a bus
//! message stays out of it.
//!
//! A server that receives a message whose `traceparent` says "sampled" lifts every
//! header of the message into a map (two allocations per header) before it looks at
//! whether the account sends message traces anywhere (`msg_trace` in the account's
//! configuration). It does so for every sampled message, traced by the server or not:
//! with always-on sampling that cost about 12 % of windowed publish throughput on the
//! bench machine (BENCHMARKS.md, "Profile, seventh round"). A `Nats-Trace-Dest` header
//! holding the value the server itself writes to disable tracing makes it stop at that
//! header instead.
//!
//! The bus writes that header on sampled messages unless `nats.server_msg_trace` is set,
//! for operators who do send account message traces somewhere and want bus events in
//! them. The OpenTelemetry context in `traceparent` is not touched either way.

use std::sync::LazyLock;

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};

use crate::headers::{NATS_TRACE_DEST, TRACEPARENT, get_ignore_case};

/// The `Nats-Trace-Dest` value with which nats-server disables message tracing (not a
/// valid subject, so it can never be a destination).
pub const TRACE_DISABLED: &str = "trace disabled";

const NATS_TRACE_DEST_NAME: HeaderName = HeaderName::from_static(NATS_TRACE_DEST);

/// [`TRACE_DISABLED`] as a header value, made once: a clone copies it, where making one
/// from text scans every character for CR and LF (about 150 instructions per publish).
static TRACE_DISABLED_VALUE: LazyLock<HeaderValue> =
    LazyLock::new(|| HeaderValue::from(TRACE_DISABLED));

/// Whether nats-server takes `traceparent` as sampled: four fields split on `-`, the last
/// two characters that parse as a signed 8-bit hex number with bit 0 set. The server's
/// rule (Go's `strconv.ParseInt(flags, 16, 8)`, so `ff` is out of range and `+1` is
/// one), not the W3C grammar: the bus must mark exactly the messages the server lifts.
pub fn is_sampled(traceparent: &str) -> bool {
    let mut fields = traceparent.split('-');
    let flags = fields.nth(3);
    match (flags, fields.next()) {
        (Some(flags), None) if flags.len() == 2 => {
            i8::from_str_radix(flags, 16).is_ok_and(|f| f & 1 == 1)
        }
        _ => false,
    }
}

/// Writes `Nats-Trace-Dest: trace disabled` into headers that are known to carry a
/// sampled `traceparent` (the publish path knows it without looking).
pub fn mark(headers: &mut HeaderMap) {
    headers.insert(NATS_TRACE_DEST_NAME, TRACE_DISABLED_VALUE.clone());
}

/// Marks `headers` (see [`mark`]) if they carry a sampled `traceparent`, under any case
/// of its name as the server matches it, and no `Nats-Trace-Dest` of their own.
pub fn mark_if_sampled(headers: &mut HeaderMap) {
    let sampled = get_ignore_case(headers, TRACEPARENT).is_some_and(is_sampled);
    if sampled && get_ignore_case(headers, NATS_TRACE_DEST).is_none() {
        mark(headers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLED: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn the_sampled_flag_is_bit_zero_of_the_fourth_field() {
        assert!(is_sampled(SAMPLED));
        assert!(is_sampled(&SAMPLED.replace("-01", "-03")));
        assert!(is_sampled(&SAMPLED.replace("-01", "-7f")));
        assert!(is_sampled(&SAMPLED.replace("-01", "-+1")));
        assert!(!is_sampled(&SAMPLED.replace("-01", "-00")));
        assert!(!is_sampled(&SAMPLED.replace("-01", "-02")));
    }

    #[test]
    fn what_the_server_would_not_parse_is_not_sampled() {
        for text in [
            "",
            "01",
            "00-0af7651916cd43dd8448eb211c80319c-01",
            &format!("{SAMPLED}-extra"),
            &SAMPLED.replace("-01", "-1"),
            &SAMPLED.replace("-01", "-001"),
            &SAMPLED.replace("-01", "-0x"),
            &SAMPLED.replace("-01", "-ff"),
        ] {
            assert!(!is_sampled(text), "{text:?}");
        }
    }

    fn with(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_static(k), *v);
        }
        h
    }

    #[test]
    fn a_sampled_message_is_marked_once_and_others_are_left_alone() {
        let mut sampled = with(&[("Traceparent", SAMPLED)]);
        mark_if_sampled(&mut sampled);
        assert_eq!(
            get_ignore_case(&sampled, NATS_TRACE_DEST),
            Some(TRACE_DISABLED)
        );

        let unsampled_text = SAMPLED.replace("-01", "-00");
        let mut unsampled = with(&[("traceparent", &unsampled_text)]);
        mark_if_sampled(&mut unsampled);
        assert_eq!(get_ignore_case(&unsampled, NATS_TRACE_DEST), None);

        let mut traced_on_purpose =
            with(&[("traceparent", SAMPLED), ("Nats-Trace-Dest", "my.traces")]);
        mark_if_sampled(&mut traced_on_purpose);
        assert_eq!(
            get_ignore_case(&traced_on_purpose, NATS_TRACE_DEST),
            Some("my.traces")
        );

        let mut none = HeaderMap::new();
        mark_if_sampled(&mut none);
        assert_eq!(none.iter().count(), 0);
    }
}
