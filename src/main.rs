use std::process::ExitCode;

/// glibc's allocator contends on its arena locks when the runtime's threads
/// allocate and free each other's buffers under load; mimalloc keeps
/// per-thread heaps.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Everything is in the library (compiled once, shared with the tests).
    leadscore::cli::main()
}
