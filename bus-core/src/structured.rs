//! CloudEvents structured mode in JSON (`application/cloudevents+json`), as HTTP
//! clients send events and webhooks deliver them, and the batch format
//! (`application/cloudevents-batch+json`, a JSON array of structured events).
//!
//! JSON `data` is kept as the exact text it was sent in (numbers, key order, duplicate
//! keys, escapes, whitespace inside it): the envelope is read member by member with each
//! value as its raw text ([`RawValue`]), and `data` is never turned into a
//! `serde_json::Value`, which would round big numbers, rewrite `1e2` as `100.0`, sort
//! keys and merge duplicates. The encoder ([`to_json`]) writes JSON data back verbatim.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer as _};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::binary_mode::{MAX_EXTENSION_NAME_LEN, excerpt, is_extension_name};
use crate::event::{Event, SPEC_VERSION};
use crate::event_type::{EventType, EventTypeError};

/// Why a JSON document is not a valid structured-mode event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StructuredError {
    /// The document is not JSON; holds the parser's message (with line and column).
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// The document, or an item of a batch, is not a JSON object.
    #[error("an event must be a JSON object")]
    NotAnObject,
    /// A batch is not a JSON array.
    #[error("a batch must be a JSON array of events")]
    NotAnArray,
    /// A member of the event appears more than once; holds its name.
    #[error("attribute {0:?} appears more than once")]
    DuplicateAttribute(String),
    /// A required attribute is absent or `null`; holds its name.
    #[error("required attribute {0:?} is missing")]
    Missing(&'static str),
    /// An attribute, an extension or `data` has a JSON type it cannot have.
    #[error("attribute {attribute:?} must be {expected}")]
    WrongType {
        /// The attribute's name.
        attribute: String,
        /// What it must be (`a string`, ...).
        expected: &'static str,
    },
    /// A required attribute is the empty string; holds its name.
    #[error("attribute {0:?} is empty")]
    Empty(&'static str),
    /// `specversion` is not [`SPEC_VERSION`]; holds (an excerpt of) the value found.
    #[error("unsupported specversion {0:?} (only \"1.0\")")]
    SpecVersion(String),
    /// `type` is not a valid event type name.
    #[error("invalid type: {0}")]
    InvalidType(#[from] EventTypeError),
    /// `time` is not an RFC 3339 timestamp; holds (an excerpt of) the value found.
    #[error("invalid time {0:?}: not RFC 3339")]
    InvalidTime(String),
    /// `data` is JSON that consumers cannot read back (nested deeper than 128 levels, a
    /// lone UTF-16 surrogate in a string, a number beyond `f64`'s range such as
    /// `1e400`); holds the parser's message.
    #[error("data is not readable JSON: {0}")]
    InvalidData(String),
    /// `data_base64` is not valid standard base64.
    #[error("data_base64 is not valid base64")]
    InvalidBase64,
    /// The event has both `data` and `data_base64`.
    #[error("both data and data_base64 are present")]
    BothData,
    /// A member that is not a standard attribute has a name that is not a valid extension
    /// name (1 to [`MAX_EXTENSION_NAME_LEN`] lowercase letters or digits); holds (an excerpt of) the name.
    #[error(
        "extension name {0:?} is invalid: use 1 to {MAX_EXTENSION_NAME_LEN} lowercase letters or digits"
    )]
    InvalidExtensionName(String),
    /// An event of a batch is invalid.
    #[error("event {index} of the batch: {source}")]
    InBatch {
        /// Position of the event in the batch, from 0.
        index: usize,
        /// What is wrong with it.
        source: Box<StructuredError>,
    },
    /// A batch is an empty array.
    #[error("the batch is empty")]
    EmptyBatch,
}

/// Reads one structured-mode event from the request body `body`. JSON `data` becomes
/// the event's data as the very bytes of `body` it was sent as (a slice of `body`, not a
/// copy); a string `data` with a non-JSON `datacontenttype` becomes the string's text.
pub fn from_json(body: &Bytes) -> Result<Event, StructuredError> {
    match serde_json::from_slice::<Doc<'_>>(body) {
        Ok(Doc::Object(members)) => from_members(body, members),
        Ok(_) => Err(StructuredError::NotAnObject),
        Err(e) => Err(StructuredError::Malformed(e.to_string())),
    }
}

