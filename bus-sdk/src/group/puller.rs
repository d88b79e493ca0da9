//! Pull requests on a durable consumer, counted exactly.
//!
//! async-nats' `Consumer::messages()` loses count of its pulls under load (a delivery that
//! arrives before its pull is recorded is not subtracted), then believes enough is on
//! order, stops asking, and sits on a backlog until its own timer resets it after
//! `expires` + 5 s. Here the count goes up before a pull is sent, so no delivery can
//! arrive first, and it comes down with each delivery and with the unfulfilled rest the
//! server reports when a pull ends (408/409 with `Nats-Pending-Messages`).
//!
//! On a consumer with pinned clients (ordered groups) the pulls name the priority group
//! and carry the `Nats-Pin-Id` this puller was given, if any; a pull refused because the
//! pin moved (423) ends every pull outstanding, and the next ones go without an id.

use std::time::Duration;

use async_nats::jetstream::{self, Message};
use async_nats::{Client, StatusCode, Subscriber};
use futures::StreamExt;
use serde::Serialize;
use tokio::time::Instant;

use crate::send_deadline;

/// How long a closing puller waits for the deliveries still on their way.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// Why a pull stream has to be opened again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PullError {
    /// Neither a delivery nor an idle heartbeat came in time: the server forgot our pulls
    /// (a reconnect, a restart) or the connection is gone.
    #[error("no delivery or heartbeat for {0:?} with pulls outstanding")]
    Silent(Duration),
    /// The consumer was deleted under us.
    #[error("the consumer was deleted")]
    ConsumerDeleted,
    /// Sending a pull request failed, or did not go out within the send deadline.
    #[error("sending a pull request failed: {0}")]
    Request(String),
    /// The subscription for deliveries could not be made, or not within the send
    /// deadline.
    #[error("subscribing for deliveries failed: {0}")]
    Subscribe(String),
    /// The subscription ended (the client is closed).
    #[error("the delivery subscription ended")]
    Closed,
    /// An answer the bus does not expect.
    #[error("unexpected answer to a pull: {0}")]
    Unexpected(String),
}

/// One pull request as JetStream reads it.
#[derive(Serialize)]
struct PullRequest {
    batch: usize,
    /// Nanoseconds.
    expires: u128,
    /// Nanoseconds.
    idle_heartbeat: u128,
    /// The priority group of a consumer with pinned clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    /// The pin this puller holds (`Nats-Pin-Id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
}

/// The deliveries of one consumer for one member, on its own inbox.
pub(crate) struct Puller {
    client: Client,
    context: jetstream::Context,
    subject: String,
    inbox: String,
    subscriber: Subscriber,
    expires: Duration,
    heartbeat: Duration,
    /// Deliveries requested and neither delivered nor released.
    outstanding: usize,
    /// When the server was last heard from (a delivery or a status).
    heard: Instant,
    /// The priority group pulled (`None`: the consumer has none).
    group: Option<String>,
    /// The pin the server gave this puller, from its last delivery.
    pin: Option<String>,
}

