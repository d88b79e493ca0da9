//! What a resuming client missed: the events its patterns match from a sequence on, read
//! from JetStream by an ordered consumer of its own (filtered on the server), up to a
//! sequence or to what the stream holds when it reaches the end. One step may take
//! [`STEP_TIMEOUT`]; memory is the consumer's own buffer, whatever the length of the
//! replay, because the client's reading paces it.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::{Ordered as Messages, OrderedConfig};
use bus_core::subject_filters::minimal;
use bus_core::{Event, EventPattern};
use bus_sdk::Bus;
use futures::StreamExt;

/// How long one read from the stream may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct History {
    messages: Messages,
    patterns: Vec<EventPattern>,
    upto: Option<u64>,
    done: bool,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("upto", &self.upto)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl History {
    /// The events from `from` on (to `upto` when given); `None` when there are none.
    pub async fn open(
        bus: &Bus,
        patterns: &[EventPattern],
        from: u64,
        upto: Option<u64>,
    ) -> Result<Option<Self>, String> {
        if patterns.is_empty() || upto.is_some_and(|u| u < from) {
            return Ok(None);
        }
        let subjects = bus.subjects();
        let filters = minimal(
            patterns.iter().map(|p| subjects.pattern(p)).collect(),
            &subjects.all_events(),
        );
        let open = async {
            let stream = bus
                .jetstream()
                .get_stream_no_info(&bus.config().streams.events_name)
                .await
                .map_err(|e| e.to_string())?;
            let consumer = stream
                .create_consumer(OrderedConfig {
                    filter_subjects: filters,
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: from.max(1),
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            if consumer.cached_info().num_pending == 0 {
                return Ok(None);
            }
            consumer
                .messages()
                .await
                .map(Some)
                .map_err(|e| e.to_string())
        };
        let messages = tokio::time::timeout(STEP_TIMEOUT, open)
            .await
            .map_err(|_| "opening the replay timed out".to_owned())??;
        Ok(messages.map(|messages| Self {
            messages,
            patterns: patterns.to_vec(),
            upto,
            done: false,
        }))
    }

    /// The next missed event and its sequence; `None` at the end.
    pub async fn next(&mut self) -> Result<Option<(u64, Event)>, String> {
        loop {
            if self.done {
                return Ok(None);
            }
            let message = match tokio::time::timeout(STEP_TIMEOUT, self.messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(None) => return Ok(None),
                Err(_) => return Err("reading the events stream timed out".to_owned()),
            };
            let (seq, pending) = match message.info() {
                Ok(info) => (info.stream_sequence, info.pending),
                Err(e) => return Err(e.to_string()),
            };
            if self.upto.is_some_and(|u| seq > u) {
                self.done = true;
                return Ok(None);
            }
            if pending == 0 || self.upto == Some(seq) {
                self.done = true;
            }
            let Ok(event) =
                bus_core::binary_mode::decode(message.headers.as_ref(), message.payload.clone())
            else {
                continue;
            };
            // The filters may have widened to everything (overlapping patterns).
            if self.patterns.iter().any(|p| p.matches(&event.event_type)) {
                return Ok(Some((seq, event)));
            }
        }
    }
}