/// Reads a batch: a non-empty JSON array of structured-mode events, each read as by
/// [`from_json`].
pub fn batch_from_json(body: &Bytes) -> Result<Vec<Event>, StructuredError> {
    let items = match serde_json::from_slice::<Doc<'_>>(body) {
        Ok(Doc::Array(items)) => items,
        Ok(_) => return Err(StructuredError::NotAnArray),
        Err(e) => return Err(StructuredError::Malformed(e.to_string())),
    };
    if items.is_empty() {
        return Err(StructuredError::EmptyBatch);
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let event = match serde_json::from_str::<Doc<'_>>(item.get()) {
                Ok(Doc::Object(members)) => from_members(body, members),
                Ok(_) => Err(StructuredError::NotAnObject),
                Err(e) => Err(StructuredError::Malformed(e.to_string())),
            };
            event.map_err(|e| StructuredError::InBatch {
                index,
                source: Box::new(e),
            })
        })
        .collect()
}

/// A JSON document as the envelope parser sees it: an object's members or an array's
/// items, each as its raw text, or something else.
enum Doc<'a> {
    Object(Vec<(String, &'a RawValue)>),
    Array(Vec<&'a RawValue>),
    Other,
}

impl<'de> Deserialize<'de> for Doc<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DocVisitor)
    }
}

struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Doc<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON document")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            members.push((name, map.next_value::<&'de RawValue>()?));
        }
        Ok(Doc::Object(members))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            items.push(item);
        }
        Ok(Doc::Array(items))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Doc::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Doc::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Doc::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Doc::Other)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Doc::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Doc::Other)
    }
}

/// JSON as a `serde_json::Value` would take it (at most 128 levels deep, no lone UTF-16
/// surrogate in a string, no number beyond `f64`'s range such as `1e400`), read without
/// building anything.
struct Readable;

impl<'de> Deserialize<'de> for Readable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ReadableVisitor)
    }
}

struct ReadableVisitor;

impl<'de> Visitor<'de> for ReadableVisitor {
    type Value = Readable;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<Readable, Readable>()?.is_some() {}
        Ok(Readable)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Readable>()?.is_some() {}
        Ok(Readable)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Readable)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Readable)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Readable)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Readable)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Readable)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Readable)
    }
}

fn from_members(body: &Bytes, members: Vec<(String, &RawValue)>) -> Result<Event, StructuredError> {
    let mut map = BTreeMap::new();
    for (name, value) in members {
        match map.entry(name) {
            Entry::Occupied(e) => return Err(StructuredError::DuplicateAttribute(e.key().clone())),
            Entry::Vacant(e) => {
                e.insert(value);
            }
        }
    }
    let specversion =
        take_string(&mut map, "specversion")?.ok_or(StructuredError::Missing("specversion"))?;
    if specversion != SPEC_VERSION {
        return Err(StructuredError::SpecVersion(
            excerpt(&specversion).into_owned(),
        ));
    }
    let id = required(&mut map, "id")?;
    let source = required(&mut map, "source")?;
    let event_type = EventType::new(required(&mut map, "type")?)?;
    let time = match take_string(&mut map, "time")? {
        Some(t) => Some(
            OffsetDateTime::parse(&t, &Rfc3339)
                .map_err(|_| StructuredError::InvalidTime(excerpt(&t).into_owned()))?,
        ),
        None => None,
    };
    let subject = take_string(&mut map, "subject")?;
    let mut datacontenttype = take_string(&mut map, "datacontenttype")?;
    let dataschema = take_string(&mut map, "dataschema")?;
    let partitionkey = take_string(&mut map, "partitionkey")?;
    let traceparent = take_string(&mut map, "traceparent")?;
    let tracestate = take_string(&mut map, "tracestate")?;
    let data_base64 = take_string(&mut map, "data_base64")?;
    let data = match (map.remove("data"), data_base64) {
        (Some(_), Some(_)) => return Err(StructuredError::BothData),
        (None, Some(b64)) => BASE64
            .decode(b64.as_bytes())
            .map_err(|_| StructuredError::InvalidBase64)?
            .into(),
        (None, None) => Bytes::new(),
        (Some(raw), None) => {
            let text = raw.get();
            // Only what consumers can parse back, as when data went through a `Value`:
            // the raw scan checks the syntax, not the depth or lone surrogates.
            serde_json::from_str::<Readable>(text)
                .map_err(|e| StructuredError::InvalidData(e.to_string()))?;
            let ct = datacontenttype.get_or_insert_with(|| "application/json".to_owned());
            if !is_json(ct) && text.starts_with('"') {
                let s: String = serde_json::from_str(text)
                    .map_err(|e| StructuredError::InvalidData(e.to_string()))?;
                s.into()
            } else {
                slice_of(body, text)
            }
        }
    };
    let mut extensions = BTreeMap::new();
    for (name, raw) in map {
        if !is_extension_name(&name) {
            return Err(StructuredError::InvalidExtensionName(
                excerpt(&name).into_owned(),
            ));
        }
        let text = raw.get();
        let value = match text.as_bytes().first() {
            Some(b'"') => serde_json::from_str::<String>(text).ok(),
            // A number as it was written (`1e2` stays `1e2`), `true`, `false`.
            Some(b't' | b'f' | b'-' | b'0'..=b'9') => Some(text.to_owned()),
            _ => None,
        };
        let Some(value) = value else {
            return Err(StructuredError::WrongType {
                attribute: name,
                expected: "a string, number or boolean",
            });
        };
        extensions.insert(name, value);
    }
    Ok(Event {
        id,
        source,
        event_type,
        time,
        subject,
        datacontenttype,
        dataschema,
        partitionkey,
        traceparent,
        tracestate,
        extensions,
        data,
    })
}