impl Puller {
    /// Subscribes an inbox for the deliveries of `consumer` on `stream`.
    pub(crate) async fn open(
        context: &jetstream::Context,
        api_prefix: &str,
        stream: &str,
        consumer: &str,
        expires: Duration,
        heartbeat: Duration,
    ) -> Result<Self, PullError> {
        let client = context.client();
        let inbox = client.new_inbox();
        let subscriber = crate::send_deadline::within(client.subscribe(inbox.clone()))
            .await
            .map_err(PullError::Subscribe)?;
        Ok(Self {
            client,
            context: context.clone(),
            subject: format!("{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
            inbox,
            subscriber,
            expires,
            heartbeat,
            outstanding: 0,
            heard: Instant::now(),
            group: None,
            pin: None,
        })
    }

    /// Pulls in the priority group `group` of a consumer with pinned clients.
    pub(crate) fn in_group(mut self, group: &str) -> Self {
        self.group = Some(group.to_owned());
        self
    }

    /// Deliveries requested and not yet delivered or released.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Asks the server for `n` more deliveries.
    pub(crate) async fn request(&mut self, n: usize) -> Result<(), PullError> {
        if n == 0 {
            return Ok(());
        }
        let body = PullRequest {
            batch: n,
            expires: self.expires.as_nanos(),
            idle_heartbeat: self.heartbeat.as_nanos(),
            group: self.group.clone(),
            id: self.pin.clone(),
        };
        let body = serde_json::to_vec(&body).map_err(|e| PullError::Unexpected(e.to_string()))?;
        if self.outstanding == 0 {
            // Silence is measured from the first pull after an idle spell.
            self.heard = Instant::now();
        }
        // Counted before it is sent: no delivery of it can arrive before the count.
        self.outstanding += n;
        let send =
            self.client
                .publish_with_reply(self.subject.clone(), self.inbox.clone(), body.into());
        if let Err(e) = send_deadline::within(send).await {
            self.outstanding -= n;
            return Err(PullError::Request(e));
        }
        Ok(())
    }

    /// The next delivery, or `None` when a pull ended with deliveries it did not make
    /// (they are no longer counted as outstanding). With pulls outstanding, the server
    /// sends an idle heartbeat every `heartbeat`; two missed in a row mean the pulls are
    /// gone.
    pub(crate) async fn next(&mut self) -> Result<Option<Message>, PullError> {
        loop {
            let message = if self.outstanding > 0 {
                let silence = self.heartbeat * 2;
                match tokio::time::timeout_at(self.heard + silence, self.subscriber.next()).await {
                    Ok(m) => m,
                    Err(_) => {
                        self.outstanding = 0;
                        return Err(PullError::Silent(silence));
                    }
                }
            } else {
                self.subscriber.next().await
            };
            let Some(message) = message else {
                return Err(PullError::Closed);
            };
            self.heard = Instant::now();
            match message.status {
                None | Some(StatusCode::OK) => {
                    self.outstanding = self.outstanding.saturating_sub(1);
                    if self.group.is_some()
                        && let Some(pin) = message
                            .headers
                            .as_ref()
                            .and_then(|h| h.get_last(async_nats::header::NATS_PIN_ID))
                        && self.pin.as_deref() != Some(pin.as_str())
                    {
                        self.pin = Some(pin.as_str().to_owned());
                    }
                    return Ok(Some(Message {
                        message,
                        context: self.context.clone(),
                    }));
                }
                Some(StatusCode::IDLE_HEARTBEAT) => continue,
                Some(StatusCode::PIN_ID_MISMATCH) => {
                    // The pin moved: every pull sent with the old id is void.
                    self.pin = None;
                    self.outstanding = 0;
                    return Ok(None);
                }
                Some(StatusCode::TIMEOUT) | Some(StatusCode::REQUEST_TERMINATED) => {
                    if message.description.as_deref() == Some("Consumer Deleted") {
                        self.outstanding = 0;
                        return Err(PullError::ConsumerDeleted);
                    }
                    // The rest of the pull that ended (its expiry, a leadership change).
                    let rest = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Pending-Messages"))
                        .and_then(|v| v.as_str().parse::<usize>().ok());
                    let Some(rest) = rest else {
                        // A pull refused outright (e.g. "Exceeded MaxWaiting"): asking again
                        // at once would be refused again, so the member backs off and
                        // re-opens.
                        self.outstanding = 0;
                        return Err(PullError::Unexpected(format!(
                            "pull refused: {}",
                            message.description.unwrap_or_default()
                        )));
                    };
                    let rest = rest.min(self.outstanding);
                    self.outstanding -= rest;
                    tracing::trace!(rest, description = ?message.description, "pull ended");
                    return Ok(None);
                }
                Some(status) => {
                    self.outstanding = 0;
                    return Err(PullError::Unexpected(format!(
                        "status {status}: {}",
                        message.description.unwrap_or_default()
                    )));
                }
            }
        }
    }

    /// Stops taking deliveries and returns those the server sent before it stopped: the
    /// pull inbox is drained (unsubscribed, and read until the server has confirmed it),
    /// so a delivery already on its way is returned too, not dropped to come back only
    /// after its ack deadline. Bounded by [`CLOSE_DEADLINE`]: past it what is still on its
    /// way is left to its ack deadline.
    pub(crate) async fn close(&mut self) -> Vec<Message> {
        let mut arrived = Vec::new();
        if let Err(e) = send_deadline::within(self.subscriber.drain()).await {
            tracing::debug!(error = %e, "draining the pull inbox failed");
        }
        let deadline = Instant::now() + CLOSE_DEADLINE;
        while let Ok(Some(message)) =
            tokio::time::timeout_at(deadline, self.subscriber.next()).await
        {
            if matches!(message.status, None | Some(StatusCode::OK)) {
                arrived.push(Message {
                    message,
                    context: self.context.clone(),
                });
            }
        }
        self.outstanding = 0;
        arrived
    }
}
