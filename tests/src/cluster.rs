//! A set of nats-server processes started for one test: a single JetStream node, or
//! a JetStream cluster whose nodes route to each other. Owns the ports, the temporary
//! directory and the processes; dropping it kills every process and removes the
//! directory, printing the logs first if the test is failing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::try_join_all;
use tokio::time::Instant;

use crate::binary;
use crate::config::{ClusterConfig, NodeConfig};
use crate::error::HarnessError;
use crate::ports::{self, ReservedPort};
use crate::server::NatsServer;

/// Nodes started by [`NatsClusterBuilder::start`] unless [`NatsClusterBuilder::nodes`] says otherwise.
pub const DEFAULT_NODES: usize = 1;
/// How long start-up, restarts and the cluster's waits (leaders, catch-up) may take.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`NatsCluster::stop`] waits after SIGTERM before sending SIGKILL.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Connect timeout of [`NatsCluster::client`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Log lines printed per node when a test fails.
pub const LOG_DUMP_LINES: usize = 200;
/// Set to any value to print every node's log when a cluster is dropped, failing or not.
pub const DUMP_LOGS_ENV: &str = "BUS_TESTS_DUMP_LOGS";

/// Options for starting a [`NatsCluster`].
///
/// ```no_run
/// # async fn demo() -> Result<(), bus_tests::HarnessError> {
/// let cluster = bus_tests::NatsCluster::builder().nodes(3).start().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct NatsClusterBuilder {
    nodes: usize,
    binary: Option<PathBuf>,
    ready_timeout: Duration,
    extra_config: String,
}

impl Default for NatsClusterBuilder {
    fn default() -> Self {
        Self {
            nodes: DEFAULT_NODES,
            binary: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            extra_config: String::new(),
        }
    }
}

impl NatsClusterBuilder {
    /// Number of nodes (default [`DEFAULT_NODES`]). 1 is a single JetStream server with
    /// no cluster block; more form a JetStream cluster (use 3 for R3 streams).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), bus_tests::HarnessError> {
    /// let cluster = bus_tests::NatsCluster::builder().nodes(3).start().await?;
    /// assert_eq!(cluster.len(), 3);
    /// # Ok(()) }
    /// ```
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// The `nats-server` executable to run. Default: `$NATS_SERVER_BIN`, else
    /// `nats-server` on `PATH`. A path that is not an executable file makes
    /// [`start`](Self::start) fail with [`HarnessError::BinaryNotFound`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), bus_tests::HarnessError> {
    /// let cluster = bus_tests::NatsCluster::builder()
    ///     .binary("/opt/nats/nats-server")
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Deadline for start-up and for each of the cluster's waits
    /// (default [`DEFAULT_READY_TIMEOUT`]).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), bus_tests::HarnessError> {
    /// let cluster = bus_tests::NatsCluster::builder()
    ///     .nodes(3)
    ///     .ready_timeout(std::time::Duration::from_secs(60))
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// nats-server configuration text appended to every node's file as it is: accounts,
    /// limits, anything the test needs beyond the listeners, JetStream and routes.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), bus_tests::HarnessError> {
    /// let cluster = bus_tests::NatsCluster::builder()
    ///     .extra_config("max_payload: 65536")
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn extra_config(mut self, text: impl Into<String>) -> Self {
        self.extra_config = text.into();
        self
    }

