//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// A bus node: takes events over HTTP, publishes them to NATS JetStream, and serves the
/// admin, health and metrics endpoints. Several nodes on one NATS cluster share all work.
#[derive(Debug, Parser)]
#[command(name = "bus-node", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node against the NATS servers in `nats.servers`.
    Serve(ConfigArgs),
    /// Run one node on a private single-node JetStream nats-server in a temporary
    /// directory (found via NATS_SERVER_BIN or PATH), for trying the bus out. Reads the
    /// same configuration as `serve`; `nats.servers` is replaced by the embedded server,
    /// and without API keys authentication is turned off (it says so).
    Dev(ConfigArgs),
    /// Validate the configuration and print the effective result (secrets redacted).
    /// Exits 0 when valid, 64 when not.
    CheckConfig(ConfigArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file; values from BUS__* environment variables override it
    /// (BUS__HTTP__LISTEN=0.0.0.0:8080 sets http.listen).
    #[arg(long, short, env = "BUS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}
