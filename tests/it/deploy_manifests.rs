//! The Kubernetes deployment in `deploy/`: both overlays pass schema, security and lint
//! checks (`scripts/validate-deploy.sh`), a broken copy does not, and the `bus.toml` that
//! the bus-node ConfigMap carries is accepted by `bus-node check-config` together with the
//! environment that the rendered Deployment gives the container.
//!
//! A test target of its own (it needs tools the other suites do not).
//! Needs `kubectl` (or `kustomize`) on PATH, and PyPI on the first run (the script
//! installs its pinned tools into `.tools/deploy-venv`). The last test needs the bus-node
//! binary: `cargo build -p bus-node`, or `BUS_NODE_BIN=/path/to/bus-node`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail, ensure};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

fn describe(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `scripts/validate-deploy.sh`, on `dir` instead of `deploy/` if given.
fn validate(dir: Option<&Path>) -> Result<Output> {
    let script = repo_root().join("scripts/validate-deploy.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script);
    if let Some(dir) = dir {
        cmd.arg(dir);
    }
    cmd.output()
        .with_context(|| format!("cannot run {}", script.display()))
}

#[test]
fn given_the_overlays_when_validated_should_pass() -> Result<()> {
    let out = validate(None)?;
    ensure!(
        out.status.success(),
        "scripts/validate-deploy.sh failed on deploy/:\n{}",
        describe(&out)
    );
    Ok(())
}

/// One way to break the manifests, and the tool that must catch it.
struct Break {
    file: &'static str,
    from: &'static str,
    to: &'static str,
    caught_by: &'static str,
}

const BREAKS: &[Break] = &[
    // Not an integer: the API schema refuses it.
    Break {
        file: "base/bus-node/deployment.yaml",
        from: "containerPort: 8080",
        to: "containerPort: eighty",
        caught_by: "kubernetes-validate",
    },
    // A writable root filesystem: the security rules refuse it.
    Break {
        file: "base/bus-node/deployment.yaml",
        from: "readOnlyRootFilesystem: true",
        to: "readOnlyRootFilesystem: false",
        caught_by: "checkov",
    },
];

#[test]
fn given_a_broken_copy_when_validated_should_fail() -> Result<()> {
    for b in BREAKS {
        let tmp = tempfile::tempdir()?;
        let copy = tmp.path().join("deploy");
        copy_dir(&deploy_dir(), &copy)?;
        let path = copy.join(b.file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        ensure!(
            text.contains(b.from),
            "{} no longer contains {:?}: update this test's breaks",
            b.file,
            b.from
        );
        std::fs::write(&path, text.replace(b.from, b.to))?;

        let out = validate(Some(&copy))?;
        ensure!(
            !out.status.success(),
            "validation passed although {} has {:?}:\n{}",
            b.file,
            b.to,
            describe(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let summary = stderr
            .lines()
            .rfind(|l| l.contains("FAILED"))
            .unwrap_or_default();
        ensure!(
            summary.contains(b.caught_by),
            "{:?} in {} should be caught by {}, but the summary is {summary:?}:\n{}",
            b.to,
            b.file,
            b.caught_by,
            describe(&out)
        );
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("cannot copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}

// --- bus.toml from the rendered ConfigMap, checked by bus-node ----------------------

const POD_NAME: &str = "bus-node-6d4cf56db6-x7k2q";

#[test]
fn given_the_configmap_toml_when_checked_by_bus_node_should_be_accepted() -> Result<()> {
    // Beside this test binary in cargo's target directory, or $BUS_NODE_BIN.
    let bin = bus_tests::node_binary()?;
    let source = std::fs::read_to_string(deploy_dir().join("base/bus-node/bus.toml"))?;
    for overlay in ["dev", "prod"] {
        let rendered = kustomize(overlay)?;
        let docs: Vec<&str> = rendered.split("\n---\n").collect();

        let config_map = find_doc(&docs, "ConfigMap", "bus-node-config-")
            .with_context(|| format!("{overlay}: no bus-node ConfigMap"))?;
        let toml = block_scalar(config_map, "bus.toml")
            .with_context(|| format!("{overlay}: no bus.toml in the ConfigMap"))?;
        ensure!(
            toml == source,
            "{overlay}: the ConfigMap's bus.toml differs from deploy/base/bus-node/bus.toml"
        );
        let config_map_name = doc_name(config_map).unwrap_or_default();

        let deployment = find_doc(&docs, "Deployment", "bus-node")
            .with_context(|| format!("{overlay}: no bus-node Deployment"))?;
        ensure!(
            deployment.contains(&format!("name: {config_map_name}"))
                && deployment.contains("mountPath: /etc/bus")
                && deployment.contains("- /etc/bus/bus.toml"),
            "{overlay}: the Deployment does not run with {config_map_name} at /etc/bus/bus.toml"
        );
        let env = container_env(deployment, overlay)?;
        let bus_env: Vec<&EnvVar> = env.iter().filter(|e| e.name.starts_with("BUS__")).collect();

        let tmp = tempfile::tempdir()?;
        let file = tmp.path().join("bus.toml");
        std::fs::write(&file, &toml)?;
        let mut cmd = Command::new(&bin);
        cmd.arg("check-config").arg("--config").arg(&file);
        for (k, _) in std::env::vars() {
            if k.starts_with("BUS__") {
                cmd.env_remove(k);
            }
        }
        for e in &bus_env {
            cmd.env(&e.name, &e.value);
        }
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        ensure!(
            out.status.success(),
            "{overlay}: bus-node check-config refused the deployed configuration with env {:?}:\n{}",
            bus_env.iter().map(|e| &e.name).collect::<Vec<_>>(),
            describe(&out)
        );

        // It printed the effective configuration: the file's values, the environment's...
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut expected = vec!["0.0.0.0:8080", "nats-0.nats-headless", POD_NAME];
        expected.extend(
            bus_env
                .iter()
                .filter(|e| !e.from_secret && !e.value.contains(','))
                .map(|e| e.value.as_str()),
        );
        for want in expected {
            ensure!(
                stdout.contains(want),
                "{overlay}: check-config's output lacks {want:?}:\n{}",
                describe(&out)
            );
        }
        // ...and no secret.
        for secret in secret_strings(&bus_env)? {
            ensure!(
                !stdout.contains(&secret) && !stderr.contains(&secret),
                "{overlay}: check-config printed a secret ({} characters)",
                secret.len()
            );
        }
    }
    Ok(())
}

fn kustomize(overlay: &str) -> Result<String> {
    let dir = deploy_dir().join("overlays").join(overlay);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .context("cannot run kubectl (needed to render the overlays)")?;
    ensure!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        describe(&out)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The document of `kind` whose `metadata.name` is `name`, or starts with it when `name`
/// ends in '-' (generated names carry a hash suffix).
fn find_doc<'a>(docs: &[&'a str], kind: &str, name: &str) -> Option<&'a str> {
    docs.iter().copied().find(|d| {
        let kind_ok = d.lines().any(|l| l == format!("kind: {kind}"));
        let name_ok = doc_name(d).is_some_and(|n| {
            if name.ends_with('-') {
                n.starts_with(name)
            } else {
                n == name
            }
        });
        kind_ok && name_ok
    })
}

/// `metadata.name` of a rendered document (kustomize writes top-level keys at column 0
/// and indents by two spaces).
fn doc_name(doc: &str) -> Option<&str> {
    doc.lines()
        .skip_while(|l| *l != "metadata:")
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .find_map(|l| l.strip_prefix("  name: "))
}

/// The text of the literal block scalar `key: |` (or `|-`) under the top-level `data:`.
fn block_scalar(doc: &str, key: &str) -> Option<String> {
    let mut lines = doc
        .lines()
        .skip_while(|l| *l != "data:")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .skip_while(|l| !l.starts_with(&format!("  {key}: |")));
    let header = lines.next()?;
    let chomp_strip = header.ends_with("|-");
    let mut body: Vec<&str> = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.get(4..).unwrap_or(""))
        .collect();
    while body.last().is_some_and(|l| l.is_empty()) {
        body.pop();
    }
    let mut text = body.join("\n");
    if !chomp_strip {
        text.push('\n');
    }
    Some(text)
}

/// One `env` entry of the container.
#[derive(Debug, Default)]
struct EnvEntry {
    name: String,
    value: Option<String>,
    field_path: Option<String>,
    secret: Option<(String, String)>,
}

/// A variable of the container's environment, resolved.
#[derive(Debug)]
struct EnvVar {
    name: String,
    value: String,
    from_secret: bool,
}

/// The container's environment as the kubelet would set it: literal values with
/// `$(VAR)` references expanded, downward-API fields for a made-up pod, and Secret
/// values from the dev overlay's placeholder files (dev) or placeholders (prod, whose
/// Secrets the operator creates).
fn container_env(deployment: &str, overlay: &str) -> Result<Vec<EnvVar>> {
    let mut resolved: Vec<EnvVar> = Vec::new();
    for e in parse_env(deployment)? {
        let value = if let Some(v) = &e.value {
            expand(v, &resolved)
        } else if let Some(path) = &e.field_path {
            match path.as_str() {
                "metadata.name" => POD_NAME.to_owned(),
                "metadata.namespace" => format!("bus-{overlay}"),
                other => bail!("{}: unexpected fieldRef {other}", e.name),
            }
        } else if let Some((secret, key)) = &e.secret {
            secret_value(overlay, secret, key)?
        } else {
            bail!("{}: an env entry with neither value nor valueFrom", e.name);
        };
        resolved.push(EnvVar {
            from_secret: e.secret.is_some(),
            name: e.name,
            value,
        });
    }
    Ok(resolved)
}

fn expand(value: &str, earlier: &[EnvVar]) -> String {
    let mut out = value.to_owned();
    for e in earlier {
        out = out.replace(&format!("$({})", e.name), &e.value);
    }
    out
}

/// The values that must never be printed: the NATS password and every API key.
fn secret_strings(env: &[&EnvVar]) -> Result<Vec<String>> {
    let mut secrets = Vec::new();
    for e in env {
        match e.name.as_str() {
            "BUS__NATS__PASSWORD" | "BUS__NATS__TOKEN" => secrets.push(e.value.clone()),
            "BUS__AUTH__API_KEYS" => {
                let keys: Vec<serde_json::Value> = serde_json::from_str(&e.value)
                    .context("BUS__AUTH__API_KEYS is not a JSON list")?;
                for k in keys {
                    if let Some(key) = k.get("key").and_then(|v| v.as_str()) {
                        secrets.push(key.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    ensure!(
        !secrets.is_empty(),
        "the Deployment passes no secret to check"
    );
    Ok(secrets)
}

/// The first `env:` list of the document (the bus-node container's), as kustomize
/// renders it: `- name: X` items at the key's indentation, their fields two deeper.
fn parse_env(doc: &str) -> Result<Vec<EnvEntry>> {
    let mut lines = doc.lines().skip_while(|l| l.trim() != "env:");
    let header = lines.next().context("the Deployment has no env")?;
    let indent = header.len() - header.trim_start().len();
    let item_prefix = format!("{}- ", " ".repeat(indent));
    let mut entries: Vec<EnvEntry> = Vec::new();
    let mut secret_name: Option<String> = None;
    let mut secret_key: Option<String> = None;
    for line in lines {
        let depth = line.len() - line.trim_start().len();
        if let Some(rest) = line.strip_prefix(&item_prefix) {
            let name = rest
                .strip_prefix("name: ")
                .with_context(|| format!("unexpected env line {line:?}"))?;
            entries.push(EnvEntry {
                name: unquote(name),
                ..EnvEntry::default()
            });
            continue;
        }
        if depth <= indent {
            break;
        }
        let entry = entries
            .last_mut()
            .with_context(|| format!("unexpected env line {line:?}"))?;
        let field = line.trim_start();
        if depth == indent + 2 {
            if let Some(v) = field.strip_prefix("value: ") {
                entry.value = Some(unquote(v));
            }
        } else if let Some(p) = field.strip_prefix("fieldPath: ") {
            entry.field_path = Some(unquote(p));
        } else if let Some(n) = field.strip_prefix("name: ") {
            secret_name = Some(unquote(n));
        } else if let Some(k) = field.strip_prefix("key: ") {
            secret_key = Some(unquote(k));
        }
        if let (Some(n), Some(k)) = (&secret_name, &secret_key) {
            entry.secret = Some((n.clone(), k.clone()));
            secret_name = None;
            secret_key = None;
        }
    }
    ensure!(!entries.is_empty(), "the Deployment's env is empty");
    Ok(entries)
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        inner.replace("\\\"", "\"").replace("\\\\", "\\")
    } else if let Some(inner) = s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        inner.replace("''", "'")
    } else {
        s.to_owned()
    }
}

/// A Secret's value as the overlay provides it. `secret` may carry kustomize's hash
/// suffix (dev's generated Secrets).
fn secret_value(overlay: &str, secret: &str, key: &str) -> Result<String> {
    let base = |name: &str| secret == name || secret.starts_with(&format!("{name}-"));
    if overlay == "dev" {
        let dir = deploy_dir().join("overlays/dev/secrets");
        if base("bus-api-keys") && key == "api-keys.json" {
            return Ok(std::fs::read_to_string(dir.join("api-keys.json"))?
                .trim()
                .to_owned());
        }
        if base("bus-nats-auth") {
            let env = std::fs::read_to_string(dir.join("nats-auth.env"))?;
            let pairs: HashMap<&str, &str> =
                env.lines().filter_map(|l| l.split_once('=')).collect();
            if let Some(v) = pairs.get(key) {
                return Ok((*v).to_owned());
            }
        }
    } else {
        match (secret, key) {
            ("bus-api-keys", "api-keys.json") => {
                return Ok(r#"[{"name":"shop","key":"placeholder-shop-key-0123456789","publish":["shop.>"],"admin":false},{"name":"ops","key":"placeholder-ops-key-0123456789","admin":true}]"#.to_owned());
            }
            ("bus-nats-auth", "user") => return Ok("bus".to_owned()),
            ("bus-nats-auth", "password") => return Ok("placeholderPassword0123".to_owned()),
            _ => {}
        }
    }
    bail!("{overlay}: no placeholder for Secret {secret} key {key}: add one to this test")
}
