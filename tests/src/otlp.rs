//! An OTLP trace receiver for tests: a real OTLP/gRPC endpoint and a real OTLP/HTTP
//! (protobuf) endpoint on loopback that decode what exporters send and keep the spans
//! (or, for benchmarks, only count them).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::error::HarnessError;
use crate::poll::{Probe, poll_until};

/// Span kinds as OTLP numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 0, or a number OTLP does not define.
    Unspecified,
    /// 1: an operation inside one process.
    Internal,
    /// 2: handling a request (HTTP ingress).
    Server,
    /// 3: a request to another service (a webhook attempt).
    Client,
    /// 4: sending a message (a publish).
    Producer,
    /// 5: processing a message (a handling by a group member).
    Consumer,
}

impl Kind {
    fn from_i32(k: i32) -> Self {
        match k {
            1 => Kind::Internal,
            2 => Kind::Server,
            3 => Kind::Client,
            4 => Kind::Producer,
            5 => Kind::Consumer,
            _ => Kind::Unspecified,
        }
    }
}

/// One received span, flattened for assertions. Ids are lowercase hex.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent the span (empty if it had none).
    pub service: String,
    /// Trace id, 32 hex digits.
    pub trace_id: String,
    /// Span id, 16 hex digits.
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// The span's name (`publish bus.evt.shop.order.created`).
    pub name: String,
    /// The span's kind.
    pub kind: Kind,
    /// Attributes by key, values as text (numbers and booleans formatted).
    pub attributes: BTreeMap<String, String>,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i32,
}

impl ReceivedSpan {
    /// The attribute `key` as text, if the span has it.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

type Store = Arc<Mutex<Vec<ReceivedSpan>>>;

/// Where received spans go: every span into `spans` (tests), or only `count` (benchmarks,
/// which export millions of spans and must not measure the receiver's memory).
#[derive(Debug, Clone, Default)]
struct Sink {
    spans: Store,
    keep: bool,
    count: Arc<AtomicU64>,
    options: Arc<ReceiverOptions>,
    /// Every OTLP/HTTP request, as it came and was answered.
    requests: Arc<Mutex<Vec<SeenRequest>>>,
}

/// How the OTLP/HTTP endpoint behaves, as a collector in production might: over TLS,
/// insisting on gzip, failing for a while, rejecting part of what it is sent.
#[derive(Debug, Clone, Default)]
pub struct ReceiverOptions {
    /// Serve both endpoints over TLS with this certificate (issued by a `TestCa`),
    /// requiring a client certificate issued by the CA of `client_ca` (PEM) when given.
    pub tls: Option<(crate::Issued, Option<String>)>,
    /// Refuse a request that is not gzip-compressed (OTLP/HTTP: `Content-Encoding: gzip`,
    /// answered 415; OTLP/gRPC: `grpc-encoding: gzip`, answered `INVALID_ARGUMENT`).
    pub require_gzip: bool,
    /// Answer the first this many requests 503 with `Retry-After: 1`.
    pub fail_first: usize,
    /// The `Retry-After` of those answers, in seconds, instead of 1.
    pub retry_after: Option<u64>,
    /// Answer accepted requests with this partial success (rejected spans, message).
    pub partial_success: Option<(i64, String)>,
}

/// One OTLP/HTTP request the receiver got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// Its `Content-Encoding`, if any.
    pub content_encoding: Option<String>,
    /// The status it was answered with.
    pub status: u16,
    /// Spans in it (0 when it was not read).
    pub spans: usize,
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    grpc_port: u16,
    http_port: u16,
    sink: Sink,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Starts both endpoints on ephemeral loopback ports (bound before they are known,
    /// so nothing can take them in between).
    pub async fn start() -> Result<Self, HarnessError> {
        Self::start_with(Sink {
            keep: true,
            ..Sink::default()
        })
        .await
    }

    /// Starts a receiver that decodes what it is sent and counts the spans, keeping none
    /// ([`OtlpReceiver::spans`] stays empty; see [`OtlpReceiver::span_count`]).
    pub async fn start_counting() -> Result<Self, HarnessError> {
        Self::start_with(Sink::default()).await
    }

    /// Starts a receiver whose OTLP/HTTP endpoint behaves as `options` say (the gRPC one
    /// as usual).
    pub async fn start_with_options(options: ReceiverOptions) -> Result<Self, HarnessError> {
        Self::start_with(Sink {
            keep: true,
            options: Arc::new(options),
            ..Sink::default()
        })
        .await
    }

    /// Every OTLP/HTTP request so far, in arrival order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.sink
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn start_with(sink: Sink) -> Result<Self, HarnessError> {
        let grpc = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| HarnessError::io("binding the OTLP/gRPC receiver", e))?;
        let http = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| HarnessError::io("binding the OTLP/HTTP receiver", e))?;
        let port = |l: &TcpListener| l.local_addr().map(|a| a.port());
        let grpc_port = port(&grpc).map_err(|e| HarnessError::io("reading the gRPC port", e))?;
        let http_port = port(&http).map_err(|e| HarnessError::io("reading the HTTP port", e))?;

