use std::process::ExitCode;

fn main() -> ExitCode {
    // Everything is in the library (compiled once, shared with the tests).
    leadscore::cli::main()
}
