//! A tiny HTTP/1.0 GET for nats-server's monitoring port: plain TCP, one request per
//! connection, the whole exchange under one deadline. HTTP/1.0 keeps the answer
//! un-chunked and the server closes the connection when done, so "read to end" is
//! the whole response.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::HarnessError;

/// Upper bound for one monitoring request (connect, send, read everything).
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// Status and body of a monitoring response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    pub(crate) body: String,
}

/// `GET url` where `url` is `http://host:port/path?query`.
pub(crate) async fn http_get(url: &str, timeout: Duration) -> Result<HttpResponse, HarnessError> {
    let fail = |reason: String| HarnessError::Http {
        url: url.to_owned(),
        reason,
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| fail("only http:// URLs are supported".into()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let exchange = async {
        let mut stream = TcpStream::connect(authority).await?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| fail(format!("no complete answer within {timeout:?}")))?
        .map_err(|e| fail(e.to_string()))?;
    parse(&raw).map_err(fail)
}

fn parse(raw: &[u8]) -> Result<HttpResponse, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header terminator in {} bytes", raw.len()))?;
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    Ok(HttpResponse {
        status,
        body: body.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_response_when_parsed_should_split_status_and_body() {
        let raw = b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n\r\n{\"status\":\"unavailable\"}";
        assert_eq!(
            parse(raw),
            Ok(HttpResponse {
                status: 503,
                body: "{\"status\":\"unavailable\"}".into()
            })
        );
    }

    #[test]
    fn given_a_truncated_response_when_parsed_should_fail() {
        assert!(parse(b"HTTP/1.0 200 OK\r\nContent-Length: 10").is_err());
        assert!(parse(b"garbage\r\n\r\n").is_err());
    }
}
