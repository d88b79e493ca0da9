//! The Kubernetes deployment in `deploy/`: both overlays pass schema, security and lint
//! checks (`scripts/validate-deploy.sh`), a broken copy does not, and the `bus.toml` that
//! the bus-node ConfigMap carries is accepted by `bus-node check-config` together with the
//! environment that the rendered Deployment gives the container and the Secrets it
//! mounts as files.
//!
//! A test target of its own (it needs tools the other suites do not).
//! Needs `kubectl` (or `kustomize`) on PATH, and PyPI on the first run (the script
//! installs its pinned tools into `.tools/deploy-venv`). The last test needs the bus-node
//! binary: `cargo build -p bus-node`, or `BUS_NODE_BIN=/path/to/bus-node`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use flat_yaml::Flat;

#[path = "deploy_manifests/flat_yaml.rs"]
mod flat_yaml;
#[path = "deploy_manifests/rehearsal.rs"]
mod rehearsal;

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

/// One way to break the manifests, and the check that must catch it (a tool of
/// scripts/validate-deploy.sh, or a message of the rehearsal).
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
    // A secret back in bus-node's environment: checkov's CKV_K8S_35 is no longer skipped.
    Break {
        file: "base/bus-node/deployment.yaml",
        from: "            - name: OTEL_SERVICE_NAME\n",
        to: "            - name: BUS__NATS__PASSWORD\n              valueFrom:\n                secretKeyRef:\n                  name: bus-nats-auth\n                  key: password\n            - name: OTEL_SERVICE_NAME\n",
        caught_by: "checkov",
    },
];

#[test]
fn given_a_broken_copy_when_validated_should_fail() -> Result<()> {
    for b in BREAKS {
        let (_tmp, copy) = broken_copy(b)?;
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

/// A copy of deploy/ (in the temporary directory returned with it) with `b` applied.
fn broken_copy(b: &Break) -> Result<(tempfile::TempDir, PathBuf)> {
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
    Ok((tmp, copy))
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
const POD: &str = "spec.template.spec";
const CONTAINER: &str = "spec.template.spec.containers[0]";

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
        let pod = Flat::parse(deployment)?;
        ensure!(
            runs_with_config(&pod, config_map_name),
            "{overlay}: the Deployment does not run with {config_map_name} at /etc/bus/bus.toml"
        );
        let env = container_env(&pod, overlay)?;
        let bus_env: Vec<&EnvVar> = env.iter().filter(|e| e.name.starts_with("BUS__")).collect();

        // The mounted Secrets, written where the kubelet would put them, under `root`;
        // bus.toml's paths into the mounts are moved there too.
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("root");
        let files = secret_files(&pod, overlay)?;
        let mut toml_here = toml.clone();
        for f in &files {
            let here = root.join(f.path.trim_start_matches('/'));
            if let Some(dir) = here.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&here, &f.content)?;
            toml_here = toml_here.replace(
                &format!("\"{}\"", f.path),
                &format!("\"{}\"", here.display()),
            );
        }
        for (key, path) in file_keys(&toml) {
            ensure!(
                files.iter().any(|f| f.path == path),
                "{overlay}: bus.toml's {key} names {path}, which no mounted Secret provides"
            );
        }
        let file = tmp.path().join("bus.toml");
        std::fs::write(&file, &toml_here)?;
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
            "{overlay}: bus-node check-config refused the deployed configuration with env {:?} \
             and the files {:?}:\n{}",
            bus_env.iter().map(|e| &e.name).collect::<Vec<_>>(),
            files.iter().map(|f| &f.path).collect::<Vec<_>>(),
            describe(&out)
        );

        // It printed the effective configuration: the file's values, the environment's,
        // the API keys read from their file (by name)...
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut expected = vec![
            "0.0.0.0:8080".to_owned(),
            "nats-0.nats-headless".to_owned(),
            POD_NAME.to_owned(),
            "api_keys_file".to_owned(),
            "password_file".to_owned(),
        ];
        expected.extend(
            bus_env
                .iter()
                .filter(|e| !e.value.contains(','))
                .map(|e| e.value.clone()),
        );
        expected.extend(
            api_key_names(&files)?
                .iter()
                .map(|n| format!("name = {n:?}")),
        );
        for want in expected {
            ensure!(
                stdout.contains(&want),
                "{overlay}: check-config's output lacks {want:?}:\n{}",
                describe(&out)
            );
        }
        // ...and no secret.
        for secret in secret_strings(&files)? {
            ensure!(
                !stdout.contains(&secret) && !stderr.contains(&secret),
                "{overlay}: check-config printed a secret ({} characters)",
                secret.len()
            );
        }
    }
    Ok(())
}