    /// Reserves ports, writes configs, starts every node and returns once each answers
    /// `/healthz?js-enabled-only=true` with 200 and, for several nodes, a JetStream meta
    /// leader is known to all of them and sees every other node as a current peer.
    pub async fn start(self) -> Result<NatsCluster, HarnessError> {
        let n = self.nodes;
        if n == 0 {
            return Err(HarnessError::InvalidNodeCount(n));
        }
        let binary = binary::locate(self.binary.as_deref())?;
        let per_node = if n > 1 { 3 } else { 2 };
        let reserved = ports::reserve(n * per_node)?;
        let port = |node: usize, k: usize| reserved[node * per_node + k].port();
        let route_ports: Vec<u16> = if n > 1 {
            (0..n).map(|i| port(i, 2)).collect()
        } else {
            Vec::new()
        };
        let dir = tempfile::Builder::new()
            .prefix("bus-test-nats-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating the cluster's temporary directory", e))?;
        // Unique while we hold the first port's lock, and distinct across processes.
        let cluster_name = format!("bus-test-{}-{}", std::process::id(), port(0, 0));

        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("n{i}");
            let node_dir = dir.path().join(&name);
            let config = NodeConfig {
                store_dir: node_dir.join("store"),
                name,
                client_port: port(i, 0),
                monitor_port: port(i, 1),
                cluster: (n > 1).then(|| ClusterConfig {
                    name: cluster_name.clone(),
                    route_port: route_ports[i],
                    peer_route_ports: route_ports
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i)
                        .map(|(_, &p)| p)
                        .collect(),
                }),
                extra: self.extra_config.clone(),
            };
            nodes.push(NatsServer::prepare(binary.clone(), &node_dir, config)?);
        }
        let mut cluster = NatsCluster {
            nodes,
            ready_timeout: self.ready_timeout,
            failed: AtomicBool::new(false),
            _ports: reserved,
            _dir: dir,
        };
        let started = cluster.start_all().await;
        cluster.check(started)?;
        Ok(cluster)
    }
}

/// Real `nats-server` processes for one test. See the crate docs for an example.
#[derive(Debug)]
pub struct NatsCluster {
    // Field order is drop order: processes die before their ports are released and
    // before their directory is removed.
    nodes: Vec<NatsServer>,
    ready_timeout: Duration,
    /// Set when a harness operation failed, so `Drop` prints the logs.
    failed: AtomicBool,
    _ports: Vec<ReservedPort>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `n` nodes with default options: `n = 1` is a single JetStream node, `n = 3`
    /// a JetStream cluster. See [`NatsClusterBuilder::start`] for when it returns.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), bus_tests::HarnessError> {
    /// let cluster = bus_tests::NatsCluster::start(3).await?;
    /// let client = cluster.client().await?;
    /// # Ok(()) }
    /// ```
    pub async fn start(n: usize) -> Result<NatsCluster, HarnessError> {
        Self::builder().nodes(n).start().await
    }

    /// Options beyond the node count (binary, deadlines).
    pub fn builder() -> NatsClusterBuilder {
        NatsClusterBuilder::default()
    }

