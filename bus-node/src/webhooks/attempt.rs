//! One delivery attempt: the event's structured JSON POSTed to the endpoint, signed
//! (Standard Webhooks, `signature.rs`), through a client that reaches only addresses the
//! SSRF guard permits (`ssrf.rs`), follows no redirect (a redirect could lead anywhere)
//! and uses no proxy from the environment (it would connect for us, past the guard),
//! within `webhooks.timeout`; and what the answer means for the delivery.
//! `https` endpoints are checked against the system's roots (rustls with the platform
//! verifier; `SSL_CERT_FILE` adds a bundle).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};

use super::asymmetric::SigningPair;
use super::signature::{Secret, signature_header};
use super::ssrf::{AddressPolicy, GuardedResolver, Refused};

/// Longest `Retry-After` honoured; a longer one waits this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Sends delivery attempts.
#[derive(Debug, Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
}

/// One attempt to make.
#[derive(Debug)]
pub struct Attempt<'a> {
    pub url: &'a Url,
    /// `webhook-id`: the event's id, the same on every attempt (receivers de-duplicate
    /// on it).
    pub id: &'a str,
    /// The CloudEvent in structured JSON.
    pub body: Bytes,
    /// The subscription's secrets, newest first (both during a rotation).
    pub secrets: &'a [Secret],
    /// Its Ed25519 key, when it signs with one too.
    pub asymmetric: Option<&'a SigningPair>,
    /// The subscription's own headers.
    pub headers: &'a HeaderMap,
    /// The attempt's CLIENT span as W3C `traceparent`, sent to the receiver.
    pub traceparent: Option<String>,
    /// The event's W3C `baggage`, sent to the receiver as it came.
    pub baggage: Option<String>,
}

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A 2xx within the timeout.
    Delivered { status: u16, took: Duration },
    /// 410 Gone: the receiver wants no more; the subscription is to be disabled.
    Gone { took: Duration },
    /// Worth another attempt later: a non-2xx status, a timeout, a connection failure.
    /// `after` is the receiver's `Retry-After` (429 and 503), at most [`MAX_RETRY_AFTER`].
    Retry {
        status: Option<u16>,
        error: &'static str,
        after: Option<Duration>,
        took: Duration,
    },
    /// Not sent, and no retry would change that by itself: the URL is not one the bus
    /// sends to, or its host resolves only to refused addresses.
    Refused { reason: String },
}

