//! The integration suites: one test binary built from modules, each running real
//! `nats-server` processes (and `bus-node` processes) through the harness in `tests/src`.

mod harness_selftest;
mod node_bad_input;
mod node_connections;
mod node_ingress;
mod node_process;
mod node_secret_files;
mod node_support;
mod sdk_broadcast;
mod sdk_dead_letters;
mod sdk_failover;
mod sdk_fetch;
mod sdk_groups;
mod sdk_interop;
mod sdk_presence;
mod sdk_rolling_deploy;
mod server_trace;
mod support;
