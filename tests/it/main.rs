//! The integration suites: one test binary built from modules, each running real
//! `nats-server` processes (and `bus-node` processes) through the harness in `tests/src`.

mod harness_selftest;
mod node;
mod sdk;
mod server_trace;
