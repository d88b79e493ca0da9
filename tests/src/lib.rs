//! Test harness: real `nats-server` processes, single or clustered, per test.
//!
//! ```no_run
//! # async fn demo() -> Result<(), bus_tests::HarnessError> {
//! use bus_tests::NatsCluster;
//!
//! let mut cluster = NatsCluster::start(3).await?; // healthy, meta leader elected
//! let client = cluster.client().await?;
//! // ... create an R3 stream "ORDERS" and publish ...
//! let leader = cluster.leader_of("ORDERS").await?;
//! cluster.kill(leader)?;
//! let new_leader = cluster.wait_for_stream_leader_other_than("ORDERS", leader).await?;
//! cluster.restart(leader).await?; // same ports, same store: rejoins its cluster
//! cluster.wait_caught_up(leader, "ORDERS").await?;
//! # Ok(()) }
//! ```
//!
//! **Architecture Invariants**
//! - Ports come from [`PORT_RANGE_FIRST`]..=[`PORT_RANGE_LAST`] and are held under a
//!   per-port lock file for the cluster's lifetime: parallel test processes never
//!   share a port, and a restarted node gets its own ports back.
//! - Readiness is polled (every [`POLL_INTERVAL`], up to a deadline), never slept for;
//!   a timeout says what was last seen.
//! - No server outlives its [`NatsCluster`]: `Drop` kills and reaps every process and
//!   prints the logs when the test panicked or a harness call failed.
//! - A missing `nats-server` is an error ([`HarnessError::BinaryNotFound`]), never a skip.
//!
//! [`fixtures`] holds what several integration suites share on top of the harness: a bus
//! on a cluster, test event types, a recorder of handled events, `bus-node` helpers.

mod binary;
mod built;
mod cluster;
mod config;
mod error;
pub mod fixtures;
mod health;
mod jsz;
mod node;
mod otlp;
mod own_process;
mod poll;
mod ports;
mod raft;
mod server;
mod test_ca;

pub use binary::{BINARY_ENV, nats_server_binary};
pub use cluster::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_NODES, DEFAULT_READY_TIMEOUT, DEFAULT_STOP_GRACE,
    DUMP_LOGS_ENV, LOG_DUMP_LINES, NatsCluster, NatsClusterBuilder,
};
pub use config::{DEFAULT_MAX_FILE_STORE, DEFAULT_MAX_MEMORY_STORE};
pub use error::HarnessError;
pub use health::DEFAULT_HTTP_TIMEOUT;
pub use node::{
    BusNode, NODE_BINARY_ENV, NODE_READY_TIMEOUT, NODE_STOP_GRACE, example_binary, node_binary,
};
pub use otlp::{Kind as SpanKind, OtlpReceiver, ReceivedSpan, ReceiverOptions, SeenRequest};
pub use own_process::{OWN_PROCESS_ENV, own_process};
pub use poll::{POLL_INTERVAL, Probe, poll_until, try_poll_until, wait_until};
pub use ports::{PORT_RANGE_FIRST, PORT_RANGE_LAST, ReservedPort, reserve};
pub use server::NatsServer;
pub use test_ca::{Issued, TestCa, server_config};