        let service = TraceServiceServer::new(Collector { sink: sink.clone() })
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        let mut server = tonic::transport::Server::builder();
        if let Some((issued, client_ca)) = &sink.options.tls {
            let mut tls = tonic::transport::ServerTlsConfig::new().identity(
                tonic::transport::Identity::from_pem(&issued.cert_pem, &issued.key_pem),
            );
            if let Some(ca) = client_ca {
                tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
            server = server.tls_config(tls).map_err(|e| {
                HarnessError::io("the OTLP/gRPC receiver's TLS", std::io::Error::other(e))
            })?;
        }
        let grpc_task = tokio::spawn(async move {
            let served = server
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(grpc))
                .await;
            if let Err(e) = served {
                eprintln!("OTLP/gRPC receiver stopped: {e}");
            }
        });
        let router = axum::Router::new()
            .route("/v1/traces", axum::routing::post(http_export))
            .with_state(sink.clone());
        let tls = match &sink.options.tls {
            Some((issued, client_ca)) => {
                Some(crate::test_ca::server_config(issued, client_ca.as_deref())?)
            }
            None => None,
        };
        let http_task = match tls {
            None => tokio::spawn(async move {
                if let Err(e) = axum::serve(http, router).await {
                    eprintln!("OTLP/HTTP receiver stopped: {e}");
                }
            }),
            Some(config) => tokio::spawn(serve_tls(http, router, config)),
        };
        Ok(Self {
            grpc_port,
            http_port,
            sink,
            tasks: vec![grpc_task, http_task],
        })
    }

    /// `http://127.0.0.1:<port>` (`https://` over TLS): the OTLP/gRPC endpoint.
    pub fn grpc_endpoint(&self) -> String {
        let scheme = if self.sink.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.grpc_port)
    }

    /// `http://127.0.0.1:<port>` (`https://` over TLS): the OTLP/HTTP base (exporters
    /// append `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        let scheme = if self.sink.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.http_port)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.sink
            .spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many spans arrived so far (kept or not).
    pub fn span_count(&self) -> u64 {
        self.sink.count.load(Ordering::Relaxed)
    }

    /// Polls until `enough` holds for the spans received so far.
    pub async fn wait_for(
        &self,
        what: &str,
        deadline: Duration,
        enough: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Result<Vec<ReceivedSpan>, HarnessError> {
        let enough = &enough;
        poll_until(what, deadline, || async move {
            let spans = self.spans();
            Ok(if enough(&spans) {
                Probe::Ready(spans)
            } else {
                Probe::NotYet(format!(
                    "{} spans: {:?}",
                    spans.len(),
                    spans.iter().map(|s| &s.name).collect::<Vec<_>>()
                ))
            })
        })
        .await
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Collector {
    sink: Sink,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let encoding = request
            .metadata()
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let refused = self.sink.options.require_gzip && encoding.as_deref() != Some("gzip");
        let request = request.into_inner();
        let spans = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        self.sink
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(SeenRequest {
                content_encoding: encoding,
                status: if refused { 400 } else { 200 },
                spans,
            });
        if refused {
            return Err(tonic::Status::invalid_argument("gzip only"));
        }
        keep(&self.sink, request);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves `router` over TLS on `listener`, one task per connection.
async fn serve_tls(listener: TcpListener, router: axum::Router, config: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    while let Ok((tcp, _)) = listener.accept().await {
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            match acceptor.accept(tcp).await {
                Ok(tls) => {
                    let service = hyper_util::service::TowerToHyperService::new(router);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                }
                Err(e) => eprintln!("OTLP/HTTP receiver: TLS handshake refused: {e}"),
            }
        });
    }
}

async fn http_export(
    State(sink): State<Sink>,
    headers: header::HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let gzipped = encoding.as_deref() == Some("gzip");
    let seen = |status: StatusCode, spans: usize| {
        sink.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(SeenRequest {
                content_encoding: encoding.clone(),
                status: status.as_u16(),
                spans,
            });
    };
    let earlier = sink
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .len();
    if sink.options.require_gzip && !gzipped {
        seen(StatusCode::UNSUPPORTED_MEDIA_TYPE, 0);
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "gzip only").into_response();
    }
    if earlier < sink.options.fail_first {
        seen(StatusCode::SERVICE_UNAVAILABLE, 0);
        let after = sink.options.retry_after.unwrap_or(1).to_string();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, after)],
        )
            .into_response();
    }
    let body = if gzipped {
        use std::io::Read as _;
        let mut plain = Vec::new();
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut plain)
            .is_err()
        {
            seen(StatusCode::BAD_REQUEST, 0);
            return (StatusCode::BAD_REQUEST, "not gzip").into_response();
        }
        Bytes::from(plain)
    } else {
        body
    };
    let spans = count_spans(&body).unwrap_or(0) as usize;
    seen(StatusCode::OK, spans);
    answer(&sink, body)
}

