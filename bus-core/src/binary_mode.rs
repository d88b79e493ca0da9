//! CloudEvents binary mode on NATS: attributes as `ce-*` headers, `content-type`, the
//! data as the payload, `Nats-Msg-Id` = [`dedup_id`] of the event's source and id, and
//! W3C trace context headers. A plain NATS client in any language can produce and read
//! these messages.
//!
//! Every value is stored exactly as given or refused by [`encode`]: NATS trims header
//! values, so a value that starts or ends with a space or a tab (or is only whitespace)
//! is refused, as are control characters, values longer than their attribute's maximum
//! ([`MAX_ID_LEN`], [`MAX_SOURCE_LEN`], [`MAX_SUBJECT_LEN`], [`MAX_VALUE_LEN`]) and
//! headers that add up to more than [`MAX_HEADER_BYTES`].

use std::borrow::Cow;
use std::str::FromStr;

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::event::{Event, SPEC_VERSION};
use crate::event_type::{EventType, EventTypeError};
use crate::header_map;
use crate::headers::*;

/// Longest accepted extension attribute name (CloudEvents recommends at most 20).
pub const MAX_EXTENSION_NAME_LEN: usize = 20;

/// Longest accepted `id`, in bytes.
pub const MAX_ID_LEN: usize = 1024;
/// Longest accepted `source`, in bytes.
pub const MAX_SOURCE_LEN: usize = 1024;
/// Longest accepted `subject`, in bytes.
pub const MAX_SUBJECT_LEN: usize = 1024;
/// Longest accepted value of any other attribute (`datacontenttype`, `dataschema`,
/// `partitionkey`, `tracestate`, extensions), in bytes.
pub const MAX_VALUE_LEN: usize = 4096;
/// Most bytes the headers of one event may take on the wire (`NATS/1.0` line, every
/// `name: value` line, the blank line), leaving room under nats-server's 64 KiB for the
/// trace headers a publisher adds.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Characters of an offending value that an error quotes ([`excerpt`]).
pub const EXCERPT_CHARS: usize = 64;
/// Prefix of [`dedup_id`]: names the scheme, so that another one could follow.
pub const DEDUP_ID_PREFIX: &str = "ce1-";

/// The `Nats-Msg-Id` of the event with `source` and `id`: [`DEDUP_ID_PREFIX`] then the
/// lowercase hex SHA-256 of the source's UTF-8 bytes, one 0 byte, and the id's bytes
/// (`ce1-` + `sha256(source + "\0" + id)`, 68 characters). CloudEvents identity is
/// source + id, so another source's event with the same id is another event; the 0 byte
/// cannot occur in either (control characters are refused), so no two pairs share it.
///
/// ```
/// # use bus_core::binary_mode::dedup_id;
/// // printf '/shop\0order-1' | sha256sum
/// assert_eq!(
///     dedup_id("/shop", "order-1"),
///     "ce1-e822c2a8accaf06f6d956254b60f820add4915eadfc1d5682725fc16dfdeb39b",
/// );
/// ```
pub fn dedup_id(source: &str, id: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::new()
        .chain_update(source.as_bytes())
        .chain_update([0u8])
        .chain_update(id.as_bytes())
        .finalize();
    let mut out = String::with_capacity(DEDUP_ID_PREFIX.len() + 64);
    out.push_str(DEDUP_ID_PREFIX);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// At most the first [`EXCERPT_CHARS`] characters of `value`, with `…` when cut: what an
/// error quotes of a value, so that an answer never echoes a long one whole.
pub fn excerpt(value: &str) -> Cow<'_, str> {
    match value.char_indices().nth(EXCERPT_CHARS) {
        None => Cow::Borrowed(value),
        Some((cut, _)) => Cow::Owned(format!("{}…", &value[..cut])),
    }
}

