//! The benchmark's event: a typed payload whose JSON is exactly [`PAYLOAD_BYTES`] long, and
//! the CloudEvents envelope the raw side builds for it, equal to the one the bus builds.

use anyhow::Result;
use bus_core::{Event, EventType};
use bus_sdk::EventPayload;
use serde::{Deserialize, Serialize};

/// Length of the JSON data of every event.
pub const PAYLOAD_BYTES: usize = 1024;
/// CloudEvents `source` of both sides.
pub const SOURCE: &str = "/bus-bench";
/// JSON length of `{"seq":0,"pad":""}`: the payload with one digit and no padding.
const BARE_LEN: usize = 18;

/// What every benchmark event carries: its sequence in the run (which also says when it
/// was scheduled) and padding up to [`PAYLOAD_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchEvent {
    pub seq: u64,
    pub pad: String,
}

impl EventPayload for BenchEvent {
    const EVENT_TYPE: &'static str = "bench.payload.sent";
}

impl BenchEvent {
    pub fn new(seq: u64) -> Self {
        let digits = seq.checked_ilog10().unwrap_or(0) as usize + 1;
        let pad = PAYLOAD_BYTES.saturating_sub(BARE_LEN + digits - 1);
        BenchEvent {
            seq,
            pad: "x".repeat(pad),
        }
    }
}

/// The event the bus builds in `Bus::publish` for `BenchEvent::new(seq)` (same type, source,
/// content type and data; a fresh id and time), for the raw side to encode.
pub fn event(seq: u64) -> Result<Event> {
    let event_type = EventType::new(BenchEvent::EVENT_TYPE)?;
    Ok(Event::builder(event_type, SOURCE)
        .data_json(&BenchEvent::new(seq))?
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_exactly_one_kib_for_any_seq() -> Result<()> {
        for seq in [0, 9, 10, 12_345, u64::MAX] {
            let event = event(seq)?;
            assert_eq!(event.data.len(), PAYLOAD_BYTES, "seq {seq}");
            let back: BenchEvent = serde_json::from_slice(&event.data)?;
            assert_eq!(back.seq, seq);
        }
        Ok(())
    }

    #[test]
    fn raw_headers_are_the_bus_headers() -> Result<()> {
        let event = event(7)?;
        let (headers, payload) = bus_core::binary_mode::encode(&event)?;
        // The digest of source and id, as the SDK's publish computes it.
        let dedup = bus_core::binary_mode::dedup_id(&event.source, &event.id);
        assert_eq!(
            headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some(dedup.as_str())
        );
        assert_eq!(payload.len(), PAYLOAD_BYTES);
        for name in [
            "ce-id",
            "Nats-Msg-Id",
            "ce-source",
            "ce-type",
            "ce-specversion",
            "ce-time",
            "content-type",
        ] {
            assert!(headers.get(name).is_some(), "{name} missing");
        }
        Ok(())
    }
}
