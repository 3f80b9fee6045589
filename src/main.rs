//! The `herald` command: parses the command line and hands over to the library.

/// mimalloc instead of glibc's allocator: profiles of the delivery path under load
/// showed about a fifth of Herald's CPU in glibc `malloc`/`free` (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    herald::cli::main()
}
