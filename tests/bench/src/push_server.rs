//! The process serving the push workload's clients: a bus-node (the bus side, started as
//! the webhook workload starts its node: release build beside this binary, telemetry
//! off, auth off) or this binary's bare SSE server (`--serve-bare-push`, the baseline).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use bus_tests::BusNode;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use crate::bare_fanout::LISTENING;
use crate::cli::{Plan, Side};
use crate::env::Env;

/// How long the bare server may take to say where it listens.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long the bare server may take to exit once its stdin closes.
const STOP_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub enum Server {
    Node(BusNode),
    Bare {
        child: Child,
        url: String,
        _stdout: Lines<BufReader<ChildStdout>>,
    },
}

impl Server {
    pub async fn start(env: &Env, plan: &Plan, side: Side) -> Result<Self> {
        match side {
            Side::Bus => {
                let url = env.url();
                let replicas = env.config().streams.replicas.to_string();
                let node = BusNode::start(
                    "bench-push",
                    &[
                        ("BUS__NATS__SERVERS", url.as_str()),
                        ("BUS__STREAMS__REPLICAS", replicas.as_str()),
                        ("BUS__AUTH__ENABLED", "false"),
                        ("RUST_LOG", "warn"),
                    ],
                )
                .await
                .context("starting bus-node")?;
                Ok(Server::Node(node))
            }
            Side::Raw => {
                let exe = std::env::current_exe().context("finding this executable")?;
                let mut command = tokio::process::Command::new(exe);
                command.arg("--serve-bare-push").arg(env.url());
                if plan.bare_nagle {
                    command.arg("--bare-nagle");
                }
                let mut child = command
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true)
                    .spawn()
                    .context("starting the bare SSE server")?;
                let stdout = child
                    .stdout
                    .take()
                    .ok_or_else(|| anyhow!("the bare server's stdout"))?;
                let mut lines = BufReader::new(stdout).lines();
                let line = tokio::time::timeout(START_DEADLINE, lines.next_line())
                    .await
                    .map_err(|_| anyhow!("the bare server did not start in {START_DEADLINE:?}"))?
                    .context("reading the bare server's stdout")?
                    .ok_or_else(|| anyhow!("the bare server exited before listening"))?;
                let url = line
                    .strip_prefix(LISTENING)
                    .ok_or_else(|| anyhow!("the bare server said {line:?}"))?
                    .to_owned();
                Ok(Server::Bare {
                    child,
                    url,
                    _stdout: lines,
                })
            }
        }
    }

    pub fn url(&self) -> String {
        match self {
            Server::Node(node) => node.url(),
            Server::Bare { url, .. } => url.clone(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        match self {
            Server::Node(node) => node.pid(),
            Server::Bare { child, .. } => child.id(),
        }
    }

    pub async fn stop(self) {
        match self {
            Server::Node(mut node) => {
                let _ = node.stop().await;
            }
            Server::Bare { mut child, .. } => {
                // Its stdin closing is its signal to exit.
                drop(child.stdin.take());
                if tokio::time::timeout(STOP_DEADLINE, child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        }
    }
}