/// Why the URL is refused before any connection.
pub fn check_url(url: &Url, policy: &AddressPolicy) -> Result<(), String> {
    match url.scheme() {
        "http" => {}
        "https" => {}
        other => return Err(format!("scheme {other:?}: webhooks go to http(s) URLs")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL: give them as the subscription's headers".into());
    }
    // An address in the URL itself is not resolved, so the resolver cannot check it.
    let Some(host) = url.host_str() else {
        return Err("the URL has no host".into());
    };
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok();
    if let Some(a) = literal {
        policy.check(a).map_err(|r| r.to_string())?;
    }
    Ok(())
}

impl Deliverer {
    /// A deliverer whose attempts take at most `timeout` each, trusting the system's
    /// roots and `extra_roots` (`webhooks.ca_file`) for `https` endpoints.
    pub fn new(
        policy: AddressPolicy,
        timeout: Duration,
        extra_roots: Vec<reqwest::Certificate>,
    ) -> Result<Self, reqwest::Error> {
        let policy = Arc::new(policy);
        let resolver = GuardedResolver::new(policy.clone());
        Self::with_resolver(policy, resolver, timeout, extra_roots)
    }

    /// A deliverer that looks names up through `resolver` (tests give one whose
    /// answers they control).
    pub fn with_resolver(
        policy: Arc<AddressPolicy>,
        resolver: GuardedResolver,
        timeout: Duration,
        extra_roots: Vec<reqwest::Certificate>,
    ) -> Result<Self, reqwest::Error> {
        bus_core::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(resolver))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .user_agent(concat!("the-bus-webhooks/", env!("CARGO_PKG_VERSION")))
            .tls_certs_merge(extra_roots)
            .build()?;
        Ok(Self { client, policy })
    }

    /// Makes one attempt.
    pub async fn attempt(&self, a: &Attempt<'_>) -> Outcome {
        if let Err(reason) = check_url(a.url, &self.policy) {
            return Outcome::Refused { reason };
        }
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut headers = a.headers.clone();
        let standard = [
            ("content-type", "application/cloudevents+json".to_owned()),
            ("webhook-id", a.id.to_owned()),
            ("webhook-timestamp", timestamp.to_string()),
            (
                "webhook-signature",
                signature_header(a.secrets, a.asymmetric, a.id, timestamp, &a.body),
            ),
        ];
        let trace = a
            .traceparent
            .iter()
            .map(|t| ("traceparent", t.clone()))
            // Baggage the receiver could not take as a header is left out, never a reason
            // to refuse the attempt.
            .chain(
                a.baggage
                    .iter()
                    .filter(|b| HeaderValue::from_str(b).is_ok())
                    .map(|b| ("baggage", b.clone())),
            );
        for (name, value) in standard.into_iter().chain(trace) {
            match HeaderValue::from_str(&value) {
                Ok(v) => {
                    headers.insert(HeaderName::from_static(name), v);
                }
                Err(_) => {
                    return Outcome::Refused {
                        reason: format!("{name} cannot be an HTTP header value"),
                    };
                }
            }
        }
        let started = Instant::now();
        let sent = self
            .client
            .post(a.url.clone())
            .headers(headers)
            .body(a.body.clone())
            .send()
            .await;
        let took = started.elapsed();
        match sent {
            Ok(r) => classify(r.status(), r.headers(), took),
            Err(e) => match refusal(&e) {
                Some(r) => Outcome::Refused {
                    reason: r.to_string(),
                },
                None => Outcome::Retry {
                    status: None,
                    error: error_kind(&e),
                    after: None,
                    took,
                },
            },
        }
    }
}

fn classify(status: StatusCode, headers: &HeaderMap, took: Duration) -> Outcome {
    let code = status.as_u16();
    if status.is_success() {
        return Outcome::Delivered { status: code, took };
    }
    if status == StatusCode::GONE {
        return Outcome::Gone { took };
    }
    let after = matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    )
    .then(|| retry_after(headers))
    .flatten();
    Outcome::Retry {
        status: Some(code),
        error: "status",
        after,
        took,
    }
}

/// `Retry-After` in seconds or as an HTTP date, at most [`MAX_RETRY_AFTER`].
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let wait = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822)
                .ok()?;
            let left = at - time::OffsetDateTime::now_utc();
            Duration::try_from(left).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The SSRF refusal behind a failed send, if that is why it failed.
fn refusal(e: &reqwest::Error) -> Option<Refused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refused>() {
            return Some(*r);
        }
        source = s.source();
    }
    None
}

