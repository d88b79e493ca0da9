//! nats-server's own message tracing (ADR-41): an account with a `msg_trace`
//! destination gets a trace of every message whose `traceparent` is sampled. Sampled bus
//! events stay out of it (the server would otherwise lift all their headers into a map,
//! traced or not) unless `nats.server_msg_trace` lets them in.

use std::time::Duration;

use bus_core::headers::{NATS_TRACE_DEST, TRACEPARENT};
use bus_core::server_trace::TRACE_DISABLED;
use bus_sdk::{Bus, PublishReceipt};
use bus_tests::NatsCluster;
use bus_tests::fixtures::{config_for, order};
use futures::StreamExt;

/// Where the account's message traces go.
const TRACES: &str = "nats.msg.traces";
const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// One account, which every connection without credentials joins, tracing every
/// sampled message.
fn account_tracing_sampled_messages() -> String {
    format!(
        "accounts {{\n  \
           BUS: {{\n    \
             jetstream: enabled\n    \
             users: [{{user: bus, password: bus}}]\n    \
             msg_trace: {{dest: {TRACES:?}, sampling: 100}}\n  \
           }}\n\
         }}\n\
         no_auth_user: bus"
    )
}

async fn bus(cluster: &NatsCluster, server_msg_trace: bool) -> anyhow::Result<Bus> {
    let mut config = config_for(cluster);
    config.nats.server_msg_trace = server_msg_trace;
    Ok(Bus::builder(config).source("/tests").connect().await?)
}

/// Publishes an order event that carries a sampled trace context of its own.
async fn publish_sampled(bus: &Bus, n: u64) -> anyhow::Result<PublishReceipt> {
    let mut event = bus.event(&order(n))?.build();
    event.traceparent = Some(SAMPLED.into());
    Ok(bus.publish_event(&event).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_an_account_tracing_sampled_messages_should_trace_bus_events_only_when_allowed()
-> anyhow::Result<()> {
    let cluster = NatsCluster::builder()
        .extra_config(account_tracing_sampled_messages())
        .start()
        .await?;
    let client = cluster.client().await?;
    let mut traces = client.subscribe(TRACES).await?;
    client.flush().await?;
    let quiet = bus(&cluster, false).await?;
    let allowing = bus(&cluster, true).await?;

    let kept_out = publish_sampled(&quiet, 1).await?;
    let let_in = publish_sampled(&allowing, 2).await?;
    let last = publish_sampled(&allowing, 3).await?;

    // The server sends each message's trace once it is done with the message, in order;
    // so whatever `kept_out` caused has arrived by the time the trace of `last` does.
    let mut traced = Vec::new();
    while !traced.contains(&last.id) {
        let msg = tokio::time::timeout(Duration::from_secs(10), traces.next())
            .await
            .map_err(|_| anyhow::anyhow!("no trace of {} within 10 s: {traced:?}", last.id))?
            .ok_or_else(|| anyhow::anyhow!("trace subscription closed"))?;
        let text = String::from_utf8_lossy(&msg.payload);
        for r in [&kept_out, &let_in, &last] {
            if text.contains(&r.id) {
                traced.push(r.id.clone());
            }
        }
    }
    assert_eq!(traced, [let_in.id.clone(), last.id.clone()]);

    // Both keep the context they were given. (The server, once it has traced a message
    // into a stream, disables tracing in the stored copy itself; so only the first one's
    // `Nats-Trace-Dest` says anything about the bus.)
    let stream = quiet.jetstream().get_stream(&kept_out.stream).await?;
    let kept_out = stream.get_raw_message(kept_out.seq).await?.headers;
    let let_in = stream.get_raw_message(let_in.seq).await?.headers;
    let header = |h: &async_nats::HeaderMap, name| h.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(header(&kept_out, TRACEPARENT).as_deref(), Some(SAMPLED));
    assert_eq!(header(&let_in, TRACEPARENT).as_deref(), Some(SAMPLED));
    assert_eq!(
        header(&kept_out, NATS_TRACE_DEST).as_deref(),
        Some(TRACE_DISABLED)
    );
    Ok(())
}