fn answer(sink: &Sink, body: Bytes) -> axum::response::Response {
    if !sink.keep {
        // A counting receiver reads only the lengths it needs (as cheap as a receiver
        // can be, for the benchmark that shares its cores).
        return match count_spans(&body) {
            Some(n) => {
                sink.count.fetch_add(n, Ordering::Relaxed);
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/x-protobuf")],
                )
                    .into_response()
            }
            None => (StatusCode::BAD_REQUEST, "not an ExportTraceServiceRequest").into_response(),
        };
    }
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            keep(sink, request);
            let partial_success = sink.options.partial_success.clone().map(
                |(rejected, message)| {
                    opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess {
                        rejected_spans: rejected,
                        error_message: message,
                    }
                },
            );
            let reply = ExportTraceServiceResponse { partial_success }.encode_to_vec();
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                reply,
            )
                .into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

fn keep(sink: &Sink, request: ExportTraceServiceRequest) {
    let received: usize = request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum();
    sink.count.fetch_add(received as u64, Ordering::Relaxed);
    if !sink.keep {
        return;
    }
    let mut out = sink.spans.lock().unwrap_or_else(|p| p.into_inner());
    for rs in request.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .map(value_text)
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    name: span.name,
                    kind: Kind::from_i32(span.kind),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), value_text(kv)))
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                        .collect(),
                    status_code: span.status.map(|s| s.code).unwrap_or(0),
                });
            }
        }
    }
}

/// Spans in an encoded `ExportTraceServiceRequest` (`resource_spans` = 1 →
/// `scope_spans` = 2 → `spans` = 2), reading field keys and lengths only.
fn count_spans(request: &[u8]) -> Option<u64> {
    let mut spans = 0;
    for resource_spans in fields(request, 1)? {
        for scope_spans in fields(resource_spans, 2)? {
            spans += fields(scope_spans, 2)?.len() as u64;
        }
    }
    Some(spans)
}

/// The contents of every length-delimited field `wanted` of a message; `None` if the
/// bytes are not a well-formed message.
fn fields(mut message: &[u8], wanted: u64) -> Option<Vec<&[u8]>> {
    use prost::encoding::decode_varint;
    let mut found = Vec::new();
    while !message.is_empty() {
        let key = decode_varint(&mut message).ok()?;
        let skip = match key & 7 {
            0 => {
                decode_varint(&mut message).ok()?;
                0
            }
            1 => 8,
            2 => usize::try_from(decode_varint(&mut message).ok()?).ok()?,
            5 => 4,
            _ => return None,
        };
        let (body, rest) = message.split_at_checked(skip)?;
        if key & 7 == 2 && key >> 3 == wanted {
            found.push(body);
        }
        message = rest;
    }
    Some(found)
}

fn value_text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;

    #[test]
    fn counting_reads_every_span_of_every_scope_and_resource() {
        let scope = |n: usize| ScopeSpans {
            spans: vec![
                Span {
                    name: "publish x".into(),
                    start_time_unix_nano: 1,
                    ..Span::default()
                };
                n
            ],
            schema_url: "s".into(),
            ..ScopeSpans::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    scope_spans: vec![scope(3), scope(0), scope(2)],
                    ..ResourceSpans::default()
                },
                ResourceSpans {
                    scope_spans: vec![scope(4)],
                    schema_url: "r".into(),
                    ..ResourceSpans::default()
                },
            ],
        };
        let bytes = request.encode_to_vec();
        assert_eq!(count_spans(&bytes), Some(9));
        assert_eq!(count_spans(&bytes[..bytes.len() - 1]), None);
    }
}
