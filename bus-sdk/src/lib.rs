//! Typed publish/subscribe on NATS JetStream: publish serde types as CloudEvents, handle
//! them in consumer groups that share the work and survive failures, fan them out to
//! every instance with broadcast subscriptions, and keep what cannot be handled as dead
//! letters.
//!
//! ```no_run
//! use bus_sdk::{Bus, BusConfig, EventPayload, Received, HandlerError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct OrderCreated { order_id: u64 }
//! impl EventPayload for OrderCreated { const EVENT_TYPE: &'static str = "shop.order.created"; }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = Bus::connect(BusConfig::with_servers(["nats://127.0.0.1:4222"])).await?;
//! let group = bus
//!     .group("billing")
//!     .on(|ev: Received<OrderCreated>| async move {
//!         println!("bill order {}", ev.data.order_id);
//!         Ok::<(), HandlerError>(())
//!     })
//!     .start()
//!     .await?;
//! let receipt = bus.publish(&OrderCreated { order_id: 42 }).await?;
//! println!("stored as #{}", receipt.seq);
//! group.shutdown().await;
//! bus.close().await;
//! # Ok(()) }
//! ```
//!
//! # Where to start
//!
//! - [`Bus`]: the connection. [`Bus::connect`] with a [`BusConfig`] (or
//!   [`Bus::builder`] for the options of [`BusBuilder`]); publish with [`Bus::publish`],
//!   [`Bus::publish_batch`], or [`Bus::event`] and [`Bus::publish_event`] to set the id.
//! - [`EventPayload`]: a serde type that travels as one event type; handlers receive it
//!   as [`Received`], with the delivery's [`EventMeta`].
//! - [`GroupBuilder`], from [`Bus::group`]: a consumer group, whose members share the
//!   events and retry them; [`GroupBuilder::ordered_by_key`] keeps per-key order;
//!   [`Group`] is a running member.
//! - [`BroadcastBuilder`], from [`Bus::broadcast`]: every instance gets every event;
//!   [`Broadcast`] is a running subscription.
//! - [`HandlerError`]: what a handler returns on failure, retried or
//!   [permanent](HandlerError::permanent).
//! - [`dead_letter`]: what a group gave up on; [`Bus::dead_letters`] lists,
//!   [`Bus::redrive`] sends back.
//! - [`Bus::members`] ([`presence`]): the live members of a group;
//!   [`Bus::groups`] ([`admin`]): every group and its backlog.
//! - Errors: [`ConnectError`], [`PublishError`] (match on its [`PublishErrorKind`]),
//!   [`SubscribeError`], [`admin::AdminError`].
//! - Unit tests of handlers need no server: build their input with [`EventMeta::new`]
//!   and [`Received::new`].
//! - The crates the API exposes are re-exported, so a service needs only this one:
//!   [`async_nats`] ([`Bus::client`], [`Bus::jetstream`]), [`bus_core`] (configuration,
//!   the event envelope, names, subjects; `bus_core::telemetry::init`, with the default
//!   `otlp` feature, sets tracing up for a binary), [`opentelemetry`] and [`tracing_opentelemetry`]. The SDK records its
//!   spans through the application's tracer provider (the global one, or
//!   [`BusBuilder::tracer_provider`]) and installs no global; a publish is a child of the
//!   current `tracing` span or OpenTelemetry context (README, "Your own telemetry").

pub mod admin;
mod broadcast;
mod bus;
mod connect;
pub mod dead_letter;
mod error;
mod group;
mod handler;
mod ordered;
pub mod presence;
mod publish;
mod send_deadline;
mod subscription;
mod typed;

pub use broadcast::{BROADCAST_SHUTDOWN_GRACE, Broadcast, BroadcastBuilder, StartAt};
pub use bus::{Bus, BusBuilder};
pub use connect::MAX_ACKS_IN_FLIGHT;
pub use dead_letter::DeadLetter;
pub use error::{ConnectError, PublishError, PublishErrorKind, SubscribeError};
pub use group::{
    DEFAULT_ACK_WAIT, DEFAULT_BACKOFF, DEFAULT_CONCURRENCY, DEFAULT_MAX_ACK_PENDING,
    DEFAULT_MAX_DELIVER, DEFAULT_NO_HANDLER_GRACE, DEFAULT_SHUTDOWN_GRACE, Group, GroupBuilder,
    MAX_CONCURRENCY, MAX_MAX_ACK_PENDING, MAX_NO_HANDLER_GRACE, NO_HANDLER_DELAY, START_DEADLINE,
};
pub use handler::HandlerError;
pub use presence::Member;
pub use publish::{DEFAULT_PUBLISH_WINDOW, PublishReceipt};
pub use subscription::{DEFAULT_HANDLER_TIMEOUT, MAX_HANDLER_TIMEOUT};
pub use typed::{EventMeta, EventPayload, Received};

// What the API exposes, so that a service needs this one crate and its versions cannot
// drift from the SDK's.
pub use async_nats;
pub use bus_core;
pub use bus_core::tracing_opentelemetry;
pub use bus_core::{
    BusConfig, Event, EventBuilder, EventPattern, EventType, EventTypeError, GroupName,
    GroupNameError,
};
pub use opentelemetry;
