//! Real-time push: every event the stream stores, delivered to the SSE and WebSocket
//! clients of this node whose patterns match it, in stream order, resumable by sequence.
//!
//! One [`hub::Hub`] per node reads the events stream once (an ordered consumer) and
//! encodes each event once ([`frame::Frame`]) for every client; [`index::ClientIndex`]
//! finds the clients an event's type reaches with one lookup. A client's
//! [`session::Session`] replays history from JetStream when it resumes
//! ([`history::History`]), then joins the hub with no gap and no duplicate. Who may read
//! what is [`access`]; the signed tokens for clients that cannot send headers are
//! [`token`]; ids naming the stream's epoch are [`position`].

pub mod access;
pub mod frame;
pub mod history;
pub mod hub;
pub mod index;
pub mod position;
pub mod session;
pub mod token;

/// How long a browser waits before reconnecting (`retry:`), in milliseconds.
pub const RETRY_HINT_MS: u64 = 2000;
