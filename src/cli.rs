//! The `leadscore` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Overrides, Settings};
use crate::rules::RuleSet;
use crate::startup::Application;

#[derive(Debug, Parser)]
#[command(name = "leadscore", version, about = "Real-time lead scoring gRPC service")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC service.
    Serve(ServeArgs),
    /// Work with rule-set files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Config file (TOML); keys as in the README's configuration table.
    #[arg(long, env = "LEADSCORE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:50051; env LEADSCORE_GRPC_ADDR].
    #[arg(long)]
    pub grpc_addr: Option<std::net::SocketAddr>,
    /// Redis URL; without one the embedded in-memory store is used
    /// [env LEADSCORE_REDIS_URL].
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Rule-set file [default: the built-in rules/default.toml; env LEADSCORE_RULES].
    #[arg(long)]
    pub rules: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Validate a rule file: print a summary, or every error with its line.
    Check {
        /// The rule file (TOML).
        file: PathBuf,
    },
}

pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Rules { command: RulesCommand::Check { file } } => check_rules(&file),
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let overrides = Overrides { grpc_addr: args.grpc_addr, redis_url: args.redis_url, rules: args.rules };
    let settings = match Settings::load(args.config.as_deref(), &overrides) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("leadscore: {e}");
            return ExitCode::from(2);
        }
    };
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("leadscore: {e}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

fn check_rules(file: &std::path::Path) -> ExitCode {
    let source = match std::fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    match RuleSet::parse(&source) {
        Ok(rules) => {
            println!("{}: OK", file.display());
            print!("{}", rules.summary());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{}:{}:{}: {}", file.display(), e.line, e.column, e.message);
            }
            eprintln!("{}: {} error(s)", file.display(), errors.len());
            ExitCode::FAILURE
        }
    }
}
