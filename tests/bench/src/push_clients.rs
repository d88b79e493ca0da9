//! The push workload's SSE clients: many connections from this process, each one task
//! driving a hyper HTTP/1 client connection and reading the response body as it comes,
//! with the least SSE parsing that recovers what is measured: the `data:` line of each
//! event ends with the stamp the publisher put in (`{"step":K,"pub_ns":T}`, the last
//! member of the CloudEvent, read backwards from the end of the line), the hello is
//! `event: bus.push.hello`, and a cut-off is the comment `: bus.push.closed <reason>`.
//!
//! Every event's latency is its arrival (Unix nanoseconds, read once per body chunk)
//! minus its stamp, recorded per step in one of a few shards (a client records a whole
//! chunk under one lock), so that clients of one step do not contend on one histogram.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use futures::future::Either;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::header::{ACCEPT, HOST};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::hook_receiver::unix_nanos;
use crate::stats::histogram;

/// Shards of the per-step statistics.
const SHARDS: usize = 8;
/// Clients opening their connection at once (the rest wait): keeps the server's listen
/// backlog from overflowing, which would cost a SYN retransmission (a second) each.
const CONNECTING: usize = 64;
/// Attempts to open a connection that is refused or reset.
const CONNECT_ATTEMPTS: u32 = 5;
/// Longest line a client holds while waiting for its end.
const MAX_LINE: usize = 1 << 20;
/// How long the whole fleet may take to get its hellos.
const HELLO_DEADLINE: Duration = Duration::from_secs(60);

/// What the clients received of one step's events.
#[derive(Debug)]
pub struct StepStats {
    /// Events received (one per client per event).
    pub delivered: u64,
    /// When the last one came (Unix nanoseconds; 0: none came).
    pub last_ns: u64,
    /// Stamp → arrival, nanoseconds.
    pub latency: Histogram<u64>,
}

impl StepStats {
    fn new() -> Result<Self> {
        Ok(Self {
            delivered: 0,
            last_ns: 0,
            latency: histogram()?,
        })
    }

    fn merge(&mut self, other: &StepStats) -> Result<()> {
        self.delivered += other.delivered;
        self.last_ns = self.last_ns.max(other.last_ns);
        self.latency.add(&other.latency)?;
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Shard {
    steps: Vec<Option<StepStats>>,
}

#[derive(Debug)]
struct Shared {
    hellos: AtomicUsize,
    /// Streams that ended: a cut-off, or the body ending or failing.
    ended: AtomicUsize,
    /// Streams the server ended with `: bus.push.closed slow`.
    slow: AtomicUsize,
    /// Clients that could not connect or whose stream failed.
    failed: AtomicUsize,
    first_error: Mutex<Option<String>>,
    shards: Vec<Mutex<Shard>>,
    connecting: Semaphore,
}

impl Shared {
    fn shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, e: anyhow::Error) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(format!("{e:#}"));
        }
    }
}

/// `n` SSE clients of one server; dropping it closes every connection.
#[derive(Debug)]
pub struct Fleet {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Fleet {
    /// Connects `n` clients to `GET path_and_query` at `base` (`http://host:port`) and
    /// waits until each has its hello.
    pub async fn connect(base: &str, path_and_query: &str, n: usize) -> Result<Self> {
        let authority = base
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("{base}: not an http:// URL"))?;
        let addr: SocketAddr = authority
            .parse()
            .with_context(|| format!("{authority}: not an address"))?;
        let shared = Arc::new(Shared {
            hellos: AtomicUsize::new(0),
            ended: AtomicUsize::new(0),
            slow: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            first_error: Mutex::new(None),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            connecting: Semaphore::new(CONNECTING),
        });
        let target: Arc<(String, String)> =
            Arc::new((authority.to_owned(), path_and_query.to_owned()));
        let tasks = (0..n)
            .map(|i| {
                let (shared, target) = (shared.clone(), target.clone());
                tokio::spawn(async move {
                    let result = client(i, addr, &target.0, &target.1, &shared).await;
                    shared.ended.fetch_add(1, Ordering::SeqCst);
                    if let Err(e) = result {
                        shared.fail(e);
                    }
                })
            })
            .collect();
        let fleet = Fleet { shared, tasks };
        fleet.wait_hellos(n).await?;
        Ok(fleet)
    }