/// Why a message is not a valid bus event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message has no headers at all.
    #[error("message has no headers: not a CloudEvents binary-mode event")]
    NoHeaders,
    /// A required attribute (`id`, `source`, `type`, `specversion`) has no header; holds
    /// its name.
    #[error("required attribute {0:?} is missing")]
    MissingAttribute(&'static str),
    /// A required attribute's header is empty.
    #[error("attribute {attribute:?} is empty")]
    EmptyAttribute {
        /// The attribute's name.
        attribute: &'static str,
    },
    /// `ce-specversion` is not [`SPEC_VERSION`]; holds the value found.
    #[error("unsupported specversion {0:?} (only \"1.0\")")]
    SpecVersion(String),
    /// `ce-type` is not a valid event type name.
    #[error("invalid type: {0}")]
    InvalidType(#[from] EventTypeError),
    /// `ce-time` is not an RFC 3339 timestamp.
    #[error("invalid time {value:?}: not RFC 3339")]
    InvalidTime {
        /// The header's value.
        value: String,
    },
}

/// Why an event cannot be put on NATS as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A required attribute (`id`, `source`) is empty.
    #[error("attribute {attribute:?} is empty")]
    EmptyAttribute {
        /// The attribute's name.
        attribute: String,
    },
    /// A value cannot be a NATS header (it contains a line break or another control
    /// character), or the time cannot be written as RFC 3339.
    #[error("attribute {attribute:?} contains a line break or another control character")]
    InvalidValue {
        /// The attribute's name.
        attribute: String,
    },
    /// A value starts or ends with a space or a tab, or is only whitespace: NATS trims
    /// header values, so it would not be stored as given.
    #[error(
        "attribute {attribute:?} starts or ends with whitespace, which NATS headers do not keep"
    )]
    Whitespace {
        /// The attribute's name.
        attribute: String,
    },
    /// A value is longer than its attribute's maximum ([`MAX_ID_LEN`], ...).
    #[error("attribute {attribute:?} is {len} bytes long; the limit is {max}")]
    TooLong {
        /// The attribute's name.
        attribute: String,
        /// The value's length in bytes.
        len: usize,
        /// The attribute's maximum.
        max: usize,
    },
    /// A value does not have its attribute's format: `dataschema` an absolute URI,
    /// `traceparent` a W3C `traceparent` ([`attribute_format`](crate::attribute_format)).
    #[error("attribute {attribute:?} is not {expected}: {:?}", excerpt(.value))]
    InvalidFormat {
        /// The attribute's name.
        attribute: String,
        /// What it must be.
        expected: &'static str,
        /// The refused value.
        value: String,
    },
    /// The headers add up to more than [`MAX_HEADER_BYTES`] (many long extensions).
    #[error("the event's headers take {len} bytes; the limit is {MAX_HEADER_BYTES}")]
    HeadersTooLarge {
        /// Their size in bytes (as far as encoding got).
        len: usize,
    },
    /// An extension name is empty, longer than [`MAX_EXTENSION_NAME_LEN`], or has characters
    /// other than lowercase letters and digits.
    #[error(
        "extension name {:?} is invalid: use 1 to {MAX_EXTENSION_NAME_LEN} lowercase letters or digits", excerpt(.name)
    )]
    InvalidExtensionName {
        /// The refused name.
        name: String,
    },
    /// An extension has the name of a standard attribute or of one the bus maps itself
    /// (`id`, `partitionkey`, `traceparent`, ...).
    #[error("extension {name:?} collides with a standard attribute")]
    ReservedExtensionName {
        /// The refused name.
        name: String,
    },
}

const RESERVED: &[&str] = &[
    "id",
    "source",
    "type",
    "specversion",
    "time",
    "subject",
    "datacontenttype",
    "dataschema",
    "data",
    "partitionkey",
    "traceparent",
    "tracestate",
];

/// The headers and payload that carry `event` on NATS.
pub fn encode(event: &Event) -> Result<(HeaderMap, Bytes), EncodeError> {
    encode_with_room(event, 0)
}