#[test]
fn given_the_configmap_nats_conf_and_its_mounted_credentials_nats_server_should_accept_them()
-> Result<()> {
    let nats = bus_tests::nats_server_binary()?;
    for overlay in ["dev", "prod"] {
        let rendered = kustomize(overlay)?;
        let docs: Vec<&str> = rendered.split("\n---\n").collect();
        let config_map = find_doc(&docs, "ConfigMap", "nats-config-")
            .with_context(|| format!("{overlay}: no nats ConfigMap"))?;
        let conf = block_scalar(config_map, "nats.conf")
            .with_context(|| format!("{overlay}: no nats.conf in the ConfigMap"))?;
        let statefulset = find_doc(&docs, "StatefulSet", "nats")
            .with_context(|| format!("{overlay}: no nats StatefulSet"))?;
        let pod = Flat::parse(statefulset)?;
        // The ConfigMap where the StatefulSet mounts it, and its Secret files, under `root`.
        let tmp = tempfile::tempdir()?;
        let root = tmp.path();
        let (config_dir, _) = mount_path(&pod, "config")
            .with_context(|| format!("{overlay}: the nats config volume is not mounted"))?;
        let conf_file = root
            .join(config_dir.trim_start_matches('/'))
            .join("nats.conf");
        if let Some(dir) = conf_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&conf_file, &conf)?;
        let files = secret_files(&pod, overlay)?;
        ensure!(
            files.iter().any(|f| f.key == "auth.conf"),
            "{overlay}: nats-server mounts no auth.conf"
        );
        for f in &files {
            let here = root.join(f.path.trim_start_matches('/'));
            if let Some(dir) = here.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&here, &f.content)?;
        }
        let mut cmd = Command::new(&nats);
        cmd.arg("-t").arg("-c").arg(&conf_file);
        // No secret in its environment: container_env refuses a secretKeyRef.
        for e in container_env(&pod, overlay)? {
            cmd.env(&e.name, &e.value);
        }
        let out = cmd.output().context("cannot run nats-server")?;
        ensure!(
            out.status.success(),
            "{overlay}: nats-server refused the deployed nats.conf with its mounted \
             credentials:\n{}",
            describe(&out)
        );
    }
    Ok(())
}

fn kustomize(overlay: &str) -> Result<String> {
    kustomize_in(&deploy_dir(), overlay)
}

/// [`kustomize`] of the deploy directory `deploy` (a broken copy, say).
fn kustomize_in(deploy: &Path, overlay: &str) -> Result<String> {
    let dir = deploy.join("overlays").join(overlay);
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

/// The container runs `--config /etc/bus/bus.toml` with the ConfigMap mounted at /etc/bus.
fn runs_with_config(pod: &Flat, config_map: &str) -> bool {
    let args = (0..pod.len(&format!("{CONTAINER}.args")))
        .filter_map(|i| pod.get(&format!("{CONTAINER}.args[{i}]")))
        .collect::<Vec<_>>();
    let volume = (0..pod.len(&format!("{POD}.volumes")))
        .find(|i| pod.get(&format!("{POD}.volumes[{i}].configMap.name")) == Some(config_map))
        .and_then(|i| pod.get(&format!("{POD}.volumes[{i}].name")));
    args.windows(2)
        .any(|w| w == ["--config", "/etc/bus/bus.toml"])
        && volume.is_some_and(|v| mount_path(pod, v).is_some_and(|(path, _)| path == "/etc/bus"))
}

/// Where the container mounts `volume`, and whether read-only.
fn mount_path<'a>(pod: &'a Flat, volume: &str) -> Option<(&'a str, bool)> {
    let m = format!("{CONTAINER}.volumeMounts");
    (0..pod.len(&m))
        .find(|i| pod.get(&format!("{m}[{i}].name")) == Some(volume))
        .and_then(|i| {
            let path = pod.get(&format!("{m}[{i}].mountPath"))?;
            Some((path, pod.get(&format!("{m}[{i}].readOnly")) == Some("true")))
        })
}

/// A variable of the container's environment, resolved.
#[derive(Debug)]
struct EnvVar {
    name: String,
    value: String,
}

