//! Port reservation that cannot collide across test processes.
//!
//! cargo-nextest runs every test in its own process, so an in-process counter is not
//! enough and "bind port 0, read it, close, hand it to nats-server" races with every
//! other test doing the same. Instead a port is ours while we hold an exclusive lock
//! on `$TMPDIR/bus-test-ports/<port>.lock`; the lock lives as long as the cluster, so
//! a restarted node gets its old ports back. Ports come from a range below the
//! kernel's ephemeral range so outgoing connections never steal them, and each is
//! checked bindable on 127.0.0.1 before it is taken.
//!
//! Lock files are never deleted: deleting one while another process opens it would
//! let two processes lock different inodes for the same port.

use std::collections::hash_map::RandomState;
use std::fs::{File, OpenOptions, TryLockError};
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;

use crate::error::HarnessError;

/// First port the harness hands out (inclusive).
pub const PORT_RANGE_FIRST: u16 = 20_000;
/// Last port the harness hands out (inclusive); below Linux's default ephemeral range (32768+).
pub const PORT_RANGE_LAST: u16 = 32_000;

/// A port held for the lifetime of this value.
#[derive(Debug)]
pub struct ReservedPort {
    port: u16,
    /// Holding the open, locked file is the reservation; closing it releases the lock.
    _lock: File,
}

impl ReservedPort {
    /// The port number.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Reserves `count` distinct ports, starting the scan at a random point of the range
/// so concurrent processes rarely contend for the same lock files.
pub fn reserve(count: usize) -> Result<Vec<ReservedPort>, HarnessError> {
    let dir = lock_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| HarnessError::io(format!("creating {}", dir.display()), e))?;

    let span = u32::from(PORT_RANGE_LAST - PORT_RANGE_FIRST) + 1;
    let start = random_u32() % span;
    let mut taken = Vec::with_capacity(count);
    for step in 0..span {
        if taken.len() == count {
            break;
        }
        let offset = (start + step) % span;
        let Ok(port) = u16::try_from(u32::from(PORT_RANGE_FIRST) + offset) else {
            continue;
        };
        if let Some(reserved) = try_reserve(&dir, port)? {
            taken.push(reserved);
        }
    }
    if taken.len() < count {
        return Err(HarnessError::PortsExhausted {
            needed: count,
            first: PORT_RANGE_FIRST,
            last: PORT_RANGE_LAST,
        });
    }
    Ok(taken)
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("bus-test-ports")
}

/// `Ok(None)` when the port is locked by someone else or not bindable.
fn try_reserve(dir: &std::path::Path, port: u16) -> Result<Option<ReservedPort>, HarnessError> {
    let path = dir.join(format!("{port}.lock"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| HarnessError::io(format!("opening {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(None),
        Err(TryLockError::Error(e)) => {
            return Err(HarnessError::io(format!("locking {}", path.display()), e));
        }
    }
    // Locked by us; now make sure nothing outside the harness is listening there.
    if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
        return Ok(None);
    }
    Ok(Some(ReservedPort { port, _lock: file }))
}

fn random_u32() -> u32 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(elapsed) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(elapsed.as_nanos());
    }
    // Truncation is the point: any 32 bits of the hash will do.
    (hasher.finish() >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_two_reservations_when_both_held_should_not_share_a_port() -> Result<(), HarnessError> {
        let a = reserve(20)?;
        let b = reserve(20)?;
        let mut all: Vec<u16> = a.iter().chain(&b).map(ReservedPort::port).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 40);
        assert!(
            all.iter()
                .all(|p| (PORT_RANGE_FIRST..=PORT_RANGE_LAST).contains(p))
        );
        Ok(())
    }

    #[test]
    fn given_a_held_port_when_locking_it_again_should_be_refused() -> Result<(), HarnessError> {
        let held = reserve(1)?;
        let port = held[0].port();
        assert!(try_reserve(&lock_dir(), port)?.is_none());
        drop(held);
        // Released: now it can be taken again (unless something else grabbed it meanwhile).
        let again = try_reserve(&lock_dir(), port)?;
        assert!(again.is_none_or(|r| r.port() == port));
        Ok(())
    }
}
