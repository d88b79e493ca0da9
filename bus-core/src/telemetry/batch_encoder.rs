//! The span processor behind OTLP/HTTP export: a span is written into OTLP protobuf
//! bytes when it ends, on the thread that ends it, and a background thread posts what
//! has gathered as one request.
//!
//! Why not the SDK's `BatchSpanProcessor` + an exporter: it moves every finished
//! `SpanData` (~400 bytes) through a channel into a batch and then into the exporter,
//! and frees its strings on the export thread, away from the allocator cache of the
//! thread that made them. Per publish span that was about 2 k instructions of copying,
//! channel and cross-thread frees (BENCHMARKS.md, "Profile, fourth round"). Here a span
//! is encoded and dropped where it ends; what crosses threads is bytes.
//!
//! Bounded: at most `max_queue` spans (`OTEL_BSP_MAX_QUEUE_SIZE`) and [`MAX_QUEUE_BYTES`]
//! wait for export; when either is reached, new spans are dropped (counted, and the count
//! logged with the next export), so a slow or dead collector never slows the bus down.
//! The thread posts when `max_batch` spans (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`) have
//! gathered, every `delay` (`OTEL_BSP_SCHEDULE_DELAY`) otherwise, and on flush; one
//! request carries everything waiting.

use std::cell::RefCell;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use super::http_export::HttpSpanExporter;
use super::otlp_wire::{self, EncodedResource};

/// Most bytes of encoded spans that wait for export, whatever their count.
pub(crate) const MAX_QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// About the encoded size of a publish span.
const TYPICAL_SPAN_BYTES: usize = 400;

/// When spans are posted and how many may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchLimits {
    /// Most spans waiting; more are dropped.
    pub(crate) max_queue: usize,
    /// Post as soon as this many wait.
    pub(crate) max_batch: usize,
    /// Post at least this often while spans wait.
    pub(crate) delay: Duration,
}

/// Where encoded batches go.
pub(crate) trait Sink: Send + 'static {
    /// Sends one encoded `ExportTraceServiceRequest`; blocks at most [`Sink::timeout`];
    /// once a flush or a shutdown waits, its retries (not its first attempt) stop at
    /// [`Hurry::by`].
    fn send(&self, request: Vec<u8>, hurry: &Hurry) -> Result<(), String>;
    /// The longest one send may take.
    fn timeout(&self) -> Duration;
}

impl Sink for HttpSpanExporter {
    fn send(&self, request: Vec<u8>, hurry: &Hurry) -> Result<(), String> {
        self.post(request, hurry)
    }

    fn timeout(&self) -> Duration {
        HttpSpanExporter::timeout(self)
    }
}

/// Set while a flush or a shutdown waits for the export thread: a send between retries
/// waits the backoff at most instead of a collector's `Retry-After`, and retries only
/// until the waiter's deadline, instead of sleeping past it with the batch, and every
/// span queued behind it, then lost.
#[derive(Debug, Default)]
pub(crate) struct Hurry {
    by: Mutex<Option<Instant>>,
    wake: Condvar,
}

impl Hurry {
    fn lock(&self) -> MutexGuard<'_, Option<Instant>> {
        self.by.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Someone starts waiting until `by`, while a send may be in progress: the earliest
    /// deadline holds.
    fn add(&self, by: Instant) {
        let mut at = self.lock();
        *at = Some(at.map_or(by, |a| a.min(by)));
        self.wake.notify_all();
    }

    /// The batch taken now is awaited until `by` (the earliest of its waiters whose
    /// deadline is still ahead), or by no one: what earlier, answered waiters asked no
    /// longer holds, and a batch whose waiters' deadlines have passed gets its whole
    /// export timeout (its spans still go out).
    fn reset(&self, by: Option<Instant>) {
        *self.lock() = by.filter(|by| *by > Instant::now());
    }

    /// When the send in progress must be done by, if someone waits.
    pub(crate) fn by(&self) -> Option<Instant> {
        *self.lock()
    }