/// The container's environment as the kubelet would set it: literal values with
/// `$(VAR)` references expanded and downward-API fields for a made-up pod. A secret in
/// the environment is an error: bus-node reads its secrets from mounted files.
fn container_env(pod: &Flat, overlay: &str) -> Result<Vec<EnvVar>> {
    let mut resolved: Vec<EnvVar> = Vec::new();
    let env = format!("{CONTAINER}.env");
    for i in 0..pod.len(&env) {
        let field = |f: &str| pod.get(&format!("{env}[{i}].{f}"));
        let name = field("name")
            .context("an env entry without a name")?
            .to_owned();
        let value = if let Some(v) = field("value") {
            expand(v, &resolved)
        } else if let Some(path) = field("valueFrom.fieldRef.fieldPath") {
            match path {
                "metadata.name" => POD_NAME.to_owned(),
                "metadata.namespace" => format!("bus-{overlay}"),
                other => bail!("{name}: unexpected fieldRef {other}"),
            }
        } else if let Some(secret) = field("valueFrom.secretKeyRef.name") {
            bail!(
                "{overlay}: {name} takes Secret {secret} through the environment; bus-node \
                 reads its secrets from mounted files (the *_file keys)"
            );
        } else {
            bail!("{name}: an env entry with neither value nor a known valueFrom");
        };
        resolved.push(EnvVar { name, value });
    }
    ensure!(!resolved.is_empty(), "the Deployment's env is empty");
    Ok(resolved)
}

fn expand(value: &str, earlier: &[EnvVar]) -> String {
    let mut out = value.to_owned();
    for e in earlier {
        out = out.replace(&format!("$({})", e.name), &e.value);
    }
    out
}

/// A file of a mounted Secret, as the kubelet writes it.
#[derive(Debug)]
struct SecretFile {
    /// Its path in the container.
    path: String,
    /// The Secret's key it holds.
    key: String,
    content: String,
}

/// Every file of the Secret volumes the container mounts (read-only, with their keys
/// listed as `items`), with the overlay's values.
fn secret_files(pod: &Flat, overlay: &str) -> Result<Vec<SecretFile>> {
    let mut files = Vec::new();
    let volumes = format!("{POD}.volumes");
    for i in 0..pod.len(&volumes) {
        let v = format!("{volumes}[{i}]");
        let Some(secret) = pod.get(&format!("{v}.secret.secretName")) else {
            continue;
        };
        let name = pod.get(&format!("{v}.name")).unwrap_or_default();
        let (mount, read_only) = mount_path(pod, name)
            .with_context(|| format!("{overlay}: Secret volume {name} is not mounted"))?;
        ensure!(
            read_only,
            "{overlay}: Secret volume {name} is mounted writable"
        );
        let items = format!("{v}.secret.items");
        ensure!(
            pod.len(&items) > 0,
            "{overlay}: Secret volume {name} lists no items: list the keys it mounts"
        );
        for j in 0..pod.len(&items) {
            let key = pod.get(&format!("{items}[{j}].key")).unwrap_or_default();
            let path = pod.get(&format!("{items}[{j}].path")).unwrap_or_default();
            files.push(SecretFile {
                path: format!("{mount}/{path}"),
                key: key.to_owned(),
                content: secret_value(overlay, secret, key)?,
            });
        }
    }
    ensure!(
        !files.is_empty(),
        "{overlay}: the Deployment mounts no Secret"
    );
    Ok(files)
}

/// The `*_file` keys of a bus.toml and the paths they name.
fn file_keys(toml: &str) -> Vec<(String, String)> {
    toml.lines()
        .filter_map(|l| l.split_once(" = "))
        .filter(|(k, _)| k.trim().ends_with("_file"))
        .map(|(k, v)| (k.trim().to_owned(), flat_yaml::unquote(v)))
        .collect()
}

/// The API keys in the mounted key files.
fn api_keys(files: &[SecretFile]) -> Result<Vec<serde_json::Value>> {
    let mut keys = Vec::new();
    for f in files.iter().filter(|f| f.key == "api-keys.json") {
        let list: Vec<serde_json::Value> =
            serde_json::from_str(&f.content).context("api-keys.json is not a JSON list")?;
        keys.extend(list);
    }
    Ok(keys)
}

fn api_key_names(files: &[SecretFile]) -> Result<Vec<String>> {
    let names: Vec<String> = api_keys(files)?
        .iter()
        .filter_map(|k| k.get("name").and_then(|n| n.as_str()).map(str::to_owned))
        .collect();
    ensure!(!names.is_empty(), "the Deployment mounts no API key");
    Ok(names)
}

