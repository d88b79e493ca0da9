//! The node's shared state, handed to every request.

use std::sync::atomic::{AtomicBool, Ordering};

use bus_sdk::Bus;
use tokio::sync::{OnceCell, Semaphore};

use crate::auth::Auth;
use crate::config::NodeConfig;
use crate::metrics::Metrics;

#[derive(Debug)]
pub struct App {
    pub config: NodeConfig,
    pub auth: Auth,
    pub metrics: Metrics,
    /// Requests served at once (`http.max_connections`); past it, `503` at once.
    pub request_slots: Semaphore,
    bus: OnceCell<Bus>,
    webhooks: OnceCell<std::sync::Arc<crate::webhooks::engine::Webhooks>>,
    draining: AtomicBool,
    /// The last [`nats_probe`](crate::nats_probe) found NATS answering (true from the
    /// connection on, until a probe fails).
    nats_answering: AtomicBool,
}

impl App {
    pub fn new(config: NodeConfig) -> Self {
        Self {
            auth: Auth::new(&config.auth),
            metrics: Metrics::new(),
            request_slots: Semaphore::new(config.http.max_connections),
            bus: OnceCell::new(),
            webhooks: OnceCell::new(),
            draining: AtomicBool::new(false),
            nats_answering: AtomicBool::new(true),
            config,
        }
    }

    /// The bus, once connected with its streams in place.
    pub fn bus(&self) -> Option<&Bus> {
        self.bus.get()
    }

    /// Webhook subscriptions and deliveries, once connected (and configured).
    pub fn webhooks(&self) -> Option<&std::sync::Arc<crate::webhooks::engine::Webhooks>> {
        self.webhooks.get()
    }

    pub fn set_webhooks(&self, w: std::sync::Arc<crate::webhooks::engine::Webhooks>) {
        if self.webhooks.set(w).is_err() {
            tracing::warn!("webhooks started twice; keeping the first");
        }
    }

    pub fn set_bus(&self, bus: Bus) {
        if self.bus.set(bus).is_err() {
            tracing::warn!("bus connected twice; keeping the first");
        }
    }

    /// Records a probe's result, logging when it changes.
    pub fn set_nats_answering(&self, result: Result<(), String>) {
        let answering = result.is_ok();
        let was = self.nats_answering.swap(answering, Ordering::SeqCst);
        match result {
            Err(error) if was => {
                tracing::warn!(%error, "NATS is not answering; refusing publishes until it does");
            }
            Ok(()) if !was => tracing::info!("NATS is answering again"),
            _ => {}
        }
    }

    /// Whether NATS answered the last probe; while it does not, publishes are refused
    /// at once with 503.
    pub fn nats_answering(&self) -> bool {
        self.nats_answering.load(Ordering::SeqCst)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Why the node is not ready, if it is not.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.is_draining() {
            return Some("draining");
        }
        match self.bus() {
            None => Some("NATS not connected or streams not in place yet"),
            Some(bus)
                if bus.client().connection_state() != async_nats::connection::State::Connected =>
            {
                Some("NATS disconnected")
            }
            Some(_) if !self.nats_answering() => Some("NATS is not answering"),
            Some(_)
                if self.config.webhooks.secret_key_file.is_some() && self.webhooks().is_none() =>
            {
                Some("webhooks not started yet")
            }
            Some(_) => None,
        }
    }
}
