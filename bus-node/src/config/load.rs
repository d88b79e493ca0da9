//! Layering defaults, the TOML file and `BUS__*` variables, with errors that name the key.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use bus_core::config::ConfigError;
use config::{Config, Environment, File, FileFormat};

use super::api_keys_file;
use super::sections::NodeConfig;

/// Prefix of the environment variables (`BUS__NATS__SERVERS`).
pub const ENV_PREFIX: &str = "BUS";
/// Separator of the environment variables' key parts.
pub const ENV_SEPARATOR: &str = "__";
/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "nats.servers",
    "webhooks.retry_schedule",
    "webhooks.allowed_networks",
    "push.allowed_origins",
];
/// The one structured key that the environment carries as JSON (a list of tables).
const API_KEYS_ENV: &str = "BUS__AUTH__API_KEYS";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A key has a wrong value (or is unknown); the key is named.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error("cannot read configuration file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

#[cfg(test)]
impl LoadError {
    /// The offending key, if one is to blame.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid(e) => Some(&e.key),
            Self::File { .. } => None,
        }
    }
}

/// Which defaults apply under the file and the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Serve,
    /// `bus-node dev`: authentication off unless the file or environment turns it on.
    Dev,
}

/// What `dev` changes in the built-in defaults.
const DEV_DEFAULTS: &str = "[auth]\nenabled = false\n";

/// Loads and validates the configuration from `file` (if any) and `env` (the process
/// environment in production; a map in tests).
pub fn load(
    file: Option<&Path>,
    env: &HashMap<String, String>,
    profile: Profile,
) -> Result<NodeConfig, LoadError> {
    let defaults = Config::try_from(&NodeConfig::default())
        .map_err(|e| ConfigError::new("defaults", e.to_string()))?;
    let mut builder = Config::builder().add_source(defaults);
    if profile == Profile::Dev {
        builder = builder.add_source(File::from_str(DEV_DEFAULTS, FileFormat::Toml));
    }
    if let Some(path) = file {
        if !path.is_file() {
            return Err(LoadError::File {
                path: path.to_owned(),
                reason: "not a readable file".into(),
            });
        }
        builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
    }
    let mut vars: HashMap<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}{ENV_SEPARATOR}")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let api_keys_json = vars.remove(API_KEYS_ENV);
    let mut environment = Environment::with_prefix(ENV_PREFIX)
        .prefix_separator(ENV_SEPARATOR)
        .separator(ENV_SEPARATOR)
        .list_separator(",")
        .try_parsing(true)
        .source(Some(vars.into_iter().collect()));
    for key in LIST_KEYS {
        environment = environment.with_list_parse_key(key);
    }
    let merged = builder
        .add_source(environment)
        .build()
        .map_err(|e| map_error(e, file))?;
    reject_unknown_keys(&merged)?;
    let mut config: NodeConfig = merged.try_deserialize().map_err(|e| map_error(e, file))?;
    if let Some(json) = api_keys_json {
        config.auth.api_keys = api_keys_file::parse_json(&json).map_err(|reason| {
            ConfigError::new("auth.api_keys", format!("{API_KEYS_ENV} {reason}"))
        })?;
    }
    api_keys_file::read_into(&mut config.auth)?;
    config.validate()?;
    Ok(config)
}

fn map_error(e: config::ConfigError, file: Option<&Path>) -> LoadError {
    match e {
        config::ConfigError::Type {
            key: Some(key),
            unexpected,
            expected,
            ..
        } => ConfigError::new(key, format!("expected {expected}, found {unexpected}")).into(),
        config::ConfigError::At {
            error,
            key: Some(key),
            ..
        } => ConfigError::new(key, error.to_string()).into(),
        config::ConfigError::NotFound(key) => ConfigError::new(key, "missing").into(),
        config::ConfigError::FileParse { cause, .. } => LoadError::File {
            path: file.map(Path::to_owned).unwrap_or_default(),
            reason: cause.to_string(),
        },
        other => ConfigError::new("config", other.to_string()).into(),
    }
}

/// Every dotted key the configuration knows, from the defaults' shape.
fn known_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    if let Ok(v) = serde_json::to_value(NodeConfig::default()) {
        walk_json("", &v, &mut keys);
    }
    keys
}

