//! The `herald` command: parses the command line and hands over to the library.

/// mimalloc instead of glibc's allocator: profiles of the delivery path under load
/// showed about a fifth of Herald's CPU in glibc `malloc`/`free` (see docs/benchmarks.md).
/// Without the default `mimalloc` feature the system allocator is used, for heap
/// profilers that hook `malloc` (heaptrack).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Herald's mimalloc settings; option numbers from mimalloc.h (v3, the crate's default).
#[cfg(all(feature = "mimalloc", target_os = "linux"))]
mod allocator {
    use libmimalloc_sys::{mi_option_set, mi_option_t};

    const PURGE_DELAY: mi_option_t = 15;
    const ALLOW_THP: mi_option_t = 43;

    /// Herald's defaults for mimalloc; its `MIMALLOC_…` variables still override them.
    pub fn configure() {
        // Give freed memory back to the OS at once rather than after 10 ms (arenas:
        // 100 ms): under load that kept RSS ~20 MiB lower at no measurable cost.
        default(PURGE_DELAY, "MIMALLOC_PURGE_DELAY", 0);
        // No transparent huge pages: with them a 2 MiB page is resident as soon as a
        // few bytes of it are used, and Herald's many small, short-lived buffers spread
        // over dozens of them (RSS 116 → 75 MiB in the slow-endpoint benchmark, same
        // throughput; docs/benchmarks.md, round 5). mimalloc read its options and
        // advised its first arena for huge pages before `main`, so the process also
        // turns THP off for itself, which covers memory already mapped.
        if default(ALLOW_THP, "MIMALLOC_ALLOW_THP", 0) {
            // SAFETY: prctl with integer arguments only; failure leaves THP as it was.
            unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        }
    }

    /// Sets `option` unless `variable` is in the environment; whether it did.
    fn default(option: mi_option_t, variable: &str, value: std::ffi::c_long) -> bool {
        let unset = std::env::var_os(variable).is_none();
        if unset {
            // SAFETY: sets one integer option; mimalloc reads options atomically.
            unsafe { mi_option_set(option, value) };
        }
        unset
    }
}

fn main() -> std::process::ExitCode {
    #[cfg(all(feature = "mimalloc", target_os = "linux"))]
    allocator::configure();
    herald::cli::main()
}
