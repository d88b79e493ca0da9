//! A process of its own for a test that installs process-global state (the `tracing`
//! subscriber, the OpenTelemetry tracer provider), which can be installed once per
//! process. cargo-nextest runs every test in a process of its own already; plain
//! `cargo test` runs a target's tests as threads of one process, so there the test runs
//! itself again, alone, in a child process of the same test binary.

use std::process::Command;

/// Set in the child process to the name of the one test it runs.
pub const OWN_PROCESS_ENV: &str = "BUS_TESTS_OWN_PROCESS";

/// Whether the calling test runs its body in this process: `true` under cargo-nextest
/// (a process per test) and in the child process; otherwise it runs the test `name` in a
/// child process, prints that child's output, panics if the test failed there (or did
/// not run: `name` must be the test's path as the test binary lists it, the function's
/// name for a test in a target's root), and returns `false`: the test is done.
///
/// ```no_run
/// #[tokio::test]
/// async fn given_telemetry_installed_should_export() -> anyhow::Result<()> {
///     if !bus_tests::own_process("given_telemetry_installed_should_export") {
///         return Ok(());
///     }
///     // ... bus_core::telemetry::init_with(...) ...
///     Ok(())
/// }
/// ```
///
/// # Panics
/// When the child cannot be started, fails, or ran no test named `name`.
pub fn own_process(name: &str) -> bool {
    if std::env::var_os("NEXTEST_EXECUTION_MODE").is_some_and(|m| m == "process-per-test")
        || std::env::var_os(OWN_PROCESS_ENV).is_some_and(|n| n == name)
    {
        return true;
    }
    let exe = std::env::current_exe().expect("the path of the running test binary");
    let out = Command::new(&exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(OWN_PROCESS_ENV, name)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} for {name}: {e}", exe.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Through the test harness's capture: shown when the test fails, or with --nocapture.
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{name} failed in its own process ({})",
        out.status
    );
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{} has no test named {name:?}: pass the test's exact path",
        exe.display()
    );
    false
}
