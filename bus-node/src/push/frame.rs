//! An event as push clients receive it, encoded once per node for all of them: the SSE
//! bytes (`id:`, `event:`, `data:`) and the WebSocket text frame (`{"seq":N,"event":..}`,
//! made the first time a WebSocket client needs it). Clones are reference counts.

use std::sync::OnceLock;

use axum::extract::ws::Utf8Bytes;
use bus_core::Event;
use bytes::{BufMut, Bytes, BytesMut};

use super::position::{Epoch, event_id};

#[derive(Debug)]
pub struct Frame {
    pub seq: u64,
    /// The CloudEvent in structured JSON.
    json: Bytes,
    sse: Bytes,
    ws: OnceLock<Utf8Bytes>,
}

impl Frame {
    pub fn new(epoch: &Epoch, seq: u64, event: &Event) -> Self {
        let json = Bytes::from(bus_core::structured::to_json(event));
        let event_type = event.event_type.as_str();
        let id = event_id(epoch, seq);
        let mut sse = BytesMut::with_capacity(json.len() + id.len() + event_type.len() + 32);
        sse.put_slice(b"id: ");
        sse.put_slice(id.as_bytes());
        sse.put_slice(b"\nevent: ");
        sse.put_slice(event_type.as_bytes());
        sse.put_u8(b'\n');
        put_data(&mut sse, &json);
        sse.put_u8(b'\n');
        Self {
            seq,
            json,
            sse: sse.freeze(),
            ws: OnceLock::new(),
        }
    }

    /// The SSE message.
    pub fn sse(&self) -> Bytes {
        self.sse.clone()
    }

    /// The WebSocket text frame's payload (its UTF-8 checked once, here).
    pub fn ws(&self) -> Utf8Bytes {
        self.ws
            .get_or_init(|| {
                let mut out = BytesMut::with_capacity(self.json.len() + 32);
                out.put_slice(b"{\"seq\":");
                out.put_slice(self.seq.to_string().as_bytes());
                out.put_slice(b",\"event\":");
                out.put_slice(&self.json);
                out.put_u8(b'}');
                let out = out.freeze();
                // The structured JSON is UTF-8 (data that is not goes as base64).
                Utf8Bytes::try_from(out.clone())
                    .unwrap_or_else(|_| Utf8Bytes::from(String::from_utf8_lossy(&out).into_owned()))
            })
            .clone()
    }
}

/// `data:` lines for `text`: one per line of it, since an SSE field ends at a line break
/// (`\r\n`, `\r` or `\n`). A client joins them with `\n`: JSON keeps its meaning, as
/// line breaks there are whitespace between tokens (strings cannot hold raw ones).
pub fn put_data(out: &mut BytesMut, text: &[u8]) {
    let mut rest = text;
    loop {
        let end = rest.iter().position(|b| *b == b'\n' || *b == b'\r');
        out.put_slice(b"data: ");
        match end {
            None => {
                out.put_slice(rest);
                out.put_u8(b'\n');
                return;
            }
            Some(i) => {
                out.put_slice(&rest[..i]);
                out.put_u8(b'\n');
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
        }
    }
}

/// A named SSE event without an id (hello, gap): it does not move `Last-Event-ID`.
pub fn sse_notice(name: &str, data: &serde_json::Value) -> Bytes {
    let text = data.to_string();
    let mut out = BytesMut::with_capacity(text.len() + name.len() + 16);
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_u8(b'\n');
    put_data(&mut out, text.as_bytes());
    out.put_u8(b'\n');
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_with(data: &str) -> Option<Event> {
        let t = bus_core::EventType::new("shop.order.created").ok()?;
        let mut e = Event::builder(t, "/shop").id("e1").build();
        e.datacontenttype = Some("application/json".into());
        e.data = Bytes::from(data.to_owned());
        Some(e)
    }

    #[test]
    fn an_event_is_one_sse_message_whose_data_lines_join_to_its_json() {
        let Some(event) = event_with("{\n  \"a\": 1,\r\n  \"b\": \"x\"\r}") else {
            panic!("test event");
        };
        let epoch = Epoch::new("BUS_EVENTS", time::OffsetDateTime::UNIX_EPOCH);
        let frame = Frame::new(&epoch, 9, &event);
        let text = String::from_utf8_lossy(&frame.sse()).into_owned();
        assert!(
            text.starts_with("id: BUS_EVENTS.0:9\nevent: shop.order.created\n"),
            "{text}"
        );
        assert!(text.ends_with("\n\n"), "{text}");
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        let joined = data.join("\n");
        let parsed: serde_json::Value = serde_json::from_str(&joined).unwrap_or_default();
        assert_eq!(parsed["id"], "e1", "{joined}");
        assert_eq!(parsed["data"]["b"], "x", "{joined}");
        // Only the message's own blank line ends it.
        assert_eq!(text.matches("\n\n").count(), 1, "{text}");
        let ws: serde_json::Value = serde_json::from_str(frame.ws().as_str()).unwrap_or_default();
        assert_eq!(ws["seq"], 9);
        assert_eq!(ws["event"]["id"], "e1");
    }
}
