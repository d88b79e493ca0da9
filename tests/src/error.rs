//! The one error type of the harness. Each variant is a kind a test can match on;
//! tests should assert `matches!(err, HarnessError::Kind { .. })`, not message text.

use std::path::PathBuf;
use std::time::Duration;

/// Why the harness could not do what a test asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// No usable `nats-server` executable. `tried` lists what was looked at.
    #[error(
        "nats-server not found: run scripts/ensure-nats-server.sh (installs the pinned 2.15.1) or set NATS_SERVER_BIN"
    )]
    BinaryNotFound {
        /// Paths that were checked, in order.
        tried: Vec<PathBuf>,
    },

    /// No `bus-node` executable: build it first.
    #[error(
        "bus-node binary not found at {tried:?}: run `cargo build -p bus-node` or set BUS_NODE_BIN"
    )]
    NodeBinaryNotFound {
        /// Paths that were checked, in order.
        tried: Vec<PathBuf>,
    },

    /// No executable of an SDK example: build it first.
    #[error("example {name} not found at {tried:?}: run `cargo build -p bus-sdk --example {name}`")]
    ExampleNotFound {
        /// The example's name.
        name: String,
        /// Paths that were checked.
        tried: Vec<PathBuf>,
    },

    /// A cluster needs at least one node.
    #[error("invalid node count {0}: a cluster needs at least one node")]
    InvalidNodeCount(usize),

    /// A node index outside `0..len`.
    #[error("no node {index} in a cluster of {len}")]
    NoSuchNode {
        /// The index asked for.
        index: usize,
        /// How many nodes the cluster has.
        len: usize,
    },

    /// The node's process is not running, so it cannot be signalled or observed.
    #[error("node {node} is not running")]
    NotRunning {
        /// Server name, e.g. `n1`.
        node: String,
    },

    /// Not enough free, unlocked ports in the harness's port range.
    #[error("could not reserve {needed} ports in {first}..={last}: all taken or locked")]
    PortsExhausted {
        /// Ports asked for.
        needed: usize,
        /// First port of the range.
        first: u16,
        /// Last port of the range.
        last: u16,
    },

    /// A file-system or process-spawning operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Sending a signal to a server process failed.
    #[error("could not send {signal} to node {node}: {source}")]
    Signal {
        /// Server name.
        node: String,
        /// Signal name, e.g. `SIGSTOP`.
        signal: &'static str,
        /// The errno.
        #[source]
        source: nix::errno::Errno,
    },

    /// A server process exited while the harness waited for it to become ready.
    #[error("node {node} exited while starting ({status}); last log lines:\n{log_tail}")]
    Exited {
        /// Server name.
        node: String,
        /// The exit status as text.
        status: String,
        /// The end of the node's log.
        log_tail: String,
    },

    /// A condition polled for did not hold before the deadline.
    #[error("timed out after {waited:?} waiting for {what}; last seen: {last_seen}")]
    Timeout {
        /// The condition.
        what: String,
        /// How long the harness waited.
        waited: Duration,
        /// What the last probe observed.
        last_seen: String,
    },

    /// A monitoring-endpoint request failed (connect, I/O, timeout or a malformed answer).
    #[error("GET {url}: {reason}")]
    Http {
        /// The URL requested.
        url: String,
        /// What went wrong.
        reason: String,
    },

    /// A NATS client could not connect.
    #[error("could not connect a NATS client to {urls:?}: {source}")]
    Connect {
        /// The servers tried.
        urls: Vec<String>,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
}

impl HarnessError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
