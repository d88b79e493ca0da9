//! From [`NatsConfig`] to a live NATS connection and a JetStream context.

use async_nats::jetstream;
use bus_core::NatsConfig;

use crate::error::ConnectError;

/// Most publishes awaiting their PubAck at once on one connection; further publishes wait
/// for a slot (backpressure), they are never dropped.
pub const MAX_ACKS_IN_FLIGHT: usize = 4096;

pub(crate) async fn connect(config: &NatsConfig) -> Result<async_nats::Client, ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout))
        // Reconnect forever: a bus client outlives any one server.
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                async_nats::Event::Disconnected => tracing::warn!("NATS disconnected"),
                other => tracing::debug!(event = %other, "NATS event"),
            }
        });
    if let Some(name) = &config.name {
        options = options.name(name);
    }
    if let Some(path) = &config.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(ConnectError::Credentials)?;
    }
    // The values, or the `*_file` keys' files, read now: at start-up, not at reconnects.
    let creds = config.credentials()?;
    if let Some(seed) = &creds.nkey {
        options = options.nkey(seed.expose().to_owned());
    }
    if let (Some(user), Some(password)) = (creds.user, &creds.password) {
        options = options.user_and_password(user, password.expose().to_owned());
    }
    if let Some(token) = &creds.token {
        options = options.token(token.expose().to_owned());
    }
    let tls = &config.tls;
    if tls.required {
        options = options.require_tls(true);
    }
    if let Some(ca) = &tls.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options.connect(&config.servers).await?)
}

pub(crate) fn jetstream(client: async_nats::Client, config: &NatsConfig) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(config.request_timeout)
        .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
        .backpressure_on_inflight(true)
        .build(client)
}
