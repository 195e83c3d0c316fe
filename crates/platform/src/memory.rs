//! The allocator's settings, applied by every service first thing.

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

/// Limits the allocator's arenas to [`MALLOC_ARENAS`] (glibc only; a no-op
/// elsewhere). Call it at the start of `main`, before threads allocate.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters; M_ARENA_MAX
    // may be set at any time and affects arenas created afterwards.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}
