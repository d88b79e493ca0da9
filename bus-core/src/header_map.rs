//! Header maps that start with room for the headers an event will carry.
//!
//! async-nats' `HeaderMap` has no `with_capacity` (nor `remove`): a new one grows to 3,
//! 7 and 14 entries, and each step allocates a larger table and re-hashes every entry
//! already in it with SipHash. A traced publish carries 8 headers, so its map grew
//! three times, the last time for `traceparent` (2.5 k instructions per traced publish,
//! BENCHMARKS.md "Profile, fourth round").
//!
//! What the public API does allow: a `HeaderMap` deserializes through a `HashMap` that is
//! created with room for the number of entries the input holds, and a clone keeps its
//! table's size. So a template is read once from input with `n` copies of the same entry
//! (`ce-specversion: 1.0`, which every event carries): one entry, room for `n`. A map for
//! an event is a clone of the template that fits: one allocation, nothing re-hashed.
//! Should either behaviour change upstream, the maps still hold the right headers; only
//! the growth comes back.

use std::sync::LazyLock;

use async_nats::HeaderMap;
use async_nats::header::HeaderName;

use crate::event::SPEC_VERSION;
use crate::headers::CE_SPECVERSION;

/// The sizes a template is made for: a hash table holds 7/8 of its buckets, so these
/// are the entry counts at which it is full (8, 16 and 32 buckets).
const ROOMS: [usize; 3] = [7, 14, 28];

/// One template per size in [`ROOMS`], each holding only `ce-specversion`.
static TEMPLATES: LazyLock<Vec<HeaderMap>> =
    LazyLock::new(|| ROOMS.iter().map(|n| template(*n)).collect());

/// A header map holding `ce-specversion: 1.0` with room for `headers` entries in all
/// (that one included), or one that grows as usual beyond the largest template.
pub(crate) fn with_spec_version(headers: usize) -> HeaderMap {
    match ROOMS.iter().position(|room| headers <= *room) {
        Some(i) => TEMPLATES[i].clone(),
        None => spec_version_only(),
    }
}

/// `ce-specversion: 1.0` read from `room` copies of it.
fn template(room: usize) -> HeaderMap {
    serde_json::from_str(&copies(room)).unwrap_or_else(|_| spec_version_only())
}

/// A JSON header map with `room` copies of `ce-specversion: 1.0`.
fn copies(room: usize) -> String {
    let entry = format!("{CE_SPECVERSION:?}:[{SPEC_VERSION:?}]");
    format!("{{{}}}", vec![entry; room].join(","))
}

fn spec_version_only() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HeaderName::from_static(CE_SPECVERSION), SPEC_VERSION);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_any_room_should_hold_only_the_spec_version() {
        for headers in [0, 1, 7, 8, 14, 15, 28, 29, 100] {
            let h = with_spec_version(headers);
            assert_eq!(h.len(), 1, "room for {headers}");
            assert_eq!(
                h.get(CE_SPECVERSION).map(|v| v.as_str()),
                Some(SPEC_VERSION),
                "room for {headers}"
            );
        }
    }

    #[test]
    fn given_a_template_should_be_read_from_its_copies_not_built_by_the_fallback() {
        // The fallback gives the same map; this checks the JSON the templates are read
        // from is one a `HeaderMap` accepts, so the room is really there.
        for room in ROOMS {
            let parsed: Result<HeaderMap, _> = serde_json::from_str(&copies(room));
            assert!(parsed.is_ok_and(|h| h.len() == 1), "room {room}");
        }
    }
}
