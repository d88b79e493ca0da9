//! The accept loop: axum's `serve` without the two gaps that matter for a node open to
//! third parties. Connections open at once are bounded (`http.max_open_connections`;
//! past it, new ones are not accepted until one closes and wait in the kernel's listen
//! backlog), and a request's headers must arrive within `http.header_read_timeout`
//! (hyper's timeout, which axum's `serve` leaves off), so slow or idle clients cannot hold
//! connections for ever. Requests themselves are bounded by the router's guard.
//!
//! HTTP/1.1 only, as before (axum is built without HTTP/2). On stop, the listener closes,
//! idle connections close, and those with a request in flight close after its response;
//! the caller bounds that wait with the shutdown grace.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The peer address of the connection a request came on (a request extension, for
/// throttling by client address).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// Ends the connection a request came on (a request extension): a push stream cut off
/// by its buffer's policy cancels it, since a client that does not read would otherwise
/// keep the response, and so the connection, open for ever. The connection then closes
/// once the response ends, or after [`KILL_GRACE`] if it does not.
#[derive(Debug, Clone)]
pub struct ConnectionKill(pub CancellationToken);

/// How long a cancelled connection may take to finish its response: a client cut off
/// that still reads gets what its connection holds and the reason in that time.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// The client's IP address, if the request came through [`serve`].
pub fn client_ip(addr: &Option<axum::Extension<ClientAddr>>) -> Option<std::net::IpAddr> {
    addr.as_ref().map(|a| a.0.0.ip())
}

/// Bounds on the connections a node holds.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once, idle or not.
    pub max_open: usize,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
}

/// Serves `router` on `listener` until `stop` resolves, then lets open connections
/// finish (see the module docs); returns once they have.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_open));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let closing = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let permit = tokio::select! {
            () = &mut stop => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: let some close, then go on.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small writes (push events, short answers) leave at once instead of waiting
        // for the client's delayed ACK (Nagle): the benchmark's whole latency tail.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let inner = TowerToHyperService::new(router.clone());
        let kill = CancellationToken::new();
        let killed = kill.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ClientAddr(peer));
                req.extensions_mut().insert(ConnectionKill(kill.clone()));
                hyper::service::Service::call(&inner, req)
            });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let closing = closing.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = closing.cancelled() => {
                    // Finish the request in flight, if any, then close.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
                () = killed.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(KILL_GRACE, connection.as_mut()).await {
                        Ok(ended) => ended,
                        // Dropped: the socket closes with whatever it still held.
                        Err(_) => Ok(()),
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
}
