//! The `herald` command: parses the command line and hands over to the library.

/// mimalloc instead of glibc's allocator: profiles of the delivery path under load
/// showed about a fifth of Herald's CPU in glibc `malloc`/`free` (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (mimalloc.h, v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // Give freed memory back to the OS at once rather than after mimalloc's default
    // 1 s: under load that keeps RSS ~20 MiB lower at no measurable cost in
    // throughput (docs/benchmarks.md). `MIMALLOC_PURGE_DELAY` still overrides it.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads options atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    herald::cli::main()
}