    async fn wait_hellos(&self, n: usize) -> Result<()> {
        let until = tokio::time::Instant::now() + HELLO_DEADLINE;
        loop {
            let hellos = self.shared.hellos.load(Ordering::SeqCst);
            if hellos >= n {
                return Ok(());
            }
            if self.shared.failed.load(Ordering::SeqCst) > 0 {
                bail!(
                    "{hellos} of {n} clients connected; a client failed: {}",
                    self.first_error().unwrap_or_default()
                );
            }
            if tokio::time::Instant::now() > until {
                bail!("{hellos} of {n} clients had their hello after {HELLO_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Clients whose stream still runs.
    pub fn alive(&self) -> usize {
        self.tasks
            .len()
            .saturating_sub(self.shared.ended.load(Ordering::SeqCst))
    }

    /// Clients the server cut off as slow so far.
    pub fn cut_slow(&self) -> usize {
        self.shared.slow.load(Ordering::SeqCst)
    }

    /// Clients that failed (not counting cut-offs) so far.
    pub fn failed(&self) -> usize {
        self.shared.failed.load(Ordering::SeqCst)
    }

    pub fn first_error(&self) -> Option<String> {
        self.shared
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Events of `step` received so far, by every client.
    pub fn delivered(&self, step: usize) -> u64 {
        (0..SHARDS)
            .map(|i| {
                self.shared
                    .shard(i)
                    .steps
                    .get(step)
                    .and_then(Option::as_ref)
                    .map_or(0, |s| s.delivered)
            })
            .sum()
    }

    /// What every client received of `step`, taken (a later event of that step starts
    /// it again).
    pub fn take(&self, step: usize) -> Result<StepStats> {
        let mut all = StepStats::new()?;
        for i in 0..SHARDS {
            let taken = self
                .shared
                .shard(i)
                .steps
                .get_mut(step)
                .and_then(Option::take);
            if let Some(s) = taken {
                all.merge(&s)?;
            }
        }
        Ok(all)
    }
}

async fn open(addr: SocketAddr) -> Result<TcpStream> {
    let mut attempt = 0;
    loop {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e)
                if attempt + 1 < CONNECT_ATTEMPTS
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ) =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {addr}")),
        }
    }
}

/// One client: connects, asks, reads until the stream ends.
async fn client(
    i: usize,
    addr: SocketAddr,
    authority: &str,
    path_and_query: &str,
    shared: &Shared,
) -> Result<()> {
    let slot = shared.connecting.acquire().await?;
    let stream = open(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
    let request = Request::get(path_and_query)
        .header(HOST, authority)
        .header(ACCEPT, "text/event-stream")
        .body(Empty::new())?;
    let read = async move {
        let response = sender.send_request(request).await?;
        // No second request: the connection ends with this response.
        drop(sender);
        drop(slot);
        let status = response.status();
        if status != hyper::StatusCode::OK {
            let body = response.into_body().collect().await?.to_bytes();
            bail!("{status}: {}", String::from_utf8_lossy(&body));
        }
        let mut body = response.into_body();
        let mut reader = Reader::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("reading the stream")?;
            if let Some(data) = frame.data_ref() {
                reader.chunk(i, data, shared)?;
            }
        }
        if let Some(reason) = reader.closed {
            if reason == "slow" {
                shared.slow.fetch_add(1, Ordering::SeqCst);
            }
            return Ok(());
        }
        bail!("the stream ended without a bus.push.closed comment")
    };
    let read = std::pin::pin!(read);
    let connection = std::pin::pin!(connection);
    match futures::future::select(read, connection).await {
        Either::Left((read, _)) => read,
        Either::Right((connection, read)) => {
            connection.context("the connection")?;
            // The body may still hold what the connection read before it ended.
            read.await
        }
    }
}

/// One client's place in its stream: the end of a line that the next chunk finishes,
/// whether its hello came, why the server ended it.
#[derive(Debug, Default)]
struct Reader {
    carry: Vec<u8>,
    hello: bool,
    closed: Option<String>,
    /// (step, stamp) of the events of the current chunk.
    stamps: Vec<(usize, u64)>,
}

impl Reader {
    fn chunk(&mut self, client: usize, data: &[u8], shared: &Shared) -> Result<()> {
        let mut rest = data;
        if !self.carry.is_empty() {
            match rest.iter().position(|b| *b == b'\n') {
                None => {
                    self.carry.extend_from_slice(rest);
                    anyhow::ensure!(self.carry.len() <= MAX_LINE, "a line over {MAX_LINE} bytes");
                    return Ok(());
                }
                Some(end) => {
                    let mut line = std::mem::take(&mut self.carry);
                    line.extend_from_slice(&rest[..end]);
                    self.line(&line);
                    line.clear();
                    self.carry = line;
                    rest = &rest[end + 1..];
                }
            }
        }
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            self.line(&rest[..end]);
            rest = &rest[end + 1..];
        }
        self.carry.extend_from_slice(rest);
        anyhow::ensure!(self.carry.len() <= MAX_LINE, "a line over {MAX_LINE} bytes");
        if self.hello {
            self.hello = false;
            shared.hellos.fetch_add(1, Ordering::SeqCst);
        }
        if !self.stamps.is_empty() {
            let now = unix_nanos();
            let mut shard = shared.shard(client);
            for (step, stamp) in self.stamps.drain(..) {
                if shard.steps.len() <= step {
                    shard.steps.resize_with(step + 1, || None);
                }
                let stats = match &mut shard.steps[step] {
                    Some(s) => s,
                    slot => slot.insert(StepStats::new()?),
                };
                stats.delivered += 1;
                stats.last_ns = stats.last_ns.max(now);
                let _ = stats.latency.record(now.saturating_sub(stamp).max(1));
            }
        }
        Ok(())
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(data) = line.strip_prefix(b"data: ") {
            if let Some(stamp) = stamp(data) {
                self.stamps.push(stamp);
            }
        } else if line == b"event: bus.push.hello" {
            self.hello = true;
        } else if let Some(reason) = line.strip_prefix(b": bus.push.closed ") {
            self.closed = Some(String::from_utf8_lossy(reason).into_owned());
        }
    }
}

/// The stamp at the end of an event's JSON: `...,"data":{"step":K,"pub_ns":T}}`.
pub fn stamp(json: &[u8]) -> Option<(usize, u64)> {
    let rest = json.strip_suffix(b"}}")?;
    let (rest, pub_ns) = trailing_number(rest)?;
    let rest = rest.strip_suffix(b",\"pub_ns\":")?;
    let (rest, step) = trailing_number(rest)?;
    rest.strip_suffix(b"{\"step\":")?;
    Some((usize::try_from(step).ok()?, pub_ns))
}

fn trailing_number(b: &[u8]) -> Option<(&[u8], u64)> {
    let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let (rest, number) = b.split_at(b.len() - digits);
    Some((rest, std::str::from_utf8(number).ok()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_is_read_from_the_end_of_the_json() {
        let json =
            br#"{"specversion":"1.0","id":"x","data":{"step":3,"pub_ns":1764787200123456789}}"#;
        assert_eq!(stamp(json), Some((3, 1_764_787_200_123_456_789)));
        assert_eq!(stamp(br#"{"data":{"pub_ns":1,"step":3}}"#), None);
        assert_eq!(stamp(br#"{"data":{"step":,"pub_ns":1}}"#), None);
    }

    #[test]
    fn lines_split_across_chunks_are_joined() -> Result<()> {
        let shared = Shared {
            hellos: AtomicUsize::new(0),
            ended: AtomicUsize::new(0),
            slow: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            first_error: Mutex::new(None),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            connecting: Semaphore::new(1),
        };
        let mut r = Reader::default();
        let text = "retry: 2000\n\nevent: bus.push.hello\ndata: {}\n\nid: E:1\nevent: t\n\
                    data: {\"data\":{\"step\":0,\"pub_ns\":5}}\n\n: bus.push.closed slow\n\n";
        for piece in text.as_bytes().chunks(7) {
            r.chunk(0, piece, &shared)?;
        }
        assert_eq!(shared.hellos.load(Ordering::SeqCst), 1);
        assert_eq!(r.closed.as_deref(), Some("slow"));
        let steps = &shared.shard(0).steps;
        assert_eq!(
            steps.first().and_then(Option::as_ref).map(|s| s.delivered),
            Some(1)
        );
        Ok(())
    }
}
