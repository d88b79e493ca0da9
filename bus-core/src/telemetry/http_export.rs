//! The OTLP/HTTP (protobuf) transport: a request [`super::batch_encoder`] encoded is
//! posted to `<endpoint>/v1/traces` with a blocking HTTP client, from the encoder's export
//! thread. One request per batch, bounded by the export timeout; a failed batch is
//! dropped, as the SDK's exporters drop it, so a dead collector costs the bus nothing but
//! the batch.
//!
//! Reads `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (`/v1/traces` appended), `OTEL_EXPORTER_OTLP[_TRACES]_HEADERS` (`key=value,...`,
//! values percent-decoded), `OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT` (milliseconds, default
//! 10 000) and `OTEL_EXPORTER_OTLP[_TRACES]_COMPRESSION` (only `none`).

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::setup::{TelemetryError, var};

/// Where spans go without any endpoint setting (the OTLP/HTTP default).
const DEFAULT_ENDPOINT: &str = "http://localhost:4318/v1/traces";
/// The OTLP default export timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Posts encoded requests to an OTLP/HTTP endpoint.
#[derive(Debug)]
pub(crate) struct HttpSpanExporter {
    client: reqwest::blocking::Client,
    url: String,
    timeout: Duration,
}

impl HttpSpanExporter {
    /// The exporter for `base` (`http://collector:4318`), or, with none, for the
    /// endpoint the `OTEL_*` variables name; headers and timeout from the variables.
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
        // No TLS client is built in: an https:// collector would fail every export.
        if !reqwest::Url::parse(&url).is_ok_and(|u| u.scheme() == "http") {
            return Err(TelemetryError::InvalidVariable {
                variable,
                value: url,
                reason: "an http:// URL (TLS to the collector is not supported)",
            });
        }
        let (variable, compression) = either("COMPRESSION");
        if let Some(c) = compression.filter(|c| !c.eq_ignore_ascii_case("none")) {
            return Err(TelemetryError::InvalidVariable {
                variable,
                value: c,
                reason: "none (compression is not supported)",
            });
        }
        let (variable, timeout) = either("TIMEOUT");
        let timeout = match timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) => t
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis)
                .ok_or(TelemetryError::InvalidVariable {
                    variable,
                    value: t,
                    reason: "a timeout in milliseconds, above 0",
                })?,
        };
        let (variable, headers) = either("HEADERS");
        let mut header_map = HeaderMap::new();
        header_map.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        if let Some(h) = headers {
            parse_headers(&h, &mut header_map).map_err(|reason| {
                TelemetryError::InvalidVariable {
                    variable,
                    value: h.clone(),
                    reason,
                }
            })?;
        }
        // A blocking client must not be built on an async runtime's thread (it starts and
        // waits for its own): build it on a thread of its own.
        crate::tls::install_crypto_provider();
        let client = std::thread::spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(timeout)
                .default_headers(header_map)
                .build()
        })
        .join()
        .map_err(|_| TelemetryError::Exporter("building the HTTP client panicked".into()))?
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        Ok(Self {
            client,
            url,
            timeout,
        })
    }

    /// The longest one post may take.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Posts one encoded `ExportTraceServiceRequest`; blocks (call it from a thread of
    /// its own) for at most [`Self::timeout`].
    pub(crate) fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let response = self
            .client
            .post(&self.url)
            .body(body)
            .send()
            .map_err(|e| format!("OTLP/HTTP export: {e}"))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("OTLP/HTTP export: {} answered {status}", self.url))
        }
    }
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
    fn an_https_or_malformed_endpoint_is_refused_naming_the_variable() {
        for base in [
            "https://collector:4318",
            "collector:4318",
            "http://bad host",
        ] {
            match HttpSpanExporter::new(Some(base)) {
                Err(TelemetryError::InvalidVariable { variable, .. }) => {
                    assert_eq!(variable, "OTEL_EXPORTER_OTLP_ENDPOINT", "{base}")
                }
                other => panic!("{base}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_traces_path_is_appended_to_a_base_once() {
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
    }
}
