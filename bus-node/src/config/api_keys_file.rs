//! `auth.api_keys_file`: the API keys read from a file, the way Kubernetes mounts a
//! Secret, once at start-up. The file holds what `auth.api_keys` holds: a JSON list of
//! keys (as in `BUS__AUTH__API_KEYS`), or, when its name ends in `.toml`, `[[api_keys]]`
//! tables. The rules of every `*_file` key apply (`bus_core::secret_file`), and no error
//! quotes the file's content.

use std::path::Path;

use bus_core::config::ConfigError;
use bus_core::secret_file::{at_most_one, read_text_file};
use serde::Deserialize;

use super::sections::{ApiKeyConfig, AuthConfig, validate_api_keys};

/// The key this module reads.
pub const KEY: &str = "auth.api_keys_file";

/// The `.toml` form of the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlKeys {
    api_keys: Vec<ApiKeyConfig>,
}

/// Reads the file `auth.api_keys_file` names, if any, into `auth.api_keys`.
pub fn read_into(auth: &mut AuthConfig) -> Result<(), ConfigError> {
    let Some(path) = auth.api_keys_file.clone() else {
        return Ok(());
    };
    at_most_one("auth.api_keys", !auth.api_keys.is_empty(), KEY, true)?;
    let in_file = |reason: String| ConfigError::new(KEY, format!("{}: {reason}", path.display()));
    let text = read_text_file(KEY, &path)?;
    let keys = parse(&text, &path).map_err(in_file)?;
    if keys.is_empty() {
        return Err(in_file("holds no API key".into()));
    }
    validate_api_keys(KEY, &keys)
        .map_err(|e| ConfigError::new(e.key, format!("in {}: {}", path.display(), e.reason)))?;
    auth.api_keys = keys;
    Ok(())
}

fn parse(text: &str, path: &Path) -> Result<Vec<ApiKeyConfig>, String> {
    if path.extension().is_some_and(|e| e == "toml") {
        return toml::from_str::<TomlKeys>(text)
            .map(|t| t.api_keys)
            .map_err(|e| {
                let at = e.span().map(|s| line_column(text, s.start));
                describe("TOML with [[api_keys]] tables", e.message(), at)
            });
    }
    parse_json(text)
}

/// A JSON list of keys, from the file or from `BUS__AUTH__API_KEYS`.
pub fn parse_json(text: &str) -> Result<Vec<ApiKeyConfig>, String> {
    serde_json::from_str(text).map_err(|e| {
        let message = e.to_string();
        describe(
            "a JSON list of API keys",
            &message,
            Some((e.line(), e.column())),
        )
    })
}

/// Why a text is not `what`, without quoting it: serde's messages about a wrong type or
/// value can contain the value (a key), so only those about a missing or unknown field
/// are passed on.
fn describe(what: &str, message: &str, at: Option<(usize, usize)>) -> String {
    let message = message.split(" at line ").next().unwrap_or_default();
    let detail = if message.starts_with("missing field") || message.starts_with("unknown field") {
        message
    } else {
        "a syntax error, or a value of the wrong type"
    };
    match at {
        Some((line, column)) => {
            format!("is not {what}: {detail} (line {line}, column {column})")
        }
        None => format!("is not {what}: {detail}"),
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef-secret";

    fn read(name: &str, content: Option<&str>, inline: bool) -> Result<AuthConfig, ConfigError> {
        let dir = tempfile::tempdir().map_err(|e| ConfigError::new("tmp", e.to_string()))?;
        let path = dir.path().join(name);
        if let Some(content) = content {
            std::fs::write(&path, content).map_err(|e| ConfigError::new("tmp", e.to_string()))?;
        }
        let mut auth = AuthConfig {
            api_keys_file: Some(path),
            ..AuthConfig::default()
        };
        if inline {
            auth.api_keys = parse_json(&format!(r#"[{{"name":"inline","key":"{SECRET}x"}}]"#))
                .map_err(|e| ConfigError::new("inline", e))?;
        }
        read_into(&mut auth).map(|()| auth)
    }

    #[test]
    fn the_keys_are_read_from_json_or_toml() {
        let json =
            format!("[{{\"name\":\"shop\",\"key\":\"{SECRET}\",\"publish\":[\"shop.>\"]}}]\n");
        let toml =
            format!("[[api_keys]]\nname = \"shop\"\nkey = \"{SECRET}\"\npublish = [\"shop.>\"]\n");
        for (name, content) in [("keys.json", json.as_str()), ("keys.toml", toml.as_str())] {
            let auth = read(name, Some(content), false).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(auth.api_keys.len(), 1, "{name}");
            assert_eq!(auth.api_keys[0].name, "shop");
            assert_eq!(auth.api_keys[0].key.expose(), SECRET);
            assert_eq!(auth.api_keys[0].publish, vec!["shop.>"]);
        }
    }

    #[test]
    fn each_bad_file_names_the_key_and_the_path_never_the_content() {
        let short = r#"[{"name":"a","key":"short-secret"}]"#.to_owned();
        let wrong_type = format!(r#"[{{"name":"a","key":"{SECRET}","admin":"{SECRET}"}}]"#);
        let unknown = format!(r#"[{{"name":"a","kee":"{SECRET}"}}]"#);
        let toml_bad = format!("[[api_keys]]\nname = \"a\"\nkey = {SECRET}\n");
        // (file name, content or missing, also inline keys, key named, reason contains)
        let cases: &[(&str, Option<&str>, bool, &str, &str)] = &[
            ("keys.json", None, false, KEY, "cannot read"),
            ("keys.json", Some(""), false, KEY, "is empty"),
            ("keys.json", Some("\n"), false, KEY, "is empty"),
            ("keys.json", Some("[]"), false, KEY, "holds no API key"),
            (
                "keys.json",
                Some(&format!("[{{\"name\": {SECRET}")),
                false,
                KEY,
                "line 1",
            ),
            ("keys.json", Some(&wrong_type), false, KEY, "wrong type"),
            (
                "keys.json",
                Some(&unknown),
                false,
                KEY,
                "unknown field `kee`",
            ),
            ("keys.toml", Some(&toml_bad), false, KEY, "line 3"),
            (
                "keys.json",
                Some(&short),
                false,
                "auth.api_keys_file[0].key",
                "16",
            ),
            (
                "keys.json",
                Some("[]"),
                true,
                KEY,
                "auth.api_keys and auth.api_keys_file",
            ),
        ];
        for (name, content, inline, key, reason) in cases {
            let e = read(name, *content, *inline).err();
            let e = e.unwrap_or_else(|| panic!("{name} {content:?} was accepted"));
            assert_eq!(e.key, *key, "{content:?}: {e}");
            assert!(e.reason.contains(reason), "{content:?}: {e}");
            assert!(*inline || e.reason.contains(name), "the path is named: {e}");
            assert!(!e.reason.contains("secret"), "the content is not: {e}");
        }
    }

    #[test]
    fn without_the_key_nothing_is_read() {
        let mut auth = AuthConfig::default();
        assert_eq!(read_into(&mut auth), Ok(()));
        assert!(auth.api_keys.is_empty());
    }
}
