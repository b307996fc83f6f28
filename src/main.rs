use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = leadscore::cli::Cli::parse();
    leadscore::telemetry::init();
    leadscore::cli::run(cli).await
}
