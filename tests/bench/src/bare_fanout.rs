//! The push workload's baseline: the same fan-out written directly, in a process of its
//! own (`bus-bench --serve-bare-push <nats url>`, started by the workload) so that its
//! CPU and memory are measured as the node's are. A core NATS subscription on the
//! events' subjects (the events are published with JetStream, as for the node: the
//! stream stores them and core subscribers get them too) feeds one task that encodes
//! each message once as SSE bytes and hands them to every client's bounded buffer
//! (`try_send`, the node's `push.client_buffer` default; a full buffer cuts the client
//! off with `: bus.push.closed slow`, as the node does). A bare hyper HTTP/1 server,
//! one task per connection, writes each client's buffer as its response body: hello,
//! events, a heartbeat comment every 15 s (the node's default), no auth, no resume; its
//! connections are `TCP_NODELAY` (`--bare-nagle`: not, as bus-node's today).
//!
//! The bytes each client reads are the node's: `id:` of the same length, `event:` the
//! type, `data:` the CloudEvent in structured JSON (decoded from binary mode and encoded
//! again once per message, as the node does), so that the difference is the node's push
//! path, not the size of what is written.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result};
use bus_core::{BusConfig, EventPattern};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http_body_util::Full;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Events buffered per client (the node's `push.client_buffer` default).
pub const CLIENT_BUFFER: usize = 256;
/// Heartbeat comment period (the node's `push.heartbeat` default).
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Stands in for the node's epoch (`BUS_EVENTS.<creation unix nanos>`): the same length.
const EPOCH: &str = "BUS_EVENTS.0000000000000000000";
/// The line the server prints on stdout once it listens.
pub const LISTENING: &str = "listening ";

#[derive(Debug)]
struct Client {
    buffer: mpsc::Sender<Bytes>,
    slow: Arc<AtomicBool>,
}

/// The clients and the fan-out.
#[derive(Debug, Default)]
struct Hub {
    clients: Mutex<HashMap<u64, Client>>,
    next: AtomicU64,
}

impl Hub {
    fn join(&self) -> (mpsc::Receiver<Bytes>, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
        let slow = Arc::new(AtomicBool::new(false));
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            Client {
                buffer: tx,
                slow: slow.clone(),
            },
        );
        (rx, slow)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Client>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `frame` to every client; cuts off those whose buffer is full.
    fn send(&self, frame: &Bytes) {
        self.lock()
            .retain(|_, c| match c.buffer.try_send(frame.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    c.slow.store(true, Ordering::Release);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
    }
}

/// One message as SSE bytes; `None` when it is not a bus event.
fn encode(seq: u64, message: &async_nats::Message) -> Option<Bytes> {
    let event =
        bus_core::binary_mode::decode(message.headers.as_ref(), message.payload.clone()).ok()?;
    let json = bus_core::structured::to_json(&event);
    let event_type = event.event_type.as_str();
    let mut out = BytesMut::with_capacity(json.len() + event_type.len() + 64);
    out.put_slice(b"id: ");
    out.put_slice(EPOCH.as_bytes());
    out.put_u8(b':');
    out.put_slice(seq.to_string().as_bytes());
    out.put_slice(b"\nevent: ");
    out.put_slice(event_type.as_bytes());
    // Structured JSON is one line: one data line.
    out.put_slice(b"\ndata: ");
    out.put_slice(&json);
    out.put_slice(b"\n\n");
    Some(out.freeze())
}

/// A client's response body: the hello, its buffer, heartbeats, and the closing comment
/// once the hub dropped its buffer.
struct SseBody {
    hello: Option<Bytes>,
    buffer: mpsc::Receiver<Bytes>,
    slow: Arc<AtomicBool>,
    heartbeat: tokio::time::Interval,
    done: bool,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(hello) = self.hello.take() {
            return Poll::Ready(Some(Ok(Frame::data(hello))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match self.buffer.poll_recv(cx) {
            Poll::Ready(Some(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Poll::Ready(None) => {
                self.done = true;
                let reason = if self.slow.load(Ordering::Acquire) {
                    "slow"
                } else {
                    "shutdown"
                };
                let closed = format!(": bus.push.closed {reason}\n\n");
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(closed)))))
            }
            Poll::Pending => match self.heartbeat.poll_tick(cx) {
                Poll::Ready(_) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                    b": heartbeat\n\n",
                ))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

fn respond(hub: &Hub, request: &Request<Incoming>) -> Response<ResponseBody> {
    if request.uri().path() != "/v1/events/stream" {
        let mut r = Response::new(UnsyncBoxBody::new(Full::new(Bytes::from_static(
            b"not found",
        ))));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    let (buffer, slow) = hub.join();
    let hello = format!(
        "retry: 2000\n\nevent: bus.push.hello\ndata: {{\"node\":\"bare\",\"epoch\":\"{EPOCH}\"}}\n\n"
    );
    let start = tokio::time::Instant::now() + HEARTBEAT;
    let body = SseBody {
        hello: Some(Bytes::from(hello)),
        buffer,
        slow,
        heartbeat: tokio::time::interval_at(start, HEARTBEAT),
        done: false,
    };
    let mut r = Response::new(UnsyncBoxBody::new(body));
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    r
}

/// Serves until stdin closes (the parent ended or dropped the child). Connections are
/// `TCP_NODELAY` unless `nagle`: with Nagle's algorithm on, a small write waits for the
/// client's delayed ACK (up to 40 ms on Linux) when an earlier one is still unacknowledged.
pub async fn serve(nats_url: &str, nagle: bool) -> Result<()> {
    let client = async_nats::connect(nats_url)
        .await
        .with_context(|| format!("connecting to {nats_url}"))?;
    let subjects = BusConfig::with_servers([nats_url]).subjects();
    let subject = subjects.pattern(&EventPattern::new(crate::push::PATTERN)?);
    let mut subscription = client.subscribe(subject).await?;
    client.flush().await?;
    let hub = Arc::new(Hub::default());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{LISTENING}http://{}", listener.local_addr()?);

    let fan_out = hub.clone();
    tokio::spawn(async move {
        let mut seq = 0u64;
        while let Some(message) = subscription.next().await {
            seq += 1;
            if let Some(frame) = encode(seq, &message) {
                fan_out.send(&frame);
            }
        }
    });
    let accept_hub = hub.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let hub = accept_hub.clone();
            if !nagle {
                let _ = stream.set_nodelay(true);
            }
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let response = respond(&hub, &request);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    // Until the parent closes our stdin.
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while stdin.read(&mut sink).await.unwrap_or(0) > 0 {}
    Ok(())
}
