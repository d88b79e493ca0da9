//! Every attribute and every data byte survives the trip: generated events (proptest
//! strategies: odd ids and sources within the limits, JSON data of every shape with big
//! integers, exponents, duplicate keys and escapes, binary data, extensions) are sent
//! five ways (HTTP structured, binary and batch, the SDK's publish, a plain NATS client
//! with `ce-*` headers) and read back two ways (the SDK, and a plain client reading the
//! stream's headers and payloads): each read equals what was sent.
//!
//! The strategies run on proptest's deterministic runner, so a failure names an event
//! that reproduces on every run; there is no shrinking across a live node.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bus_core::{Event, EventType};
use bus_sdk::{EventMeta, HandlerError};
use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, wait_until};
use futures::StreamExt;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Events generated per way of sending.
const PER_WAY: usize = 30;
/// Events per batch request.
const BATCH: usize = 8;

/// What one event's data is.
#[derive(Debug, Clone)]
enum Data {
    /// JSON text, stored and delivered as this exact text.
    Json(String),
    /// Bytes with a non-JSON content type.
    Bytes(Vec<u8>),
}

/// What a plain client read of one stored message: its headers (lowercase names) and
/// payload, by (source, id).
type PlainReads = HashMap<(String, String), (HashMap<String, String>, Vec<u8>)>;

/// One generated event, as sent.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    source: String,
    event_type: String,
    subject: Option<String>,
    time: Option<OffsetDateTime>,
    dataschema: Option<String>,
    extensions: BTreeMap<String, String>,
    data: Data,
}

impl Sent {
    fn content_type(&self) -> &'static str {
        match self.data {
            Data::Json(_) => "application/json",
            Data::Bytes(_) => "application/octet-stream",
        }
    }

    fn data_bytes(&self) -> &[u8] {
        match &self.data {
            Data::Json(t) => t.as_bytes(),
            Data::Bytes(b) => b,
        }
    }
}

/// A value with no control character and no whitespace at either end; `ascii` keeps it
/// to printable ASCII (binary mode over HTTP carries attributes as HTTP headers).
fn value(ascii: bool, max: usize) -> BoxedStrategy<String> {
    let middle = if ascii {
        format!("[ -~]{{0,{max}}}")
    } else {
        format!("[ -~é😀ß漢]{{0,{max}}}")
    };
    let end = if ascii { "[!-~]" } else { "[!-~é😀ß漢]" };
    (
        proptest::string::string_regex(end).unwrap_or_else(|e| panic!("{e}")),
        proptest::string::string_regex(&middle).unwrap_or_else(|e| panic!("{e}")),
        proptest::option::of(proptest::string::string_regex(end).unwrap_or_else(|e| panic!("{e}"))),
    )
        .prop_map(|(a, m, z)| match z {
            Some(z) => format!("{a}{m}{z}"),
            None => a,
        })
        .boxed()
}

/// JSON text: numbers that a parse into a double would change, strings with escapes,
/// nested arrays and objects with duplicate keys, odd whitespace.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        proptest::string::string_regex("-?[1-9][0-9]{0,28}").unwrap_or_else(|e| panic!("{e}")),
        proptest::string::string_regex("-?[0-9]\\.[0-9]{1,22}([eE][+-]?[0-9]{1,2})?")
            .unwrap_or_else(|e| panic!("{e}")),
        proptest::string::string_regex("-?[1-9][eE][+-]?[0-9]{1,2}")
            .unwrap_or_else(|e| panic!("{e}")),
        proptest::string::string_regex(r#""([a-zé😀 ]|\\n|\\"|\\\\|\\u00e9|\\/){0,8}""#)
            .unwrap_or_else(|e| panic!("{e}")),
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("null".to_owned()),
        Just("-0".to_owned()),
    ];
    let ws = || proptest::string::string_regex("[ \n\t]{0,2}").unwrap_or_else(|e| panic!("{e}"));
    leaf.prop_recursive(3, 24, 4, move |inner| {
        prop_oneof![
            proptest::collection::vec((ws(), inner.clone()), 0..4).prop_map(|items| {
                let parts: Vec<String> =
                    items.into_iter().map(|(w, v)| format!("{w}{v}")).collect();
                format!("[{}]", parts.join(","))
            }),
            proptest::collection::vec(
                (
                    proptest::string::string_regex("[a-c]").unwrap_or_else(|e| panic!("{e}")),
                    ws(),
                    inner
                ),
                0..4
            )
            .prop_map(|members| {
                let parts: Vec<String> = members
                    .into_iter()
                    .map(|(k, w, v)| format!("\"{k}\":{w}{v}"))
                    .collect();
                format!("{{{}}}", parts.join(","))
            }),
        ]
    })
}

