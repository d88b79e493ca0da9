//! Handler registration, shared by every kind of subscription: typed handlers by event
//! type (one per type), pattern handlers for raw events, and the subject filters they
//! add up to.

use std::collections::HashMap;
use std::future::Future;

use bus_core::{EventPattern, EventType, Subjects};

use crate::error::SubscribeError;
use crate::handler::{ErasedHandler, HandlerError, erase, erase_raw};
use crate::typed::{EventMeta, EventPayload, Received};
use bus_core::subject_filters as filters;

/// Handlers as a builder collects them; [`Registration::build`] checks them.
#[derive(Default)]
pub(crate) struct Registration {
    typed: Vec<(&'static str, ErasedHandler)>,
    patterns: Vec<(EventPattern, ErasedHandler)>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("types", &self.typed.iter().map(|h| h.0).collect::<Vec<_>>())
            .field(
                "patterns",
                &self
                    .patterns
                    .iter()
                    .map(|h| h.0.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Registration {
    /// A handler for events of type `T`.
    pub(crate) fn on<T, F, Fut>(&mut self, handler: F)
    where
        T: EventPayload,
        F: Fn(Received<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.typed.push((T::EVENT_TYPE, erase(handler)));
    }

    /// A handler for every event whose type matches `pattern`, as a raw event.
    pub(crate) fn on_any<F, Fut>(&mut self, pattern: EventPattern, handler: F)
    where
        F: Fn(EventMeta) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.patterns.push((pattern, erase_raw(handler)));
    }

    /// Checks the registration: at least one handler, valid event types, one handler per
    /// type.
    pub(crate) fn build(self) -> Result<Handlers, SubscribeError> {
        if self.typed.is_empty() && self.patterns.is_empty() {
            return Err(SubscribeError::NoHandlers);
        }
        let mut typed = HashMap::with_capacity(self.typed.len());
        let mut types = Vec::with_capacity(self.typed.len());
        for (name, handler) in self.typed {
            let t = EventType::new(name)?;
            if typed.insert(name.to_owned(), handler).is_some() {
                return Err(SubscribeError::DuplicateHandler(name.to_owned()));
            }
            types.push(t);
        }
        types.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(Handlers {
            typed,
            types,
            patterns: self.patterns,
        })
    }
}

/// A subscription's handlers, checked.
pub(crate) struct Handlers {
    typed: HashMap<String, ErasedHandler>,
    /// The typed handlers' event types, sorted.
    types: Vec<EventType>,
    patterns: Vec<(EventPattern, ErasedHandler)>,
}

impl Handlers {
    /// The handler for an event of type `t`: its typed handler, else the first pattern
    /// handler (in registration order) that matches.
    pub(crate) fn find(&self, t: &EventType) -> Option<&ErasedHandler> {
        self.typed.get(t.as_str()).or_else(|| {
            self.patterns
                .iter()
                .find(|(p, _)| p.matches(t))
                .map(|(_, h)| h)
        })
    }

    /// The event types with a typed handler, sorted.
    pub(crate) fn types(&self) -> &[EventType] {
        &self.types
    }

    /// The patterns of the pattern handlers, in registration order.
    pub(crate) fn patterns(&self) -> impl Iterator<Item = &EventPattern> {
        self.patterns.iter().map(|(p, _)| p)
    }

    /// The subject filters that take every event some handler here handles, minimal (see
    /// [`bus_core::subject_filters::minimal`]).
    pub(crate) fn filters(&self, subjects: &Subjects) -> Vec<String> {
        let filters = self
            .types
            .iter()
            .map(|t| subjects.event(t))
            .chain(self.patterns().map(|p| subjects.pattern(p)))
            .collect();
        filters::minimal(filters, &subjects.all_events())
    }
}
