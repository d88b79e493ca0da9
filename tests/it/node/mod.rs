//! The node suites: `bus-node` run as a process against real nats-server processes
//! (HTTP ingress, bad input, connections, the process itself, secrets from files).

mod bad_input;
mod cluster_metrics;
mod connections;
mod edges;
mod freeze;
mod ingress;
mod intact;
mod intact_data;
mod live_page;
mod otlp_export;
mod process;
mod push;
mod push_auth;
mod push_fixtures;
mod push_limits;
mod round_trip;
mod secret_files;
mod webhook_fixtures;
mod webhook_operations;
mod webhook_scale;
mod webhooks;