fn sent(ascii: bool) -> impl Strategy<Value = Sent> {
    let source = prop_oneof![
        proptest::string::string_regex("/[a-z0-9/._~-]{0,20}").unwrap_or_else(|e| panic!("{e}")),
        proptest::string::string_regex("urn:[a-z]{1,5}:[a-z0-9:]{1,10}")
            .unwrap_or_else(|e| panic!("{e}")),
        value(ascii, 30),
    ];
    let event_type =
        proptest::string::string_regex("[a-z][a-z0-9]{0,6}(\\.[a-z][a-z0-9_-]{0,6}){1,3}")
            .unwrap_or_else(|e| panic!("{e}"));
    let time = proptest::option::of((0i64..4_102_444_800, 0u32..1_000_000_000).prop_map(
        |(secs, nanos)| {
            OffsetDateTime::from_unix_timestamp(secs)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH)
                .replace_nanosecond(nanos)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        },
    ));
    let dataschema = proptest::option::of(
        proptest::string::string_regex("https://schemas\\.example\\.com/[a-z0-9]{1,10}\\.json")
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let extensions = proptest::collection::btree_map(
        proptest::string::string_regex("x[a-z0-9]{0,8}").unwrap_or_else(|e| panic!("{e}")),
        value(ascii, 20),
        0..3,
    );
    let data = prop_oneof![
        json_text().prop_map(Data::Json),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Data::Bytes),
    ];
    (
        value(ascii, 40),
        source,
        event_type,
        proptest::option::of(value(ascii, 30)),
        time,
        dataschema,
        extensions,
        data,
    )
        .prop_map(
            |(id, source, event_type, subject, time, dataschema, extensions, data)| Sent {
                id,
                source,
                event_type,
                subject,
                time,
                dataschema,
                extensions,
                data,
            },
        )
}

/// `count` events from `strategy`, none sharing another's (source, id) with `taken`.
fn generate(
    runner: &mut TestRunner,
    ascii: bool,
    count: usize,
    taken: &mut HashSet<(String, String)>,
) -> anyhow::Result<Vec<Sent>> {
    let strategy = sent(ascii);
    let mut out = Vec::new();
    while out.len() < count {
        let s = strategy
            .new_tree(runner)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .current();
        if taken.insert((s.source.clone(), s.id.clone())) {
            out.push(s);
        }
    }
    Ok(out)
}

fn rfc3339(t: &OffsetDateTime) -> anyhow::Result<String> {
    Ok(t.format(&Rfc3339)?)
}

