use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = leadscore::cli::Cli::parse();
    let telemetry = leadscore::telemetry::init();
    let code = leadscore::cli::run(cli).await;
    // Flush buffered spans before exiting.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}