/// `part`, a piece of `body`'s text, as a slice of `body` (no copy); a copy should it
/// ever not lie within `body`.
fn slice_of(body: &Bytes, part: &str) -> Bytes {
    let start = (part.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    if start <= body.len() && part.len() <= body.len() - start {
        body.slice(start..start + part.len())
    } else {
        Bytes::copy_from_slice(part.as_bytes())
    }
}

/// The structured-mode JSON of `event`: JSON data inline as `data`, verbatim (its bytes
/// are the `data` member's text, not a re-serialization), text as a string, anything
/// else (and data that is not valid JSON despite a JSON content type) as `data_base64`.
pub fn to_json(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + event.data.len() * 4 / 3);
    // Writing into a `Vec` cannot fail, and every value here is a string or raw JSON
    // checked just before, so an error is impossible; an empty result would show it.
    if write_json(&mut serde_json::Serializer::new(&mut out), event).is_err() {
        out.clear();
    }
    out
}

fn write_json(
    ser: &mut serde_json::Serializer<&mut Vec<u8>>,
    event: &Event,
) -> Result<(), serde_json::Error> {
    let mut map = ser.serialize_map(None)?;
    map.serialize_entry("specversion", SPEC_VERSION)?;
    map.serialize_entry("id", &event.id)?;
    map.serialize_entry("source", &event.source)?;
    map.serialize_entry("type", event.event_type.as_str())?;
    if let Some(t) = event.time.and_then(|t| t.format(&Rfc3339).ok()) {
        map.serialize_entry("time", &t)?;
    }
    let optional = [
        ("subject", &event.subject),
        ("datacontenttype", &event.datacontenttype),
        ("dataschema", &event.dataschema),
        ("partitionkey", &event.partitionkey),
        ("traceparent", &event.traceparent),
        ("tracestate", &event.tracestate),
    ];
    for (name, value) in optional {
        if let Some(v) = value {
            map.serialize_entry(name, v)?;
        }
    }
    for (k, v) in &event.extensions {
        map.serialize_entry(k, v)?;
    }
    if !event.data.is_empty() {
        let ct = event
            .datacontenttype
            .as_deref()
            .unwrap_or("application/json");
        let raw = if is_json(ct) {
            serde_json::from_slice::<&RawValue>(&event.data).ok()
        } else {
            None
        };
        match (raw, std::str::from_utf8(&event.data)) {
            (Some(raw), _) => map.serialize_entry("data", raw)?,
            (None, Ok(text)) if ct.starts_with("text/") => map.serialize_entry("data", text)?,
            _ => map.serialize_entry("data_base64", &BASE64.encode(&event.data))?,
        }
    }
    map.end()
}