/// [`encode`], with room in the header map for `more` headers the caller adds (a
/// publisher's `traceparent`), so adding them does not grow it.
pub fn encode_with_room(event: &Event, more: usize) -> Result<(HeaderMap, Bytes), EncodeError> {
    let optional = [
        (names::CE_SUBJECT, "subject", &event.subject),
        (
            names::CONTENT_TYPE,
            "datacontenttype",
            &event.datacontenttype,
        ),
        (names::CE_DATASCHEMA, "dataschema", &event.dataschema),
        (names::CE_PARTITIONKEY, "partitionkey", &event.partitionkey),
        (names::TRACEPARENT, "traceparent", &event.traceparent),
        (names::TRACESTATE, "tracestate", &event.tracestate),
    ];
    let required = [
        (names::CE_ID, "id", event.id.as_str()),
        (names::CE_SOURCE, "source", event.source.as_str()),
        (names::CE_TYPE, "type", event.event_type.as_str()),
    ];
    let count = 2 // ce-specversion, in the map from the start, and Nats-Msg-Id
        + required.len()
        + usize::from(event.time.is_some())
        + optional.iter().filter(|(_, _, v)| v.is_some()).count()
        + event.extensions.len()
        + more;
    let mut h = Headers {
        map: header_map::with_spec_version(count),
        // `NATS/1.0\r\n`, `ce-specversion: 1.0\r\n`, the closing `\r\n`.
        len: 10 + line_len(CE_SPECVERSION, SPEC_VERSION) + 2,
    };
    for (header, attribute, value) in required {
        h.put(header, attribute, value, true)?;
    }
    // Both checked above: no control characters, no padding, bounded.
    let dedup = dedup_id(&event.source, &event.id);
    h.put(names::NATS_MSG_ID, "id", &dedup, true)?;
    if let Some(t) = event.time {
        let s = t.format(&Rfc3339).map_err(|_| EncodeError::InvalidValue {
            attribute: "time".into(),
        })?;
        h.put(names::CE_TIME, "time", &s, true)?;
    }
    for (header, attribute, value) in optional {
        if let Some(v) = value {
            h.put(header, attribute, v, false)?;
        }
    }
    for (name, value) in &event.extensions {
        if RESERVED.contains(&name.as_str()) {
            return Err(EncodeError::ReservedExtensionName { name: name.clone() });
        }
        if !is_extension_name(name) {
            return Err(EncodeError::InvalidExtensionName { name: name.clone() });
        }
        let header = HeaderName::from_str(&format!("{CE_PREFIX}{name}"))
            .map_err(|_| EncodeError::InvalidExtensionName { name: name.clone() })?;
        h.put(header, name, value, false)?;
    }
    Ok((h.map, event.data.clone()))
}

/// The header names [`encode`] writes, resolved at compile time (`from_static` at run
/// time matches the name against every async-nats standard header).
mod names {
    use async_nats::header::HeaderName;

    use crate::headers;

    pub(super) const CE_ID: HeaderName = HeaderName::from_static(headers::CE_ID);
    pub(super) const NATS_MSG_ID: HeaderName = HeaderName::from_static(headers::NATS_MSG_ID);
    pub(super) const CE_SOURCE: HeaderName = HeaderName::from_static(headers::CE_SOURCE);
    pub(super) const CE_TYPE: HeaderName = HeaderName::from_static(headers::CE_TYPE);
    pub(super) const CE_TIME: HeaderName = HeaderName::from_static(headers::CE_TIME);
    pub(super) const CE_SUBJECT: HeaderName = HeaderName::from_static(headers::CE_SUBJECT);
    pub(super) const CONTENT_TYPE: HeaderName = HeaderName::from_static(headers::CONTENT_TYPE);
    pub(super) const CE_DATASCHEMA: HeaderName = HeaderName::from_static(headers::CE_DATASCHEMA);
    pub(super) const CE_PARTITIONKEY: HeaderName =
        HeaderName::from_static(headers::CE_PARTITIONKEY);
    pub(super) const TRACEPARENT: HeaderName = HeaderName::from_static(headers::TRACEPARENT);
    pub(super) const TRACESTATE: HeaderName = HeaderName::from_static(headers::TRACESTATE);
}

/// Whether `name` is a valid CloudEvents extension attribute name: 1 to
/// [`MAX_EXTENSION_NAME_LEN`] lowercase ASCII letters or digits.
pub fn is_extension_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_EXTENSION_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// The header map being written and the bytes it takes on the wire so far.
struct Headers {
    map: HeaderMap,
    len: usize,
}

impl Headers {
    /// Checks `value` ([`check_value`]) and the headers' total size, then inserts it.
    fn put(
        &mut self,
        name: HeaderName,
        attribute: &str,
        value: &str,
        required: bool,
    ) -> Result<(), EncodeError> {
        check_value(attribute, value, required)?;
        check_format(attribute, value)?;
        self.len += line_len(name.as_ref(), value);
        if self.len > MAX_HEADER_BYTES {
            return Err(EncodeError::HeadersTooLarge { len: self.len });
        }
        let value = HeaderValue::from_str(value).map_err(|_| EncodeError::InvalidValue {
            attribute: attribute.into(),
        })?;
        self.map.insert(name, value);
        Ok(())
    }
}

