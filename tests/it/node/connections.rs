//! The node's connections: a client that does not finish its headers is cut off, the
//! connections open at once are bounded (past it, new ones wait until one closes), and an
//! answer given before the request's body was read says `Connection: close`, so that no
//! client sends its next request on a connection the node is closing.

use std::time::Duration;

use bus_tests::fixtures::*;
use bus_tests::{BusNode, NatsCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An open node on a fresh single server, with one more setting.
async fn node_with(name: &str, key: &str, value: &str) -> anyhow::Result<(NatsCluster, BusNode)> {
    let cluster = NatsCluster::start(1).await?;
    let mut env = node_env(&cluster);
    env.push(("BUS__AUTH__ENABLED".into(), "false".into()));
    env.push((key.into(), value.into()));
    let node = start(name, &env).await?;
    Ok((cluster, node))
}

/// The status `/healthz` answers, through a fresh connection.
async fn healthz(node: &BusNode) -> anyhow::Result<u16> {
    let url = format!("{}/healthz", node.url());
    Ok(http()?.get(url).send().await?.status().as_u16())
}

/// `host:port` of a node's `http://host:port` URL.
fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_client_that_never_finishes_its_headers_the_node_should_close_the_connection()
-> anyhow::Result<()> {
    let (_cluster, node) =
        node_with("slow-headers", "BUS__HTTP__HEADER_READ_TIMEOUT", "300ms").await?;
    let mut slow = TcpStream::connect(addr(&node.url())).await?;
    slow.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
        .await?;
    // The node answers (408, or nothing) and closes: reading reaches the end.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the connection was still open after 10 s: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // The node still serves others.
    assert_eq!(healthz(&node).await?, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_open_connection_bound_is_reached_a_new_one_should_wait_until_one_closes()
-> anyhow::Result<()> {
    let (_cluster, node) =
        node_with("two-connections", "BUS__HTTP__MAX_OPEN_CONNECTIONS", "2").await?;
    let first = TcpStream::connect(addr(&node.url())).await?;
    let _second = TcpStream::connect(addr(&node.url())).await?;
    // A third client gets no answer while the two stay open...
    bus_core::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()?;
    let waiting = client.get(format!("{}/healthz", node.url())).send().await;
    assert!(
        waiting.as_ref().is_err_and(reqwest::Error::is_timeout),
        "answered past the bound: {waiting:?}"
    );
    // ...and one as soon as one of them closes.
    drop(first);
    assert_eq!(healthz(&node).await?, 200);
    Ok(())
}

/// Sends `request` on a fresh connection and reads the answer's head.
async fn head_of(node: &BusNode, request: &[u8]) -> anyhow::Result<String> {
    let mut conn = TcpStream::connect(addr(&node.url())).await?;
    conn.write_all(request).await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "closed before a whole head: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&answer).to_lowercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_an_answer_before_the_body_is_read_it_should_say_connection_close()
-> anyhow::Result<()> {
    let (_cluster, node) = node_with("unread-body", "BUS__HTTP__MAX_BODY_BYTES", "1024").await?;
    // Refused for its declared size: the 2 MiB it announces are never sent.
    let refused = head_of(
        &node,
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\ncontent-type: application/cloudevents+json\r\ncontent-length: 2097152\r\n\r\n",
    )
    .await?;
    assert!(refused.starts_with("http/1.1 413"), "{refused}");
    assert!(refused.contains("connection: close"), "{refused}");
    // Read to its end and answered: the connection stays open for the next request.
    let body = ce("kept-1", "shop.a", serde_json::json!(1)).to_string();
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\ncontent-type: application/cloudevents+json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let accepted = head_of(&node, request.as_bytes()).await?;
    assert!(accepted.starts_with("http/1.1 202"), "{accepted}");
    assert!(!accepted.contains("connection: close"), "{accepted}");
    Ok(())
}
