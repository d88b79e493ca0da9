//! One `nats-server` process: its directory (config, log, store), the child process,
//! and the signals the cluster sends it. A `NatsServer` is owned by a
//! [`NatsCluster`](crate::NatsCluster); restarting it reuses the same config file,
//! ports and store.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::config::NodeConfig;
use crate::error::HarnessError;
use crate::health::{DEFAULT_HTTP_TIMEOUT, http_get};
use crate::poll::{Probe, poll_until, wait_until};

/// The monitoring endpoint that says a node is up with JetStream enabled.
pub(crate) const HEALTHZ_JS_ENABLED: &str = "/healthz?js-enabled-only=true";

/// A `nats-server` process started by the harness.
#[derive(Debug)]
pub struct NatsServer {
    config: NodeConfig,
    binary: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    /// `None` before the first start and after the process was reaped.
    child: Mutex<Option<Child>>,
    paused: bool,
}

impl NatsServer {
    /// Creates the node's directory layout and writes its config; does not start it.
    pub(crate) fn prepare(
        binary: PathBuf,
        dir: &Path,
        config: NodeConfig,
    ) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(&config.store_dir)
            .map_err(|e| HarnessError::io(format!("creating {}", config.store_dir.display()), e))?;
        let config_path = dir.join("nats-server.conf");
        std::fs::write(&config_path, config.render())
            .map_err(|e| HarnessError::io(format!("writing {}", config_path.display()), e))?;
        Ok(Self {
            config,
            binary,
            config_path,
            log_path: dir.join("nats-server.log"),
            child: Mutex::new(None),
            paused: false,
        })
    }

    /// The server name, e.g. `n0`.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn client_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.config.client_port)
    }

    /// `http://127.0.0.1:PORT` (the monitoring endpoint).
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.config.monitor_port)
    }

    /// `nats-route://127.0.0.1:PORT` for a node of a multi-node cluster, `None` for a single node.
    pub fn route_url(&self) -> Option<String> {
        self.config
            .cluster
            .as_ref()
            .map(|c| format!("nats-route://127.0.0.1:{}", c.route_port))
    }

    /// The JetStream store directory (kept across restarts).
    pub fn store_dir(&self) -> &Path {
        &self.config.store_dir
    }

    /// Whether the process exists. A paused (SIGSTOP) process is running.
    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// The server's log file so far (both `-l` output and anything written to stdout/stderr),
    /// with lines written by the harness itself prefixed `[bus-tests]`.
    pub fn log(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("[bus-tests] cannot read {}: {e}", self.log_path.display()),
        }
    }

    /// GETs `path_and_query` (e.g. `/jsz?streams=true`) from the monitoring port and
    /// parses the JSON body. Non-200 answers are errors.
    ///
    /// ```no_run
    /// # async fn demo(cluster: &bus_tests::NatsCluster) -> Result<(), bus_tests::HarnessError> {
    /// let varz = cluster.node(0).monitor_json("/varz").await?;
    /// println!("cluster name: {}", varz["cluster"]["name"]);
    /// # Ok(()) }
    /// ```
    pub async fn monitor_json(
        &self,
        path_and_query: &str,
    ) -> Result<serde_json::Value, HarnessError> {
        let url = format!("{}{path_and_query}", self.monitor_url());
        let response = http_get(&url, DEFAULT_HTTP_TIMEOUT).await?;
        if response.status != 200 {
            return Err(HarnessError::Http {
                url,
                reason: format!("status {}: {}", response.status, response.body.trim()),
            });
        }
        serde_json::from_str(&response.body).map_err(|e| HarnessError::Http {
            url,
            reason: format!("invalid JSON: {e}"),
        })
    }

    /// The last `lines` lines of the log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Running and not paused: worth asking over HTTP.
    pub(crate) fn is_live(&self) -> bool {
        !self.paused && self.is_running()
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    /// Starts the process (no-op if it is already running). Does not wait for readiness.
    pub(crate) fn spawn(&mut self) -> Result<(), HarnessError> {
        if self.is_running() {
            return Ok(());
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| HarnessError::io(format!("opening {}", self.log_path.display()), e))?;
        let note = |log: &mut File, text: String| {
            writeln!(log, "[bus-tests] {text}")
                .map_err(|e| HarnessError::io("writing the server log", e))
        };
        note(
            &mut log,
            format!(
                "starting {}: {} -c {}",
                self.name(),
                self.binary.display(),
                self.config_path.display()
            ),
        )?;
        let stdout = log
            .try_clone()
            .map_err(|e| HarnessError::io("duplicating the log handle", e))?;
        let stderr = log
            .try_clone()
            .map_err(|e| HarnessError::io("duplicating the log handle", e))?;
        // The child stays in our process group on purpose: when nextest times a test
        // out it signals the whole group, so no server outlives its test.
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config_path)
            .arg("-l")
            .arg(&self.log_path)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| HarnessError::io(format!("spawning {}", self.binary.display()), e))?;
        note(&mut log, format!("{} has pid {}", self.name(), child.id()))?;
        *self.child_mut() = Some(child);
        self.paused = false;
        Ok(())
    }

    /// Polls `/healthz?js-enabled-only=true` until it answers 200; fails early if the
    /// process exits.
    pub(crate) async fn wait_healthy(&self, timeout: Duration) -> Result<(), HarnessError> {
        let what = format!("{} {HEALTHZ_JS_ENABLED} to answer 200", self.name());
        let url = format!("{}{HEALTHZ_JS_ENABLED}", self.monitor_url());
        let url = url.as_str();
        poll_until(what, timeout, || async move {
            if let Some(status) = self.exit_status() {
                return Err(HarnessError::Exited {
                    node: self.name().to_owned(),
                    status,
                    log_tail: self.log_tail(30),
                });
            }
            Ok(match http_get(url, DEFAULT_HTTP_TIMEOUT).await {
                Ok(r) if r.status == 200 => Probe::Ready(()),
                Ok(r) => Probe::NotYet(format!("status {}: {}", r.status, r.body.trim())),
                Err(e) => Probe::NotYet(e.to_string()),
            })
        })
        .await
    }

    /// SIGKILL and reap. No-op if not running.
    pub(crate) fn kill(&mut self) -> Result<(), HarnessError> {
        let name = self.name().to_owned();
        let Some(mut child) = self.child_mut().take() else {
            return Ok(());
        };
        self.paused = false;
        // `Child::kill` sends SIGKILL, which also ends a stopped process.
        child
            .kill()
            .map_err(|e| HarnessError::io(format!("killing {name}"), e))?;
        child
            .wait()
            .map_err(|e| HarnessError::io(format!("reaping {name}"), e))?;
        Ok(())
    }

    /// SIGTERM, then SIGKILL if the process is still there after `grace`. No-op if not running.
    pub(crate) async fn stop(&mut self, grace: Duration) -> Result<(), HarnessError> {
        if !self.is_running() {
            self.kill()?; // reaps an exited process
            return Ok(());
        }
        if self.paused {
            self.resume()?; // a stopped process does not act on SIGTERM
        }
        self.signal(Signal::SIGTERM, "SIGTERM")?;
        let what = format!("{} to exit after SIGTERM", self.name());
        // Still running past the grace: the SIGKILL below ends it. It reaps it either way.
        let _past_grace = wait_until(what, grace, || !self.is_running())
            .await
            .is_err();
        self.kill()
    }

    /// SIGSTOP.
    pub(crate) fn pause(&mut self) -> Result<(), HarnessError> {
        self.signal(Signal::SIGSTOP, "SIGSTOP")?;
        self.paused = true;
        Ok(())
    }

    /// SIGCONT.
    pub(crate) fn resume(&mut self) -> Result<(), HarnessError> {
        self.signal(Signal::SIGCONT, "SIGCONT")?;
        self.paused = false;
        Ok(())
    }

    fn signal(&self, signal: Signal, signal_name: &'static str) -> Result<(), HarnessError> {
        let not_running = || HarnessError::NotRunning {
            node: self.name().to_owned(),
        };
        if !self.is_running() {
            return Err(not_running());
        }
        let pid = self
            .child_lock()
            .as_ref()
            .and_then(|c| i32::try_from(c.id()).ok())
            .ok_or_else(not_running)?;
        signal::kill(Pid::from_raw(pid), signal).map_err(|source| HarnessError::Signal {
            node: self.name().to_owned(),
            signal: signal_name,
            source,
        })
    }

    /// `None` while the process runs; otherwise how it ended (or that it never started).
    fn exit_status(&self) -> Option<String> {
        match self.child_lock().as_mut().map(Child::try_wait) {
            None => Some("not started".to_owned()),
            Some(Ok(None)) => None,
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Err(e)) => Some(format!("cannot query the process: {e}")),
        }
    }

    fn child_lock(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn child_mut(&mut self) -> &mut Option<Child> {
        self.child.get_mut().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Best effort: nothing useful can be done with an error while dropping.
        let _ = self.kill();
    }
}