fn error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request"
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::Router;
    use axum::http::HeaderMap as AxumHeaders;
    use axum::response::IntoResponse;
    use axum::routing::post;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    use super::*;

    /// What the receiver got: headers and body of each request.
    type Got = Arc<Mutex<Vec<(AxumHeaders, Bytes)>>>;

    /// A receiver on loopback: `/ok` 204, `/gone` 410, `/busy` 503 with Retry-After 7,
    /// `/slow` answers after 2 s. Gives its base URL.
    async fn receiver(got: Got) -> anyhow::Result<String> {
        let record = |got: Got| {
            move |headers: AxumHeaders, body: Bytes| {
                let got = got.clone();
                async move {
                    if let Ok(mut g) = got.lock() {
                        g.push((headers, body));
                    }
                }
            }
        };
        let app = Router::new()
            .route(
                "/ok",
                post({
                    let r = record(got.clone());
                    move |h, b| {
                        let r = r.clone();
                        async move {
                            r(h, b).await;
                            StatusCode::NO_CONTENT
                        }
                    }
                }),
            )
            .route("/gone", post(|| async { StatusCode::GONE }))
            .route(
                "/busy",
                post(|| async {
                    (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "7")]).into_response()
                }),
            )
            .route(
                "/slow",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    StatusCode::OK
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(format!("http://{addr}"))
    }

    fn loopback_allowed() -> AddressPolicy {
        AddressPolicy::new(vec![
            "127.0.0.0/8".parse().unwrap_or_else(|e| panic!("{e}")),
        ])
    }

    fn secret() -> Secret {
        Secret::from_key(vec![42; 32]).unwrap_or_else(|e| panic!("{e}"))
    }

    async fn send(d: &Deliverer, url: &str) -> Outcome {
        let url = Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        let secrets = [secret()];
        let headers = HeaderMap::new();
        d.attempt(&Attempt {
            url: &url,
            id: "evt-1",
            body: Bytes::from_static(br#"{"specversion":"1.0","id":"evt-1"}"#),
            secrets: &secrets,
            asymmetric: None,
            headers: &headers,
            traceparent: None,
            baggage: None,
        })
        .await
    }

    #[tokio::test]
    async fn a_delivery_is_signed_as_standard_webhooks_say() -> anyhow::Result<()> {
        let got: Got = Arc::default();
        let base = receiver(got.clone()).await?;
        let d = Deliverer::new(loopback_allowed(), Duration::from_secs(5), Vec::new())?;
        let outcome = send(&d, &format!("{base}/ok")).await;
        assert!(
            matches!(outcome, Outcome::Delivered { status: 204, .. }),
            "{outcome:?}"
        );
        let got = got.lock().map_err(|e| anyhow::anyhow!("{e}"))?.clone();
        let [(headers, body)] = got.as_slice() else {
            anyhow::bail!("expected one request, got {}", got.len());
        };
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        assert_eq!(h("webhook-id"), "evt-1");
        assert_eq!(h("content-type"), "application/cloudevents+json");
        let timestamp = h("webhook-timestamp");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(timestamp.parse::<i64>().is_ok_and(|t| (now - t).abs() < 60));
        // Checked as a receiver would, from the headers and the raw body.
        let mut mac = Hmac::<Sha256>::new_from_slice(&[42; 32])?;
        mac.update(format!("evt-1.{timestamp}.").as_bytes());
        mac.update(body);
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(h("webhook-signature"), format!("v1,{expected}"));
        Ok(())
    }

    #[tokio::test]
    async fn loopback_private_and_metadata_addresses_are_refused_unless_allowed()
    -> anyhow::Result<()> {
        let got: Got = Arc::default();
        let base = receiver(got.clone()).await?;
        let port = base.rsplit(':').next().unwrap_or_default().to_owned();
        let d = Deliverer::new(AddressPolicy::default(), Duration::from_secs(5), Vec::new())?;
        for url in [
            format!("{base}/ok"),
            // A name is judged by what it resolves to.
            format!("http://localhost:{port}/ok"),
            format!("http://[::ffff:127.0.0.1]:{port}/ok"),
            "http://169.254.169.254/latest/meta-data".to_owned(),
            "http://10.0.0.1/hook".to_owned(),
        ] {
            let outcome = send(&d, &url).await;
            assert!(
                matches!(outcome, Outcome::Refused { .. }),
                "{url}: {outcome:?}"
            );
        }
        assert!(
            got.lock().map_err(|e| anyhow::anyhow!("{e}"))?.is_empty(),
            "nothing reached the receiver"
        );
        for url in ["ftp://example.com/", "http://user:pw@example.com/"] {
            let outcome = send(&d, url).await;
            assert!(
                matches!(outcome, Outcome::Refused { .. }),
                "{url}: {outcome:?}"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_name_that_rebinds_to_loopback_after_its_check_never_reaches_a_listener()
    -> anyhow::Result<()> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // A listener on loopback that counts the connections it gets.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok(_conn) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        // The attacker's resolver: a public address on the first question, loopback on
        // every one after it (DNS rebinding with a zero TTL).
        let asked = Arc::new(AtomicUsize::new(0));
        let n = asked.clone();
        let lookup: super::super::ssrf::Lookup = Arc::new(move |_host: String| {
            let first = n.fetch_add(1, Ordering::SeqCst) == 0;
            Box::pin(async move {
                Ok(vec![if first {
                    "93.184.215.14"
                        .parse()
                        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
                } else {
                    IpAddr::from([127, 0, 0, 1])
                }])
            })
        });
        let policy = Arc::new(AddressPolicy::default());
        let resolver = GuardedResolver::with_lookup(policy.clone(), lookup.clone());
        // A check made beforehand (as a registration that resolved the name would make)
        // sees the public address and passes it.
        let checked = lookup("hooks.rebind.test".into()).await?;
        assert!(policy.check(checked[0]).is_ok(), "{checked:?}");
        let d = Deliverer::with_resolver(policy, resolver, Duration::from_secs(2), Vec::new())?;
        let outcome = send(&d, &format!("http://hooks.rebind.test:{port}/hook")).await;
        assert!(
            matches!(&outcome, Outcome::Refused { reason } if reason.contains("127.0.0.1")),
            "{outcome:?}"
        );
        // The attempt asked again at connect time and was refused what it got.
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        assert_eq!(connections.load(Ordering::SeqCst), 0, "no connection");
        Ok(())
    }

    #[tokio::test]
    async fn gone_retry_after_and_timeouts_mean_what_they_say() -> anyhow::Result<()> {
        let base = receiver(Arc::default()).await?;
        let d = Deliverer::new(loopback_allowed(), Duration::from_millis(500), Vec::new())?;
        assert!(matches!(
            send(&d, &format!("{base}/gone")).await,
            Outcome::Gone { .. }
        ));
        let busy = send(&d, &format!("{base}/busy")).await;
        assert!(
            matches!(busy, Outcome::Retry { status: Some(503), after: Some(a), .. } if a == Duration::from_secs(7)),
            "{busy:?}"
        );
        let slow = send(&d, &format!("{base}/slow")).await;
        assert!(
            matches!(
                slow,
                Outcome::Retry {
                    status: None,
                    error: "timeout",
                    ..
                }
            ),
            "{slow:?}"
        );
        let missing = send(&d, &format!("{base}/nothing-here")).await;
        assert!(
            matches!(
                missing,
                Outcome::Retry {
                    status: Some(404),
                    after: None,
                    ..
                }
            ),
            "{missing:?}"
        );
        Ok(())
    }

    /// An https receiver on loopback with a certificate of its own for 127.0.0.1;
    /// gives its base URL and the certificate (PEM) to trust.
    async fn tls_receiver(got: Got) -> anyhow::Result<(String, String)> {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
        let pem = cert.cert.pem();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()),
        );
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let app = Router::new().route(
            "/ok",
            post(move |headers: AxumHeaders, body: Bytes| {
                let got = got.clone();
                async move {
                    if let Ok(mut g) = got.lock() {
                        g.push((headers, body));
                    }
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let service = hyper_util::service::TowerToHyperService::new(app);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                            .await;
                    }
                });
            }
        });
        Ok((format!("https://{addr}"), pem))
    }

    #[tokio::test]
    async fn an_https_endpoint_is_delivered_to_when_its_certificate_chains_to_a_trusted_root()
    -> anyhow::Result<()> {
        let got: Got = Arc::default();
        let (base, pem) = tls_receiver(got.clone()).await?;
        let url = format!("{base}/ok");
        // Not trusted: the attempt fails (and is retried), nothing is delivered.
        let untrusted = Deliverer::new(loopback_allowed(), Duration::from_secs(5), Vec::new())?;
        let outcome = send(&untrusted, &url).await;
        assert!(
            matches!(outcome, Outcome::Retry { status: None, .. }),
            "{outcome:?}"
        );
        assert!(got.lock().map_err(|e| anyhow::anyhow!("{e}"))?.is_empty());
        // Trusted through webhooks.ca_file's certificates: delivered.
        let roots = reqwest::Certificate::from_pem_bundle(pem.as_bytes())?;
        let trusted = Deliverer::new(loopback_allowed(), Duration::from_secs(5), roots)?;
        let outcome = send(&trusted, &url).await;
        assert!(
            matches!(outcome, Outcome::Delivered { status: 204, .. }),
            "{outcome:?}"
        );
        assert_eq!(got.lock().map_err(|e| anyhow::anyhow!("{e}"))?.len(), 1);
        Ok(())
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates_and_is_capped() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("120"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(120)));
        h.insert("retry-after", HeaderValue::from_static("99999999"));
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(
            retry_after(&h),
            Some(Duration::ZERO),
            "a date in the past: now"
        );
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }
}