fn walk_json(prefix: &str, v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk_json(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

fn reject_unknown_keys(merged: &Config) -> Result<(), ConfigError> {
    let known = known_keys();
    let table = merged
        .clone()
        .try_deserialize::<serde_json::Value>()
        .map_err(|e| ConfigError::new("config", e.to_string()))?;
    let mut given = BTreeSet::new();
    walk_json("", &table, &mut given);
    for key in given {
        let is_known = known.contains(&key)
            || known
                .iter()
                .any(|k| key.starts_with(&format!("{k}.")) || k.starts_with(&format!("{key}.")));
        if !is_known {
            return Err(ConfigError::new(key, "unknown key"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn no_auth() -> Vec<(&'static str, &'static str)> {
        vec![("BUS__AUTH__ENABLED", "false")]
    }

    fn check(pairs: &[(&str, &str)], key: Option<&str>) {
        let mut all = no_auth();
        all.extend_from_slice(pairs);
        let got = load(None, &env(&all), Profile::Serve);
        assert_eq!(
            got.as_ref().err().and_then(|e| e.key()),
            key,
            "{pairs:?}: {got:?}"
        );
    }

    #[test]
    fn the_environment_overrides_defaults() {
        let c = load(
            None,
            &env(&[
                ("BUS__AUTH__ENABLED", "false"),
                ("BUS__NATS__SERVERS", "nats://a:4222,nats://b:4222"),
                ("BUS__HTTP__LISTEN", "0.0.0.0:9000"),
                ("BUS__STREAMS__REPLICAS", "3"),
                ("BUS__STREAMS__MAX_AGE", "1h"),
                ("BUS__NODE__ID", "node-a"),
                ("OTHER", "ignored"),
            ]),
            Profile::Serve,
        );
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.nats.servers, vec!["nats://a:4222", "nats://b:4222"]);
        assert_eq!(c.http.listen, "0.0.0.0:9000");
        assert_eq!(c.streams.replicas, 3);
        assert_eq!(c.streams.max_age, std::time::Duration::from_secs(3600));
        assert_eq!(c.node.id, "node-a");
        assert!(!c.auth.enabled);
    }

    #[test]
    fn bad_values_name_their_key() {
        check(&[], None);
        check(&[("BUS__HTTP__LISTN", "x")], Some("http.listn"));
        check(&[("BUS__BOGUS", "1")], Some("bogus"));
        check(
            &[("BUS__STREAMS__REPLICAS", "three")],
            Some("streams.replicas"),
        );
        check(&[("BUS__STREAMS__REPLICAS", "2")], Some("streams.replicas"));
        check(
            &[("BUS__HTTP__BODY_READ_TIMEOUT", "30s")],
            Some("http.body_read_timeout"),
        );
        check(
            &[("BUS__HTTP__METRICS_LISTEN", "nowhere")],
            Some("http.metrics_listen"),
        );
        check(
            &[
                ("BUS__HTTP__LISTEN", "127.0.0.1:9000"),
                ("BUS__HTTP__METRICS_LISTEN", "127.0.0.1:9000"),
            ],
            Some("http.metrics_listen"),
        );
        check(&[("BUS__HTTP__METRICS_LISTEN", "127.0.0.1:9090")], None);
        check(
            &[("BUS__STREAMS__MAX_AGE", "forever")],
            Some("streams.max_age"),
        );
        check(
            &[("BUS__NATS__SERVERS", "nats://ok:4222,http://bad url")],
            Some("nats.servers[1]"),
        );
        check(&[("BUS__HTTP__LISTEN", "localhost")], Some("http.listen"));
        check(
            &[("BUS__HTTP__MAX_BODY_BYTES", "0")],
            Some("http.max_body_bytes"),
        );
        check(
            &[("BUS__HTTP__MAX_CONNECTIONS", "18446744073709551615")],
            Some("http.max_connections"),
        );
        check(&[("BUS__AUTH__ENABLED", "true")], Some("auth.api_keys"));
        check(
            &[("BUS__AUTH__API_KEYS", "[{\"name\": \"a\"}]")],
            Some("auth.api_keys"),
        );
        check(
            &[("BUS__WEBHOOKS__ALLOWED_NETWORKS", "10.0.0.0/8,nonsense")],
            Some("webhooks.allowed_networks[1]"),
        );
    }

    #[test]
    fn a_file_is_read_and_the_environment_wins_over_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("bus.toml");
        std::fs::write(
            &path,
            r#"
[http]
listen = "127.0.0.1:7000"
[auth]
enabled = true
[[auth.api_keys]]
name = "shop"
key = "0123456789abcdef0123"
publish = ["shop.>"]
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let c = load(
            Some(&path),
            &env(&[("BUS__HTTP__LISTEN", "127.0.0.1:7001")]),
            Profile::Serve,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.http.listen, "127.0.0.1:7001");
        assert_eq!(c.auth.api_keys.len(), 1);
        assert_eq!(c.auth.api_keys[0].publish, vec!["shop.>"]);

        std::fs::write(&path, "[http]\nlisten = 7000\nunknown = 1\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let err = load(Some(&path), &env(&no_auth()), Profile::Serve).err();
        assert_eq!(
            err.as_ref().and_then(|e| e.key()),
            Some("http.unknown"),
            "{err:?}"
        );
    }

    #[test]
    fn api_keys_come_from_the_environment_as_json() {
        let c = load(
            None,
            &env(&[(
                "BUS__AUTH__API_KEYS",
                r#"[{"name":"ops","key":"0123456789abcdef0123","admin":true}]"#,
            )]),
            Profile::Serve,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.auth.api_keys[0].admin);
        assert_eq!(c.auth.api_keys[0].key.expose(), "0123456789abcdef0123");
    }
}

#[cfg(test)]
mod profile_tests {
    use super::*;

    #[test]
    fn dev_turns_auth_off_unless_told_otherwise() {
        let none = HashMap::new();
        assert!(
            load(None, &none, Profile::Serve).is_err(),
            "serve needs keys"
        );
        let dev = load(None, &none, Profile::Dev).map(|c| c.auth.enabled);
        assert_eq!(dev.ok(), Some(false));
        let on: HashMap<String, String> =
            [("BUS__AUTH__ENABLED".to_owned(), "true".to_owned())].into();
        assert_eq!(
            load(None, &on, Profile::Dev)
                .err()
                .and_then(|e| e.key().map(str::to_owned))
                .as_deref(),
            Some("auth.api_keys")
        );
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_commented_example_config_is_valid_and_complete() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bus.example.toml");
        let c =
            load(Some(&path), &HashMap::new(), Profile::Serve).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.node.id, "bus-node-1");
        assert_eq!(c.auth.api_keys.len(), 2);
        // Every key the example sets explicitly keeps its default value.
        let mut defaults = NodeConfig::default();
        defaults.node.id = c.node.id.clone();
        defaults.auth.api_keys = c.auth.api_keys.clone();
        assert_eq!(
            c, defaults,
            "the example's values drifted from the defaults"
        );
    }
}