/// Whether a media type is JSON (`application/json`, `application/x+json`, with parameters).
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn take_string(
    map: &mut BTreeMap<String, &RawValue>,
    key: &'static str,
) -> Result<Option<String>, StructuredError> {
    match map.remove(key) {
        None => Ok(None),
        Some(raw) => serde_json::from_str::<Option<String>>(raw.get()).map_err(|_| {
            StructuredError::WrongType {
                attribute: key.into(),
                expected: "a string",
            }
        }),
    }
}

fn required(
    map: &mut BTreeMap<String, &RawValue>,
    key: &'static str,
) -> Result<String, StructuredError> {
    match take_string(map, key)? {
        None => Err(StructuredError::Missing(key)),
        Some(s) if s.is_empty() => Err(StructuredError::Empty(key)),
        Some(s) => Ok(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse(doc: &Value) -> Result<Event, StructuredError> {
        from_json(&Bytes::from(doc.to_string()))
    }

    fn check(input: Value, expected: Result<(), StructuredError>) {
        assert_eq!(parse(&input).map(|_| ()), expected, "{input}");
    }

    fn base() -> Value {
        json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "a.b"})
    }

    fn with(k: &str, v: Value) -> Value {
        let mut b = base();
        if let Value::Object(m) = &mut b {
            if v.is_null() {
                m.remove(k);
            } else {
                m.insert(k.into(), v);
            }
        }
        b
    }

    /// A structured event whose `data` member is the text `data`.
    fn envelope(id: &str, data: &str) -> String {
        format!(r#"{{"specversion":"1.0","id":"{id}","source":"/s","type":"a.b","data":{data}}}"#)
    }

    fn event(text: &str) -> Event {
        from_json(&Bytes::copy_from_slice(text.as_bytes()))
            .unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// JSON data that going through a `serde_json::Value` would change.
    const DATA: &[(&str, &str)] = &[
        ("big integer", r#"{"n": 12345678901234567890123}"#),
        ("big integer alone", "12345678901234567890123"),
        ("exponent", "1e2"),
        ("exponents", r#"{"x": 1E+2, "y": 0.1e-7, "z": -1e-400}"#),
        ("long decimal", "3.14159265358979323846"),
        ("negative zero", "[-0, -0.0, 0.0]"),
        ("key order", r#"{"z": 1, "a": 2, "m": 3}"#),
        ("duplicate keys", r#"{"a": 1, "a": 2}"#),
        ("nested duplicate keys", r#"[{"k": {"x": 1, "x": [2]}}]"#),
        (
            "nested arrays and objects",
            r#"{"a": [1, [2, {"b": [3, {"c": {}}]}], []], "d": {"e": {"f": null}}}"#,
        ),
        (
            "escapes and unicode",
            r#"{"s": "tab\t quote\" back\\ \u00e9 é 😀 \ud83d\ude00 \/ \n", "\u006b": 1}"#,
        ),
        ("string", r#""\u0041BC""#),
        ("null", "null"),
        ("true", "true"),
        ("empty object", "{}"),
        ("empty array", "[]"),
        ("whitespace inside", "{ \"a\" :\n\t[ 1 ,2 ] }"),
    ];

    #[test]
    fn json_data_is_kept_as_the_exact_text_sent() {
        for (name, data) in DATA {
            let e = event(&envelope("1", data));
            assert_eq!(
                std::str::from_utf8(&e.data),
                Ok(*data),
                "{name}: data bytes are the text sent"
            );
            assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
            // Around the value, whitespace is the envelope's, not data's.
            let spaced = envelope("1", &format!(" \n {data}\t "));
            assert_eq!(
                std::str::from_utf8(&event(&spaced).data),
                Ok(*data),
                "{name}"
            );
        }
    }

    #[test]
    fn batch_data_is_kept_as_the_exact_text_sent() {
        let items: Vec<String> = DATA
            .iter()
            .enumerate()
            .map(|(i, (_, data))| envelope(&i.to_string(), data))
            .collect();
        let body = Bytes::from(format!("[ {} ]", items.join(" ,\n")));
        let events = batch_from_json(&body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(events.len(), DATA.len());
        for (e, (name, data)) in events.iter().zip(DATA) {
            assert_eq!(std::str::from_utf8(&e.data), Ok(*data), "{name}");
        }
    }

    #[test]
    fn json_data_is_written_back_verbatim() {
        for (name, data) in DATA {
            let e = event(&envelope("1", data));
            let out = to_json(&e);
            let text = String::from_utf8_lossy(&out);
            assert!(
                text.contains(&format!(r#""data":{data}"#)),
                "{name}: {text}"
            );
            let back = event(&text);
            assert_eq!(back.data, e.data, "{name}");
            assert_eq!(back.datacontenttype, e.datacontenttype, "{name}");
        }
    }

    #[test]
    fn a_duplicate_attribute_is_refused_by_name() {
        let cases = [
            (
                r#"{"specversion":"1.0","id":"1","id":"2","source":"/s","type":"a.b"}"#,
                "id",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"a.b","data":1,"data":2}"#,
                "data",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"a.b","ext":1,"ext":1}"#,
                "ext",
            ),
            // The same name, once escaped.
            (
                r#"{"specversion":"1.0","id":"1","i\u0064":"2","source":"/s","type":"a.b"}"#,
                "id",
            ),
        ];
        for (doc, name) in cases {
            let body = Bytes::from(doc);
            assert_eq!(
                from_json(&body).map(|_| ()),
                Err(StructuredError::DuplicateAttribute(name.into())),
                "{doc}"
            );
            let batch = Bytes::from(format!("[{}, {doc}]", envelope("0", "1")));
            assert_eq!(
                batch_from_json(&batch).map(|_| ()),
                Err(StructuredError::InBatch {
                    index: 1,
                    source: Box::new(StructuredError::DuplicateAttribute(name.into()))
                }),
                "{doc}"
            );
        }
    }

    #[test]
    fn documents_that_are_not_events_are_told_apart() {
        let malformed = |r: Result<Event, StructuredError>| matches!(r, Err(StructuredError::Malformed(m)) if m.contains("line 1"));
        assert!(malformed(from_json(&Bytes::from_static(
            b"{\"specversion\": "
        ))));
        assert!(malformed(from_json(&Bytes::from_static(b"{} trailing"))));
        for doc in ["[1, 2]", "1", "\"x\"", "null", "true", "-1.5"] {
            assert_eq!(
                from_json(&Bytes::from(doc)).map(|_| ()),
                Err(StructuredError::NotAnObject),
                "{doc}"
            );
        }
        assert_eq!(
            batch_from_json(&Bytes::from_static(b"{}")).map(|_| ()),
            Err(StructuredError::NotAnArray)
        );
        assert_eq!(
            batch_from_json(&Bytes::from_static(b"[1]")).map(|_| ()),
            Err(StructuredError::InBatch {
                index: 0,
                source: Box::new(StructuredError::NotAnObject)
            })
        );
        // Deeper than consumers' parsers go, as before: refused, not stored.
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(
            from_json(&Bytes::from(envelope("1", &deep))),
            Err(StructuredError::InvalidData(_))
        ));
        for unreadable in [r#""\ud800""#, "1e400", r#"{"n": [-1e400]}"#] {
            assert!(
                matches!(
                    from_json(&Bytes::from(envelope("1", unreadable))),
                    Err(StructuredError::InvalidData(_))
                ),
                "{unreadable}"
            );
        }
    }

    #[test]
    fn attributes_are_checked_and_named() {
        check(base(), Ok(()));
        check(json!([1]), Err(StructuredError::NotAnObject));
        check(with("id", Value::Null), Err(StructuredError::Missing("id")));
        check(
            with("source", json!("")),
            Err(StructuredError::Empty("source")),
        );
        check(
            with("specversion", json!("0.3")),
            Err(StructuredError::SpecVersion("0.3".into())),
        );
        check(
            with("id", json!(5)),
            Err(StructuredError::WrongType {
                attribute: "id".into(),
                expected: "a string",
            }),
        );
        check(
            with("time", json!("noon")),
            Err(StructuredError::InvalidTime("noon".into())),
        );
        check(
            with("Bad", json!("x")),
            Err(StructuredError::InvalidExtensionName("Bad".into())),
        );
        check(
            with("ext", json!({"x": 1})),
            Err(StructuredError::WrongType {
                attribute: "ext".into(),
                expected: "a string, number or boolean",
            }),
        );
        check(
            with("data_base64", json!("***")),
            Err(StructuredError::InvalidBase64),
        );
        let mut both = with("data_base64", json!("AAEC"));
        both["data"] = json!(1);
        check(both, Err(StructuredError::BothData));
        assert!(matches!(
            parse(&with("type", json!("A.b"))),
            Err(StructuredError::InvalidType(_))
        ));
        // A null attribute is an absent one.
        let e = parse(
            &json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "a.b",
            "subject": null}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.subject, None);
    }

    #[test]
    fn extensions_keep_their_text() {
        let doc = r#"{"specversion":"1.0","id":"1","source":"/s","type":"a.b",
            "big":12345678901234567890123,"exp":1e2,"flag":true,"name":"caf\u00e9"}"#;
        let e = event(doc);
        let ext = |k: &str| e.extensions.get(k).map(String::as_str);
        assert_eq!(ext("big"), Some("12345678901234567890123"));
        assert_eq!(ext("exp"), Some("1e2"));
        assert_eq!(ext("flag"), Some("true"));
        assert_eq!(ext("name"), Some("café"));
    }

    #[test]
    fn json_data_round_trips_inline_and_binary_as_base64() {
        let e = event(&envelope("1", r#"{"n": [1, 2]}"#));
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(&e.data[..], br#"{"n": [1, 2]}"#);
        let out: Value = serde_json::from_slice(&to_json(&e)).unwrap_or_default();
        assert_eq!(out["data"], json!({"n": [1, 2]}));

        let mut b = with("data_base64", json!("AAEC"));
        b["datacontenttype"] = json!("application/octet-stream");
        let e = parse(&b).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&e.data[..], &[0, 1, 2]);
        let out: Value = serde_json::from_slice(&to_json(&e)).unwrap_or_default();
        assert_eq!(out["data_base64"], json!("AAEC"));

        let mut t = with("data", json!("h\u{e9}llo \"x\""));
        t["datacontenttype"] = json!("text/plain");
        let e = parse(&t).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&e.data[..], "h\u{e9}llo \"x\"".as_bytes());
        let out: Value = serde_json::from_slice(&to_json(&e)).unwrap_or_default();
        assert_eq!(out["data"], json!("h\u{e9}llo \"x\""));

        // JSON content type, bytes that are not JSON: base64, never a broken document.
        let mut bad = e.clone();
        bad.datacontenttype = Some("application/json".into());
        bad.data = Bytes::from_static(b"{not json");
        let out: Value = serde_json::from_slice(&to_json(&bad)).unwrap_or_default();
        assert_eq!(out["data_base64"], json!(BASE64.encode(b"{not json")));
        assert_eq!(out.get("data"), None);
    }

    #[test]
    fn data_is_a_slice_of_the_body() {
        let body = Bytes::from(envelope("1", r#"{"big": 1e300}"#));
        let e = from_json(&body).unwrap_or_else(|e| panic!("{e}"));
        let start = e.data.as_ptr() as usize - body.as_ptr() as usize;
        assert_eq!(&body[start..start + e.data.len()], &e.data[..]);
    }

    #[test]
    fn batches_name_the_bad_event() {
        let batch = |v: Value| batch_from_json(&Bytes::from(v.to_string()));
        assert_eq!(
            batch(json!([])).map(|_| ()),
            Err(StructuredError::EmptyBatch)
        );
        assert_eq!(
            batch(json!([base(), with("id", Value::Null)])).err(),
            Some(StructuredError::InBatch {
                index: 1,
                source: Box::new(StructuredError::Missing("id"))
            })
        );
        assert_eq!(batch(json!([base(), base()])).map(|v| v.len()), Ok(2));
    }
}

#[cfg(test)]
mod round_trip {
    //! Generated JSON data, in every notation and spacing, through structured parsing
    //! and back through the encoder: always the same bytes.

    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::select;
    use serde_json::Value;

    fn ws() -> impl Strategy<Value = &'static str> {
        select(vec!["", "", "", " ", "\n", "\t ", "\r\n  "])
    }

    /// A JSON number as a person or another library might write it; within `f64`'s
    /// range (at most 30 digits, exponents below 100), which is what the bus accepts.
    fn number() -> impl Strategy<Value = String> {
        let digits = |n| vec(0u8..10, 1..n).prop_map(|d| d.iter().map(u8::to_string).collect());
        (
            any::<bool>(),
            digits(30),
            proptest::option::of(digits(25)),
            proptest::option::of((select(vec!["e", "E"]), select(vec!["", "+", "-"]), 0u8..100)),
        )
            .prop_map(
                |(negative, int, fraction, exponent): (bool, String, Option<String>, _)| {
                    let int = match int.strip_prefix('0') {
                        Some(rest) if !rest.is_empty() => format!("1{rest}"),
                        _ => int,
                    };
                    let mut n = format!("{}{int}", if negative { "-" } else { "" });
                    if let Some(f) = fraction {
                        n.push('.');
                        n.push_str(&f);
                    }
                    if let Some((e, sign, x)) = exponent {
                        n.push_str(&format!("{e}{sign}{x}"));
                    }
                    n
                },
            )
    }

    fn string() -> impl Strategy<Value = String> {
        let pieces = vec![
            "a",
            "Z",
            "0",
            " ",
            "é",
            "😀",
            "\\n",
            "\\\"",
            "\\\\",
            "\\/",
            "\\u00e9",
            "\\u00E9",
            "\\ud83d\\ude00",
            "\\u0000",
            "\\t",
            "\\b",
            "\\f",
            "\\r",
        ];
        vec(select(pieces), 0..8).prop_map(|p| format!("\"{}\"", p.concat()))
    }

    /// Object keys from a small set, so that duplicates (some only once unescaped) come up.
    fn key() -> impl Strategy<Value = &'static str> {
        select(vec!["\"a\"", "\"b\"", "\"\\u0061\"", "\"\"", "\"k\\n\""])
    }

    fn json() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            number(),
            string(),
            select(vec!["true", "false", "null"]).prop_map(String::from),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                vec((ws(), inner.clone(), ws()), 0..6).prop_map(|items| {
                    let items: Vec<String> =
                        items.iter().map(|(a, v, b)| format!("{a}{v}{b}")).collect();
                    format!("[{}]", items.join(","))
                }),
                vec((ws(), key(), ws(), ws(), inner, ws()), 0..6).prop_map(|members| {
                    let members: Vec<String> = members
                        .iter()
                        .map(|(a, k, b, c, v, d)| format!("{a}{k}{b}:{c}{v}{d}"))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    fn envelope(id: usize, pre: &str, data: &str, post: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"/s","type":"a.b","data":{pre}{data}{post}}}"#
        )
    }

    proptest! {
        #[test]
        fn json_data_comes_out_as_the_bytes_that_went_in(
            data in json(),
            pre in ws(),
            post in ws(),
        ) {
            let body = Bytes::from(envelope(1, pre, &data, post));
            let e = from_json(&body).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            prop_assert_eq!(std::str::from_utf8(&e.data).ok(), Some(data.as_str()));
            // The encoder writes it back verbatim, so a second parse gives it again.
            let again = from_json(&Bytes::from(to_json(&e)))
                .map_err(|e| TestCaseError::fail(format!("{e}")))?;
            prop_assert_eq!(&again.data, &e.data);
            // And it is the same JSON as sent, to a parser that reads both.
            prop_assert_eq!(
                serde_json::from_slice::<Value>(&e.data).ok(),
                serde_json::from_str::<Value>(&data).ok()
            );
        }

        #[test]
        fn batch_data_comes_out_as_the_bytes_that_went_in(
            items in vec((ws(), json(), ws()), 1..5),
        ) {
            let events: Vec<String> = items
                .iter()
                .enumerate()
                .map(|(i, (pre, data, post))| envelope(i, pre, data, post))
                .collect();
            let body = Bytes::from(format!("[{}]", events.join(",")));
            let parsed = batch_from_json(&body).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            prop_assert_eq!(parsed.len(), items.len());
            for (e, (_, data, _)) in parsed.iter().zip(&items) {
                prop_assert_eq!(std::str::from_utf8(&e.data).ok(), Some(data.as_str()));
            }
        }
    }
}