/// Bytes of the header line `name: value\r\n`.
fn line_len(name: &str, value: &str) -> usize {
    name.len() + 2 + value.len() + 2
}

/// The one rule for an attribute's value on NATS, in [`encode`] (the SDK's publish and
/// the node's ingress): not empty when `required`, at most its attribute's maximum, no
/// control character, no space or tab at either end (NATS trims them).
pub fn check_value(attribute: &str, value: &str, required: bool) -> Result<(), EncodeError> {
    if value.is_empty() {
        return if required {
            Err(EncodeError::EmptyAttribute {
                attribute: attribute.into(),
            })
        } else {
            Ok(())
        };
    }
    let max = max_len(attribute);
    if value.len() > max {
        return Err(EncodeError::TooLong {
            attribute: attribute.into(),
            len: value.len(),
            max,
        });
    }
    if has_control(value) {
        return Err(EncodeError::InvalidValue {
            attribute: attribute.into(),
        });
    }
    let padded = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
    if padded(value.as_bytes().first()) || padded(value.as_bytes().last()) {
        return Err(EncodeError::Whitespace {
            attribute: attribute.into(),
        });
    }
    Ok(())
}

/// The format CloudEvents gives `attribute`, if any: `dataschema` an absolute URI,
/// `traceparent` a W3C `traceparent`.
pub fn check_format(attribute: &str, value: &str) -> Result<(), EncodeError> {
    let expected = match attribute {
        "dataschema" if !crate::attribute_format::is_absolute_uri(value) => "an absolute URI",
        "traceparent" if !crate::attribute_format::is_traceparent(value) => {
            "a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)"
        }
        _ => return Ok(()),
    };
    Err(EncodeError::InvalidFormat {
        attribute: attribute.into(),
        expected,
        value: value.into(),
    })
}

/// The maximum length of `attribute`'s value.
pub fn max_len(attribute: &str) -> usize {
    match attribute {
        "id" => MAX_ID_LEN,
        "source" => MAX_SOURCE_LEN,
        "subject" => MAX_SUBJECT_LEN,
        _ => MAX_VALUE_LEN,
    }
}

/// Whether `value` has a control character (runs per header of every publish: bytes
/// first, characters only for non-ASCII text).
fn has_control(value: &str) -> bool {
    value.bytes().any(|b| b < 0x20 || b == 0x7f)
        || (!value.is_ascii() && value.chars().any(char::is_control))
}

/// Reads an event from a NATS message's headers and payload. Header names are matched
/// without regard to case; unknown `ce-*` headers become extensions.
pub fn decode(headers: Option<&HeaderMap>, payload: Bytes) -> Result<Event, DecodeError> {
    let headers = headers.ok_or(DecodeError::NoHeaders)?;
    let mut id = None;
    let mut source = None;
    let mut event_type = None;
    let mut specversion = None;
    let mut time = None;
    let mut subject = None;
    let mut datacontenttype = None;
    let mut dataschema = None;
    let mut partitionkey = None;
    let mut traceparent = None;
    let mut tracestate = None;
    let mut extensions = std::collections::BTreeMap::new();
    // Runs once per delivery: nothing is allocated for headers the envelope does not use.
    for (name, values) in headers.iter() {
        let Some(value) = values.first().map(HeaderValue::as_str) else {
            continue;
        };
        let slot = match attribute_of(name.as_ref()) {
            Attribute::Id => &mut id,
            Attribute::Source => &mut source,
            Attribute::Type => &mut event_type,
            Attribute::SpecVersion => &mut specversion,
            Attribute::Time => {
                let t = OffsetDateTime::parse(value, &Rfc3339).map_err(|_| {
                    DecodeError::InvalidTime {
                        value: excerpt(value).into_owned(),
                    }
                })?;
                time = Some(t);
                continue;
            }
            Attribute::Subject => &mut subject,
            Attribute::DataSchema => &mut dataschema,
            Attribute::PartitionKey => &mut partitionkey,
            Attribute::ContentType => &mut datacontenttype,
            Attribute::TraceParent => &mut traceparent,
            Attribute::TraceState => &mut tracestate,
            Attribute::Extension(ext) => {
                extensions.insert(ext.to_ascii_lowercase(), value.to_owned());
                continue;
            }
            Attribute::None => continue,
        };
        *slot = Some(value);
    }
    let id = required(id, "id")?;
    let source = required(source, "source")?;
    let specversion = required(specversion, "specversion")?;
    if specversion != SPEC_VERSION {
        return Err(DecodeError::SpecVersion(excerpt(specversion).into_owned()));
    }
    let event_type = EventType::new(required(event_type, "type")?)?;
    Ok(Event {
        id: id.to_owned(),
        source: source.to_owned(),
        event_type,
        time,
        subject: subject.map(str::to_owned),
        datacontenttype: datacontenttype.map(str::to_owned),
        dataschema: dataschema.map(str::to_owned),
        partitionkey: partitionkey.map(str::to_owned),
        traceparent: traceparent.map(str::to_owned),
        tracestate: tracestate.map(str::to_owned),
        extensions,
        data: payload,
    })
}