/// The values that must never be printed: the NATS password and every API key.
fn secret_strings(files: &[SecretFile]) -> Result<Vec<String>> {
    let mut secrets: Vec<String> = files
        .iter()
        .filter(|f| ["password", "token", "nkey"].contains(&f.key.as_str()))
        .map(|f| f.content.trim_end().to_owned())
        .collect();
    for k in api_keys(files)? {
        if let Some(key) = k.get("key").and_then(|v| v.as_str()) {
            secrets.push(key.to_owned());
        }
    }
    ensure!(
        !secrets.is_empty(),
        "the Deployment passes no secret to check"
    );
    Ok(secrets)
}

/// A Secret's value as the overlay provides it, byte for byte as the kubelet writes its
/// file. `secret` may carry kustomize's hash suffix (dev's generated Secrets).
fn secret_value(overlay: &str, secret: &str, key: &str) -> Result<String> {
    let base = |name: &str| secret == name || secret.starts_with(&format!("{name}-"));
    if overlay == "dev" {
        let dir = deploy_dir().join("overlays/dev/secrets");
        if base("bus-api-keys") && key == "api-keys.json" {
            return Ok(std::fs::read_to_string(dir.join("api-keys.json"))?);
        }
        if base("bus-nats-auth") {
            let file = match key {
                "user" => "nats-user",
                "password" => "nats-password",
                "auth.conf" => "nats-auth.conf",
                _ => bail!("dev: Secret {secret} has no key {key}"),
            };
            return Ok(std::fs::read_to_string(dir.join(file))?);
        }
        if base("bus-webhook-key") && key == "secret-key" {
            return Ok(std::fs::read_to_string(dir.join("webhook-secret-key"))?);
        }
    } else {
        // As deploy/README.md creates them: the keys file from a heredoc (so with a
        // final line break), the user and password from literals.
        match (secret, key) {
            ("bus-api-keys", "api-keys.json") => {
                return Ok(concat!(
                    r#"[{"name":"shop","key":"placeholder-shop-key-0123456789","publish":["shop.>"]},"#,
                    "\n",
                    r#" {"name":"ops","key":"placeholder-ops-key-0123456789","admin":true}]"#,
                    "\n"
                )
                .to_owned());
            }
            ("bus-nats-auth", "user") => return Ok("bus".to_owned()),
            // `openssl rand -base64 32 > secret-key`: 32 bytes, base64, a line break.
            ("bus-webhook-key", "secret-key") => {
                return Ok("cGxhY2Vob2xkZXItd2ViaG9vay1rZXktMDEyMzQ1Njc=\n".to_owned());
            }
            ("bus-nats-auth", "password") => return Ok("placeholderPassword0123".to_owned()),
            ("bus-nats-auth", "auth.conf") => {
                return Ok("authorization {\n  user: \"bus\"\n  password: \"placeholderPassword0123\"\n}\n".to_owned());
            }
            _ => {}
        }
    }
    bail!("{overlay}: no placeholder for Secret {secret} key {key}: add one to this test")
}

/// What the preStop rehearsal changes from the pod, all here: the hook script's path
/// (the ConfigMap's mount), and, through the variables the script reads, the pid file
/// (an emptyDir in the pod) and the monitoring address (the pod's own port 8222).
const PRE_STOP_SCRIPT_IN_POD: &str = "/etc/nats/pre-stop.sh";

/// The dev overlay's nats.conf and the preStop script its StatefulSet runs; an error
/// unless the hook is `sh /etc/nats/pre-stop.sh` (a reverted hook fails here).
fn pre_stop_hook(deploy: &Path) -> Result<(String, String)> {
    let rendered = kustomize_in(deploy, "dev")?;
    let docs: Vec<&str> = rendered.split("\n---\n").collect();
    let config_map = find_doc(&docs, "ConfigMap", "nats-config-").context("no nats ConfigMap")?;
    let conf = block_scalar(config_map, "nats.conf").context("no nats.conf")?;
    let script = block_scalar(config_map, "pre-stop.sh").context("no pre-stop.sh")?;
    let statefulset = find_doc(&docs, "StatefulSet", "nats").context("no nats StatefulSet")?;
    let pod = Flat::parse(statefulset)?;
    let at = "spec.template.spec.containers[0].lifecycle.preStop.exec.command";
    let command: Vec<&str> = (0..)
        .map_while(|i| pod.get(&format!("{at}[{i}]")))
        .collect();
    ensure!(
        command == ["sh", PRE_STOP_SCRIPT_IN_POD],
        "the preStop command is {command:?}, not the hook that waits for lame duck mode"
    );
    Ok((conf, script))
}

