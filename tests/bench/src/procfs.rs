//! What `/proc` says about the processes of a run: CPU time and resident memory of a
//! process by id, the `nats-server` this process started, and the open-files limit.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// CPU time the process `pid` has used (`/proc/<pid>/stat`, in USER_HZ = 100 ticks/s);
/// zero when there is no such process.
pub fn cpu(pid: Option<u32>) -> Duration {
    let Some(fields) = pid.and_then(stat_fields) else {
        return Duration::ZERO;
    };
    // Fields after the command: state is the first, utime the 12th, stime the 13th.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// The fields of `/proc/<pid>/stat` after the command (which may hold spaces).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The resident memory of the process `pid` (`VmRSS` in `/proc/<pid>/status`), in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// The first child of this process whose command is `name` (the harness starts
/// `nats-server` as a child).
pub fn child_named(name: &str) -> Option<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        // After the command: state, then the parent's id.
        let parent = stat_fields(pid)?.get(1)?.clone();
        (comm.trim_end() == name && parent == me).then_some(pid)
    })
}

/// Raises this process's soft limit on open files to at least `need` (children started
/// afterwards inherit it); an error when the hard limit is lower.
pub fn ensure_open_files(need: u64) -> Result<()> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= need {
        return Ok(());
    }
    anyhow::ensure!(
        hard >= need,
        "{need} open files needed, the hard limit is {hard} (raise it: ulimit -Hn)"
    );
    setrlimit(Resource::RLIMIT_NOFILE, need, hard)
        .with_context(|| format!("raising the open-files limit from {soft} to {need}"))?;
    eprintln!("bus-bench: open-files limit raised from {soft} to {need}");
    Ok(())
}
