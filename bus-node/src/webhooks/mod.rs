//! Webhooks: signed deliveries of events to third-party endpoints (Standard Webhooks):
//! the signatures (`signature.rs`; `asymmetric.rs`, Ed25519, optional), the SSRF guard (`ssrf.rs`), one delivery attempt and
//! what its answer means (`attempt.rs`), subscriptions with sealed secrets (`store.rs`,
//! `sealed.rs`), deliveries as consumer groups (`engine.rs`), the attempts log
//! (`attempts_log.rs`) and replays (`replay.rs`).

pub mod asymmetric;
pub mod attempt;
pub mod attempts_log;
pub mod engine;
pub mod replay;
pub mod sealed;
pub mod signature;
pub mod ssrf;
pub mod store;