/// A nats.conf duration setting (`lame_duck_duration: 30s`) as written.
fn conf_setting<'a>(conf: &'a str, key: &str) -> Option<&'a str> {
    conf.lines()
        .find_map(|l| l.trim().strip_prefix(key)?.trim().strip_prefix(':'))
        .map(|v| v.trim().trim_matches('"'))
}

/// A one-server harness cluster with the ConfigMap's lame-duck settings, 6 clients on
/// it, the pid file in `dir`.
async fn lame_duck_server(
    conf: &str,
    dir: &Path,
) -> Result<(bus_tests::NatsCluster, Vec<async_nats::Client>, PathBuf)> {
    let pid_file = dir.join("nats.pid");
    let mut extra = format!("pid_file: \"{}\"\n", pid_file.display());
    for key in ["lame_duck_grace_period", "lame_duck_duration"] {
        let v = conf_setting(conf, key).with_context(|| format!("no {key} in nats.conf"))?;
        extra.push_str(&format!("{key}: {v}\n"));
    }
    let cluster = bus_tests::NatsCluster::builder()
        .nodes(1)
        .extra_config(extra)
        .start()
        .await?;
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(async_nats::connect(cluster.node(0).client_url()).await?);
    }
    Ok((cluster, clients, pid_file))
}

fn sigterm(pid_file: &Path) -> Result<()> {
    let pid: i32 = std::fs::read_to_string(pid_file)?.trim().parse()?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    Ok(())
}

async fn connections(cluster: &bus_tests::NatsCluster) -> Option<u64> {
    let connz = cluster.node(0).monitor_json("/connz").await.ok()?;
    connz["num_connections"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_prestop_hook_run_as_kubelet_runs_it_then_sigterm_clients_should_leave_over_time()
-> Result<()> {
    let (conf, script) = pre_stop_hook(&deploy_dir())?;
    let tmp = tempfile::tempdir()?;
    let script_path = tmp.path().join("pre-stop.sh");
    std::fs::write(&script_path, &script)?;
    let (cluster, _clients, pid_file) = lame_duck_server(&conf, tmp.path()).await?;
    let nats = bus_tests::nats_server_binary()?;
    let nats_dir = nats.parent().context("nats-server's directory")?;
    let path = format!(
        "{}:{}",
        nats_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // As kubelet runs it: the hook to its end, then SIGTERM at once.
    let hook = Command::new("sh")
        .arg(&script_path)
        .env("PATH", &path)
        .env("NATS_PID_FILE", &pid_file)
        .env("NATS_MONITOR", cluster.node(0).monitor_url())
        .output()?;
    ensure!(
        hook.status.success(),
        "the hook failed: {}",
        describe(&hook)
    );
    // It returned with lame duck mode in effect: a new client is refused. (The old hook,
    // `--signal ldm` alone, returned before that, and a SIGTERM that then came first
    // dropped every client at once; that race is the reason for this check.)
    let address: std::net::SocketAddr = cluster
        .node(0)
        .client_url()
        .trim_start_matches("nats://")
        .parse()?;
    let refused = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1));
    ensure!(
        refused.is_err(),
        "the hook returned before lame duck mode began"
    );
    sigterm(&pid_file)?;
    let signalled = std::time::Instant::now();
    // Lame duck mode had begun: the SIGTERM is ignored, nobody is dropped during the
    // grace period.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        cluster.node(0).is_running(),
        "nats-server exited on the SIGTERM:\n{}",
        cluster.node(0).log()
    );
    ensure!(
        connections(&cluster).await == Some(6),
        "clients dropped at once"
    );
    // Then they leave one at a time: when the first has gone, others are still there.
    let first_gone = loop {
        let n = connections(&cluster).await;
        if n.is_some_and(|n| n < 6) || signalled.elapsed() > Duration::from_secs(45) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(
        first_gone.is_some_and(|n| n > 0 && n < 6),
        "clients after the grace period: {first_gone:?} (expected some gone, some still there)"
    );
    println!(
        "first client moved away {:.1} s after SIGTERM, {} still connected",
        signalled.elapsed().as_secs_f64(),
        first_gone.unwrap_or(0)
    );

    Ok(())
}
