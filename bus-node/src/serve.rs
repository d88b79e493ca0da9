//! Running a node: bind, connect to NATS in the background, serve until SIGTERM/SIGINT,
//! then drain (readiness fails first, in-flight requests finish within the grace, the
//! NATS connection is flushed).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bus_core::EventPattern;
use bus_core::retry::backoff_delay;
use bus_sdk::{Bus, EventMeta, HandlerError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::NodeConfig;
use crate::http;
use crate::nats_probe;
use crate::webhooks;
use crate::webhooks::attempt::Deliverer;
use crate::webhooks::engine::Webhooks;
use crate::webhooks::ssrf::AddressPolicy;

/// What `dev` adds to a plain `serve`.
#[derive(Default)]
pub struct Extras {
    /// Print every stored event (dev mode).
    pub log_events: bool,
    /// Resolves if something the node depends on died (dev: the embedded nats-server).
    pub died: Option<Pin<Box<dyn Future<Output = String> + Send>>>,
}

pub async fn run(config: NodeConfig, extras: Extras) -> anyhow::Result<()> {
    let addr = config.listen_addr()?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (http.listen)"))?;
    let metrics_listener = match &config.http.metrics_listen {
        Some(m) => Some(
            TcpListener::bind(m)
                .await
                .with_context(|| format!("cannot listen on {m} (http.metrics_listen)"))?,
        ),
        None => None,
    };
    let grace = config.http.shutdown_grace;
    let app = Arc::new(App::new(config));
    tracing::info!(%addr, node = %app.config.node.id, "listening");

    let cancel = CancellationToken::new();
    let connector = tokio::spawn(connect(app.clone(), cancel.clone(), extras.log_events));
    let probe = tokio::spawn(nats_probe::run(app.clone(), cancel.clone()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let limits = http::server::ConnectionLimits {
        max_open: app.config.http.max_open_connections,
        header_read_timeout: app.config.http.header_read_timeout,
    };
    let server = http::server::serve(listener, http::router(app.clone()), limits, async move {
        let _ = stop_rx.await;
    });
    let mut server = tokio::spawn(server);
    let metrics_server = metrics_listener.map(|l| {
        let stop = cancel.clone();
        let router = http::metrics_router(app.clone());
        tokio::spawn(http::server::serve(l, router, limits, async move {
            stop.cancelled().await
        }))
    });
    let died = async move {
        match extras.died {
            Some(f) => f.await,
            None => std::future::pending().await,
        }
    };
    let mut failure = None;
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        reason = died => failure = Some(reason),
        result = &mut server => {
            result.context("the HTTP server task failed")?;
            return Ok(());
        }
    }
    // Readiness fails first, then the listener closes and in-flight requests finish.
    app.start_draining();
    cancel.cancel();
    // Another node exports the cluster-wide numbers from its next round.
    crate::cluster_reporter::give_up(&app).await;
    let _ = stop_tx.send(());
    if tokio::time::timeout(grace, &mut server).await.is_err() {
        tracing::warn!(
            ?grace,
            "requests still in flight after the shutdown grace; cutting them off"
        );
        server.abort();
    }
    connector.abort();
    probe.abort();
    if let Some(m) = metrics_server {
        m.abort();
    }
    if let Some(bus) = app.bus() {
        bus.close().await;
    }
    tracing::info!("stopped");
    match failure {
        Some(reason) => anyhow::bail!("{reason}"),
        None => Ok(()),
    }
}

/// Connects and puts the streams in place, retrying until it works or the node stops.
async fn connect(app: Arc<App>, cancel: CancellationToken, log_events: bool) {
    let mut attempt = 0u32;
    loop {
        let bus = Bus::builder(app.config.bus())
            .source(format!("/bus-node/{}", app.config.node.id))
            .connect()
            .await;
        match bus {
            Ok(bus) => {
                tracing::info!(servers = ?app.config.nats.servers, "NATS connected, streams in place");
                if log_events {
                    spawn_event_log(&bus, cancel.clone()).await;
                }
                crate::cluster_reporter::start(app.clone(), &bus, cancel.clone()).await;
                app.set_bus(bus.clone());
                start_push(&app, bus.clone(), cancel.clone());
                start_webhooks(&app, bus, cancel).await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach NATS yet; retrying");
                attempt += 1;
                let delay = backoff_delay(attempt).max(Duration::from_millis(500));
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// `open()`, retried with backoff until it succeeds (`None`: the node stopped first).
async fn until_opened<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    cancel: &CancellationToken,
    mut open: impl FnMut() -> F,
) -> Option<T> {
    let mut attempt = 0u32;
    loop {
        match open().await {
            Ok(opened) => return Some(opened),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open {what}; retrying");
                attempt += 1;
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(backoff_delay(attempt)) => {}
                }
            }
        }
    }
}

/// Starts the node's push hub (SSE, WebSocket); its streams end when the node stops.
fn start_push(app: &Arc<App>, bus: Bus, cancel: CancellationToken) {
    let hub = Arc::new(crate::push::hub::Hub::new(
        app.config.node.id.clone(),
        &app.config.push,
        cancel.clone(),
        app.metrics.push.clone(),
    ));
    app.set_push(hub.clone());
    tokio::spawn(hub.run(bus, cancel));
}

/// Opens the webhook subscriptions and runs their deliveries on this node, if
/// `webhooks.secret_key_file` is set; retries opening the bucket until the node stops.
async fn start_webhooks(app: &Arc<App>, bus: Bus, cancel: CancellationToken) {
    let key = match app.config.webhooks.sealing_key() {
        Ok(Some(key)) => key,
        Ok(None) => {
            tracing::info!("webhooks off: webhooks.secret_key_file is not set");
            return;
        }
        // Validated at start-up; a file changed since is reported, not fatal.
        Err(e) => {
            tracing::error!(error = %e, "webhooks off");
            return;
        }
    };
    let policy = AddressPolicy::new(app.config.webhooks.allowed_networks.clone());
    let roots = match app.config.webhooks.extra_roots() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "webhooks off");
            return;
        }
    };
    let deliverer = match Deliverer::new(policy, app.config.webhooks.timeout, roots) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "webhooks off: cannot build the delivery client");
            return;
        }
    };
    let streams = &app.config.streams;
    let opened = until_opened("the webhook subscriptions", &cancel, || {
        webhooks::store::open(bus.jetstream(), &streams.events_name, streams.replicas)
    })
    .await;
    let Some(store) = opened else { return };
    let opened = until_opened("the webhook attempts log", &cancel, || {
        webhooks::attempts_log::AttemptsLog::open(
            bus.jetstream(),
            &streams.events_name,
            streams.replicas,
            &app.config.webhooks,
        )
    })
    .await;
    let Some(attempts) = opened else { return };
    let w = Arc::new(Webhooks {
        bus,
        store,
        key,
        deliverer,
        config: app.config.webhooks.clone(),
        attempts,
        node: app.config.node.id.clone(),
        slots: tokio::sync::Semaphore::new(app.config.webhooks.node_concurrency),
        metrics: webhooks::engine::WebhookMetrics {
            attempts: app.metrics.webhook_attempts.clone(),
            duration: app.metrics.webhook_attempt_duration.clone(),
        },
    });
    app.set_webhooks(w.clone());
    tokio::spawn(webhooks::engine::run(w, cancel));
}

/// Dev mode: prints every event as it is stored.
async fn spawn_event_log(bus: &Bus, cancel: CancellationToken) {
    let Ok(all) = EventPattern::new(">") else {
        return;
    };
    let tap = bus
        .broadcast()
        .on_any(all, |meta: EventMeta| async move {
            println!(
                "event #{} {} id={} source={} ({} bytes)",
                meta.stream_seq,
                meta.event.event_type,
                meta.event.id,
                meta.event.source,
                meta.event.data.len()
            );
            Ok::<(), HandlerError>(())
        })
        .start()
        .await;
    match tap {
        Ok(tap) => {
            tokio::spawn(async move {
                cancel.cancelled().await;
                tap.shutdown().await;
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot print events"),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
