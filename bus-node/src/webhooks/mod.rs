//! Webhooks: signed deliveries of events to third-party endpoints (Standard Webhooks).
//! Built so far: the signature (`signature.rs`), the SSRF guard (`ssrf.rs`) and one
//! delivery attempt with what its answer means (`attempt.rs`). Subscriptions, their
//! durable consumers, retries and the HTTP API build on these.

pub mod attempt;
pub mod engine;
pub mod sealed;
pub mod signature;
pub mod ssrf;
pub mod store;
