//! Handlers and their errors; handlers are type-erased so that one subscription can
//! dispatch several event types.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::subscription::Outcome;
use crate::typed::{EventMeta, EventPayload, Received};

/// A handler's failure. Any error converts into one with `?` and is retried with
/// backoff; [`HandlerError::permanent`] sends the event to the dead letters at once.
///
/// ```
/// use bus_sdk::{EventPayload, HandlerError, Received};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated { order_id: u64, amount_cents: i64 }
/// # impl EventPayload for OrderCreated { const EVENT_TYPE: &'static str = "shop.order.created"; }
/// # async fn charge(_order_id: u64, _cents: i64) -> std::io::Result<()> { Ok(()) }
/// async fn bill(ev: Received<OrderCreated>) -> Result<(), HandlerError> {
///     if ev.data.amount_cents < 0 {
///         return Err(HandlerError::permanent("negative amount")); // a dead letter now
///     }
///     charge(ev.data.order_id, ev.data.amount_cents).await?; // an io::Error: retried
///     Ok(())
/// }
/// ```
pub struct HandlerError {
    source: Box<dyn std::error::Error + Send + Sync>,
    permanent: bool,
    retry_after: Option<std::time::Duration>,
}

impl HandlerError {
    /// A failure that retrying cannot fix: the event is dead-lettered without retries.
    ///
    /// ```
    /// # use bus_sdk::HandlerError;
    /// let err = HandlerError::permanent(format!("unknown currency {:?}", "XYZ"));
    /// assert!(err.is_permanent());
    /// ```
    pub fn permanent(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            source: err.into(),
            permanent: true,
            retry_after: None,
        }
    }

    /// A failure worth retrying, from a message.
    ///
    /// ```
    /// # use bus_sdk::HandlerError;
    /// let err = HandlerError::msg("stock service busy");
    /// assert!(!err.is_permanent());
    /// assert_eq!(err.to_string(), "stock service busy");
    /// ```
    pub fn msg(msg: impl Into<String>) -> Self {
        Self {
            source: msg.into().into(),
            permanent: false,
            retry_after: None,
        }
    }

    /// This failure, retried after `delay` instead of the group's backoff for this
    /// attempt (a downstream's `Retry-After`, say). Still counts as an attempt; a
    /// permanent failure stays permanent.
    ///
    /// ```
    /// # use bus_sdk::HandlerError;
    /// # use std::time::Duration;
    /// let err = HandlerError::msg("503 from the partner").retry_after(Duration::from_secs(30));
    /// assert_eq!(err.retry_delay(), Some(Duration::from_secs(30)));
    /// ```
    pub fn retry_after(mut self, delay: std::time::Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// The delay asked for with [`HandlerError::retry_after`], if any.
    pub fn retry_delay(&self) -> Option<std::time::Duration> {
        self.retry_after
    }

    /// Whether the event goes to the dead letters at once instead of being retried.
    ///
    /// ```
    /// # use bus_sdk::HandlerError;
    /// let err: HandlerError = std::io::Error::other("connection reset").into();
    /// assert!(!err.is_permanent()); // errors converted with `?` are retried
    /// ```
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(err: E) -> Self {
        Self {
            source: Box::new(err),
            permanent: false,
            retry_after: None,
        }
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HandlerError({:?}, permanent: {})",
            self.source, self.permanent
        )
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// A handler with its payload type erased.
pub(crate) type ErasedHandler = Arc<dyn Fn(EventMeta) -> BoxFuture + Send + Sync>;

pub(crate) fn erase<T, F, Fut>(handler: F) -> ErasedHandler
where
    T: EventPayload,
    F: Fn(Received<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let handler = Arc::new(handler);
    Arc::new(move |meta: EventMeta| {
        let handler = handler.clone();
        Box::pin(async move {
            let data = match decode_data::<T>(&meta) {
                Ok(data) => data,
                Err(reason) => return Outcome::Undecodable(reason),
            };
            match handler(Received { data, meta }).await {
                Ok(()) => Outcome::Handled,
                Err(e) => Outcome::Failed(e),
            }
        })
    })
}

fn decode_data<T: EventPayload>(meta: &EventMeta) -> Result<T, String> {
    let ct = meta
        .event
        .datacontenttype
        .as_deref()
        .unwrap_or("application/json");
    let is_json = ct.starts_with("application/json")
        || (ct.starts_with("application/") && ct.contains("+json"));
    if !is_json {
        return Err(format!("data content type {ct:?} is not JSON"));
    }
    serde_json::from_slice(&meta.event.data)
        .map_err(|e| format!("data is not a valid {}: {e}", T::EVENT_TYPE))
}

/// A handler for any event matching a pattern, given the raw event.
pub(crate) fn erase_raw<F, Fut>(handler: F) -> ErasedHandler
where
    F: Fn(EventMeta) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let handler = Arc::new(handler);
    Arc::new(move |meta: EventMeta| {
        let handler = handler.clone();
        Box::pin(async move {
            match handler(meta).await {
                Ok(()) => Outcome::Handled,
                Err(e) => Outcome::Failed(e),
            }
        })
    })
}