/// What a header carries in the envelope.
enum Attribute<'a> {
    Id,
    Source,
    Type,
    SpecVersion,
    Time,
    Subject,
    DataSchema,
    PartitionKey,
    ContentType,
    TraceParent,
    TraceState,
    /// `ce-<name>`: an extension attribute, its name as the header spells it.
    Extension(&'a str),
    /// Not part of the envelope (`Nats-Msg-Id`, a service's own headers).
    None,
}

/// The attribute header `name` carries, its name matched without regard to case (plain
/// clients write `Ce-Id` as often as `ce-id`), without lowercasing it first: that cost
/// an allocation per delivery for `Nats-Msg-Id`, which every bus message has.
fn attribute_of(name: &str) -> Attribute<'_> {
    const CE: [(&str, Attribute<'static>); 8] = [
        (CE_ID, Attribute::Id),
        (CE_SOURCE, Attribute::Source),
        (CE_TYPE, Attribute::Type),
        (CE_SPECVERSION, Attribute::SpecVersion),
        (CE_TIME, Attribute::Time),
        (CE_SUBJECT, Attribute::Subject),
        (CE_DATASCHEMA, Attribute::DataSchema),
        (CE_PARTITIONKEY, Attribute::PartitionKey),
    ];
    let prefix = CE_PREFIX.len();
    if name.len() >= prefix && name.as_bytes()[..prefix].eq_ignore_ascii_case(CE_PREFIX.as_bytes())
    {
        for (header, attribute) in CE {
            if name.eq_ignore_ascii_case(header) {
                return attribute;
            }
        }
        // The prefix is ASCII, so this is a character boundary.
        return Attribute::Extension(name.get(prefix..).unwrap_or_default());
    }
    if name.eq_ignore_ascii_case(CONTENT_TYPE) {
        Attribute::ContentType
    } else if name.eq_ignore_ascii_case(TRACEPARENT) {
        Attribute::TraceParent
    } else if name.eq_ignore_ascii_case(TRACESTATE) {
        Attribute::TraceState
    } else {
        Attribute::None
    }
}

