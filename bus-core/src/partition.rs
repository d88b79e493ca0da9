//! The key → partition hash of ordered groups, fixed so that any language computes the
//! same partition for a key: **FNV-1a, 32 bits, over the key's UTF-8 bytes, modulo the
//! group's partition count**. (The same hash nats-server's `partition(n, ...)` subject
//! transform uses, over one token.)
//!
//! ```text
//! h = 0x811c9dc5
//! for each byte b of the key:  h = (h XOR b) * 0x01000193   (mod 2^32)
//! partition = h mod partitions
//! ```
//!
//! ```
//! use bus_core::partition::{fnv1a_32, partition_of};
//! assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
//! assert_eq!(partition_of("order-42", 16), fnv1a_32(b"order-42") % 16);
//! ```

/// Most partitions an ordered group may have (each is a JetStream consumer).
pub const MAX_PARTITIONS: u32 = 1024;

const OFFSET_BASIS: u32 = 0x811c_9dc5;
const PRIME: u32 = 0x0100_0193;

/// FNV-1a, 32 bits.
pub fn fnv1a_32(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(OFFSET_BASIS, |h, b| (h ^ u32::from(*b)).wrapping_mul(PRIME))
}

/// The partition of `key` in a group of `partitions` (at least 1; 0 is taken as 1).
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    fnv1a_32(key.as_bytes()) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_the_published_fnv_vectors_should_give_their_hashes() {
        // The FNV authors' test vectors for FNV-1a 32.
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn given_a_key_should_hash_its_utf8_bytes() {
        assert_eq!(
            partition_of("é", 1_000_000),
            fnv1a_32("é".as_bytes()) % 1_000_000
        );
        assert_eq!(partition_of("anything", 1), 0);
        assert_eq!(partition_of("anything", 0), 0);
    }

    #[test]
    fn given_many_keys_should_use_every_partition() {
        let mut seen = [0u32; 16];
        for k in 0..1000 {
            seen[partition_of(&format!("key-{k}"), 16) as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 30), "{seen:?}");
    }
}
