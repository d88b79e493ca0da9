//! `bus-node` processes for tests: started against a harness cluster on a reserved port,
//! ready when `/readyz` answers 200, killable (SIGKILL) and stoppable (SIGTERM, waited for
//! by `stop` or watched: `terminate`, then `wait_exit`), with their logs printed when a
//! test fails.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::cluster::DUMP_LOGS_ENV;
use crate::error::HarnessError;
use crate::health::http_get;
use crate::poll::{Probe, poll_until};
use crate::ports::{ReservedPort, reserve};

/// Environment variable naming the `bus-node` binary (default: next to the test binary).
pub const NODE_BINARY_ENV: &str = "BUS_NODE_BIN";
/// How long a node has to become ready.
pub const NODE_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` waits after SIGTERM before SIGKILL.
pub const NODE_STOP_GRACE: Duration = Duration::from_secs(30);

/// The `bus-node` executable: `$BUS_NODE_BIN`, else `bus-node` in the cargo profile
/// directory of the running executable: `<target>/<profile>/bus-node` for a test binary
/// (`<target>/<profile>/deps/it-…`) or a binary beside it (`<target>/<profile>/bus-bench`).
/// `<target>` is wherever cargo built this executable (`CARGO_TARGET_DIR`,
/// `build.target-dir`, `--target <triple>`), so `cargo build -p bus-node` with the same
/// settings puts the node where this finds it; under cargo, a missing one is built
/// there on first use.
pub fn node_binary() -> Result<PathBuf, HarnessError> {
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os(NODE_BINARY_ENV) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p);
    }
    if let Some(profile_dir) = crate::built::profile_dir() {
        let p = profile_dir.join(format!("bus-node{}", std::env::consts::EXE_SUFFIX));
        if let Some(found) = crate::built::or_build(&p, &["-p", "bus-node", "--bin", "bus-node"]) {
            return Ok(found);
        }
        tried.push(p);
    }
    Err(HarnessError::NodeBinaryNotFound { tried })
}

/// A running (or killed) `bus-node serve`.
#[derive(Debug)]
pub struct BusNode {
    name: String,
    binary: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
    port: ReservedPort,
    dir: TempDir,
    child: Option<Child>,
    log_path: PathBuf,
}

impl BusNode {
    /// Starts `bus-node serve` with `env` (BUS__* settings) on a reserved port and waits
    /// until `/readyz` answers 200. `http.listen` and `node.id` are set here.
    pub async fn start(name: &str, env: &[(&str, &str)]) -> Result<Self, HarnessError> {
        Self::start_with_args(name, env, &["serve"]).await
    }

    /// Like [`BusNode::start`] with other arguments (`["serve", "--config", path]`).
    pub async fn start_with_args(
        name: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Result<Self, HarnessError> {
        let binary = node_binary()?;
        let port = reserve(1)?.pop().ok_or(HarnessError::PortsExhausted {
            needed: 1,
            first: 0,
            last: 0,
        })?;
        let dir = tempfile::Builder::new()
            .prefix("bus-node-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating the node's directory", e))?;
        let mut all: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.push((
            "BUS__HTTP__LISTEN".into(),
            format!("127.0.0.1:{}", port.port()),
        ));
        all.push(("BUS__NODE__ID".into(), name.to_owned()));
        // `dev` runs its own nats-server: the one the harness runs, wherever it found it.
        if args.first() == Some(&"dev") && !all.iter().any(|(k, _)| k == crate::BINARY_ENV) {
            let nats = crate::binary::locate(None)?;
            all.push((crate::BINARY_ENV.into(), nats.display().to_string()));
        }
        let log_path = dir.path().join("bus-node.log");
        let mut node = Self {
            name: name.to_owned(),
            binary,
            env: all,
            args: args.iter().map(|s| s.to_string()).collect(),
            port,
            dir,
            child: None,
            log_path,
        };
        node.spawn()?;
        node.wait_ready().await?;
        Ok(node)
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| HarnessError::io("opening the node log", e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| HarnessError::io("opening the node log", e))?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // Only what the test says: no BUS__* settings leak in from the environment.
        for (k, _) in std::env::vars() {
            if k.starts_with("BUS__") || k == "BUS_CONFIG" || k.starts_with("OTEL_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .spawn()
            .map_err(|e| HarnessError::io(format!("starting {}", self.binary.display()), e))?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls `/readyz` until 200.
    pub async fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let url = format!("{}/readyz", self.url());
        let what = format!("{} to be ready", self.name);
        let result = poll_until(what, NODE_READY_TIMEOUT, || {
            let url = url.clone();
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            let name = self.name.clone();
            let log = self.log();
            async move {
                if let Some(status) = exited {
                    return Err(HarnessError::Exited {
                        node: name,
                        status: status.to_string(),
                        log_tail: tail(&log, 40),
                    });
                }
                Ok(match http_get(&url, Duration::from_secs(2)).await {
                    Ok(r) if r.status == 200 => Probe::Ready(()),
                    Ok(r) => Probe::NotYet(format!("{} {}", r.status, r.body)),
                    Err(e) => Probe::NotYet(e.to_string()),
                })
            }
        })
        .await;
        if result.is_err() {
            eprintln!("--- {} log ---\n{}", self.name, tail(&self.log(), 60));
        }
        result
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port.port())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// The node's name, which is also its `node.id`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the node has written to stdout and stderr so far, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether the process is alive: started, and not killed, stopped or exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL: dies mid-request, like a crash.
    pub fn kill(&mut self) -> Result<(), HarnessError> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .map_err(|e| HarnessError::io(format!("killing {}", self.name), e))?;
            child
                .wait()
                .map_err(|e| HarnessError::io(format!("reaping {}", self.name), e))?;
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after [`NODE_STOP_GRACE`]; returns the exit status.
    pub async fn stop(&mut self) -> Result<Option<ExitStatus>, HarnessError> {
        if self.child.is_none() {
            return Ok(None);
        }
        self.terminate()?;
        match self.wait_exit(NODE_STOP_GRACE).await {
            Ok(status) => Ok(Some(status)),
            Err(HarnessError::Timeout { .. }) => {
                let Some(mut child) = self.child.take() else {
                    return Ok(None);
                };
                let _ = child.kill();
                let status = child
                    .wait()
                    .map_err(|e| HarnessError::io("reaping the node", e))?;
                Ok(Some(status))
            }
            Err(e) => Err(e),
        }
    }

    /// Sends SIGTERM and returns at once: the node drains while the test watches. Pair
    /// with [`BusNode::wait_exit`].
    pub fn terminate(&mut self) -> Result<(), HarnessError> {
        let Some(child) = self.child.as_ref() else {
            return Err(HarnessError::Exited {
                node: self.name.clone(),
                status: "not running".into(),
                log_tail: tail(&self.log(), 40),
            });
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        kill(pid, Signal::SIGTERM).map_err(|source| HarnessError::Signal {
            node: self.name.clone(),
            signal: "SIGTERM",
            source,
        })
    }

    /// Waits up to `deadline` for the process to exit by itself and returns its status;
    /// [`HarnessError::Timeout`] if it is still running then (it is left running: `stop`
    /// or drop ends it).
    pub async fn wait_exit(&mut self, deadline: Duration) -> Result<ExitStatus, HarnessError> {
        let what = format!("{} to exit", self.name);
        poll_until(what, deadline, || std::future::ready(self.exited())).await
    }

    /// The exit status if the process has exited (and reaps it), else the end of its log.
    fn exited(&mut self) -> Result<Probe<ExitStatus>, HarnessError> {
        let Some(child) = self.child.as_mut() else {
            return Err(HarnessError::Exited {
                node: self.name.clone(),
                status: "already reaped".into(),
                log_tail: tail(&self.log(), 40),
            });
        };
        if let Some(status) = child
            .try_wait()
            .map_err(|e| HarnessError::io("waiting for the node", e))?
        {
            self.child = None;
            return Ok(Probe::Ready(status));
        }
        Ok(Probe::NotYet(tail(&self.log(), 20)))
    }

    /// Starts the node again with the same settings and port.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill()?;
        self.spawn()?;
        self.wait_ready().await
    }

    /// The node's directory (its log lives there).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for BusNode {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os(DUMP_LOGS_ENV).is_some() {
            eprintln!(
                "--- {} log (last 100 lines) ---\n{}",
                self.name,
                tail(&self.log(), 100)
            );
        }
        let _ = self.kill();
    }
}

/// The SDK's example `name` (`billing_worker`, ...), in `<target>/<profile>/examples`,
/// built there on first use when it is missing.
pub fn example_binary(name: &str) -> Result<PathBuf, HarnessError> {
    let not_found = |tried| HarnessError::ExampleNotFound {
        name: name.to_owned(),
        tried,
    };
    let profile_dir = crate::built::profile_dir().ok_or_else(|| not_found(Vec::new()))?;
    let p = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    crate::built::or_build(&p, &["-p", "bus-sdk", "--example", name])
        .ok_or_else(|| not_found(vec![p]))
}
