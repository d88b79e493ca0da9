//! The raw side: plain async-nats doing the least a hand-written client must do to send
//! the same bytes and to read the data, with the bus's connection, context and consumer
//! settings.
//!
//! - Publish: build the same event (`payload::event`) and encode it with
//!   `bus_core::binary_mode::encode` per message, so the headers (ce-*, and
//!   `Nats-Msg-Id`, the SHA-256 of source and id a plain client computes too) and JSON
//!   bytes are the bus's; send with `send_publish` and await the PubAck.
//! - Consume: one pull `messages()` stream per member, `max_messages_per_batch(N)` and N
//!   handlers at once (`for_each_concurrent`); a handler parses the JSON data (no header
//!   decoding: a raw client need not) and acks.
//! - With `--telemetry always-raw-context`, each message also carries a fixed W3C
//!   `traceparent` of the bus's length: the bytes a traced client sends, without tracing.

use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use async_nats::HeaderName;
use async_nats::jetstream::consumer::pull::{self, MessagesError};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, Message};
use bus_core::binary_mode;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::task::JoinHandle;

use crate::env::Env;
use crate::payload::{self, BenchEvent};
use crate::recorder::Recorder;
use crate::side::Work;

/// bus-sdk `connect.rs` `MAX_ACKS_IN_FLIGHT`: the context's cap on PubAcks awaited.
const MAX_ACKS_IN_FLIGHT: usize = 4096;
/// bus-sdk `group/member.rs` `PULL_HEARTBEAT` and `PULL_EXPIRES`.
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
const PULL_EXPIRES: Duration = Duration::from_secs(10);

/// Whether raw messages carry [`TRACEPARENT_VALUE`] (set once, before any runs).
static CARRY_CONTEXT: AtomicBool = AtomicBool::new(false);
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// A sampled W3C trace context, as long as the one the bus writes.
const TRACEPARENT_VALUE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Makes raw messages carry a `traceparent` header, and the `Nats-Trace-Dest` header the
/// bus writes with a sampled one (`--telemetry always-raw-context`).
pub fn carry_context(on: bool) {
    CARRY_CONTEXT.store(on, Ordering::Relaxed);
}

#[derive(Debug)]
pub struct RawConn {
    client: async_nats::Client,
    js: jetstream::Context,
    subject: String,
    stream: String,
    consumer: pull::Config,
}

impl RawConn {
    /// Connects as bus-sdk's `connect.rs` does (timeouts, reconnects, ack window).
    pub async fn connect(env: &Env) -> Result<Self> {
        let config = env.config();
        let nats = &config.nats;
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(nats.connect_timeout)
            .request_timeout(Some(nats.request_timeout))
            .max_reconnects(None)
            .connect(config.nats.servers.clone())
            .await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(nats.request_timeout)
            .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
            .backpressure_on_inflight(true)
            .build(client.clone());
        Ok(RawConn {
            client,
            js,
            subject: env.subject()?,
            stream: config.streams.events_name.clone(),
            consumer: env.consumer_config()?,
        })
    }

    fn message(event: &bus_core::Event) -> Result<PublishMessage> {
        // Room for the header up front, as the bus makes it for its own.
        let carry = CARRY_CONTEXT.load(Ordering::Relaxed);
        let (mut headers, payload) = binary_mode::encode_with_room(event, 2 * usize::from(carry))?;
        if carry {
            headers.insert(TRACEPARENT, TRACEPARENT_VALUE);
            // As the bus marks its sampled messages (`nats.server_msg_trace` off).
            bus_core::server_trace::mark(&mut headers);
        }
        Ok(PublishMessage::build().payload(payload).headers(headers))
    }

    pub async fn publish_one(&self, seq: u64) -> Result<()> {
        let message = Self::message(&payload::event(seq)?)?;
        self.js
            .send_publish(self.subject.clone(), message)
            .await?
            .await?;
        Ok(())
    }

    /// A window of `window` PubAck futures: send while it has room, else await one.
    pub async fn publish_window(&self, first: u64, n: u64, window: usize) -> Result<()> {
        let events = (first..first + n)
            .map(payload::event)
            .collect::<Result<Vec<_>>>()?;
        let mut acks = FuturesUnordered::new();
        for event in &events {
            if acks.len() >= window
                && let Some(ack) = acks.next().await
            {
                ack?;
            }
            let ack = self
                .js
                .send_publish(self.subject.clone(), Self::message(event)?)
                .await?;
            acks.push(ack.into_future());
        }
        while let Some(ack) = acks.next().await {
            ack?;
        }
        Ok(())
    }

    pub async fn start_members(
        &self,
        members: usize,
        concurrency: usize,
        work: Work,
        recorder: &Arc<Recorder>,
    ) -> Result<RawMembers> {
        let mut tasks = Vec::with_capacity(members);
        for _ in 0..members {
            let consumer = self
                .js
                .create_consumer_on_stream(self.consumer.clone(), &self.stream)
                .await?;
            let messages = consumer
                .stream()
                .max_messages_per_batch(concurrency)
                .heartbeat(PULL_HEARTBEAT)
                .expires(PULL_EXPIRES)
                .messages()
                .await?;
            let recorder = recorder.clone();
            tasks.push(tokio::spawn(
                messages.for_each_concurrent(concurrency, move |delivery| {
                    handle(delivery, recorder.clone(), work)
                }),
            ));
        }
        Ok(RawMembers(tasks))
    }

    pub async fn close(self) {
        let _ = self.client.drain().await;
    }
}

async fn handle(delivery: Result<Message, MessagesError>, recorder: Arc<Recorder>, work: Work) {
    let message = match delivery {
        Ok(m) => m,
        Err(e) => return recorder.error(format!("pull: {e}")),
    };
    match serde_json::from_slice::<BenchEvent>(&message.payload) {
        Ok(event) => {
            work.run().await;
            recorder.record(event.seq);
        }
        Err(e) => recorder.error(format!("data: {e}")),
    }
    if let Err(e) = message.ack().await {
        recorder.error(format!("ack: {e}"));
    }
}

/// The raw members' tasks.
#[derive(Debug)]
pub struct RawMembers(Vec<JoinHandle<()>>);

impl RawMembers {
    /// Stops reading at once (the run is over: every event was handled).
    pub async fn stop(self) {
        for task in self.0 {
            task.abort();
            let _ = task.await;
        }
    }
}
