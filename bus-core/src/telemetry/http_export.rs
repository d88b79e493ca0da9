//! The OTLP/HTTP (protobuf) transport: a request [`super::batch_encoder`] encoded is
//! posted to `<endpoint>/v1/traces` with a blocking HTTP client, from the encoder's export
//! thread. A batch is retried while the collector answers 429, 502, 503 or 504 (or cannot
//! be reached), after `Retry-After` when it says so, else after an exponential backoff,
//! all within the export timeout; then it is dropped, as the SDK's exporters drop it, so a
//! dead collector costs the bus nothing but the batch. A partial success (spans the
//! collector rejected) is logged.
//!
//! Reads, as the OTLP exporter specification names them (the `_TRACES_` form first):
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (`/v1/traces` appended), `http` or `https` (checked against the system's roots plus
//! `OTEL_EXPORTER_OTLP[_TRACES]_CERTIFICATE`, a PEM file; a client certificate from
//! `_CLIENT_CERTIFICATE` and `_CLIENT_KEY`, PEM files), `OTEL_EXPORTER_OTLP[_TRACES]_HEADERS`
//! (`key=value,...`, values percent-decoded), `OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT` (one
//! request, milliseconds, default 10 000), `OTEL_EXPORTER_OTLP[_TRACES]_COMPRESSION`
//! (`gzip` or `none`) and `OTEL_BSP_EXPORT_TIMEOUT` (one batch with its retries,
//! milliseconds, default 30 000).
//!
//! While a flush or a shutdown waits (`Hurry`), a batch between retries is not held
//! for a long `Retry-After`: it is sent again after the backoff alone, within the
//! waiter's deadline, so a stopping process still sends what it recorded.
//!
//! A TLS failure (the collector's certificate not trusted, a client certificate refused)
//! is not retried: it will not pass by itself, and the batch is dropped at once with the
//! reason logged. The endpoint shows in logs and errors without its user, password and
//! query values (a collector URL may carry credentials).

use std::io::Write as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{
    CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER,
};

use super::batch_encoder::Hurry;
use super::setup::{TelemetryError, var};
use crate::redacted_url::redacted_text;

/// Where spans go without any endpoint setting (the OTLP/HTTP default).
const DEFAULT_ENDPOINT: &str = "http://localhost:4318/v1/traces";
/// The OTLP default timeout of one request.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default `OTEL_BSP_EXPORT_TIMEOUT`: one batch, retries included.
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// The first retry's backoff; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The longest collector answer read (for a partial success).
const MAX_RESPONSE_READ: u64 = 64 * 1024;

/// Posts encoded requests to an OTLP/HTTP endpoint.
#[derive(Debug)]
pub(crate) struct HttpSpanExporter {
    client: reqwest::blocking::Client,
    url: String,
    /// `url` as logs show it: without credentials ([`redacted_text`]).
    shown: String,
    /// One request.
    request_timeout: Duration,
    /// One batch, its retries included.
    export_timeout: Duration,
    gzip: bool,
}

impl HttpSpanExporter {
    /// The exporter for `base` (`http://collector:4318`), or, with none, for the
    /// endpoint the `OTEL_*` variables name; the rest from the variables.
    pub(crate) fn new(base: Option<&str>) -> Result<Self, TelemetryError> {
        let general = "OTEL_EXPORTER_OTLP_ENDPOINT";
        let (variable, url) = match base {
            Some(b) => (general, traces_url(b)),
            None => match var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
                Some(url) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url),
                None => (
                    general,
                    var(general)
                        .map(|b| traces_url(&b))
                        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned()),
                ),
            },
        };
        if !reqwest::Url::parse(&url).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
            return Err(TelemetryError::InvalidVariable {
                variable,
                value: redacted_text(&url),
                reason: "an http:// or https:// URL",
            });
        }
        let (variable, compression) = either("COMPRESSION");
        let gzip = match compression {
            None => false,
            Some(c) if c.eq_ignore_ascii_case("none") => false,
            Some(c) if c.eq_ignore_ascii_case("gzip") => true,
            Some(c) => {
                return Err(TelemetryError::InvalidVariable {
                    variable,
                    value: c,
                    reason: "gzip or none",
                });
            }
        };
        let request_timeout = millis(either("TIMEOUT"), DEFAULT_TIMEOUT)?;
        let export_timeout = millis(
            ("OTEL_BSP_EXPORT_TIMEOUT", var("OTEL_BSP_EXPORT_TIMEOUT")),
            DEFAULT_EXPORT_TIMEOUT,
        )?;
        let (variable, headers) = either("HEADERS");
        let mut header_map = HeaderMap::new();
        header_map.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        if gzip {
            header_map.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        if let Some(h) = headers {
            parse_headers(&h, &mut header_map).map_err(|reason| {
                TelemetryError::InvalidVariable {
                    variable,
                    // Headers carry API keys: never echoed.
                    value: "(redacted)".to_owned(),
                    reason,
                }
            })?;
        }
        let tls = Tls::from_env()?;
        // A blocking client must not be built on an async runtime's thread (it starts and
        // waits for its own): build it on a thread of its own.
        crate::tls::install_crypto_provider();
        let client = std::thread::spawn(move || {
            let mut b = reqwest::blocking::Client::builder()
                .timeout(request_timeout)
                .default_headers(header_map)
                .tls_certs_merge(tls.roots);
            if let Some(identity) = tls.identity {
                b = b.identity(identity);
            }
            b.build()
        })
        .join()
        .map_err(|_| TelemetryError::Exporter("building the HTTP client panicked".into()))?
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        Ok(Self {
            client,
            shown: redacted_text(&url),
            url,
            request_timeout,
            export_timeout,
            gzip,
        })
    }

    /// The longest one export (a batch, its retries included) may take.
    pub(crate) fn timeout(&self) -> Duration {
        self.export_timeout
    }

    /// Posts one encoded `ExportTraceServiceRequest`, retrying what the collector says
    /// to retry; blocks (call it from a thread of its own) for at most [`Self::timeout`],
    /// and not past `hurry`'s deadline once a flush or a shutdown waits: then the waits
    /// between attempts shrink to the backoff (a long `Retry-After` is not waited out).
    /// The first attempt is always made, whatever the deadline.
    pub(crate) fn post(&self, body: Vec<u8>, hurry: &Hurry) -> Result<(), String> {
        let body = if self.gzip {
            Bytes::from(gzip(&body).map_err(|e| format!("OTLP/HTTP export: gzip: {e}"))?)
        } else {
            Bytes::from(body)
        };
        let export_deadline = Instant::now() + self.export_timeout;
        let mut attempt = 0u32;
        loop {
            // A batch gets one attempt at least: a waiter's deadline bounds its retries.
            let deadline = match hurry.by() {
                Some(by) if attempt > 0 => by.min(export_deadline),
                _ => export_deadline,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "OTLP/HTTP export: {} not accepted within its deadline (the export timeout, or a flush or shutdown waiting)",
                    self.shown
                ));
            }
            let sent = self
                .client
                .post(&self.url)
                .timeout(self.request_timeout.min(left))
                .body(body.clone())
                .send();
            let wait = match sent {
                Ok(response) if response.status().is_success() => {
                    log_partial_success(&self.shown, response);
                    return Ok(());
                }
                Ok(response) if retryable(response.status()) => {
                    let status = response.status();
                    // `Retry-After: 0` is not a reason to hammer the collector.
                    let wait = retry_after(response.headers())
                        .map_or_else(|| backoff(attempt), |after| after.max(backoff(attempt)));
                    tracing::debug!(url = %self.shown, %status, ?wait, "OTLP/HTTP export: retrying");
                    wait
                }
                Ok(response) => {
                    return Err(format!(
                        "OTLP/HTTP export: {} answered {}",
                        self.shown,
                        response.status()
                    ));
                }
                Err(e) if tls_failure(&e) => {
                    return Err(format!(
                        "OTLP/HTTP export: TLS with {} failed (not retried): {}",
                        self.shown,
                        chain(&e.without_url())
                    ));
                }
                Err(e) if e.is_connect() || e.is_timeout() => {
                    let e = e.without_url();
                    tracing::debug!(url = %self.shown, error = %chain(&e), "OTLP/HTTP export: retrying");
                    backoff(attempt)
                }
                Err(e) => {
                    return Err(format!(
                        "OTLP/HTTP export: {}: {}",
                        self.shown,
                        chain(&e.without_url())
                    ));
                }
            };
            // Someone waits: no long `Retry-After`, the backoff only (also when they start
            // waiting during the sleep).
            let short = backoff(attempt);
            let (wait, deadline) = match hurry.by() {
                Some(by) => (wait.min(short), by.min(export_deadline)),
                None => (wait, export_deadline),
            };
            // Compared, not added: a huge `Retry-After` must not overflow the clock.
            if wait >= deadline.saturating_duration_since(Instant::now()) {
                return Err(format!(
                    "OTLP/HTTP export: {} not accepted within its deadline (the export timeout, or a flush or shutdown waiting)",
                    self.shown
                ));
            }
            hurry.sleep(wait, short);
            attempt = attempt.saturating_add(1);
        }
    }
}

