//! The pulls of one lane or sequencer on its consumer, through the group's exact
//! [`Puller`] (named priority group and pin id on a pinned consumer): kept topped up to
//! the holder's window, and closed by draining, so that a delivery already on its way
//! when a holder gives the consumer up comes to it (and goes back) instead of waiting out
//! its ack deadline while the next holder's barrier waits for it.

use async_nats::jetstream::Message;

use super::{OrderedShared, PIN_GROUP, PULL_EXPIRES, PULL_HEARTBEAT};
use crate::group::member::JS_API_PREFIX;
use crate::group::puller::{PullError, Puller};

/// What a closing holder waits beyond its pulls' expiry for their last answers.
const WIND_DOWN_MARGIN: std::time::Duration = std::time::Duration::from_millis(500);

pub(crate) struct Pulls {
    puller: Puller,
    /// Deliveries requested at a time: the consumer's `max_ack_pending`.
    window: usize,
}

impl Pulls {
    pub(crate) async fn open(
        shared: &OrderedShared,
        stream: &str,
        consumer: &str,
        window: usize,
        pinned: bool,
    ) -> Result<Self, String> {
        let puller = Puller::open(
            shared.bus.jetstream(),
            JS_API_PREFIX,
            stream,
            consumer,
            PULL_EXPIRES,
            PULL_HEARTBEAT,
        )
        .await
        .map_err(|e| e.to_string())?;
        let puller = if pinned {
            puller.in_group(PIN_GROUP)
        } else {
            puller
        };
        Ok(Self {
            puller,
            window: window.max(1),
        })
    }

    /// Keeps pulls outstanding: asks for the window again once less than half of it is
    /// requested. Deliveries in hand do not hold requests back: the consumer's
    /// `max_ack_pending` (the same window) bounds what the server sends, and a pinned
    /// holder must keep pulling, or the server takes its pin after the pin timeout.
    pub(crate) async fn top_up(&mut self) -> Result<(), String> {
        let outstanding = self.puller.outstanding();
        if outstanding < (self.window / 2).max(1) {
            self.puller
                .request(self.window - outstanding)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The next delivery; `Ok(None)` when a pull ended (or its pin moved) or went
    /// silent, so that the caller tops up again. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Result<Option<Message>, String> {
        match self.puller.next().await {
            Ok(m) => Ok(m),
            Err(PullError::Silent(after)) => {
                tracing::debug!(?after, "pulls went silent; asking again");
                Ok(None)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Stops pulling, after the pulls outstanding have expired: until then the server
    /// may still deliver to them (after an unpin it pins the first waiting pull, which may
    /// be one of these, and on a cluster the consumer's leader may not have seen the
    /// inbox go), and a delivery to an inbox no longer read would wait out its ack
    /// deadline, holding the next holder's barrier with it. Returns what came meanwhile.
    pub(crate) async fn close(mut self) -> Vec<Message> {
        let until = tokio::time::Instant::now() + PULL_EXPIRES + WIND_DOWN_MARGIN;
        let mut arrived = Vec::new();
        while self.puller.outstanding() > 0 {
            match tokio::time::timeout_at(until, self.puller.next()).await {
                Err(_) => break,
                Ok(Ok(Some(message))) => arrived.push(message),
                // A pull that ended, went silent or failed: nothing more comes on it.
                Ok(_) => {}
            }
        }
        arrived.extend(self.puller.close().await);
        arrived
    }
}
