//! Secrets read from files, the way Kubernetes mounts Secrets: a `*_file` key names a
//! file whose whole content is the value of its twin key (`nats.password_file` holds
//! `nats.password`). The rules, the same for every such pair:
//!
//! - a value and its `_file` twin set together is an error naming both keys;
//! - a file that is missing, unreadable, empty, larger than [`MAX_SECRET_FILE_BYTES`] or
//!   not UTF-8 is an error naming the `_file` key and the path, never the content;
//! - trailing line breaks are not part of the value (secret files often end in one).
//!
//! Files are read when the configuration is validated and loaded, at start-up; a change
//! to a file is seen at the next start.

use std::io::Read;
use std::path::Path;

use crate::config::{ConfigError, Secret};

/// Largest secret file read: Kubernetes' own limit on a Secret.
pub const MAX_SECRET_FILE_BYTES: u64 = 1024 * 1024;

/// The content of the secret file `path`, which `key` (`nats.password_file`) names,
/// without its trailing line breaks.
pub fn read_secret_file(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    read_text_file(key, path).map(Secret::new)
}

/// Like [`read_secret_file`], for files whose content is structured (a list of API keys)
/// and parsed by the caller, or not secret in itself (a user name).
pub fn read_text_file(key: &str, path: &Path) -> Result<String, ConfigError> {
    let fail = |reason: String| ConfigError::new(key, format!("{}: {reason}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(fail(format!("larger than {MAX_SECRET_FILE_BYTES} bytes")));
    }
    let text = String::from_utf8(bytes).map_err(|_| fail("is not UTF-8 text".into()))?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(fail("is empty".into()));
    }
    Ok(value.to_owned())
}

/// Refuses `value_key` and `file_key` set together (`set` says which are).
pub fn at_most_one(
    value_key: &str,
    value_set: bool,
    file_key: &str,
    file_set: bool,
) -> Result<(), ConfigError> {
    if value_set && file_set {
        return Err(ConfigError::new(
            file_key,
            format!("{value_key} and {file_key} are both set: use one of them"),
        ));
    }
    Ok(())
}

/// The value of a secret that is given either as `value_key` or in the file `file_key`
/// names: `value`, or the file's content, or none.
pub fn value_or_file(
    value_key: &str,
    value: Option<&Secret>,
    file_key: &str,
    file: Option<&Path>,
) -> Result<Option<Secret>, ConfigError> {
    at_most_one(value_key, value.is_some(), file_key, file.is_some())?;
    match file {
        Some(path) => read_secret_file(file_key, path).map(Some),
        None => Ok(value.cloned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "nats.password_file";

    fn read(content: &[u8]) -> Result<String, ConfigError> {
        let dir = tempfile::tempdir().map_err(|e| ConfigError::new("tempdir", e.to_string()))?;
        let path = dir.path().join("password");
        std::fs::write(&path, content).map_err(|e| ConfigError::new("write", e.to_string()))?;
        read_secret_file(KEY, &path).map(|s| s.expose().to_owned())
    }

    #[test]
    fn the_content_is_the_value_without_its_trailing_line_breaks() {
        let cases: &[(&[u8], &str)] = &[
            (b"hunter2", "hunter2"),
            (b"hunter2\n", "hunter2"),
            (b"hunter2\r\n", "hunter2"),
            (b"hunter2\n\n", "hunter2"),
            (b"  spaced pass  \n", "  spaced pass  "),
            (b"line1\nline2\n", "line1\nline2"),
        ];
        for (content, want) in cases {
            assert_eq!(read(content).as_deref(), Ok(*want), "{content:?}");
        }
    }

    #[test]
    fn an_empty_or_binary_or_huge_file_names_the_key_and_the_path_not_the_content() {
        let huge = vec![b'x'; MAX_SECRET_FILE_BYTES as usize + 1];
        let cases: &[(&[u8], &str)] = &[
            (b"", "is empty"),
            (b"\n", "is empty"),
            (b"\r\n\n", "is empty"),
            (b"secret\xff\xfe", "is not UTF-8 text"),
            (&huge, "larger than"),
        ];
        for (content, reason) in cases {
            let e = read(content).err();
            let e = e.unwrap_or_else(|| panic!("{content:?} was accepted"));
            assert_eq!(e.key, KEY);
            assert!(e.reason.contains("password: "), "{e}");
            assert!(e.reason.contains(reason), "{e}");
            assert!(!e.reason.contains("secret"), "{e}");
        }
    }

    #[test]
    fn a_missing_file_names_the_key_and_the_path() {
        let e = read_secret_file(KEY, Path::new("/nonexistent/bus/password")).err();
        let e = e.unwrap_or_else(|| panic!("a missing file was accepted"));
        assert_eq!(e.key, KEY);
        assert!(
            e.reason
                .starts_with("/nonexistent/bus/password: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn a_value_and_its_file_together_are_refused_naming_both() {
        let value = Secret::new("v");
        let e = value_or_file(
            "nats.password",
            Some(&value),
            KEY,
            Some(Path::new("/nonexistent")),
        )
        .err();
        let e = e.unwrap_or_else(|| panic!("both were accepted"));
        assert_eq!(e.key, KEY);
        assert!(
            e.to_string()
                .contains("nats.password and nats.password_file"),
            "{e}"
        );
        assert_eq!(
            value_or_file("nats.password", Some(&value), KEY, None),
            Ok(Some(value))
        );
        assert_eq!(value_or_file("nats.password", None, KEY, None), Ok(None));
    }
}
