//! The rehearsal: each overlay, rendered, run as the processes it describes on loopback
//! — the StatefulSet's nats-servers with the ConfigMap's `nats.conf`, args, env and
//! mounted credentials, the Deployment's bus-nodes with its `bus.toml`, args, env and
//! mounted Secrets — changing only what a cluster provides, every change in
//! [`Rehearsal::nats_conf`] and [`Rehearsal::bus_toml`] (pod DNS names and listen
//! addresses to loopback ports, volumes to directories, no trace collector). Then:
//! the cluster forms; every declared probe answers on its declared port and path; the
//! bus-node probes fail while NATS is down; Service ports name container ports; the
//! streams have the replicas the config says; an event posted with the overlay's key is
//! stored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::flat_yaml::Flat;
use super::{
    Break, CONTAINER, api_keys, block_scalar, broken_copy, container_env, deploy_dir, find_doc,
    kustomize_in, pre_stop_hook, secret_files,
};

/// A process killed (SIGKILL) when dropped, its output in a log file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        let out = std::fs::File::create(&log)?;
        cmd.stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null());
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Self { child, log })
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Resident memory in MB, while it runs.
    fn rss_mb(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One probe as declared: HTTP GET of `path` on the container port named `port`.
#[derive(Debug, Clone)]
struct Probe {
    kind: &'static str,
    path: String,
    port: String,
}

/// The probes of the pod's first container.
fn probes(pod: &Flat) -> Vec<Probe> {
    ["startupProbe", "readinessProbe", "livenessProbe"]
        .into_iter()
        .filter_map(|kind| {
            let at = format!("{CONTAINER}.{kind}.httpGet");
            Some(Probe {
                kind,
                path: pod.get(&format!("{at}.path"))?.to_owned(),
                port: pod.get(&format!("{at}.port"))?.to_owned(),
            })
        })
        .collect()
}

/// Container port names and numbers of every container of the pod.
fn container_ports(pod: &Flat) -> HashMap<String, u16> {
    let mut out = HashMap::new();
    let containers = "spec.template.spec.containers";
    for c in 0..pod.len(containers) {
        let ports = format!("{containers}[{c}].ports");
        for p in 0..pod.len(&ports) {
            let name = pod.get(&format!("{ports}[{p}].name"));
            let number = pod
                .get(&format!("{ports}[{p}].containerPort"))
                .and_then(|n| n.parse().ok());
            if let (Some(name), Some(number)) = (name, number) {
                out.insert(name.to_owned(), number);
            }
        }
    }
    out
}

/// `text` with `from` replaced by `to`; an error when `from` is not there (the manifests
/// changed: the rehearsal must change with them).
fn swap(text: &str, from: &str, to: &str) -> Result<String> {
    ensure!(
        text.contains(from),
        "the rehearsal expects {from:?} in the config"
    );
    Ok(text.replace(from, to))
}

/// Loopback ports of one nats-server.
#[derive(Debug, Clone, Copy)]
struct NatsPorts {
    client: u16,
    route: u16,
    monitor: u16,
}

struct Rehearsal {
    root: tempfile::TempDir,
    _reserved: Vec<bus_tests::ReservedPort>,
    ports: Vec<u16>,
}

impl Rehearsal {
    fn new(ports: usize) -> Result<Self> {
        let reserved = bus_tests::reserve(ports)?;
        let list = reserved.iter().map(|p| p.port()).collect();
        Ok(Self {
            root: tempfile::tempdir()?,
            _reserved: reserved,
            ports: list,
        })
    }

    fn port(&self, i: usize) -> Result<u16> {
        self.ports
            .get(i)
            .copied()
            .context("not enough reserved ports")
    }

    /// Where the pod `pod`'s path `path` is here.
    fn here(&self, pod: &str, path: &str) -> PathBuf {
        self.root
            .path()
            .join(pod)
            .join(path.trim_start_matches('/'))
    }

    /// The container's args, paths in the pod moved to `pod`'s directory.
    fn args(&self, workload: &Flat, pod: &str) -> Vec<std::ffi::OsString> {
        let args = format!("{CONTAINER}.args");
        (0..workload.len(&args))
            .filter_map(|a| workload.get(&format!("{args}[{a}]")))
            .map(|arg| {
                if arg.starts_with('/') {
                    self.here(pod, arg).into_os_string()
                } else {
                    arg.into()
                }
            })
            .collect()
    }

    /// Writes the Secret files the container mounts where `pod`'s mounts are here.
    fn mount_secrets(&self, workload: &Flat, overlay: &str, pod: &str) -> Result<()> {
        for f in secret_files(workload, overlay)? {
            let here = self.here(pod, &f.path);
            std::fs::create_dir_all(here.parent().context("secret dir")?)?;
            std::fs::write(&here, &f.content)?;
        }
        Ok(())
    }

    /// The changes to nats.conf, all of them: listen addresses to loopback ports, the
    /// peers' DNS names to their loopback route ports, the pid file and the store to
    /// directories of this server.
    fn nats_conf(&self, conf: &str, me: usize, all: &[NatsPorts], pod: &str) -> Result<String> {
        let p = all[me];
        let mut c = swap(
            conf,
            "listen: \"0.0.0.0:4222\"",
            &format!("listen: \"127.0.0.1:{}\"", p.client),
        )?;
        c = swap(
            &c,
            "http: \"0.0.0.0:8222\"",
            &format!("http: \"127.0.0.1:{}\"", p.monitor),
        )?;
        c = swap(
            &c,
            "listen: \"0.0.0.0:6222\"",
            &format!("listen: \"127.0.0.1:{}\"", p.route),
        )?;
        for (k, peer) in all.iter().enumerate() {
            c = swap(
                &c,
                &format!("nats://nats-{k}.nats-headless:6222"),
                &format!("nats://127.0.0.1:{}", peer.route),
            )?;
        }
        c = swap(
            &c,
            "\"/var/run/nats/nats.pid\"",
            &format!("\"{}\"", self.here(pod, "/var/run/nats/nats.pid").display()),
        )?;
        c = swap(
            &c,
            "store_dir: \"/data\"",
            &format!("store_dir: \"{}\"", self.here(pod, "/data").display()),
        )?;
        Ok(c)
    }

    /// The changes to bus.toml, all of them: the NATS servers' DNS names to their
    /// loopback client ports, the listeners to loopback ports, the Secret mounts to
    /// directories.
    fn bus_toml(
        &self,
        toml: &str,
        nats: &[NatsPorts],
        api: u16,
        metrics: u16,
        pod: &str,
    ) -> Result<String> {
        let mut t = toml.to_owned();
        for (k, p) in nats.iter().enumerate() {
            t = swap(
                &t,
                &format!("\"nats://nats-{k}.nats-headless:4222\""),
                &format!("\"nats://127.0.0.1:{}\"", p.client),
            )?;
        }
        t = swap(
            &t,
            "listen = \"0.0.0.0:8080\"",
            &format!("listen = \"127.0.0.1:{api}\""),
        )?;
        t = swap(
            &t,
            "metrics_listen = \"0.0.0.0:9090\"",
            &format!("metrics_listen = \"127.0.0.1:{metrics}\""),
        )?;
        t = t.replace(
            "\"/etc/bus-secrets/",
            &format!("\"{}/", self.here(pod, "/etc/bus-secrets").display()),
        );
        Ok(t)
    }
}

/// GET `url`: its status, or 0 when nothing answered.
async fn status(client: &reqwest::Client, url: &str) -> u16 {
    match client.get(url).timeout(Duration::from_secs(2)).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Polls `url` until it answers 200, at most `deadline`.
async fn until_200(client: &reqwest::Client, url: &str, deadline: Duration) -> Result<()> {
    let until = Instant::now() + deadline;
    loop {
        let s = status(client, url).await;
        if s == 200 {
            return Ok(());
        }
        ensure!(
            Instant::now() < until,
            "{url}: {s}, not 200 after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every Service's ports name (or number) a container port of the pods it selects.
fn services_agree(docs: &[&str], pods: &[(&str, &Flat)]) -> Result<()> {
    for doc in docs
        .iter()
        .filter(|d| d.lines().any(|l| l == "kind: Service"))
    {
        let svc = Flat::parse(doc)?;
        let name = svc.get("metadata.name").unwrap_or_default();
        let selects = svc
            .get("spec.selector.app.kubernetes.io/name")
            .unwrap_or_default();
        let Some((_, pod)) = pods.iter().find(|(app, _)| *app == selects) else {
            continue;
        };
        let declared = container_ports(pod);
        for i in 0..svc.len("spec.ports") {
            let target = svc
                .get(&format!("spec.ports[{i}].targetPort"))
                .or_else(|| svc.get(&format!("spec.ports[{i}].port")))
                .unwrap_or_default();
            let known =
                declared.contains_key(target) || declared.values().any(|n| n.to_string() == target);
            ensure!(
                known,
                "Service {name}: port {target} is no container port of {selects} ({declared:?})"
            );
        }
    }
    Ok(())
}

/// Posts events (each id once, alternating nodes) while `faults` runs; gives the ids
/// answered 202.
async fn under_load(
    http: &reqwest::Client,
    key: &str,
    nodes: &[HashMap<String, u16>],
    faults: impl std::future::Future<Output = ()>,
) -> Result<Vec<String>> {
    let done = std::sync::atomic::AtomicBool::new(false);
    let load = async {
        let mut accepted = Vec::new();
        let mut n = 0u32;
        while !done.load(std::sync::atomic::Ordering::SeqCst) && n < 3000 {
            n += 1;
            let api = nodes[n as usize % nodes.len()]["http"];
            let id = format!("load-{n}");
            let body = format!(
                r#"{{"specversion":"1.0","id":"{id}","source":"/rehearsal","type":"shop.order.created","data":{{"n":{n}}}}}"#
            );
            let sent = http
                .post(format!("http://127.0.0.1:{api}/v1/events"))
                .header("x-api-key", key)
                .header("content-type", "application/cloudevents+json")
                .timeout(Duration::from_secs(5))
                .body(body)
                .send()
                .await;
            if matches!(&sent, Ok(r) if r.status() == 202) {
                accepted.push(id);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        accepted
    };
    let run = async {
        faults.await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let (accepted, ()) = tokio::join!(load, run);
    Ok(accepted)
}

/// The events stream and its info, asked again for up to 30 s: a JetStream request may
/// time out while the cluster elects a leader on a box that also runs other tests.
async fn events_stream(
    js: &async_nats::jetstream::Context,
) -> Result<(
    async_nats::jetstream::stream::Stream,
    async_nats::jetstream::stream::Info,
)> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let got = async {
            let mut s = js.get_stream("BUS_EVENTS").await?;
            let info = s.info().await?.clone();
            anyhow::Ok((s, info))
        }
        .await;
        match got {
            Ok(x) => return Ok(x),
            Err(_) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.context("reading the events stream for 30 s")),
        }
    }
}

/// Every `ce-id` the events stream holds.
async fn stored_ids(
    js: &async_nats::jetstream::Context,
) -> Result<std::collections::HashSet<String>> {
    use futures::StreamExt;
    // Right after the leader's kill -9, creating a consumer may time out until a new
    // leader serves the stream: asked again for up to 30 s.
    let until = Instant::now() + Duration::from_secs(30);
    let (last, mut messages) = loop {
        let got = async {
            let (stream, info) = events_stream(js).await?;
            let consumer = stream
                .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
                .await?;
            anyhow::Ok((info.state.last_sequence, consumer.messages().await?))
        }
        .await;
        match got {
            Ok(x) => break x,
            Err(_) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.context("reading the events stream back for 30 s")),
        }
    };
    let mut ids = std::collections::HashSet::new();
    // Right after the leader's kill -9 the new leader may take a while to serve the
    // consumer on a box that also runs other tests: a generous wait, named when it runs out.
    while let Some(m) = tokio::time::timeout(Duration::from_secs(30), messages.next())
        .await
        .context("reading the events stream back: no message for 30 s")?
    {
        let m = m?;
        if let Some(id) = m.headers.as_ref().and_then(|h| h.get("ce-id")) {
            ids.insert(id.as_str().to_owned());
        }
        let seq = m
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        if seq >= last {
            break;
        }
    }
    Ok(ids)
}

async fn rehearse(deploy: &Path, overlay: &'static str, probe_deadline: Duration) -> Result<()> {
    let rendered = kustomize_in(deploy, overlay)?;
    let docs: Vec<&str> = rendered.split("\n---\n").collect();
    let nats_cm = find_doc(&docs, "ConfigMap", "nats-config-").context("no nats ConfigMap")?;
    let nats_conf = block_scalar(nats_cm, "nats.conf").context("no nats.conf")?;
    let sts = Flat::parse(find_doc(&docs, "StatefulSet", "nats").context("no StatefulSet")?)?;
    let bus_cm =
        find_doc(&docs, "ConfigMap", "bus-node-config-").context("no bus-node ConfigMap")?;
    let bus_toml = block_scalar(bus_cm, "bus.toml").context("no bus.toml")?;
    let dep = Flat::parse(find_doc(&docs, "Deployment", "bus-node").context("no Deployment")?)?;
    services_agree(&docs, &[("nats", &sts), ("bus-node", &dep)])
        .with_context(|| format!("{overlay}: Services"))?;

    let replicas: usize = sts
        .get("spec.replicas")
        .and_then(|r| r.parse().ok())
        .context("the StatefulSet's replicas")?;
    let nodes = 2;
    let r = Rehearsal::new(replicas * 3 + nodes * 2)?;
    let nats_ports: Vec<NatsPorts> = (0..replicas)
        .map(|i| {
            Ok(NatsPorts {
                client: r.port(3 * i)?,
                route: r.port(3 * i + 1)?,
                monitor: r.port(3 * i + 2)?,
            })
        })
        .collect::<Result<_>>()?;
    let nats_bin = bus_tests::nats_server_binary()?;
    let nats_declared = container_ports(&sts);
    ensure!(
        nats_declared.get("client") == Some(&4222)
            && nats_declared.get("cluster") == Some(&6222)
            && nats_declared.get("monitor") == Some(&8222),
        "{overlay}: nats container ports {nats_declared:?} are not the ports nats.conf \
         listens on (4222, 6222, 8222)"
    );

    // The servers, as the StatefulSet runs them.
    let mut servers = Vec::new();
    for i in 0..replicas {
        let pod = format!("nats-{i}");
        let conf = r.nats_conf(&nats_conf, i, &nats_ports, &pod)?;
        let conf_path = r.here(&pod, "/etc/nats/nats.conf");
        std::fs::create_dir_all(conf_path.parent().context("conf dir")?)?;
        std::fs::create_dir_all(r.here(&pod, "/var/run/nats"))?;
        std::fs::create_dir_all(r.here(&pod, "/data"))?;
        std::fs::write(&conf_path, conf)?;
        r.mount_secrets(&sts, overlay, &pod)?;
        let mut cmd = Command::new(&nats_bin);
        cmd.args(r.args(&sts, &pod));
        for e in container_env(&sts, overlay)? {
            cmd.env(&e.name, &e.value);
        }
        cmd.env("POD_NAME", &pod);
        servers.push(Proc::spawn(
            &pod,
            cmd,
            r.root.path().join(format!("{pod}.log")),
        )?);
    }
    let http = bus_tests::fixtures::http()?;
    let nats_probes = probes(&sts);
    ensure!(
        nats_probes.len() == 3,
        "{overlay}: nats probes {nats_probes:?}"
    );
    // Each declared probe on its declared port: the startup probe first (the full
    // /healthz, which needs the cluster formed), then readiness and liveness.
    for (i, p) in nats_ports.iter().enumerate() {
        for probe in &nats_probes {
            ensure!(
                probe.port == "monitor",
                "{overlay}: a nats probe on {}",
                probe.port
            );
            let url = format!("http://127.0.0.1:{}{}", p.monitor, probe.path);
            until_200(&http, &url, probe_deadline)
                .await
                .with_context(|| {
                    format!("{overlay}: nats-{i} {}:\n{}", probe.kind, servers[i].tail())
                })?;
        }
    }

    // The bus-nodes, as the Deployment runs them.
    let node_bin = bus_tests::node_binary()?;
    let declared = container_ports(&dep);
    let mut node_procs = Vec::new();
    let mut node_ports = Vec::new();
    for n in 0..nodes {
        let pod = format!("bus-node-{n}");
        let (api, metrics) = (
            r.port(replicas * 3 + 2 * n)?,
            r.port(replicas * 3 + 2 * n + 1)?,
        );
        let toml = r.bus_toml(&bus_toml, &nats_ports, api, metrics, &pod)?;
        let toml_path = r.here(&pod, "/etc/bus/bus.toml");
        std::fs::create_dir_all(toml_path.parent().context("toml dir")?)?;
        std::fs::write(&toml_path, toml)?;
        r.mount_secrets(&dep, overlay, &pod)?;
        let mut cmd = Command::new(&node_bin);
        cmd.args(r.args(&dep, &pod));
        for (k, _) in std::env::vars() {
            if k.starts_with("BUS__") || k.starts_with("OTEL_") {
                cmd.env_remove(k);
            }
        }
        for e in container_env(&dep, overlay)? {
            // No trace collector in the rehearsal.
            if e.name == "OTEL_EXPORTER_OTLP_ENDPOINT" {
                continue;
            }
            cmd.env(&e.name, e.value.replace(super::POD_NAME, &pod));
        }
        node_procs.push(Proc::spawn(
            &pod,
            cmd,
            r.root.path().join(format!("{pod}.log")),
        )?);
        node_ports.push(HashMap::from([
            ("http".to_owned(), api),
            ("metrics".to_owned(), metrics),
        ]));
    }
    ensure!(
        declared.get("http") == Some(&8080) && declared.get("metrics") == Some(&9090),
        "{overlay}: bus-node container ports {declared:?} are not bus.toml's listeners"
    );
    let node_probes = probes(&dep);
    ensure!(
        node_probes.len() == 3,
        "{overlay}: bus-node probes {node_probes:?}"
    );
    for (n, ports) in node_ports.iter().enumerate() {
        for probe in &node_probes {
            let port = ports
                .get(&probe.port)
                .with_context(|| format!("{overlay}: probe port {}", probe.port))?;
            let url = format!("http://127.0.0.1:{port}{}", probe.path);
            until_200(&http, &url, probe_deadline)
                .await
                .with_context(|| {
                    format!(
                        "{overlay}: bus-node-{n} {}:\n{}",
                        probe.kind,
                        node_procs[n].tail()
                    )
                })?;
        }
        let (api, metrics) = (ports["http"], ports["metrics"]);
        ensure!(status(&http, &format!("http://127.0.0.1:{metrics}/metrics")).await == 200);
        ensure!(
            status(&http, &format!("http://127.0.0.1:{api}/metrics")).await == 404,
            "{overlay}: the API port serves /metrics"
        );
    }

    // An event posted with the overlay's key is stored, in a stream with the replicas
    // bus.toml asks for.
    let keys = api_keys(&secret_files(&dep, overlay)?)?;
    let key = keys
        .iter()
        .find(|k| {
            k["publish"]
                .as_array()
                .is_some_and(|p| p.iter().any(|x| x == "shop.>"))
        })
        .and_then(|k| k["key"].as_str())
        .context("no key that may publish shop.>")?;
    let api = node_ports[0]["http"];
    let posted = http
        .post(format!("http://127.0.0.1:{api}/v1/events"))
        .header("x-api-key", key)
        .header("content-type", "application/cloudevents+json")
        .body(r#"{"specversion":"1.0","id":"rehearsal-1","source":"/rehearsal","type":"shop.order.created","data":{"n":1}}"#)
        .send()
        .await?;
    ensure!(
        posted.status() == 202,
        "{overlay}: POST answered {}",
        posted.status()
    );
    let wanted: usize = bus_toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("replicas = "))
        .and_then(|v| v.trim().parse().ok())
        .context("bus.toml's streams.replicas")?;
    let files = secret_files(&dep, overlay)?;
    let read = |suffix: &str| {
        files
            .iter()
            .find(|f| f.path.ends_with(suffix))
            .map(|f| f.content.trim().to_owned())
    };
    let client = async_nats::ConnectOptions::with_user_and_password(
        read("/nats/user").context("nats user")?,
        read("/nats/password").context("nats password")?,
    )
    .connect(
        nats_ports
            .iter()
            .map(|p| format!("127.0.0.1:{}", p.client))
            .collect::<Vec<_>>(),
    )
    .await?;
    let js = async_nats::jetstream::new(client);
    let info = events_stream(&js).await?.1;
    ensure!(
        info.config.num_replicas == wanted,
        "{overlay}: the events stream has {} replicas, bus.toml says {wanted}",
        info.config.num_replicas
    );
    ensure!(
        info.state.messages >= 1,
        "{overlay}: the event was not stored"
    );

    // Under load through both nodes, kill -9 the stream's leader and one bus-node:
    // every event answered 202 is stored.
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .context("the events stream's leader")?;
    let leader_index = (0..replicas).find(|i| format!("nats-{i}") == leader);
    let accepted = {
        let (servers, node_procs) = (&mut servers, &mut node_procs);
        under_load(&http, key, &node_ports, async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Some(i) = leader_index {
                servers[i].kill();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            node_procs[1].kill();
            tokio::time::sleep(Duration::from_millis(1500)).await;
        })
        .await?
    };
    let stored = stored_ids(&js).await?;
    let lost: Vec<&String> = accepted.iter().filter(|id| !stored.contains(*id)).collect();
    ensure!(
        lost.is_empty(),
        "{overlay}: {} of {} accepted events lost, e.g. {:?}",
        lost.len(),
        accepted.len(),
        lost.first()
    );
    ensure!(
        accepted.len() >= 20 && leader_index.is_some(),
        "{overlay}: {} events accepted, leader {leader}",
        accepted.len()
    );
    println!(
        "{overlay}: {} events accepted through kill -9 of {leader} and of bus-node-1, all stored",
        accepted.len()
    );
    // For deploy/README.md's sizing: what the survivors hold after the load.
    let rss = |procs: &[Proc]| -> Vec<String> {
        procs
            .iter()
            .filter_map(Proc::rss_mb)
            .map(|m| format!("{m:.0} MB"))
            .collect()
    };
    println!(
        "{overlay}: resident after the load: nats-server {:?}, bus-node {:?}",
        rss(&servers),
        rss(&node_procs)
    );

    // NATS down: the startup and readiness probes of bus-node fail (the liveness probe
    // does not: a lost connection is not a reason to restart).
    for s in &mut servers {
        s.kill();
    }
    for probe in node_probes.iter().filter(|p| p.kind != "livenessProbe") {
        let url = format!(
            "http://127.0.0.1:{}{}",
            node_ports[0][&probe.port], probe.path
        );
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let s = status(&http, &url).await;
            if s != 200 {
                break;
            }
            if Instant::now() > until {
                bail!(
                    "{overlay}: bus-node's {} still 200 with NATS down",
                    probe.kind
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop(node_procs);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_each_overlay_run_as_processes_the_cluster_should_form_and_serve_as_declared()
-> Result<()> {
    for overlay in ["dev", "prod"] {
        rehearse(&deploy_dir(), overlay, Duration::from_secs(60)).await?;
    }
    Ok(())
}

/// Breaks the rehearsal must catch, each with the message of the check that does.
const REHEARSAL_BREAKS: &[Break] = &[
    Break {
        file: "base/bus-node/deployment.yaml",
        from: "          readinessProbe:\n            httpGet:\n              path: /readyz",
        to: "          readinessProbe:\n            httpGet:\n              path: /ready",
        caught_by: "bus-node-0 readinessProbe",
    },
    Break {
        file: "base/nats/statefulset.yaml",
        from: "containerPort: 6222",
        to: "containerPort: 6223",
        caught_by: "are not the ports nats.conf listens on",
    },
    Break {
        file: "base/nats/statefulset.yaml",
        from: "                  - sh\n                  - /etc/nats/pre-stop.sh",
        to: "                  - nats-server\n                  - --signal\n                  - ldm=/var/run/nats/nats.pid",
        caught_by: "not the hook that waits for lame duck mode",
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_broken_copy_the_rehearsal_should_fail_where_it_is_broken() -> Result<()> {
    for b in REHEARSAL_BREAKS {
        let (_tmp, copy) = broken_copy(b)?;
        let outcome = match rehearse(&copy, "dev", Duration::from_secs(10)).await {
            Err(e) => Err(e),
            Ok(()) => pre_stop_hook(&copy).map(|_| ()),
        };
        let Err(e) = outcome else {
            bail!("the rehearsal passed with {:?} in {}", b.to, b.file);
        };
        let message = format!("{e:#}");
        ensure!(
            message.contains(b.caught_by),
            "{:?} in {} should be caught by {:?}, but: {message}",
            b.to,
            b.file,
            b.caught_by
        );
        println!("{} {:?}: caught by {:?}", b.file, b.to, b.caught_by);
    }
    Ok(())
}
