//! Loading the `*_file` keys (secrets from mounted files) through `load`.

use std::collections::HashMap;

use super::load::LoadError;
use super::{NodeConfig, Profile, load};

/// Environment variables of one case.
type Env<'a> = &'a [(&'a str, &'a str)];

const KEY: &str = "0123456789abcdef-from-file";

/// `load` with `pairs` as the environment; `{dir}` in a value is the directory that
/// holds `keys.json`, `password`, `user`, `webhook-key` and `empty`.
fn load_with(pairs: &[(&str, &str)]) -> (Result<NodeConfig, LoadError>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let files = [
        (
            "keys.json",
            format!("[{{\"name\":\"shop\",\"key\":\"{KEY}\"}}]\n"),
        ),
        ("password", "pw-from-file\n".to_owned()),
        ("user", "bus\n".to_owned()),
        // 32 bytes as base64: a sealing key.
        (
            "webhook-key",
            "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=".to_owned(),
        ),
        ("empty", String::new()),
    ];
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap_or_else(|e| panic!("{e}"));
    }
    let d = dir.path().display().to_string();
    let env: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.replace("{dir}", &d)))
        .collect();
    (load(None, &env, Profile::Serve), dir)
}

#[test]
fn the_file_keys_load_from_the_environment() {
    let (c, _dir) = load_with(&[
        ("BUS__AUTH__API_KEYS_FILE", "{dir}/keys.json"),
        ("BUS__NATS__USER_FILE", "{dir}/user"),
        ("BUS__NATS__PASSWORD_FILE", "{dir}/password"),
        ("BUS__WEBHOOKS__SECRET_KEY_FILE", "{dir}/webhook-key"),
    ]);
    let c = c.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.auth.api_keys.len(), 1);
    assert_eq!(c.auth.api_keys[0].key.expose(), KEY);
    let creds = c.nats.credentials().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        creds.password.as_ref().map(|p| p.expose()),
        Some("pw-from-file")
    );
    let shown = toml::to_string_pretty(&c).unwrap_or_default();
    assert!(
        shown.contains("api_keys_file") && shown.contains("<redacted>"),
        "{shown}"
    );
    assert!(
        !shown.contains(KEY) && !shown.contains("pw-from-file"),
        "{shown}"
    );
}

#[test]
fn each_file_rule_names_its_key() {
    let keys = r#"[{"name":"env","key":"0123456789abcdef-env"}]"#;
    // (environment, key named, text the error contains)
    let cases: &[(Env<'_>, &str, &str)] = &[
        // Missing and empty files: the _file key and the path.
        (
            &[("BUS__AUTH__API_KEYS_FILE", "{dir}/nope.json")],
            "auth.api_keys_file",
            "nope.json",
        ),
        (
            &[("BUS__AUTH__API_KEYS_FILE", "{dir}/empty")],
            "auth.api_keys_file",
            "empty",
        ),
        (
            &[
                ("BUS__AUTH__ENABLED", "false"),
                ("BUS__NATS__TOKEN_FILE", "{dir}/empty"),
            ],
            "nats.token_file",
            "empty",
        ),
        (
            &[
                ("BUS__AUTH__ENABLED", "false"),
                ("BUS__WEBHOOKS__SECRET_KEY_FILE", "{dir}/nope"),
            ],
            "webhooks.secret_key_file",
            "nope",
        ),
        // A malformed file: the _file key and the path.
        (
            &[("BUS__AUTH__API_KEYS_FILE", "{dir}/password")],
            "auth.api_keys_file",
            "password",
        ),
        (
            &[
                ("BUS__AUTH__ENABLED", "false"),
                ("BUS__WEBHOOKS__SECRET_KEY_FILE", "{dir}/password"),
            ],
            "webhooks.secret_key_file",
            "32 bytes",
        ),
        (
            &[
                ("BUS__AUTH__ENABLED", "false"),
                ("BUS__WEBHOOKS__CA_FILE", "{dir}/password"),
            ],
            "webhooks.ca_file",
            "no PEM certificate",
        ),
        // A value and its file: both keys.
        (
            &[
                ("BUS__AUTH__API_KEYS", keys),
                ("BUS__AUTH__API_KEYS_FILE", "{dir}/keys.json"),
            ],
            "auth.api_keys_file",
            "auth.api_keys and",
        ),
        (
            &[
                ("BUS__AUTH__ENABLED", "false"),
                ("BUS__NATS__USER", "bus"),
                ("BUS__NATS__PASSWORD", "pw"),
                ("BUS__NATS__PASSWORD_FILE", "{dir}/password"),
            ],
            "nats.password_file",
            "nats.password and",
        ),
    ];
    for (pairs, key, reason) in cases {
        let (got, _dir) = load_with(pairs);
        let e = got
            .err()
            .unwrap_or_else(|| panic!("{pairs:?} was accepted"));
        assert_eq!(e.key(), Some(*key), "{pairs:?}: {e}");
        assert!(e.to_string().contains(reason), "{pairs:?}: {e}");
        assert!(!e.to_string().contains("pw-from-file"), "{e}");
    }
}

#[test]
fn a_bad_key_list_in_the_environment_is_not_quoted() {
    let json = r#"[{"name":"a","key":"0123456789abcdef-env","admin":"0123456789abcdef-env"}]"#;
    let (got, _dir) = load_with(&[("BUS__AUTH__API_KEYS", json)]);
    let e = got.err().unwrap_or_else(|| panic!("accepted"));
    assert_eq!(e.key(), Some("auth.api_keys"), "{e}");
    assert!(!e.to_string().contains("0123456789abcdef-env"), "{e}");
}
