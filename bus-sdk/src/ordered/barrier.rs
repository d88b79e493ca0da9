//! The takeover barrier of a pinned consumer. JetStream delivers a pinned consumer's
//! events to one client at a time, but when the pin moves the previous holder may still
//! have deliveries in hand (running, or waiting behind their key), and a dead holder's
//! deliveries come back only after their ack deadline. So a holder that has just been
//! pinned (its first delivery, or a delivery with a new `Nats-Pin-Id`) holds what it
//! receives back until the consumer's count of deliveries awaiting an ack is no more
//! than what it holds itself: then every earlier delivery has been settled by the old
//! holder or has come back to this one, and it can go on in stream order.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::stream::Stream;

use super::PIN_GROUP;
use crate::send_deadline;
use crate::subscription::run::ack;

#[derive(Debug)]
pub(crate) struct Barrier {
    open: bool,
    /// Whether the consumer is pinned (an unpinned one has no barrier).
    pinned: bool,
    pin: Option<String>,
    check: tokio::time::Interval,
}

impl Barrier {
    /// Closed until the first check for a pinned consumer; always open otherwise.
    pub(crate) fn new(pinned: bool, every: Duration) -> Self {
        let mut check = tokio::time::interval(every);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            open: !pinned,
            pinned,
            pin: None,
            check,
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open
    }

    /// Notes the pin a delivery came with: a new pin closes the barrier.
    pub(crate) fn on_delivery(&mut self, message: &Message) {
        if !self.pinned {
            return;
        }
        let pin = message
            .headers
            .as_ref()
            .and_then(|h| h.get_last(async_nats::header::NATS_PIN_ID))
            .map(|v| v.as_str());
        if pin.is_some() && pin != self.pin.as_deref() {
            if self.pin.is_some() {
                tracing::debug!("pinned again; holding deliveries until the old ones are settled");
            }
            self.pin = pin.map(str::to_owned);
            self.open = false;
        }
    }

    /// Lets go of the consumer's pin if this holder still has it (another holder may
    /// have taken it meanwhile: that one is left pinned).
    pub(crate) async fn let_go(&self, consumer: &mut PullConsumer, stream: &Stream, name: &str) {
        let Some(mine) = self.pin.as_deref() else {
            return;
        };
        let still_mine = match send_deadline::within(consumer.info()).await {
            Ok(info) => info
                .priority_groups
                .iter()
                .any(|g| g.group == PIN_GROUP && g.pinned_client_id.as_deref() == Some(mine)),
            // Not known: let go, the barrier of whoever holds it keeps order.
            Err(_) => true,
        };
        if still_mine
            && let Err(e) = send_deadline::within(stream.unpin_consumer(name, PIN_GROUP)).await
        {
            tracing::debug!(consumer = %name, error = %e, "unpinning failed");
        }
    }

    /// Closes the barrier again (what the holder must know before it goes on could not
    /// be read): the next check decides.
    pub(crate) fn hold(&mut self) {
        if self.pinned {
            self.open = false;
        }
    }

    /// Resolves at the next check.
    pub(crate) async fn due(&mut self) {
        self.check.tick().await;
    }

    /// Opens the barrier when the consumer awaits acks for no more deliveries than the
    /// `held` this holder has in hand. `held` must count only deliveries that cannot be
    /// settled while the check waits for its answer (not the running ones): one acked
    /// meanwhile would be counted here and not by the server, and hide a delivery another
    /// holder still has. [`Check::Lost`] when another holder has the pin: what this one
    /// holds back then belongs to that one (two members claiming a partition at once
    /// would otherwise each wait for what the other holds).
    pub(crate) async fn check(&mut self, consumer: &mut PullConsumer, held: usize) -> Check {
        match send_deadline::within(consumer.info()).await {
            Ok(info) => {
                let pinned = info
                    .priority_groups
                    .iter()
                    .find(|g| g.group == PIN_GROUP)
                    .and_then(|g| g.pinned_client_id.as_deref());
                if self.pinned && pinned.is_some() && pinned != self.pin.as_deref() {
                    return Check::Lost;
                }
                if info.num_ack_pending <= held {
                    self.open = true;
                    return Check::Open;
                }
                tracing::trace!(
                    pending = info.num_ack_pending,
                    held,
                    "waiting for the previous holder's deliveries"
                );
            }
            Err(e) => tracing::debug!(error = %e, "reading the consumer for the barrier failed"),
        }
        Check::Wait
    }
}

/// What a barrier check found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// Every pending delivery is in this holder's hands: go on.
    Open,
    /// Some are elsewhere still.
    Wait,
    /// Another holder has the pin: give back what is held back.
    Lost,
}

/// A delivery's stream sequence (`None` without JetStream metadata).
pub(crate) fn seq_of(message: &Message) -> Option<u64> {
    message.info().ok().map(|i| i.stream_sequence)
}

/// Gives what a holder held back at the barrier back to the consumer, in stream order,
/// for the holder of the pin; they are no longer in hand (`known`).
pub(crate) async fn give_back(held: &mut BTreeMap<u64, Message>, known: &mut HashSet<u64>) {
    for (seq, message) in std::mem::take(held) {
        known.remove(&seq);
        ack(&message, async_nats::jetstream::AckKind::Nak(None)).await;
    }
}
