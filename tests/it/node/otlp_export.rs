//! The node's OTLP/HTTP exporter against collectors as production runs them: `https`
//! with a private CA and a client certificate (`OTEL_EXPORTER_OTLP_CERTIFICATE`,
//! `_CLIENT_CERTIFICATE`, `_CLIENT_KEY`), gzip bodies (`OTEL_EXPORTER_OTLP_COMPRESSION`),
//! a collector answering 503 for a while (retried after its `Retry-After`, the batch
//! delivered once) and one answering a partial success (logged).

use std::time::Duration;

use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, OtlpReceiver, ReceiverOptions, SpanKind, TestCa};
use serde_json::json;

/// A node on `cluster` exporting every span to `endpoint` over OTLP/HTTP within 100 ms,
/// with the extra `OTEL_*` settings `more`.
async fn traced_node(
    cluster: &NatsCluster,
    endpoint: &str,
    more: &[(&str, String)],
) -> anyhow::Result<bus_tests::BusNode> {
    traced_node_over(cluster, endpoint, "http/protobuf", more).await
}

async fn traced_node_over(
    cluster: &NatsCluster,
    endpoint: &str,
    protocol: &str,
    more: &[(&str, String)],
) -> anyhow::Result<bus_tests::BusNode> {
    let mut env = node_env(cluster);
    env.extend([
        ("BUS__AUTH__ENABLED".into(), "false".into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.to_owned()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), protocol.to_owned()),
        ("OTEL_TRACES_SAMPLER".into(), "always_on".into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ("OTEL_SERVICE_NAME".into(), "bus-node-export".into()),
    ]);
    env.extend(more.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    start("exporting", &env).await
}

async fn one_event(node: &bus_tests::BusNode) -> anyhow::Result<()> {
    let response = post_event(
        &http()?,
        &node.url(),
        &ce("export-1", "shop.order.created", json!({"order_id": 1})),
    )
    .await?;
    anyhow::ensure!(response.status().is_success(), "{}", response.status());
    Ok(())
}

/// Exports one event's spans over `protocol` to a collector on `https` with a private CA,
/// requiring a client certificate and gzip.
async fn tls_gzip_export(protocol: &str) -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let collector = ca.issue("collector", &["127.0.0.1"])?;
    let node_cert = ca.issue("node", &["bus-node"])?;
    let receiver = OtlpReceiver::start_with_options(ReceiverOptions {
        tls: Some((collector, Some(ca.ca_pem().to_owned()))),
        require_gzip: true,
        ..ReceiverOptions::default()
    })
    .await?;
    let endpoint = if protocol == "grpc" {
        receiver.grpc_endpoint()
    } else {
        receiver.http_endpoint()
    };
    let cluster = NatsCluster::start(1).await?;
    let path = |p: &std::path::Path| p.display().to_string();
    let node = traced_node_over(
        &cluster,
        &endpoint,
        protocol,
        &[
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", path(&ca.ca_file())),
            (
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                path(&node_cert.cert_file),
            ),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", path(&node_cert.key_file)),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".into()),
        ],
    )
    .await?;
    one_event(&node).await?;
    receiver
        .wait_for("the ingress span", Duration::from_secs(20), |spans| {
            spans.iter().any(|s| s.kind == SpanKind::Server)
        })
        .await?;
    let requests = receiver.requests();
    assert!(
        !requests.is_empty()
            && requests
                .iter()
                .all(|r| r.status == 200 && r.content_encoding.as_deref() == Some("gzip")),
        "{requests:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_an_https_collector_with_a_private_ca_requiring_a_client_certificate_and_gzip_the_node_should_export_to_it_over_http()
-> anyhow::Result<()> {
    tls_gzip_export("http/protobuf").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_an_https_collector_with_a_private_ca_requiring_a_client_certificate_and_gzip_the_node_should_export_to_it_over_grpc()
-> anyhow::Result<()> {
    tls_gzip_export("grpc").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_collector_answering_503_twice_the_node_should_deliver_the_batch_once_and_log_a_partial_success()
-> anyhow::Result<()> {
    let receiver = OtlpReceiver::start_with_options(ReceiverOptions {
        fail_first: 2,
        partial_success: Some((1, "one span too many".into())),
        ..ReceiverOptions::default()
    })
    .await?;
    let cluster = NatsCluster::start(1).await?;
    let node = traced_node(&cluster, &receiver.http_endpoint(), &[]).await?;
    one_event(&node).await?;
    let spans = receiver
        .wait_for("the ingress span", Duration::from_secs(20), |spans| {
            spans.iter().any(|s| s.kind == SpanKind::Server)
        })
        .await?;
    let requests = receiver.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(&statuses[..3], &[503, 503, 200], "{requests:?}");
    // The batch that failed twice arrived once, whole.
    let mut ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let all = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all, "a span arrived twice: {spans:?}");
    logged(
        &node,
        "one span too many",
        "the partial success",
        Duration::from_secs(10),
    )
    .await
}

/// Polls the node's log until it holds `needle`, at most `within`.
async fn logged(
    node: &bus_tests::BusNode,
    needle: &str,
    what: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    while !node.log().contains(needle) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what} was not logged within {within:?}: {}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_collector_whose_certificate_is_not_trusted_the_node_should_drop_the_batch_at_once_and_log_no_credential()
-> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let collector = ca.issue("collector", &["127.0.0.1"])?;
    let receiver = OtlpReceiver::start_with_options(ReceiverOptions {
        tls: Some((collector, None)),
        ..ReceiverOptions::default()
    })
    .await?;
    // Credentials in the endpoint, and no OTEL_EXPORTER_OTLP_CERTIFICATE: the collector's
    // CA is not among the system's roots.
    let port = receiver
        .http_endpoint()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let endpoint = format!("https://key:s3cret@127.0.0.1:{port}/v1/traces?token=t0ken");
    let cluster = NatsCluster::start(1).await?;
    let node = traced_node(
        &cluster,
        &receiver.http_endpoint(),
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint),
            // Retried, a failure would be logged after a minute.
            ("OTEL_BSP_EXPORT_TIMEOUT", "60000".into()),
        ],
    )
    .await?;
    one_event(&node).await?;
    logged(
        &node,
        "not retried",
        "the TLS failure",
        Duration::from_secs(20),
    )
    .await?;
    let log = node.log();
    assert!(
        log.contains("https://REDACTED:REDACTED@127.0.0.1") && log.contains("token=REDACTED"),
        "{log}"
    );
    assert!(
        !log.contains("s3cret") && !log.contains("t0ken"),
        "a credential was logged: {log}"
    );
    let failure = log
        .lines()
        .find(|l| l.contains("not retried"))
        .unwrap_or_default();
    assert!(
        failure.contains("UnknownIssuer"),
        "the reason is in the line: {failure}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_propagators_the_bus_lacks_the_node_should_warn_and_keep_the_w3c_ones()
-> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let cluster = NatsCluster::start(1).await?;
    // A fleet-wide setting naming B3, which the bus does not implement.
    let node = traced_node(
        &cluster,
        &receiver.http_endpoint(),
        &[("OTEL_PROPAGATORS", "tracecontext,baggage,b3".into())],
    )
    .await?;
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = http()?
        .post(format!("{}/v1/events", node.url()))
        .header("content-type", "application/cloudevents+json")
        .header(
            "traceparent",
            format!("00-{caller_trace}-00f067aa0ba902b7-01"),
        )
        .body(ce("b3-1", "shop.order.created", json!({"order_id": 1})).to_string())
        .send()
        .await?;
    anyhow::ensure!(response.status().is_success(), "{}", response.status());
    let spans = receiver
        .wait_for("the ingress span", Duration::from_secs(20), |spans| {
            spans.iter().any(|s| s.name == "POST /v1/events")
        })
        .await?;
    // (The harness's health polls are SERVER spans too.)
    let server = spans
        .iter()
        .find(|s| s.name == "POST /v1/events")
        .ok_or_else(|| anyhow::anyhow!("no ingress span"))?;
    assert_eq!(
        server.trace_id, caller_trace,
        "W3C trace context still read"
    );
    let log = node.log();
    let warning = log
        .lines()
        .find(|l| l.contains("OTEL_PROPAGATORS"))
        .unwrap_or_default();
    assert!(warning.contains("WARN") && warning.contains("b3"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_batch_waiting_out_a_retry_after_a_stopping_node_should_send_it_before_exiting()
-> anyhow::Result<()> {
    // The first batch is answered 503 with `Retry-After: 20`, within the export timeout:
    // the node waits to send it again.
    let receiver = OtlpReceiver::start_with_options(ReceiverOptions {
        fail_first: 1,
        retry_after: Some(20),
        ..ReceiverOptions::default()
    })
    .await?;
    let cluster = NatsCluster::start(1).await?;
    let mut node = traced_node(
        &cluster,
        &receiver.http_endpoint(),
        &[("OTEL_BSP_EXPORT_TIMEOUT", "30000".into())],
    )
    .await?;
    one_event(&node).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while receiver.requests().is_empty() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no export attempt: {}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Stopped while it waits: the wait is cut short and the batch sent before the exit
    // (it would otherwise sleep past the flush's 5 s and exit without it).
    node.terminate()?;
    let status = node.wait_exit(Duration::from_secs(15)).await?;
    assert!(status.success(), "{status:?}: {}", node.log());
    let requests = receiver.requests();
    assert_eq!(requests[0].status, 503, "{requests:?}");
    assert!(
        requests[1..].iter().any(|r| r.status == 200 && r.spans > 0),
        "the batch that waited was sent: {requests:?}"
    );
    let spans = receiver.spans();
    assert!(
        spans.iter().any(|s| s.name == "POST /v1/events"),
        "the event's ingress span arrived: {spans:?}"
    );
    Ok(())
}