    /// Number of nodes, running or not.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// `nats://127.0.0.1:PORT` of every node, in index order.
    pub fn client_urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::client_url).collect()
    }

    /// Node `i`. Panics if `i >= len()`, like slice indexing.
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// SIGKILL node `i` and wait for it to exit (a crash: no clean shutdown).
    /// No-op if it is not running.
    pub fn kill(&mut self, i: usize) -> Result<(), HarnessError> {
        let result = self.node_mut(i).and_then(NatsServer::kill);
        self.check(result)
    }

    /// SIGTERM node `i` (resuming it first if paused), then SIGKILL if it has not
    /// exited after [`DEFAULT_STOP_GRACE`]. No-op if it is not running.
    pub async fn stop(&mut self, i: usize) -> Result<(), HarnessError> {
        let result = match self.node_mut(i) {
            Ok(node) => node.stop(DEFAULT_STOP_GRACE).await,
            Err(e) => Err(e),
        };
        self.check(result)
    }

    /// Stops node `i` if running, starts it again with the same config, ports and store
    /// (so it rejoins its cluster), and waits until `/healthz?js-enabled-only=true` is 200.
    pub async fn restart(&mut self, i: usize) -> Result<(), HarnessError> {
        let timeout = self.ready_timeout;
        let result = match self.node_mut(i) {
            Ok(node) => match node
                .stop(DEFAULT_STOP_GRACE)
                .await
                .and_then(|()| node.spawn())
            {
                Ok(()) => node.wait_healthy(timeout).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        self.check(result)
    }

    /// SIGSTOP node `i`: it keeps its sockets but answers nothing.
    pub fn pause(&mut self, i: usize) -> Result<(), HarnessError> {
        let result = self.node_mut(i).and_then(NatsServer::pause);
        self.check(result)
    }

    /// SIGCONT node `i`.
    pub fn resume(&mut self, i: usize) -> Result<(), HarnessError> {
        let result = self.node_mut(i).and_then(NatsServer::resume);
        self.check(result)
    }

    /// A client that knows every node's URL, connected to one of them.
    pub async fn client(&self) -> Result<async_nats::Client, HarnessError> {
        let urls = self.client_urls();
        let result = async_nats::ConnectOptions::new()
            .connection_timeout(DEFAULT_CONNECT_TIMEOUT)
            .connect(urls.clone())
            .await
            .map_err(|source| HarnessError::Connect { urls, source });
        self.check(result)
    }

    pub(crate) fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    pub(crate) fn ready_timeout(&self) -> Duration {
        self.ready_timeout
    }

    pub(crate) fn get(&self, i: usize) -> Result<&NatsServer, HarnessError> {
        let len = self.nodes.len();
        self.nodes
            .get(i)
            .ok_or(HarnessError::NoSuchNode { index: i, len })
    }

    fn node_mut(&mut self, i: usize) -> Result<&mut NatsServer, HarnessError> {
        let len = self.nodes.len();
        self.nodes
            .get_mut(i)
            .ok_or(HarnessError::NoSuchNode { index: i, len })
    }

    /// Remembers a failure so the logs are printed when the cluster is dropped.
    pub(crate) fn check<T>(&self, result: Result<T, HarnessError>) -> Result<T, HarnessError> {
        if result.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        result
    }

    async fn start_all(&mut self) -> Result<(), HarnessError> {
        let started = Instant::now();
        for node in &mut self.nodes {
            node.spawn()?;
        }
        let timeout = self.ready_timeout;
        try_join_all(self.nodes.iter().map(|node| node.wait_healthy(timeout))).await?;
        if self.nodes.len() > 1 {
            self.wait_meta_ready(timeout.saturating_sub(started.elapsed()))
                .await?;
        }
        Ok(())
    }

    fn dump_logs(&self, why: &str) {
        for node in &self.nodes {
            eprintln!(
                "===== bus-tests: {why}: log of {} ({}, {}, store {}), last {LOG_DUMP_LINES} lines =====\n{}",
                node.name(),
                node.client_url(),
                node.monitor_url(),
                node.store_dir().display(),
                node.log_tail(LOG_DUMP_LINES),
            );
        }
        eprintln!("===== bus-tests: end of logs =====");
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs("test panicked");
        } else if self.failed.load(Ordering::Relaxed) {
            self.dump_logs("a harness operation failed");
        } else if std::env::var_os(DUMP_LOGS_ENV).is_some() {
            self.dump_logs(DUMP_LOGS_ENV);
        }
        for node in &mut self.nodes {
            // Best effort; each node's own Drop tries again.
            let _ = node.kill();
        }
    }
}

// Compile-time check that the cluster's futures are `Send`, so tests may
// `tokio::spawn` them (e.g. publish in a task while the main task kills a node).
const _: () = {
    fn send<T: Send>(_: T) {}
    fn check(cluster: &mut NatsCluster) {
        send(NatsCluster::start(3));
        send(cluster.leader_of("s"));
        send(cluster.wait_for_stream_leader_other_than("s", 0));
        send(cluster.wait_caught_up(0, "s"));
        send(cluster.client());
        send(cluster.node(0).monitor_json("/varz"));
        send(cluster.stop(0));
        send(cluster.restart(0));
    }
    let _ = check;
};
