//! `bus-node`: see `bus-node --help`.

mod app;
mod auth;
mod cli;
mod cluster_reporter;
mod config;
mod dev;
mod failed_auth;
mod http;
mod metrics;
mod nats_probe;
mod push;
mod rate_limit;
mod serve;
mod webhooks;

use std::collections::HashMap;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

/// Exit code for configuration errors (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match &cli.command {
        Command::Serve(a) | Command::Dev(a) | Command::CheckConfig(a) => a,
    };
    let env: HashMap<String, String> = std::env::vars().collect();
    let profile = match cli.command {
        Command::Dev(_) => config::Profile::Dev,
        _ => config::Profile::Serve,
    };
    let config = match config::load(args.config.as_deref(), &env, profile) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bus-node: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Command::CheckConfig(_) = cli.command {
        return match toml::to_string_pretty(&config) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bus-node: cannot print the configuration: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bus-node: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let telemetry = match bus_core::telemetry::init("bus-node") {
            Ok(t) => t,
            Err(e) => {
                eprintln!("bus-node: invalid telemetry settings: {e}");
                return Err(ExitCode::from(EXIT_CONFIG));
            }
        };
        let result = match cli.command {
            Command::Dev(_) => dev::run(config).await,
            _ => serve::run(config, serve::Extras::default()).await,
        };
        telemetry.shutdown().await;
        Ok(result)
    });
    let result = match result {
        Ok(r) => r,
        Err(code) => return code,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bus-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}
