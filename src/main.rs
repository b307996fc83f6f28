use std::process::ExitCode;

use clap::Parser;

/// Stack of every runtime thread: rule conditions are evaluated on them and
/// the interpreter recurses once per level of a condition (bounded by
/// `rules::expr::MAX_DEPTH`); Tokio's default is 2 MiB.
const THREAD_STACK: usize = 8 * 1024 * 1024;

fn main() -> ExitCode {
    let cli = leadscore::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_stack_size(THREAD_STACK).build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("leadscore: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let telemetry = leadscore::telemetry::init();
        let code = leadscore::cli::run(cli).await;
        // Flush buffered spans before exiting.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        code
    })
}