    /// Sleeps `wait` (a collector's `Retry-After`, or the backoff); once someone waits
    /// (one who starts waiting meanwhile included), only `short` (the backoff) from the
    /// start, and not at all when that would reach their deadline (the caller then makes
    /// one last attempt at once, bounded by what is left before it).
    pub(crate) fn sleep(&self, wait: Duration, short: Duration) {
        let start = Instant::now();
        let mut until = start + wait;
        let mut at = self.lock();
        loop {
            if let Some(by) = *at {
                if start + short >= by {
                    return;
                }
                until = until.min(start + short);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            at = self
                .wake
                .wait_timeout(at, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Spans written per scope, waiting for the export thread.
#[derive(Debug, Default)]
struct Pending {
    scopes: Vec<(InstrumentationScope, Vec<u8>)>,
    /// Where in `scopes` the [`Direct`] handle's spans go, once found (comparing scopes
    /// costs ~170 instructions; the `Direct` scope never changes).
    direct_slot: Option<usize>,
    spans: usize,
    bytes: usize,
    dropped: u64,
    /// Flush callers, answered once what was waiting when they asked has been sent; each
    /// with the time its send should be done by (see [`Hurry`]).
    flushes: Vec<(SyncSender<Result<(), String>>, Instant)>,
    shutdown: Option<(SyncSender<Result<(), String>>, Instant)>,
    stopped: bool,
}

impl Pending {
    fn wants_export(&self, max_batch: usize) -> bool {
        self.spans >= max_batch || !self.flushes.is_empty() || self.shutdown.is_some()
    }

    fn add(&mut self, scope: Scope<'_>, entry: &[u8], limits: &BatchLimits) {
        // Nearly always one scope (the bus's tracer): check the last one first.
        let find = |s| self.scopes.iter().rposition(|(x, _)| x == s);
        let i = match scope {
            Scope::Direct(s) => self.direct_slot.or_else(|| find(s)),
            Scope::Span(s) => find(s),
        };
        let i = match i {
            Some(i) => i,
            None => {
                let scope = scope.get();
                // Room for a batch of typical spans, so that it does not grow by doubling
                // (the buffers are kept from batch to batch).
                let room = limits.max_batch.min(4096) * TYPICAL_SPAN_BYTES;
                self.scopes
                    .push((scope.clone(), Vec::with_capacity(room.min(MAX_QUEUE_BYTES))));
                self.scopes.len() - 1
            }
        };
        if let Scope::Direct(_) = scope {
            self.direct_slot = Some(i);
        }
        self.scopes[i].1.extend_from_slice(entry);
        self.spans += 1;
        self.bytes += entry.len();
    }
}

/// The scope a span is queued under: an SDK span's own, or the [`Direct`] handle's.
#[derive(Debug, Clone, Copy)]
enum Scope<'a> {
    Span(&'a InstrumentationScope),
    Direct(&'a InstrumentationScope),
}

impl<'a> Scope<'a> {
    fn get(self) -> &'a InstrumentationScope {
        match self {
            Scope::Span(s) | Scope::Direct(s) => s,
        }
    }
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    limits: BatchLimits,
    /// Locked after `pending` when both are (never the other way round).
    hurry: Hurry,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Nothing leaves `Pending` half-changed on a panic: keep using it.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes one span entry with `write` (into this thread's scratch buffer) and queues
    /// it under `scope`, or counts it dropped when the queue is full or stopped.
    fn queue(&self, scope: Scope<'_>, write: impl FnOnce(&mut Vec<u8>)) {
        SCRATCH.with_borrow_mut(|entry| {
            entry.clear();
            write(entry);
            let limits = self.limits;
            let wake = {
                let mut p = self.lock();
                if p.stopped
                    || p.spans >= limits.max_queue
                    || p.bytes + entry.len() > MAX_QUEUE_BYTES
                {
                    p.dropped += 1;
                    return;
                }
                p.add(scope, entry, &limits);
                p.spans == limits.max_batch
            };
            if wake {
                self.wake.notify_one();
            }
        });
    }
}

/// Queues spans the bus encodes itself (the publish span, `publish_span.rs`) into an
/// encoder's batches, under one instrumentation scope.
#[derive(Debug, Clone)]
pub(crate) struct Direct {
    shared: Arc<Shared>,
    scope: InstrumentationScope,
}

impl Direct {
    /// Queues the `ScopeSpans.spans` entry that `write` appends.
    pub(crate) fn queue(&self, write: impl FnOnce(&mut Vec<u8>)) {
        self.shared.queue(Scope::Direct(&self.scope), write);
    }
}

/// Encodes ended spans where they end and posts them from a thread of its own.
#[derive(Debug)]
pub(crate) struct BatchEncoder {
    shared: Arc<Shared>,
    /// Set by the provider before the first span; read by the export thread.
    resource: Arc<Mutex<EncodedResource>>,
    /// Bounds a flush or shutdown wait: one send, plus a margin.
    wait: Duration,
}

thread_local! {
    /// Where a span is written before it is appended under the lock (kept per thread, so
    /// writing allocates nothing once it has grown).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl BatchEncoder {
    /// Starts the export thread, which sends through `sink`.
    pub(crate) fn start(sink: impl Sink, limits: BatchLimits) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            limits,
            hurry: Hurry::default(),
        });
        let resource = Arc::new(Mutex::new(EncodedResource::default()));
        let wait = sink.timeout() + Duration::from_secs(1);
        let (thread_shared, thread_resource) = (shared.clone(), resource.clone());
        std::thread::Builder::new()
            .name("bus-otlp-export".into())
            .spawn(move || export_loop(&thread_shared, &thread_resource, &sink))?;
        Ok(Self {
            shared,
            resource,
            wait,
        })
    }

    /// A handle that queues spans encoded elsewhere into this encoder's batches, under
    /// `scope`.
    pub(crate) fn direct(&self, scope: InstrumentationScope) -> Direct {
        Direct {
            shared: self.shared.clone(),
            scope,
        }
    }

    /// Asks the export thread for something (`ask` registers the answer's sender with
    /// the time its send should be done by, or says no when the encoder is stopping) and
    /// waits for its answer, at most `wait`; the retries of the sends before the answer
    /// stop at three quarters of it.
    fn ask(
        &self,
        wait: Duration,
        ask: impl FnOnce(&mut Pending, (SyncSender<Result<(), String>>, Instant)) -> bool,
    ) -> OTelSdkResult {
        let (tx, rx) = sync_channel(1);
        {
            let by = Instant::now() + wait * 3 / 4;
            let mut p = self.shared.lock();
            if p.stopped || !ask(&mut p, (tx, by)) {
                return Err(OTelSdkError::AlreadyShutdown);
            }
            // A send in progress is ahead of this one's batch: it hurries too.
            self.shared.hurry.add(by);
        }
        self.shared.wake.notify_one();
        match rx.recv_timeout(wait) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(OTelSdkError::InternalFailure(e)),
            Err(_) => Err(OTelSdkError::Timeout(wait)),
        }
    }
}

impl SpanProcessor for BatchEncoder {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        self.shared
            .queue(Scope::Span(&span.instrumentation_scope), |out| {
                otlp_wire::put_span_entry(out, &span)
            });
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Bounded like a shutdown: a flush against a dead collector must not hold a
        // process's exit for a whole export timeout with its retries.
        self.ask(self.wait.min(super::SHUTDOWN_DEADLINE), |p, waiter| {
            p.flushes.push(waiter);
            true
        })
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.ask(timeout.min(self.wait), |p, waiter| {
            // One shutdown: a second caller is told so, the first keeps its answer.
            if p.shutdown.is_some() {
                return false;
            }
            p.shutdown = Some(waiter);
            true
        })
    }

    fn set_resource(&mut self, resource: &Resource) {
        let encoded = otlp_wire::encode_resource(resource);
        *self.resource.lock().unwrap_or_else(PoisonError::into_inner) = encoded;
    }
}

/// The export thread: waits for a full batch, a flush, a shutdown or the delay, takes
/// everything waiting and sends it as one request.
fn export_loop(shared: &Shared, resource: &Mutex<EncodedResource>, sink: &impl Sink) {
    let limits = shared.limits;
    let mut spare: Vec<(InstrumentationScope, Vec<u8>)> = Vec::new();
    let mut request = Vec::new();
    let mut health = ExportHealth::default();
    loop {
        let deadline = Instant::now() + limits.delay;
        let (mut batch, dropped, flushes, shutdown) = {
            let mut p = shared.lock();
            while !p.wants_export(limits.max_batch) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                p = shared
                    .wake
                    .wait_timeout(p, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            let batch = std::mem::replace(&mut p.scopes, std::mem::take(&mut spare));
            p.direct_slot = None;
            p.spans = 0;
            p.bytes = 0;
            let shutdown = p.shutdown.take();
            p.stopped = shutdown.is_some();
            // This batch's waiters, if any, bound its send; no one else's do.
            let by = p.flushes.iter().chain(&shutdown).map(|(_, by)| *by).min();
            shared.hurry.reset(by);
            (
                batch,
                std::mem::take(&mut p.dropped),
                std::mem::take(&mut p.flushes),
                shutdown,
            )
        };
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "span queue full (OTEL_BSP_MAX_QUEUE_SIZE): spans dropped"
            );
        }
        let mut result = Ok(());
        if batch.iter().any(|(_, entries)| !entries.is_empty()) {
            request.clear();
            otlp_wire::put_request(
                &mut request,
                &resource.lock().unwrap_or_else(PoisonError::into_inner),
                &batch,
            );
            result = sink.send(std::mem::take(&mut request), &shared.hurry);
            match &result {
                Err(e) => {
                    if health.failed() {
                        tracing::warn!(
                            error = %e,
                            "span export failing: batches are dropped until the collector answers \
                             (one warning; the recovery is logged)"
                        );
                    } else {
                        tracing::debug!(error = %e, "span export failed again; the batch is dropped");
                    }
                }
                Ok(()) => {
                    if let Some(failed) = health.succeeded() {
                        tracing::info!(failed, "span export recovered after failed batches");
                    }
                }
            }
        }
        // Keep the scopes and their buffers for the next batch.
        batch.iter_mut().for_each(|(_, entries)| entries.clear());
        spare = batch;
        for (flush, _) in flushes {
            let _ = flush.try_send(result.clone());
        }
        if let Some((done, _)) = shutdown {
            let _ = done.try_send(result);
            return;
        }
    }
}

