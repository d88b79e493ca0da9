//! CloudEvents structured mode in JSON (`application/cloudevents+json`), as HTTP
//! clients send events and webhooks deliver them, and the batch format
//! (`application/cloudevents-batch+json`, a JSON array of structured events).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::binary_mode::{MAX_EXTENSION_NAME_LEN, excerpt, is_extension_name};
use crate::event::{Event, SPEC_VERSION};
use crate::event_type::{EventType, EventTypeError};

/// Why a JSON document is not a valid structured-mode event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StructuredError {
    /// The document, or an item of a batch, is not a JSON object.
    #[error("an event must be a JSON object")]
    NotAnObject,
    /// A batch is not a JSON array.
    #[error("a batch must be a JSON array of events")]
    NotAnArray,
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

/// Reads one structured-mode event.
pub fn from_json(value: Value) -> Result<Event, StructuredError> {
    let Value::Object(mut map) = value else {
        return Err(StructuredError::NotAnObject);
    };
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
    let data = map.remove("data");
    let bytes = match (data, data_base64) {
        (Some(_), Some(_)) => return Err(StructuredError::BothData),
        (None, Some(b64)) => BASE64
            .decode(b64.as_bytes())
            .map_err(|_| StructuredError::InvalidBase64)?,
        (None, None) | (Some(Value::Null), None) => Vec::new(),
        (Some(data), None) => {
            let ct = datacontenttype.get_or_insert_with(|| "application/json".to_owned());
            match data {
                Value::String(s) if !is_json(ct) => s.into_bytes(),
                other => serde_json::to_vec(&other).map_err(|_| StructuredError::WrongType {
                    attribute: "data".into(),
                    expected: "JSON",
                })?,
            }
        }
    };
    let mut extensions = BTreeMap::new();
    for (name, value) in map {
        if !is_extension_name(&name) {
            return Err(StructuredError::InvalidExtensionName(
                excerpt(&name).into_owned(),
            ));
        }
        let text = match value {
            Value::String(s) => s,
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            _ => {
                return Err(StructuredError::WrongType {
                    attribute: name,
                    expected: "a string, number or boolean",
                });
            }
        };
        extensions.insert(name, text);
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
        data: bytes.into(),
    })
}

/// Reads a batch: a non-empty JSON array of structured-mode events.
pub fn batch_from_json(value: Value) -> Result<Vec<Event>, StructuredError> {
    let Value::Array(items) = value else {
        return Err(StructuredError::NotAnArray);
    };
    if items.is_empty() {
        return Err(StructuredError::EmptyBatch);
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            from_json(v).map_err(|e| StructuredError::InBatch {
                index,
                source: Box::new(e),
            })
        })
        .collect()
}

/// The structured-mode JSON of `event`: JSON data inline as `data`, text as a string,
/// anything else as `data_base64`.
pub fn to_json(event: &Event) -> Value {
    let mut map = Map::new();
    let mut put = |k: &str, v: Option<&str>| {
        if let Some(v) = v {
            map.insert(k.to_owned(), Value::String(v.to_owned()));
        }
    };
    put("specversion", Some(SPEC_VERSION));
    put("id", Some(&event.id));
    put("source", Some(&event.source));
    put("type", Some(event.event_type.as_str()));
    let time = event.time.and_then(|t| t.format(&Rfc3339).ok());
    put("time", time.as_deref());
    put("subject", event.subject.as_deref());
    put("datacontenttype", event.datacontenttype.as_deref());
    put("dataschema", event.dataschema.as_deref());
    put("partitionkey", event.partitionkey.as_deref());
    put("traceparent", event.traceparent.as_deref());
    put("tracestate", event.tracestate.as_deref());
    for (k, v) in &event.extensions {
        put(k, Some(v));
    }
    if !event.data.is_empty() {
        let ct = event
            .datacontenttype
            .as_deref()
            .unwrap_or("application/json");
        let json = if is_json(ct) {
            serde_json::from_slice::<Value>(&event.data).ok()
        } else {
            None
        };
        match json {
            Some(v) => {
                map.insert("data".into(), v);
            }
            None => match std::str::from_utf8(&event.data) {
                Ok(s) if ct.starts_with("text/") => {
                    map.insert("data".into(), Value::String(s.to_owned()));
                }
                _ => {
                    map.insert(
                        "data_base64".into(),
                        Value::String(BASE64.encode(&event.data)),
                    );
                }
            },
        }
    }
    Value::Object(map)
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
    map: &mut Map<String, Value>,
    key: &'static str,
) -> Result<Option<String>, StructuredError> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(StructuredError::WrongType {
            attribute: key.into(),
            expected: "a string",
        }),
    }
}

fn required(map: &mut Map<String, Value>, key: &'static str) -> Result<String, StructuredError> {
    match take_string(map, key)? {
        None => Err(StructuredError::Missing(key)),
        Some(s) if s.is_empty() => Err(StructuredError::Empty(key)),
        Some(s) => Ok(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(input: Value, expected: Result<(), StructuredError>) {
        assert_eq!(from_json(input.clone()).map(|_| ()), expected, "{input}");
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
            with("data_base64", json!("***")),
            Err(StructuredError::InvalidBase64),
        );
        assert!(matches!(
            from_json(with("type", json!("A.b"))),
            Err(StructuredError::InvalidType(_))
        ));
    }

    #[test]
    fn json_data_round_trips_inline_and_binary_as_base64() {
        let e = from_json(with("data", json!({"n": [1, 2]}))).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(&e.data[..], br#"{"n":[1,2]}"#);
        assert_eq!(to_json(&e)["data"], json!({"n": [1, 2]}));

        let mut b = with("data_base64", json!("AAEC"));
        b["datacontenttype"] = json!("application/octet-stream");
        let e = from_json(b).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&e.data[..], &[0, 1, 2]);
        assert_eq!(to_json(&e)["data_base64"], json!("AAEC"));

        let mut t = with("data", json!("hello"));
        t["datacontenttype"] = json!("text/plain");
        let e = from_json(t).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&e.data[..], b"hello");
        assert_eq!(to_json(&e)["data"], json!("hello"));
    }

    #[test]
    fn batches_name_the_bad_event() {
        assert_eq!(
            batch_from_json(json!([])).map(|_| ()),
            Err(StructuredError::EmptyBatch)
        );
        let err = batch_from_json(json!([base(), with("id", Value::Null)])).err();
        assert_eq!(
            err,
            Some(StructuredError::InBatch {
                index: 1,
                source: Box::new(StructuredError::Missing("id"))
            })
        );
        assert_eq!(
            batch_from_json(json!([base(), base()])).map(|v| v.len()),
            Ok(2)
        );
    }
}