fn required<'a>(value: Option<&'a str>, attribute: &'static str) -> Result<&'a str, DecodeError> {
    match value {
        None => Err(DecodeError::MissingAttribute(attribute)),
        Some("") => Err(DecodeError::EmptyAttribute { attribute }),
        Some(v) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        let t = EventType::new("shop.order.created").ok();
        let Some(t) = t else { panic!("valid type") };
        let mut e = Event::builder(t, "/shop")
            .id("e-1")
            .subject("order/42")
            .partition_key("customer-7")
            .extension("tenant", "acme")
            .data("application/json", &b"{\"n\":1}"[..])
            .build();
        e.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        e.tracestate = Some("congo=t61rcWkgMzE".into());
        e
    }

    #[test]
    fn an_event_survives_the_round_trip() {
        let e = sample();
        let (h, p) = encode(&e).unwrap_or_else(|err| panic!("{err}"));
        let dedup = dedup_id("/shop", "e-1");
        assert_eq!(h.get(NATS_MSG_ID).map(|v| v.as_str()), Some(dedup.as_str()));
        assert_eq!(h.get(CE_ID).map(|v| v.as_str()), Some("e-1"));
        assert_eq!(h.get("ce-tenant").map(|v| v.as_str()), Some("acme"));
        let back = decode(Some(&h), p);
        assert_eq!(back, Ok(e));
    }

    #[test]
    fn given_room_for_more_headers_should_write_the_same_ones() {
        let e = sample();
        let plain = encode(&e).unwrap_or_else(|err| panic!("{err}"));
        for more in [0, 1, 2, 20, 40] {
            let roomy = encode_with_room(&e, more).unwrap_or_else(|err| panic!("{err}"));
            assert_eq!(roomy, plain, "room for {more} more");
        }
        assert_eq!(
            plain.0.get(CE_SPECVERSION).map(|v| v.as_str()),
            Some(SPEC_VERSION)
        );
        // id, Nats-Msg-Id, source, type, specversion, time, subject, content-type,
        // partitionkey, traceparent, tracestate, ce-tenant.
        assert_eq!(plain.0.len(), 12);
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, *v);
        }
        h
    }

    fn check_decode(pairs: &[(&str, &str)], expected: Result<(), DecodeError>) {
        let got = decode(Some(&headers(pairs)), Bytes::new()).map(|_| ());
        assert_eq!(got, expected, "headers {pairs:?}");
    }

    #[test]
    fn decoding_names_what_is_wrong() {
        let ok = [
            ("ce-id", "1"),
            ("ce-source", "/s"),
            ("ce-type", "a.b"),
            ("ce-specversion", "1.0"),
        ];
        check_decode(&ok, Ok(()));
        check_decode(&ok[1..], Err(DecodeError::MissingAttribute("id")));
        check_decode(
            &[ok[0], ok[2], ok[3]],
            Err(DecodeError::MissingAttribute("source")),
        );
        check_decode(&ok[..3], Err(DecodeError::MissingAttribute("specversion")));
        check_decode(
            &[ok[0], ok[1], ok[2], ("ce-specversion", "0.3")],
            Err(DecodeError::SpecVersion("0.3".into())),
        );
        check_decode(
            &[("ce-id", ""), ok[1], ok[2], ok[3]],
            Err(DecodeError::EmptyAttribute { attribute: "id" }),
        );
        check_decode(
            &[ok[0], ok[1], ok[2], ok[3], ("ce-time", "yesterday")],
            Err(DecodeError::InvalidTime {
                value: "yesterday".into(),
            }),
        );
        assert!(matches!(
            decode(
                Some(&headers(&[ok[0], ok[1], ("ce-type", "A.b"), ok[3]])),
                Bytes::new()
            ),
            Err(DecodeError::InvalidType(_))
        ));
        assert_eq!(decode(None, Bytes::new()), Err(DecodeError::NoHeaders));
    }

    #[test]
    fn header_names_match_regardless_of_case() {
        let h = headers(&[
            ("Ce-Id", "1"),
            ("CE-SOURCE", "/s"),
            ("ce-Type", "a.b"),
            ("ce-specversion", "1.0"),
            ("Content-Type", "text/plain"),
            ("Ce-Time", "2026-11-23T23:44:44.5Z"),
            (
                "TraceParent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("CE-Tenant", "acme"),
            ("Nats-Msg-Id", "1"),
            ("X-Other", "y"),
        ]);
        let e = decode(Some(&h), Bytes::from_static(b"hi"));
        let time = OffsetDateTime::parse("2026-11-23T23:44:44.5Z", &Rfc3339).ok();
        let extensions = [("tenant".to_owned(), "acme".to_owned())].into();
        assert_eq!(
            e.map(|e| (
                e.id,
                e.datacontenttype,
                e.time,
                e.traceparent.is_some(),
                e.extensions
            )),
            Ok((
                "1".into(),
                Some("text/plain".into()),
                time,
                true,
                extensions
            ))
        );
    }

    #[test]
    fn encoding_refuses_what_would_corrupt_headers() {
        let mut e = sample();
        e.subject = Some("a\r\nb".into());
        assert_eq!(
            encode(&e).map(|_| ()),
            Err(EncodeError::InvalidValue {
                attribute: "subject".into()
            })
        );
        let mut e = sample();
        e.extensions.insert("Bad-Name".into(), "x".into());
        assert!(matches!(
            encode(&e),
            Err(EncodeError::InvalidExtensionName { .. })
        ));
        let mut e = sample();
        e.extensions.insert("id".into(), "x".into());
        assert!(matches!(
            encode(&e),
            Err(EncodeError::ReservedExtensionName { .. })
        ));
        let mut e = sample();
        e.id.clear();
        assert!(matches!(
            encode(&e),
            Err(EncodeError::EmptyAttribute { .. })
        ));
    }

    /// Encodes `sample()` changed by `edit`; `Ok` if it encodes.
    fn check_encode(edit: impl FnOnce(&mut Event), expected: Result<(), EncodeError>) {
        let mut e = sample();
        edit(&mut e);
        assert_eq!(encode(&e).map(|_| ()), expected, "{e:?}");
    }

    fn ws(attribute: &str) -> Result<(), EncodeError> {
        Err(EncodeError::Whitespace {
            attribute: attribute.into(),
        })
    }

    fn too_long(attribute: &str, len: usize, max: usize) -> Result<(), EncodeError> {
        Err(EncodeError::TooLong {
            attribute: attribute.into(),
            len,
            max,
        })
    }

    #[test]
    fn encoding_refuses_what_nats_would_trim() {
        check_encode(|e| e.id = " ws-1".into(), ws("id"));
        check_encode(|e| e.id = "ws-1 ".into(), ws("id"));
        check_encode(|e| e.id = "   ".into(), ws("id"));
        check_encode(|e| e.source = " /shop".into(), ws("source"));
        check_encode(|e| e.subject = Some("order/42 ".into()), ws("subject"));
        check_encode(|e| e.partitionkey = Some(" k".into()), ws("partitionkey"));
        check_encode(
            |e| {
                e.extensions.insert("tenant".into(), "acme ".into());
            },
            ws("tenant"),
        );
        // A tab is a control character: refused as one.
        check_encode(
            |e| e.id = "\tws-1".into(),
            Err(EncodeError::InvalidValue {
                attribute: "id".into(),
            }),
        );
        // Inner spaces and other Unicode spaces stay as they are.
        check_encode(|e| e.id = "ws 1".into(), Ok(()));
        check_encode(|e| e.source = "/shop\u{3000}".into(), Ok(()));
    }

    #[test]
    fn encoding_refuses_values_over_their_maximum() {
        let n = |len: usize| "x".repeat(len);
        check_encode(|e| e.id = n(MAX_ID_LEN), Ok(()));
        check_encode(
            |e| e.id = n(MAX_ID_LEN + 1),
            too_long("id", MAX_ID_LEN + 1, MAX_ID_LEN),
        );
        check_encode(
            |e| e.id = n(40 * 1024),
            too_long("id", 40 * 1024, MAX_ID_LEN),
        );
        check_encode(
            |e| e.source = n(MAX_SOURCE_LEN + 1),
            too_long("source", MAX_SOURCE_LEN + 1, MAX_SOURCE_LEN),
        );
        check_encode(
            |e| e.subject = Some(n(MAX_SUBJECT_LEN + 1)),
            too_long("subject", MAX_SUBJECT_LEN + 1, MAX_SUBJECT_LEN),
        );
        check_encode(
            |e| {
                e.extensions.insert("tenant".into(), n(MAX_VALUE_LEN));
            },
            Ok(()),
        );
        check_encode(
            |e| {
                e.extensions.insert("tenant".into(), n(MAX_VALUE_LEN + 1));
            },
            too_long("tenant", MAX_VALUE_LEN + 1, MAX_VALUE_LEN),
        );
        let mut e = sample();
        for i in 0..(MAX_HEADER_BYTES / MAX_VALUE_LEN + 1) {
            e.extensions.insert(format!("ext{i}"), n(MAX_VALUE_LEN));
        }
        assert!(matches!(
            encode(&e),
            Err(EncodeError::HeadersTooLarge { len }) if len > MAX_HEADER_BYTES
        ));
    }

    #[test]
    fn the_dedup_id_is_the_digest_of_source_and_id() {
        // printf '/shop\0order-1' | sha256sum
        let known = "ce1-e822c2a8accaf06f6d956254b60f820add4915eadfc1d5682725fc16dfdeb39b";
        assert_eq!(dedup_id("/shop", "order-1"), known);
        assert_ne!(dedup_id("/a", "1"), dedup_id("/b", "1"));
        // The 0 byte keeps the pairs apart.
        assert_ne!(dedup_id("/a", "b1"), dedup_id("/ab", "1"));
    }

    #[test]
    fn an_excerpt_is_short() {
        let check = |value: &str, expected: &str| assert_eq!(excerpt(value), expected);
        check("short", "short");
        check(&"x".repeat(EXCERPT_CHARS), &"x".repeat(EXCERPT_CHARS));
        check(
            &"é".repeat(40 * 1024),
            &format!("{}…", "é".repeat(EXCERPT_CHARS)),
        );
    }
}