/// Whether export is failing, so that a dead collector is one warning, not one per batch.
#[derive(Debug, Default)]
struct ExportHealth {
    /// Failed batches since the last one that went through.
    failing: u64,
}

impl ExportHealth {
    /// A batch failed; true when it is the first of a run of failures (warn then).
    fn failed(&mut self) -> bool {
        self.failing += 1;
        self.failing == 1
    }

    /// A batch went through; the failed batches before it, if there were any.
    fn succeeded(&mut self) -> Option<u64> {
        let failed = std::mem::take(&mut self.failing);
        (failed > 0).then_some(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::ExportHealth;

    #[test]
    fn a_dead_collector_is_one_warning_and_its_recovery_one_line() {
        let mut h = ExportHealth::default();
        assert!(h.failed(), "the first failure warns");
        assert!(!h.failed() && !h.failed(), "later ones do not");
        assert_eq!(h.succeeded(), Some(3));
        assert_eq!(h.succeeded(), None);
        assert!(h.failed(), "a new run of failures warns again");
    }

    use std::sync::mpsc::{Receiver, channel};

    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
    use prost::Message;

    use super::*;

    /// Hands each request to the test, decoded.
    struct Capture(Mutex<std::sync::mpsc::Sender<ExportTraceServiceRequest>>);

    impl Sink for Capture {
        fn send(&self, request: Vec<u8>, _hurry: &Hurry) -> Result<(), String> {
            let decoded =
                ExportTraceServiceRequest::decode(request.as_slice()).map_err(|e| e.to_string())?;
            let tx = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            tx.send(decoded).map_err(|e| e.to_string())
        }

        fn timeout(&self) -> Duration {
            Duration::from_secs(2)
        }
    }

    fn provider(limits: BatchLimits) -> (SdkTracerProvider, Receiver<ExportTraceServiceRequest>) {
        sampled_by(limits, Sampler::AlwaysOn)
    }

    fn sampled_by(
        limits: BatchLimits,
        sampler: Sampler,
    ) -> (SdkTracerProvider, Receiver<ExportTraceServiceRequest>) {
        let (tx, rx) = channel();
        let encoder = match BatchEncoder::start(Capture(Mutex::new(tx)), limits) {
            Ok(e) => e,
            Err(e) => panic!("start: {e}"),
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(encoder)
            .with_sampler(sampler)
            .with_resource(Resource::builder().with_service_name("svc").build())
            .build();
        (provider, rx)
    }

    fn names(requests: &[ExportTraceServiceRequest]) -> Vec<String> {
        requests
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|s| s.name.clone())
            .collect()
    }

    /// Says, for each batch, whether its send was hurried.
    struct Hurried(Mutex<std::sync::mpsc::Sender<Option<Instant>>>);

    impl Sink for Hurried {
        fn send(&self, _request: Vec<u8>, hurry: &Hurry) -> Result<(), String> {
            let tx = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            tx.send(hurry.by()).map_err(|e| e.to_string())
        }

        fn timeout(&self) -> Duration {
            // A flush then waits 1 s and hurries sends to 0.75 s.
            Duration::ZERO
        }
    }

    #[test]
    fn a_flush_hurries_its_own_batch_and_not_the_next_one() {
        let (tx, rx) = channel();
        let limits = BatchLimits {
            max_queue: 8,
            max_batch: 100,
            delay: Duration::from_millis(50),
        };
        let encoder = match BatchEncoder::start(Hurried(Mutex::new(tx)), limits) {
            Ok(e) => e,
            Err(e) => panic!("start: {e}"),
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(encoder)
            .build();
        let tracer = provider.tracer("bus");
        tracer.start("flushed").end();
        assert!(provider.force_flush().is_ok());
        let flushed: Vec<_> = rx.try_iter().collect();
        assert!(
            flushed.last().is_some_and(Option::is_some),
            "the flushed batch was hurried: {flushed:?}"
        );
        // The next batch goes by the timer, awaited by no one: its whole export timeout.
        tracer.start("later").end();
        let later = rx.recv_timeout(Duration::from_secs(10));
        assert!(matches!(later, Ok(None)), "{later:?}");
        // A flush after the first one's deadline has passed is bound by its own.
        std::thread::sleep(Duration::from_millis(800));
        let asked = Instant::now();
        tracer.start("flushed again").end();
        assert!(provider.force_flush().is_ok());
        let again: Vec<_> = rx.try_iter().collect();
        assert!(
            again
                .last()
                .is_some_and(|by| by.is_some_and(|by| by > asked)),
            "hurried to its own deadline, not a past one: {again:?}"
        );
        assert!(provider.shutdown().is_ok());
    }

    #[test]
    fn a_hurried_sleep_waits_the_short_wait_or_not_at_all() {
        // Someone waits, their deadline far: the short wait (the backoff), not the long.
        let hurry = Hurry::default();
        hurry.add(Instant::now() + Duration::from_secs(20));
        let started = Instant::now();
        hurry.sleep(Duration::from_secs(30), Duration::from_millis(100));
        let slept = started.elapsed();
        assert!(
            slept >= Duration::from_millis(100) && slept < Duration::from_secs(20),
            "{slept:?}"
        );
        // The short wait would reach their deadline: no wait (no time to retry).
        let near = Hurry::default();
        near.add(Instant::now() + Duration::from_secs(5));
        let started = Instant::now();
        near.sleep(Duration::from_secs(30), Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(5));
        // Reset by a batch awaited by no one (or only by waiters whose deadline has
        // passed): the whole wait.
        near.reset(Some(Instant::now()));
        assert_eq!(near.by(), None, "a passed deadline binds no batch");
        let plain = Instant::now();
        near.sleep(Duration::from_millis(20), Duration::ZERO);
        assert!(plain.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn someone_starting_to_wait_cuts_a_long_sleep_to_the_short_one() {
        let hurry = Arc::new(Hurry::default());
        let waiter = hurry.clone();
        let started = Instant::now();
        let sleeper = std::thread::spawn(move || {
            waiter.sleep(Duration::from_secs(60), Duration::from_millis(50));
        });
        // Someone waits, with a deadline far off: the sleep ends after its short wait.
        hurry.add(Instant::now() + Duration::from_secs(50));
        assert!(sleeper.join().is_ok());
        assert!(
            started.elapsed() < Duration::from_secs(50),
            "{:?}",
            started.elapsed()
        );
    }

    /// Posts only on flush (the batch size is never reached) and holds 8 spans.
    const SLOW: BatchLimits = BatchLimits {
        max_queue: 8,
        max_batch: 100,
        delay: Duration::from_secs(3600),
    };

    #[test]
    fn given_ended_spans_should_post_them_on_flush_with_resource_and_scope() {
        let (provider, rx) = provider(SLOW);
        let bus = provider.tracer("bus");
        let other = provider.tracer("other");
        bus.start("one").end();
        other.start("two").end();
        bus.start("three").end();
        assert!(provider.force_flush().is_ok());
        let requests: Vec<_> = rx.try_iter().collect();
        assert_eq!(requests.len(), 1, "one request per flush");
        assert_eq!(names(&requests), ["one", "three", "two"]);
        let rs = &requests[0].resource_spans[0];
        let scopes: Vec<_> = rs
            .scope_spans
            .iter()
            .filter_map(|s| s.scope.as_ref().map(|s| s.name.clone()))
            .collect();
        assert_eq!(scopes, ["bus", "other"]);
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name");
        assert!(service.is_some(), "the resource travels with the spans");
        assert!(provider.shutdown().is_ok());
    }

    /// Each request's spans as (scope, span names).
    fn by_scope(requests: &[ExportTraceServiceRequest]) -> Vec<Vec<(String, Vec<String>)>> {
        requests
            .iter()
            .map(|r| {
                r.resource_spans
                    .iter()
                    .flat_map(|rs| &rs.scope_spans)
                    .map(|ss| {
                        let scope = ss.scope.as_ref().map(|s| s.name.clone());
                        let names = ss.spans.iter().map(|s| s.name.clone()).collect();
                        (scope.unwrap_or_default(), names)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn given_direct_spans_should_post_them_under_their_scope_in_every_batch() {
        let (tx, rx) = channel();
        let encoder = match BatchEncoder::start(Capture(Mutex::new(tx)), SLOW) {
            Ok(e) => e,
            Err(e) => panic!("start: {e}"),
        };
        let direct = encoder.direct(InstrumentationScope::builder("direct").build());
        let provider = SdkTracerProvider::builder()
            .with_span_processor(encoder)
            .build();
        let other = provider.tracer("other");
        // A span entry with only a name (`Span.name` is field 5).
        let named = |name: String| {
            move |out: &mut Vec<u8>| {
                otlp_wire::nested(out, 2, 1, |out| otlp_wire::put_string(out, 5, &name))
            }
        };
        // The scopes arrive in another order in each batch (and batches alternate
        // between two kept lists): the direct spans must follow their own scope.
        for round in 0..3 {
            if round % 2 == 0 {
                other.start(format!("o{round}")).end();
                direct.queue(named(format!("d{round}")));
            } else {
                direct.queue(named(format!("d{round}")));
                other.start(format!("o{round}")).end();
            }
            assert!(provider.force_flush().is_ok());
        }
        let mut got = by_scope(&rx.try_iter().collect::<Vec<_>>());
        for request in &mut got {
            request.sort();
        }
        let want: Vec<Vec<(String, Vec<String>)>> = (0..3)
            .map(|round| {
                vec![
                    ("direct".to_owned(), vec![format!("d{round}")]),
                    ("other".to_owned(), vec![format!("o{round}")]),
                ]
            })
            .collect();
        assert_eq!(got, want);
        assert!(provider.shutdown().is_ok());
    }

    #[test]
    fn given_a_full_batch_should_post_it_without_waiting_for_the_delay() {
        let (provider, rx) = provider(BatchLimits {
            max_queue: 64,
            max_batch: 4,
            delay: Duration::from_secs(3600),
        });
        let tracer = provider.tracer("bus");
        for i in 0..4 {
            tracer.start(format!("s{i}")).end();
        }
        let got = rx.recv_timeout(Duration::from_secs(10));
        assert!(got.is_ok_and(|r| names(&[r]).len() == 4));
        assert!(provider.shutdown().is_ok());
    }

    #[test]
    fn given_a_full_queue_should_drop_new_spans_and_keep_the_first() {
        let (provider, rx) = provider(SLOW);
        let tracer = provider.tracer("bus");
        for i in 0..20 {
            tracer.start(format!("s{i}")).end();
        }
        assert!(provider.force_flush().is_ok());
        let posted = names(&rx.try_iter().collect::<Vec<_>>());
        assert_eq!(posted, (0..8).map(|i| format!("s{i}")).collect::<Vec<_>>());
        assert!(provider.shutdown().is_ok());
    }

    #[test]
    fn given_unsampled_spans_should_post_nothing() {
        let (provider, rx) = sampled_by(SLOW, Sampler::AlwaysOff);
        provider.tracer("bus").start("dropped").end();
        assert!(provider.force_flush().is_ok());
        assert_eq!(rx.try_iter().count(), 0);
        assert!(provider.shutdown().is_ok());
    }

    #[test]
    fn given_shutdown_should_post_what_waits_then_refuse_more() {
        let (provider, rx) = provider(SLOW);
        provider.tracer("bus").start("last").end();
        assert!(provider.shutdown().is_ok());
        assert_eq!(names(&rx.try_iter().collect::<Vec<_>>()), ["last"]);
        assert!(provider.force_flush().is_err(), "stopped");
    }
}
