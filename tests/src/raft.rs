//! Questions about a running cluster's RAFT groups (the JetStream meta group and each
//! stream's group), answered from the nodes' `/jsz` monitoring endpoints. HTTP rather
//! than a NATS client so the answers do not depend on which node a client happens to
//! be connected to, and a paused node is simply skipped.

use crate::cluster::NatsCluster;
use crate::error::HarnessError;
use crate::jsz::{self, JSZ, JSZ_STREAMS};
use crate::poll::{Probe, poll_until};

impl NatsCluster {
    /// Index of the node leading `stream`, polling until exactly one live node claims
    /// the leadership (deadline [`DEFAULT_READY_TIMEOUT`](crate::DEFAULT_READY_TIMEOUT)).
    /// On a single node this is 0 once the stream exists.
    pub async fn leader_of(&self, stream: &str) -> Result<usize, HarnessError> {
        let what = format!("a leader for stream {stream}");
        let result = poll_until(what, self.ready_timeout(), || async move {
            self.stream_leader_probe(stream, None).await
        })
        .await;
        self.check(result)
    }

    /// Polls until a live node other than `old` leads `stream`, and returns its index.
    pub async fn wait_for_stream_leader_other_than(
        &self,
        stream: &str,
        old: usize,
    ) -> Result<usize, HarnessError> {
        let what = format!("a leader for stream {stream} other than n{old}");
        let result = poll_until(what, self.ready_timeout(), || async move {
            self.stream_leader_probe(stream, Some(old)).await
        })
        .await;
        self.check(result)
    }

    /// Polls until node `i`'s replica of `stream` is current: the stream's leader lists
    /// it as current, online and without lag, and node `i` itself follows that leader.
    /// Immediate when `i` is the leader. Fails at once if node `i` is not running.
    pub async fn wait_caught_up(&self, i: usize, stream: &str) -> Result<(), HarnessError> {
        let result = self.wait_caught_up_inner(i, stream).await;
        self.check(result)
    }

    async fn wait_caught_up_inner(&self, i: usize, stream: &str) -> Result<(), HarnessError> {
        let node = self.get(i)?;
        let what = format!("{}'s replica of stream {stream} to be current", node.name());
        poll_until(what, self.ready_timeout(), || async move {
            if !node.is_running() {
                return Err(HarnessError::NotRunning {
                    node: node.name().to_owned(),
                });
            }
            if node.is_paused() {
                return Ok(Probe::NotYet(format!("{} is paused", node.name())));
            }
            let leader = match self.stream_leader_probe(stream, None).await? {
                Probe::Ready(leader) => leader,
                Probe::NotYet(seen) => return Ok(Probe::NotYet(format!("no leader: {seen}"))),
            };
            if leader == i {
                return Ok(Probe::Ready(()));
            }
            let leader_name = self.nodes()[leader].name();
            let leader_view = match self.nodes()[leader].monitor_json(JSZ_STREAMS).await {
                Ok(jsz) => jsz,
                Err(e) => return Ok(Probe::NotYet(format!("leader {leader_name}: {e}"))),
            };
            let replica = jsz::find_stream(&leader_view, stream)
                .and_then(|detail| jsz::replica(&detail["cluster"], node.name()));
            match replica {
                Some(r) if jsz::replica_is_current(r) => {}
                Some(r) => {
                    return Ok(Probe::NotYet(format!("leader {leader_name} lists {r}")));
                }
                None => {
                    return Ok(Probe::NotYet(format!(
                        "leader {leader_name} lists no replica {}",
                        node.name()
                    )));
                }
            }
            let own = match node.monitor_json(JSZ_STREAMS).await {
                Ok(jsz) => jsz,
                Err(e) => return Ok(Probe::NotYet(format!("{}: {e}", node.name()))),
            };
            let followed = jsz::find_stream(&own, stream).and_then(jsz::stream_leader);
            Ok(if followed == Some(leader_name) {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!(
                    "{} follows {followed:?}, not {leader_name}",
                    node.name()
                ))
            })
        })
        .await
    }

    /// Every live node names the same meta leader, and that leader counts all nodes and
    /// sees each other node as a current peer.
    pub(crate) async fn wait_meta_ready(
        &self,
        timeout: std::time::Duration,
    ) -> Result<(), HarnessError> {
        poll_until(
            "a JetStream meta leader with every node current",
            timeout,
            || self.meta_ready_probe(),
        )
        .await
    }

    async fn meta_ready_probe(&self) -> Result<Probe<()>, HarnessError> {
        let mut views = Vec::with_capacity(self.len());
        for node in self.nodes() {
            match node.monitor_json(JSZ).await {
                Ok(jsz) => views.push(jsz),
                Err(e) => return Ok(Probe::NotYet(format!("{}: {e}", node.name()))),
            }
        }
        let leaders: Vec<Option<&str>> = views.iter().map(jsz::meta_leader).collect();
        let seen = || {
            let named: Vec<String> = self
                .nodes()
                .iter()
                .zip(&leaders)
                .map(|(n, l)| format!("{} says meta leader {l:?}", n.name()))
                .collect();
            named.join("; ")
        };
        let Some(leader) = leaders[0].filter(|l| leaders.iter().all(|x| x == &Some(*l))) else {
            return Ok(Probe::NotYet(seen()));
        };
        let Some(index) = self.nodes().iter().position(|n| n.name() == leader) else {
            return Ok(Probe::NotYet(format!(
                "unknown leader {leader}: {}",
                seen()
            )));
        };
        let view = &views[index];
        let size = jsz::meta_cluster_size(view);
        let all_current = self.nodes().iter().filter(|n| n.name() != leader).all(|n| {
            jsz::replica(&view["meta_cluster"], n.name()).is_some_and(jsz::replica_is_current)
        });
        Ok(if size == Some(self.len() as u64) && all_current {
            Probe::Ready(())
        } else {
            Probe::NotYet(format!(
                "meta leader {leader} reports size {size:?}, {}",
                view["meta_cluster"]["replicas"]
            ))
        })
    }

    /// Asks every live node about `stream`; ready when exactly one node claims to lead
    /// it (a node's claim about itself is authoritative; followers can name a dead
    /// leader until the next election) and that node is not `exclude`.
    async fn stream_leader_probe(
        &self,
        stream: &str,
        exclude: Option<usize>,
    ) -> Result<Probe<usize>, HarnessError> {
        let mut claims = Vec::new();
        let mut seen = Vec::new();
        for (i, node) in self.nodes().iter().enumerate() {
            if !node.is_live() {
                seen.push(format!("{}: not live", node.name()));
                continue;
            }
            let jsz = match node.monitor_json(JSZ_STREAMS).await {
                Ok(jsz) => jsz,
                Err(e) => {
                    seen.push(format!("{}: {e}", node.name()));
                    continue;
                }
            };
            let Some(detail) = jsz::find_stream(&jsz, stream) else {
                seen.push(format!("{}: no stream {stream}", node.name()));
                continue;
            };
            let leader = jsz::stream_leader(detail);
            seen.push(format!("{}: leader {leader:?}", node.name()));
            if self.len() == 1 || leader == Some(node.name()) {
                claims.push(i);
            }
        }
        Ok(match claims[..] {
            [i] if Some(i) != exclude => Probe::Ready(i),
            _ => Probe::NotYet(seen.join("; ")),
        })
    }
}
