//! What both sides share: the servers, the bus configuration, fresh streams per run, and
//! the consumer settings the raw side copies from the bus.
//!
//! Both sides connect to one server only: the one leading the fresh events stream. With
//! every URL the client would pick a server at random, and a publish through a follower
//! takes one more hop: R3 rounds would differ by where the client landed, not by client.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::{
    CreateStreamError, CreateStreamErrorKind, DeleteStreamErrorKind,
};
use bus_core::retry::backoff_delay;
use bus_core::topology::{DEFAULT_ENSURE_DEADLINE, TopologyError};
use bus_core::{BusConfig, EventType, Topology};
use bus_sdk::EventPayload;
use tokio::time::Instant;

use crate::payload::BenchEvent;

/// Name of the consumer group (the durable consumer) of every consuming workload.
pub const GROUP: &str = "bench";
/// How long a fresh stream may take to get a leader.
const LEADER_DEADLINE: Duration = Duration::from_secs(30);
/// How long re-creating a stream just deleted may keep finding a replica's old store
/// (then one more attempt, itself bounded by `DEFAULT_ENSURE_DEADLINE`).
const RECREATE_DEADLINE: Duration = Duration::from_secs(30);

/// The servers under test and an admin connection to them.
#[derive(Debug)]
pub struct Env {
    /// Server name (`n0`) and client URL of every node.
    nodes: Vec<(String, String)>,
    replicas: usize,
    admin: jetstream::Context,
    /// The URL both sides connect to: the events stream's leader after `fresh_streams`.
    target: Mutex<String>,
}

impl Env {
    pub async fn new(cluster: &bus_tests::NatsCluster) -> Result<Self> {
        let nodes: Vec<(String, String)> = (0..cluster.len())
            .map(|i| {
                let node = cluster.node(i);
                (node.name().to_owned(), node.client_url())
            })
            .collect();
        let client = async_nats::connect(cluster.client_urls())
            .await
            .context("admin connection")?;
        let target = nodes.first().map(|n| n.1.clone()).unwrap_or_default();
        Ok(Env {
            replicas: nodes.len(),
            nodes,
            admin: jetstream::new(client),
            target: Mutex::new(target),
        })
    }

    /// The bus configuration of both sides: default streams and subjects, `replicas`
    /// copies, the stream leader's URL as the only server.
    pub fn config(&self) -> BusConfig {
        let mut config = BusConfig::with_servers([self.url()]);
        config.streams.replicas = self.replicas;
        config
    }

    /// The URL both sides connect to.
    pub fn url(&self) -> String {
        self.target.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// The subject `Bus::publish` uses for [`BenchEvent`].
    pub fn subject(&self) -> Result<String> {
        Ok(self
            .config()
            .subjects()
            .event(&EventType::new(BenchEvent::EVENT_TYPE)?))
    }

    /// Deletes the bus's streams and creates them again, empty, exactly as the bus's
    /// `connect` would, then waits until the events stream has a leader and makes its
    /// server the one both sides connect to.
    /// Deletes the ordered groups' stream (and with it their partition consumers); the
    /// first ordered member makes it again.
    pub async fn fresh_ordered_stream(&self) -> Result<()> {
        let name = bus_core::topology::ordered_stream(&self.config().streams.events_name);
        match self.admin.delete_stream(&name).await {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(e.kind(), DeleteStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("deleting stream {name}")),
        }
    }

    pub async fn fresh_streams(&self) -> Result<()> {
        let config = self.config();
        for name in [&config.streams.events_name, &config.streams.dlq_name] {
            match self.admin.delete_stream(name).await {
                Ok(_) => {}
                Err(e)
                    if matches!(e.kind(), DeleteStreamErrorKind::JetStream(ref j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {}
                Err(e) => return Err(e).with_context(|| format!("deleting stream {name}")),
            }
        }
        let topology = Topology::from_config(&config);
        let start = Instant::now();
        let mut attempt = 0;
        loop {
            match topology.ensure(&self.admin, DEFAULT_ENSURE_DEADLINE).await {
                Ok(()) => break,
                Err(e) if old_store_in_the_way(&e) && start.elapsed() < RECREATE_DEADLINE => {
                    eprintln!("bus-bench: re-creating the streams: {e}; retrying");
                    tokio::time::sleep(backoff_delay(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e).context("creating the streams"),
            }
        }
        let start = Instant::now();
        loop {
            let mut stream = self.admin.get_stream(&config.streams.events_name).await?;
            let info = stream.info().await?;
            let leader = match &info.cluster {
                None => self.nodes.first(),
                Some(c) => c
                    .leader
                    .as_ref()
                    .and_then(|name| self.nodes.iter().find(|n| &n.0 == name)),
            };
            if let Some((_, url)) = leader {
                if let Ok(mut target) = self.target.lock() {
                    target.clone_from(url);
                }
                return Ok(());
            }
            if start.elapsed() > LEADER_DEADLINE {
                bail!(
                    "stream {} has no leader after {LEADER_DEADLINE:?}",
                    info.config.name
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The consumer the bus creates for group [`GROUP`] handling [`BenchEvent`] with
    /// default options (bus-sdk `group/consumer.rs`, `config`): same filters, acks,
    /// deadlines and limits, so that the server does the same work for both sides.
    pub fn consumer_config(&self) -> Result<pull::Config> {
        let subjects = self.config().subjects();
        let group = bus_core::GroupName::new(GROUP)?;
        let mut filters = vec![self.subject()?, subjects.redrive_filter(&group)];
        filters.sort();
        Ok(pull::Config {
            durable_name: Some(GROUP.to_owned()),
            description: Some(format!("bus consumer group {GROUP}")),
            ack_policy: AckPolicy::Explicit,
            ack_wait: bus_sdk::DEFAULT_ACK_WAIT,
            max_deliver: -1,
            max_ack_pending: i64::try_from(bus_sdk::DEFAULT_MAX_ACK_PENDING)?,
            deliver_policy: DeliverPolicy::All,
            filter_subjects: filters,
            ..Default::default()
        })
    }
}

/// Whether `e` is JetStream's "error creating store for stream" (the generic stream-create
/// error, 10049, about the store): in a cluster, a stream re-created right after its
/// deletion can land on a replica still removing the old store. The description is only
/// in the error's text.
fn old_store_in_the_way(e: &TopologyError) -> bool {
    let TopologyError::Refused { source, .. } = e else {
        return false;
    };
    source
        .downcast_ref::<CreateStreamError>()
        .is_some_and(|e| match e.kind() {
            CreateStreamErrorKind::JetStream(j) => {
                j.error_code() == jetstream::ErrorCode::STREAM_CREATE
                    && j.to_string().contains("creating store")
            }
            _ => false,
        })
}
