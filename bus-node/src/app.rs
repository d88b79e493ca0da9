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
    /// Whether this node exports the cluster-wide group numbers.
    pub reporter: crate::cluster_reporter::Reporter,
    /// Requests served at once (`http.max_connections`); past it, `503` at once.
    pub request_slots: Semaphore,
    bus: OnceCell<Bus>,
    webhooks: OnceCell<std::sync::Arc<crate::webhooks::engine::Webhooks>>,
    push: OnceCell<std::sync::Arc<crate::push::hub::Hub>>,
    /// Signs and verifies push tokens (`push.token_key_file`).
    push_token_key: Option<crate::push::token::TokenKey>,
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
            reporter: crate::cluster_reporter::Reporter::new(&config.node.id),
            request_slots: Semaphore::new(config.http.max_connections),
            bus: OnceCell::new(),
            webhooks: OnceCell::new(),
            push: OnceCell::new(),
            push_token_key: match config.push.token_key() {
                Ok(key) => key.map(|k| crate::push::token::TokenKey::new(k.expose().as_bytes())),
                Err(e) => {
                    // Validated at start-up; a file changed since is reported.
                    tracing::error!(error = %e, "push tokens off");
                    None
                }
            },
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

    /// Push delivery, once connected.
    pub fn push(&self) -> Option<&std::sync::Arc<crate::push::hub::Hub>> {
        self.push.get()
    }

    pub fn set_push(&self, hub: std::sync::Arc<crate::push::hub::Hub>) {
        if self.push.set(hub).is_err() {
            tracing::warn!("push started twice; keeping the first");
        }
    }

    pub fn push_token_key(&self) -> Option<&crate::push::token::TokenKey> {
        self.push_token_key.as_ref()
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
            Some(_) if self.push().is_none_or(|hub| hub.epoch().is_none()) => {
                Some("push not reading the events stream yet")
            }
            Some(_)
                if self.config.webhooks.secret_key_file.is_some() && self.webhooks().is_none() =>
            {
                Some("webhooks not started yet")
            }
            Some(_) => None,
        }
    }
}
