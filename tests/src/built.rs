//! Executables of this workspace that the suites run as processes (`bus-node`, the SDK's
//! examples), found in the cargo profile directory of the running test, and built there
//! on first use when they are missing: plain `cargo test` and `cargo nextest run`
//! build test targets only, and a suite should not fail because a binary it runs was
//! not built beforehand.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// One build at a time in this process (cargo locks the target directory too, but a
/// second test would otherwise start a second cargo for the same binary).
static BUILDING: Mutex<()> = Mutex::new(());

/// The cargo profile directory of the running executable: `<target>/<profile>` for a
/// test binary (`<target>/<profile>/deps/it-…`) or a binary beside it. `<target>` is
/// wherever cargo built this executable (`CARGO_TARGET_DIR`, `build.target-dir`,
/// `--target <triple>`).
pub(crate) fn profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    Some(match dir.file_name() {
        Some(name) if name == "deps" => dir.parent().unwrap_or(dir).to_path_buf(),
        _ => dir.to_path_buf(),
    })
}

/// `path` if it is there; else, when running under cargo (`$CARGO` set), `cargo build`
/// with `args` in this workspace, into the same target directory, and `path` if that
/// made it. `None` when it is still missing.
pub(crate) fn or_build(path: &Path, args: &[&str]) -> Option<PathBuf> {
    if path.is_file() {
        return Some(path.to_path_buf());
    }
    let cargo = std::env::var_os("CARGO")?;
    let _one = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    if path.is_file() {
        return Some(path.to_path_buf());
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    // The profile directory's parent is the target directory (with a `--target` triple,
    // its parent's parent: cargo then needs the triple too, which is not known here).
    let target_dir = profile_dir()?.parent()?.to_path_buf();
    eprintln!(
        "bus-tests: building {} (cargo build {})",
        path.display(),
        args.join(" ")
    );
    let built = Command::new(cargo)
        .arg("build")
        .args(args)
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target_dir)
        .stdin(Stdio::null())
        .status()
        .ok()?;
    (built.success() && path.is_file()).then(|| path.to_path_buf())
}