/// The structured-mode JSON of `s`, its data as the exact text (or `data_base64`).
fn structured(s: &Sent) -> anyhow::Result<String> {
    let q = |v: &str| serde_json::to_string(v).unwrap_or_default();
    let mut members = vec![
        r#""specversion":"1.0""#.to_owned(),
        format!(r#""id":{}"#, q(&s.id)),
        format!(r#""source":{}"#, q(&s.source)),
        format!(r#""type":{}"#, q(&s.event_type)),
        format!(r#""datacontenttype":{}"#, q(s.content_type())),
    ];
    if let Some(v) = &s.subject {
        members.push(format!(r#""subject":{}"#, q(v)));
    }
    if let Some(t) = &s.time {
        members.push(format!(r#""time":{}"#, q(&rfc3339(t)?)));
    }
    if let Some(v) = &s.dataschema {
        members.push(format!(r#""dataschema":{}"#, q(v)));
    }
    for (k, v) in &s.extensions {
        members.push(format!("{}:{}", q(k), q(v)));
    }
    match &s.data {
        Data::Json(text) => members.push(format!(r#""data":{text}"#)),
        Data::Bytes(b) => members.push(format!(
            r#""data_base64":{}"#,
            q(&base64::engine::general_purpose::STANDARD.encode(b))
        )),
    }
    Ok(format!("{{{}}}", members.join(",")))
}

/// The `ce-*` headers of `s` (binary mode, over HTTP or NATS).
fn ce_headers(s: &Sent) -> anyhow::Result<Vec<(String, String)>> {
    let mut h = vec![
        ("ce-specversion".to_owned(), "1.0".to_owned()),
        ("ce-id".to_owned(), s.id.clone()),
        ("ce-source".to_owned(), s.source.clone()),
        ("ce-type".to_owned(), s.event_type.clone()),
        ("content-type".to_owned(), s.content_type().to_owned()),
    ];
    if let Some(v) = &s.subject {
        h.push(("ce-subject".into(), v.clone()));
    }
    if let Some(t) = &s.time {
        h.push(("ce-time".into(), rfc3339(t)?));
    }
    if let Some(v) = &s.dataschema {
        h.push(("ce-dataschema".into(), v.clone()));
    }
    for (k, v) in &s.extensions {
        h.push((format!("ce-{k}"), v.clone()));
    }
    Ok(h)
}

fn as_event(s: &Sent) -> anyhow::Result<Event> {
    Ok(Event {
        id: s.id.clone(),
        source: s.source.clone(),
        event_type: EventType::new(s.event_type.clone())?,
        time: s.time,
        subject: s.subject.clone(),
        datacontenttype: Some(s.content_type().to_owned()),
        dataschema: s.dataschema.clone(),
        partitionkey: None,
        traceparent: None,
        tracestate: None,
        extensions: s.extensions.clone(),
        data: bytes::Bytes::copy_from_slice(s.data_bytes()),
    })
}

/// Every difference between what was sent and what the SDK read.
fn differences_sdk(s: &Sent, e: &Event) -> Vec<String> {
    let mut d = Vec::new();
    let mut check = |what: &str, ok: bool| {
        if !ok {
            d.push(what.to_owned());
        }
    };
    check("type", e.event_type.as_str() == s.event_type);
    check("subject", e.subject == s.subject);
    check("time", e.time == s.time);
    check(
        "datacontenttype",
        e.datacontenttype.as_deref() == Some(s.content_type()),
    );
    check("dataschema", e.dataschema == s.dataschema);
    check("extensions", e.extensions == s.extensions);
    check("data", e.data.as_ref() == s.data_bytes());
    d
}

/// Every difference between what was sent and what a plain client read.
fn differences_plain(s: &Sent, headers: &HashMap<String, String>, payload: &[u8]) -> Vec<String> {
    let mut d = Vec::new();
    let get = |k: &str| headers.get(k).cloned();
    let ce: BTreeMap<String, String> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("ce-x")?.to_owned(), v.clone())))
        .map(|(k, v)| (format!("x{k}"), v))
        .collect();
    let mut check = |what: &str, ok: bool| {
        if !ok {
            d.push(what.to_owned());
        }
    };
    check(
        "type",
        get("ce-type").as_deref() == Some(s.event_type.as_str()),
    );
    check("subject", get("ce-subject") == s.subject);
    let time = get("ce-time").and_then(|t| OffsetDateTime::parse(&t, &Rfc3339).ok());
    check("time", time == s.time);
    check(
        "content-type",
        get("content-type").as_deref() == Some(s.content_type()),
    );
    check("dataschema", get("ce-dataschema") == s.dataschema);
    check("extensions", ce == s.extensions);
    check("data", payload == s.data_bytes());
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_generated_events_sent_five_ways_each_read_two_ways_should_equal_what_was_sent()
-> anyhow::Result<()> {
    let cluster = NatsCluster::start(1).await?;
    let node = open_node(&cluster, "round-trip").await?;
    let bus = bus_for(&cluster).await?;
    let client = http()?;
    let mut runner = TestRunner::deterministic();
    let mut taken = HashSet::new();
    let structured_events = generate(&mut runner, false, PER_WAY, &mut taken)?;
    let binary_events = generate(&mut runner, true, PER_WAY, &mut taken)?;
    let batch_events = generate(&mut runner, false, PER_WAY, &mut taken)?;
    let sdk_events = generate(&mut runner, false, PER_WAY, &mut taken)?;
    let plain_events = generate(&mut runner, false, PER_WAY, &mut taken)?;

    // The SDK reads every event as it is stored.
    let read: Arc<Mutex<Vec<Event>>> = Arc::default();
    let into = read.clone();
    let tap = bus
        .broadcast()
        .on_any(bus_core::EventPattern::new(">")?, move |meta: EventMeta| {
            let into = into.clone();
            async move {
                if let Ok(mut r) = into.lock() {
                    r.push(meta.event);
                }
                Ok::<(), HandlerError>(())
            }
        })
        .start()
        .await?;

    let url = format!("{}/v1/events", node.url());
    let accepted = |r: reqwest::Response, what: String| async move {
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        anyhow::ensure!(status == 202, "{what}: {status} {body}");
        Ok::<(), anyhow::Error>(())
    };
    for s in &structured_events {
        let r = client
            .post(&url)
            .header("content-type", "application/cloudevents+json")
            .body(structured(s)?)
            .send()
            .await?;
        accepted(r, format!("structured {s:?}")).await?;
    }
    for s in &binary_events {
        let mut req = client.post(&url).body(s.data_bytes().to_vec());
        for (k, v) in ce_headers(s)? {
            req = req.header(k, v);
        }
        accepted(req.send().await?, format!("binary {s:?}")).await?;
    }
    for chunk in batch_events.chunks(BATCH) {
        let items: Vec<String> = chunk.iter().map(structured).collect::<Result<_, _>>()?;
        let r = client
            .post(&url)
            .header("content-type", "application/cloudevents-batch+json")
            .body(format!("[{}]", items.join(",")))
            .send()
            .await?;
        accepted(r, format!("batch {chunk:?}")).await?;
    }
    for s in &sdk_events {
        bus.publish_event(&as_event(s)?)
            .await
            .map_err(|e| anyhow::anyhow!("SDK publish of {s:?}: {e}"))?;
    }
    let js = async_nats::jetstream::new(cluster.client().await?);
    for s in &plain_events {
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in ce_headers(s)? {
            h.insert(k.as_str(), v.as_str());
        }
        // As the README tells a plain client to compute it.
        h.insert(
            "Nats-Msg-Id",
            bus_core::binary_mode::dedup_id(&s.source, &s.id).as_str(),
        );
        let subject = format!("bus.evt.{}", s.event_type);
        plain_publish(
            &js,
            &subject,
            Some(h),
            bytes::Bytes::copy_from_slice(s.data_bytes()),
        )
        .await?;
    }

    let all: Vec<(&str, &Sent)> = [
        ("HTTP structured", &structured_events),
        ("HTTP binary", &binary_events),
        ("HTTP batch", &batch_events),
        ("SDK", &sdk_events),
        ("plain client", &plain_events),
    ]
    .into_iter()
    .flat_map(|(way, events)| events.iter().map(move |s| (way, s)))
    .collect();
    let total = all.len();
    wait_until("the SDK read every event", Duration::from_secs(30), || {
        read.lock().is_ok_and(|r| r.len() >= total)
    })
    .await?;
    tap.shutdown().await;

    // The SDK's reads.
    let by_key: HashMap<(String, String), Event> = read
        .lock()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .iter()
        .map(|e| ((e.source.clone(), e.id.clone()), e.clone()))
        .collect();
    let mut wrong = Vec::new();
    for (way, s) in &all {
        match by_key.get(&(s.source.clone(), s.id.clone())) {
            None => wrong.push(format!("{way}: not read by the SDK: {s:?}")),
            Some(e) => {
                let d = differences_sdk(s, e);
                if !d.is_empty() {
                    wrong.push(format!(
                        "{way}, SDK read: {d:?} differ: sent {s:?}, read {e:?}"
                    ));
                }
            }
        }
    }

    // A plain client's reads: the stream's headers and payloads as stored.
    let stream = js.get_stream("BUS_EVENTS").await?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?.take(total);
    let mut plain: PlainReads = HashMap::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await? {
        let m = m?;
        let headers: HashMap<String, String> = m
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .filter_map(|(k, v)| {
                Some((
                    k.to_string().to_ascii_lowercase(),
                    v.first()?.as_str().to_owned(),
                ))
            })
            .collect();
        let key = (
            headers.get("ce-source").cloned().unwrap_or_default(),
            headers.get("ce-id").cloned().unwrap_or_default(),
        );
        plain.insert(key, (headers, m.payload.to_vec()));
    }
    for (way, s) in &all {
        match plain.get(&(s.source.clone(), s.id.clone())) {
            None => wrong.push(format!("{way}: not found by a plain client: {s:?}")),
            Some((h, payload)) => {
                let d = differences_plain(s, h, payload);
                if !d.is_empty() {
                    wrong.push(format!(
                        "{way}, plain read: {d:?} differ: sent {s:?}, stored {h:?}"
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {total} events changed:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    Ok(())
}
