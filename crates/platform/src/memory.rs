//! The allocator's settings, applied by every service first thing
//! ([`crate::runtime::run`]).

/// How many glibc malloc arenas a process may have.
///
/// glibc gives a thread that finds the arenas busy an arena of its own, up
/// to eight per core, and each arena keeps what was freed in it for
/// reuse. A service has a dozen threads (the runtime's workers and blocking
/// pool, librdkafka's broker threads), so its resident memory grows with
/// the number of threads that ever allocated, not with the work in hand.
/// Two arenas keep contention low on the cores these services get
/// (docs/benchmarks.md has the figures before and after).
pub const MALLOC_ARENAS: i32 = 2;

/// Allocations from this size up get pages of their own, returned when
/// freed, and the heap's free top is given back from this size.
///
/// glibc's default threshold is dynamic: each large block freed raises it
/// to that block's size (up to 32 MB), after which a batch's buffers (a
/// 500-order insert is half a megabyte of BSON) come from the heap and the
/// holes they leave stay resident. Fixing it keeps the threshold where it
/// starts; a few mmap calls a batch cost nothing measurable.
pub const MALLOC_MMAP_THRESHOLD: i32 = 128 * 1024;

/// Limits the allocator's arenas to [`MALLOC_ARENAS`] and fixes its mmap
/// and trim thresholds at [`MALLOC_MMAP_THRESHOLD`] (glibc only; a no-op
/// elsewhere). [`crate::runtime::run`] calls it before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters; these may
    // be set at any time and affect allocations made afterwards.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 2 * MALLOC_MMAP_THRESHOLD);
    }
}