/// The PEM files the `OTEL_EXPORTER_OTLP[_TRACES]_CERTIFICATE`, `_CLIENT_CERTIFICATE` and
/// `_CLIENT_KEY` variables name, read (each with the variable that named it, for errors);
/// a client certificate needs both of its variables.
struct CertFiles {
    ca: Option<(&'static str, String, Vec<u8>)>,
    /// (certificate's variable, path, PEM), then the key's PEM.
    client: Option<(&'static str, String, Vec<u8>, Vec<u8>)>,
}

impl CertFiles {
    fn from_env() -> Result<Self, TelemetryError> {
        let ca = match either("CERTIFICATE") {
            (_, None) => None,
            (variable, Some(path)) => {
                let pem = read_pem(variable, &path)?;
                Some((variable, path, pem))
            }
        };
        let client = match (either("CLIENT_CERTIFICATE"), either("CLIENT_KEY")) {
            ((_, None), (_, None)) => None,
            ((cert_var, Some(cert)), (key_var, Some(key))) => {
                let key = read_pem(key_var, &key)?;
                let pem = read_pem(cert_var, &cert)?;
                Some((cert_var, cert, pem, key))
            }
            ((variable, None), _) | (_, (variable, None)) => {
                return Err(TelemetryError::InvalidVariable {
                    variable,
                    value: String::new(),
                    reason: "set both the client certificate and the client key",
                });
            }
        };
        Ok(Self { ca, client })
    }

    fn any(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }
}

/// The OTLP/HTTP client's TLS settings: roots added to the system's, a client identity.
struct Tls {
    roots: Vec<reqwest::Certificate>,
    identity: Option<reqwest::Identity>,
}

impl Tls {
    fn from_env() -> Result<Self, TelemetryError> {
        let files = CertFiles::from_env()?;
        let roots = match files.ca {
            None => Vec::new(),
            Some((variable, path, pem)) => {
                let roots = reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default();
                if roots.is_empty() {
                    return Err(invalid_file(variable, path, "no PEM certificate in it"));
                }
                roots
            }
        };
        let identity = match files.client {
            None => None,
            Some((cert_var, cert, cert_pem, mut pem)) => {
                pem.push(b'\n');
                pem.extend(cert_pem);
                Some(reqwest::Identity::from_pem(&pem).map_err(|_| {
                    invalid_file(
                        cert_var,
                        cert,
                        "a PEM certificate whose key is the client key's",
                    )
                })?)
            }
        };
        Ok(Self { roots, identity })
    }
}

/// The TLS configuration of the OTLP/gRPC exporter when the endpoint is `https` or a
/// certificate variable is set (the system's roots, `..._CERTIFICATE` added, the client
/// certificate of `..._CLIENT_CERTIFICATE` and `..._CLIENT_KEY`); `None` otherwise.
pub(crate) fn grpc_tls(
    endpoint: Option<&str>,
) -> Result<Option<opentelemetry_otlp::tonic_types::transport::ClientTlsConfig>, TelemetryError> {
    use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
    let endpoint = endpoint
        .map(str::to_owned)
        .or_else(|| var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let https = endpoint.is_some_and(|e| e.starts_with("https://"));
    let files = CertFiles::from_env()?;
    if !https && !files.any() {
        return Ok(None);
    }
    crate::tls::install_crypto_provider();
    // tonic refuses to connect when the system has no roots at all (a scratch image), even
    // with a CA given: with `..._CERTIFICATE`, that CA alone is trusted over gRPC.
    let mut config = ClientTlsConfig::new();
    config = match files.ca {
        Some((_, _, pem)) => config.ca_certificate(Certificate::from_pem(pem)),
        None => config.with_native_roots(),
    };
    if let Some((_, _, cert, key)) = files.client {
        config = config.identity(Identity::from_pem(cert, key));
    }
    Ok(Some(config))
}

fn read_pem(variable: &'static str, path: &str) -> Result<Vec<u8>, TelemetryError> {
    std::fs::read(path).map_err(|_| invalid_file(variable, path.to_owned(), "a readable PEM file"))
}

fn invalid_file(variable: &'static str, path: String, reason: &'static str) -> TelemetryError {
    TelemetryError::InvalidVariable {
        variable,
        value: path,
        reason,
    }
}

/// A timeout variable in milliseconds, above 0.
fn millis(
    (variable, value): (&'static str, Option<String>),
    default: Duration,
) -> Result<Duration, TelemetryError> {
    match value {
        None => Ok(default),
        Some(t) => t
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
            .ok_or(TelemetryError::InvalidVariable {
                variable,
                value: t,
                reason: "a timeout in milliseconds, above 0",
            }),
    }
}

/// What the OTLP/HTTP specification says to retry: 429, 502, 503, 504.
fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

/// `Retry-After` in seconds (the form collectors send; a date is not read), at most a
/// day (anything longer is past every export timeout anyway).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(86_400)))
}

/// 100 ms, 200 ms, 400 ms, ... up to 5 s.
fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF)
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(body)?;
    encoder.finish()
}

/// Logs the spans a collector said it rejected (`ExportTraceServiceResponse
/// .partial_success`: `rejected_spans` = 1, `error_message` = 2).
fn log_partial_success(url: &str, response: reqwest::blocking::Response) {
    // A partial success is a small message; an answer without a length, or a long one,
    // is not read (its read would have a timeout of its own, past the export's).
    if !response
        .content_length()
        .is_some_and(|n| (1..=MAX_RESPONSE_READ).contains(&n))
    {
        return;
    }
    let Ok(body) = response.bytes() else { return };
    if let Some((rejected, message)) = partial_success(&body)
        && (rejected > 0 || !message.is_empty())
    {
        tracing::warn!(%url, rejected_spans = rejected, error_message = %message, "OTLP/HTTP export: the collector rejected part of a batch");
    }
}

/// `(rejected_spans, error_message)` of an encoded `ExportTraceServiceResponse`, if it
/// has a partial success.
fn partial_success(body: &[u8]) -> Option<(i64, String)> {
    let inner = proto_fields(body)
        .into_iter()
        .find_map(|(field, value)| match (field, value) {
            (1, Value::Bytes(b)) => Some(b),
            _ => None,
        })?;
    let mut rejected = 0;
    let mut message = String::new();
    for (field, value) in proto_fields(inner) {
        match (field, value) {
            (1, Value::Varint(n)) => rejected = n as i64,
            (2, Value::Bytes(b)) => message = String::from_utf8_lossy(b).into_owned(),
            _ => {}
        }
    }
    Some((rejected, message))
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// The fields of a protobuf message (varint and length-delimited ones; a fixed-width
/// field is skipped); stops at the first malformed byte.
fn proto_fields(mut buf: &[u8]) -> Vec<(u64, Value<'_>)> {
    let mut out = Vec::new();
    while let Some(key) = varint(&mut buf) {
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => match varint(&mut buf) {
                Some(n) => out.push((field, Value::Varint(n))),
                None => break,
            },
            2 => {
                let Some(len) = varint(&mut buf).and_then(|l| usize::try_from(l).ok()) else {
                    break;
                };
                if len > buf.len() {
                    break;
                }
                let (value, rest) = buf.split_at(len);
                out.push((field, Value::Bytes(value)));
                buf = rest;
            }
            1 if buf.len() >= 8 => buf = &buf[8..],
            5 if buf.len() >= 4 => buf = &buf[4..],
            _ => break,
        }
    }
    out
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Whether a request failed in TLS (a certificate not trusted or refused, a protocol
/// the collector does not speak): rustls' error somewhere in the chain. An `io::Error`
/// hides what it wraps from `source` (reqwest's chain ends in an `io::Error` holding an
/// `io::Error` holding rustls' error), so each is opened.
fn tls_failure(e: &reqwest::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if err.is::<rustls::Error>() {
            return true;
        }
        next = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}

/// An error with its causes (`a: b: c`), each once.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// `<base>/v1/traces`.
fn traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.trim_end_matches('/'))
}

/// The traces-specific variable `OTEL_EXPORTER_OTLP_TRACES_<what>`, else the general one;
/// with the name of the one read, for errors.
fn either(what: &'static str) -> (&'static str, Option<String>) {
    let (traces, general) = match what {
        "COMPRESSION" => (
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ),
        "TIMEOUT" => (
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ),
        "CERTIFICATE" => (
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ),
        "CLIENT_CERTIFICATE" => (
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        ),
        "CLIENT_KEY" => (
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        ),
        _ => (
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ),
    };
    match var(traces) {
        Some(v) => (traces, Some(v)),
        None => (general, var(general)),
    }
}

/// `key=value,key2=value2` (values percent-encoded, as the OTLP exporter specification
/// has them) into `into`.
fn parse_headers(list: &str, into: &mut HeaderMap) -> Result<(), &'static str> {
    const REASON: &str = "comma-separated key=value pairs with valid header names and values";
    for pair in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or(REASON)?;
        let name = HeaderName::from_bytes(key.trim().as_bytes()).map_err(|_| REASON)?;
        let value = percent_decode(value.trim()).ok_or(REASON)?;
        let value = HeaderValue::from_str(&value).map_err(|_| REASON)?;
        into.insert(name, value);
    }
    Ok(())
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_split_trimmed_and_percent_decoded() {
        let mut map = HeaderMap::new();
        assert_eq!(
            parse_headers("api-key=a%20b , x-tenant=shop,", &mut map),
            Ok(())
        );
        assert_eq!(map["api-key"], "a b");
        assert_eq!(map["x-tenant"], "shop");
    }

    #[test]
    fn a_pair_without_a_value_or_a_bad_escape_is_refused() {
        let mut map = HeaderMap::new();
        assert!(parse_headers("api-key", &mut map).is_err());
        assert!(parse_headers("api-key=%zz", &mut map).is_err());
        assert!(parse_headers("bad key=1", &mut map).is_err());
    }

    #[test]
    fn a_malformed_or_non_http_endpoint_is_refused_naming_the_variable() {
        for base in ["collector:4318", "http://bad host", "ftp://collector"] {
            match HttpSpanExporter::new(Some(base)) {
                Err(TelemetryError::InvalidVariable { variable, .. }) => {
                    assert_eq!(variable, "OTEL_EXPORTER_OTLP_ENDPOINT", "{base}")
                }
                other => panic!("{base}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_partial_success_is_read_and_a_full_one_is_empty() {
        // partial_success { rejected_spans: 3, error_message: "bad" }
        let body = [0x0a, 0x07, 0x08, 0x03, 0x12, 0x03, b'b', b'a', b'd'];
        assert_eq!(partial_success(&body), Some((3, "bad".to_owned())));
        assert_eq!(partial_success(&[]), None);
        assert_eq!(partial_success(&[0xff]), None);
    }

    #[test]
    fn retries_follow_the_specification_and_back_off_to_a_ceiling() {
        for code in [429, 502, 503, 504] {
            assert!(retryable(StatusCode::from_u16(code).unwrap_or_default()));
        }
        for code in [400, 401, 404, 500] {
            assert!(!retryable(StatusCode::from_u16(code).unwrap_or_default()));
        }
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(40), MAX_BACKOFF);
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        // A huge one is capped (it is compared with the deadline, never added to a clock).
        h.insert(RETRY_AFTER, HeaderValue::from_static("9223372036854775807"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(86_400)));
    }

    #[test]
    fn gzip_bodies_decompress_to_the_request() -> std::io::Result<()> {
        use std::io::Read as _;
        let body = b"an encoded request".repeat(20);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gzip(&body)?[..]).read_to_end(&mut back)?;
        assert_eq!(back, body);
        Ok(())
    }

    #[test]
    fn an_endpoint_that_does_not_parse_is_refused_without_its_credentials() {
        match HttpSpanExporter::new(Some("http://key:s3cret@bad host")) {
            Err(e) => assert!(!e.to_string().contains("s3cret"), "{e}"),
            Ok(_) => panic!("a host with a space was taken"),
        }
    }

    #[test]
    fn the_traces_path_is_appended_to_a_base_once() {
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
    }
}
