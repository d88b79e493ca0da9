//! An OTLP trace receiver for tests: a real OTLP/gRPC endpoint and a real OTLP/HTTP
//! (protobuf) endpoint on loopback that decode what exporters send and keep the spans.

use std::collections::BTreeMap;
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

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    grpc_port: u16,
    http_port: u16,
    spans: Store,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Starts both endpoints on ephemeral loopback ports (bound before they are known,
    /// so nothing can take them in between).
    pub async fn start() -> Result<Self, HarnessError> {
        let spans: Store = Arc::default();
        let grpc = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| HarnessError::io("binding the OTLP/gRPC receiver", e))?;
        let http = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| HarnessError::io("binding the OTLP/HTTP receiver", e))?;
        let port = |l: &TcpListener| l.local_addr().map(|a| a.port());
        let grpc_port = port(&grpc).map_err(|e| HarnessError::io("reading the gRPC port", e))?;
        let http_port = port(&http).map_err(|e| HarnessError::io("reading the HTTP port", e))?;

        let service = TraceServiceServer::new(Collector {
            spans: spans.clone(),
        });
        let grpc_task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(grpc))
                .await;
            if let Err(e) = served {
                eprintln!("OTLP/gRPC receiver stopped: {e}");
            }
        });
        let router = axum::Router::new()
            .route("/v1/traces", axum::routing::post(http_export))
            .with_state(spans.clone());
        let http_task = tokio::spawn(async move {
            if let Err(e) = axum::serve(http, router).await {
                eprintln!("OTLP/HTTP receiver stopped: {e}");
            }
        });
        Ok(Self {
            grpc_port,
            http_port,
            spans,
            tasks: vec![grpc_task, http_task],
        })
    }

    /// `http://127.0.0.1:<port>`: the OTLP/gRPC endpoint.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// `http://127.0.0.1:<port>`: the OTLP/HTTP base (exporters append `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
    spans: Store,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.spans, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn http_export(State(spans): State<Store>, body: Bytes) -> impl IntoResponse {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            keep(&spans, request);
            let reply = ExportTraceServiceResponse {
                partial_success: None,
            }
            .encode_to_vec();
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

fn keep(store: &Store, request: ExportTraceServiceRequest) {
    let mut out = store.lock().unwrap_or_else(|p| p.into_inner());
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
