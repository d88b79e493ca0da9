//! Whether NATS answers: a bounded JetStream round trip (account info) every
//! [`PROBE_INTERVAL`], so that a server that keeps its sockets open but answers nothing
//! (frozen, partitioned, without a meta leader) makes the node unready within
//! [`PROBE_INTERVAL`] + [`PROBE_TIMEOUT`], and new publishes are refused at once instead
//! of being held until their deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::App;

/// Time between two probes.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a probe waits for JetStream's answer before NATS counts as not answering.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Probes until `cancel`, recording each result in [`App::set_nats_answering`] (which
/// logs the changes).
pub async fn run(app: Arc<App>, cancel: CancellationToken) {
    loop {
        if let Some(bus) = app.bus() {
            let answer = tokio::time::timeout(PROBE_TIMEOUT, bus.jetstream().query_account()).await;
            let answering = match answer {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no JetStream answer within {PROBE_TIMEOUT:?}")),
            };
            app.set_nats_answering(answering);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
}
