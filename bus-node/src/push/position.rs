//! Where a client is in the stream: a sequence, and the stream's epoch (its identity:
//! name and creation time), so that a resume against a stream that was deleted and made
//! again is seen as such instead of replaying other events under the same numbers.
//!
//! An SSE id is `<epoch>:<seq>`, the epoch `<stream name>.<creation time in unix
//! nanoseconds>` (`BUS_EVENTS.1764787200123456789:42`); stream names hold no `.` or `:`.

use std::fmt;

/// The identity of one incarnation of the events stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch(String);

impl Epoch {
    pub fn new(stream: &str, created: time::OffsetDateTime) -> Self {
        Self(format!("{stream}.{}", created.unix_timestamp_nanos()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A resume point a client sent: the last sequence it has, and the epoch it had it in
/// (absent when the client sent a bare sequence, as WebSocket's `since` may).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: Option<String>,
    pub seq: u64,
}

/// Why a resume point is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a resume point: expected <epoch>:<sequence> or <sequence>")]
pub struct BadPosition(pub String);

impl Position {
    pub fn parse(text: &str) -> Result<Self, BadPosition> {
        let bad = || BadPosition(bus_core::binary_mode::excerpt(text).into_owned());
        let text = text.trim();
        let (epoch, seq) = match text.rsplit_once(':') {
            Some((epoch, seq)) => {
                let valid = epoch.rsplit_once('.').is_some_and(|(name, nanos)| {
                    !name.is_empty()
                        && !nanos.is_empty()
                        && nanos.bytes().all(|b| b.is_ascii_digit() || b == b'-')
                });
                if !valid {
                    return Err(bad());
                }
                (Some(epoch.to_owned()), seq)
            }
            None => (None, text),
        };
        let seq = seq.parse::<u64>().map_err(|_| bad())?;
        Ok(Self { epoch, seq })
    }
}

/// The SSE id of event `seq` in `epoch`.
pub fn event_id(epoch: &Epoch, seq: u64) -> String {
    format!("{epoch}:{seq}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_parses_back_to_its_epoch_and_sequence() {
        let created = time::OffsetDateTime::from_unix_timestamp_nanos(1_764_787_200_123_456_789)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let epoch = Epoch::new("BUS_EVENTS", created);
        let id = event_id(&epoch, 42);
        assert_eq!(id, "BUS_EVENTS.1764787200123456789:42");
        assert_eq!(
            Position::parse(&id),
            Ok(Position {
                epoch: Some(epoch.as_str().to_owned()),
                seq: 42
            })
        );
        assert_eq!(
            Position::parse("7"),
            Ok(Position {
                epoch: None,
                seq: 7
            })
        );
    }

    #[test]
    fn a_malformed_resume_point_is_refused() {
        for bad in [
            "",
            "x",
            "BUS_EVENTS:1",
            ":5",
            "E.1:x",
            "E.1:-1",
            ".1:3",
            "E.:3",
        ] {
            assert!(Position::parse(bad).is_err(), "{bad:?}");
        }
    }
}
