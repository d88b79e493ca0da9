//! What JetStream says about a delivery in its reply subject (ADR-15), read in one pass.
//!
//! `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<published ns>.<pending>`
//! from older servers, and `$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<...>.<pending>`
//! with optional trailing tokens from newer ones. async-nats' `Message::info` reads the
//! same with a generic `split`, generic number parsing and an `i128` timestamp: about
//! 2 k instructions per delivery, a sixth of what the bus spent per event end to end
//! over raw async-nats; this reads it in about half that (BENCHMARKS.md, "Profile,
//! seventh round"). A subject this does not read goes to `Message::info`, so the two
//! never disagree on what they both accept.

use async_nats::jetstream::Message;
use time::OffsetDateTime;

const PREFIX: &str = "$JS.ACK.";
/// Tokens after the prefix that matter: the 9 of the newer format (more are ignored).
const MAX_TOKENS: usize = 9;
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The delivery metadata a settle needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeliveryInfo<'a> {
    pub(crate) stream: &'a str,
    /// 1 on the first delivery.
    pub(crate) delivered: u64,
    pub(crate) stream_seq: u64,
    pub(crate) published: OffsetDateTime,
}

impl<'a> DeliveryInfo<'a> {
    /// The message's metadata, or why it has none (not a JetStream delivery).
    pub(crate) fn of(message: &'a Message) -> Result<Self, async_nats::Error> {
        if let Some(info) = message.reply.as_deref().and_then(parse) {
            return Ok(info);
        }
        let info = message.info()?;
        Ok(DeliveryInfo {
            stream: info.stream,
            delivered: u64::try_from(info.delivered).unwrap_or(0),
            stream_seq: info.stream_sequence,
            published: OffsetDateTime::from_unix_timestamp_nanos(
                info.published.unix_timestamp_nanos(),
            )
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        })
    }
}

/// Reads a reply subject of either format; `None` for anything else, and for anything
/// `Message::info` would refuse.
pub(crate) fn parse(reply: &str) -> Option<DeliveryInfo<'_>> {
    let rest = reply.strip_prefix(PREFIX)?.as_bytes();
    // Token `i` is `rest[start..end]` for consecutive dot positions; a plain loop over
    // the bytes (a `split` iterator costs several times as much per byte).
    let mut tokens: [&[u8]; MAX_TOKENS] = [&[]; MAX_TOKENS];
    let mut n = 0;
    let mut start = 0;
    for (i, b) in rest.iter().enumerate() {
        if *b == b'.' {
            tokens[n] = &rest[start..i];
            n += 1;
            start = i + 1;
            if n == MAX_TOKENS {
                break;
            }
        }
    }
    if n < MAX_TOKENS {
        tokens[n] = &rest[start..];
        n += 1;
    }
    // The older format has exactly 7 tokens, the newer 9 or more (n stops at 9).
    let t = match n {
        7 => &tokens[..7],
        MAX_TOKENS => &tokens[2..],
        _ => return None,
    };
    // Consumer sequence and pending are not needed, but must be numbers (as for
    // `Message::info`).
    number(t[4])?;
    number(t[6])?;
    let nanos = number(t[5])?;
    // In `u64` (seconds and the rest) rather than `i128` nanoseconds: no 128-bit division.
    let published = OffsetDateTime::from_unix_timestamp(i64::try_from(nanos / NANOS_PER_SEC).ok()?)
        .ok()?
        .replace_nanosecond(u32::try_from(nanos % NANOS_PER_SEC).ok()?)
        .ok()?;
    Some(DeliveryInfo {
        stream: std::str::from_utf8(t[0]).ok()?,
        // `Message::info` reads it as an `i64`.
        delivered: number(t[2]).filter(|d| i64::try_from(*d).is_ok())?,
        stream_seq: number(t[3])?,
        published,
    })
}

/// A decimal `u64`: digits only, no sign, no overflow.
fn number(token: &[u8]) -> Option<u64> {
    if token.is_empty() {
        return None;
    }
    token.iter().try_fold(0u64, |n, b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NANOS: u64 = 1_763_900_000_123_456_789;

    fn published() -> OffsetDateTime {
        match OffsetDateTime::from_unix_timestamp_nanos(i128::from(NANOS)) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn both_formats_are_read() {
        let expected = Some(DeliveryInfo {
            stream: "BUS_EVENTS",
            delivered: 3,
            stream_seq: 42,
            published: published(),
        });
        let v1 = format!("$JS.ACK.BUS_EVENTS.grp.3.42.17.{NANOS}.5");
        let v2 = format!("$JS.ACK._.ACCHASH.BUS_EVENTS.grp.3.42.17.{NANOS}.5");
        let v2_token = format!("$JS.ACK.hub.ACCHASH.BUS_EVENTS.grp.3.42.17.{NANOS}.5.tok");
        let v2_more = format!("$JS.ACK.hub.ACCHASH.BUS_EVENTS.grp.3.42.17.{NANOS}.5.tok.x.y");
        for reply in [&v1, &v2, &v2_token, &v2_more] {
            assert_eq!(parse(reply), expected, "{reply}");
        }
    }

    #[test]
    fn anything_else_is_left_to_async_nats() {
        for reply in [
            "",
            "_INBOX.abc",
            "$JS.ACK.",
            "$JS.ACK.BUS_EVENTS.grp.3.42.17",
            // 8 tokens: neither format.
            "$JS.ACK.x.BUS_EVENTS.grp.3.42.17.1763900000123456789.5",
            "$JS.ACK.BUS_EVENTS.grp.-3.42.17.1763900000123456789.5",
            "$JS.ACK.BUS_EVENTS.grp.3.4x2.17.1763900000123456789.5",
            "$JS.ACK.BUS_EVENTS.grp.3.42.17.1763900000123456789.",
            "$JS.ACK.BUS_EVENTS.grp.3.42.17.99999999999999999999.5",
            "$JS.ACK.BUS_EVENTS.grp.3.+42.17.1763900000123456789.5",
            "$JS.ACK.BUS_EVENTS.grp.3.42.x.1763900000123456789.5",
            "$JS.ACK.BUS_EVENTS.grp.9223372036854775808.42.17.1763900000123456789.5",
        ] {
            assert_eq!(parse(reply), None, "{reply}");
        }
    }

    #[test]
    fn numbers_are_plain_decimal_u64() {
        assert_eq!(number(b"0"), Some(0));
        assert_eq!(number(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(number(b"18446744073709551616"), None);
        assert_eq!(number(b""), None);
        assert_eq!(number(b" 1"), None);
    }
}
