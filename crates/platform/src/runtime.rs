//! How every service starts: the allocator's settings, then a Tokio runtime
//! with one worker thread unless `TOKIO_WORKER_THREADS` says otherwise.
//!
//! One worker is the default because a service's own work is small beside
//! the waits it overlaps, and every extra worker costs wake-ups: with two,
//! a worker that is handed a task wakes the other to look for work to
//! steal, which mostly finds none. On the bench machine one worker cost
//! the producer 130 µs of CPU per order at 1 000 orders/s against 166 with
//! two, and notify about a fifth less in full runs (ADR 0013). A replica
//! needing more than a core is given more workers with Tokio's own
//! variable, or more replicas.
//!
//! A service may also ask for a shorter scheduler slice for all its
//! threads ([`run_with_slice`], `SCHED_SLICE`): the producer does, so that
//! its wake-ups preempt the back end sharing its cores (ADR 0014).

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

/// Tokio's own variable for the number of workers; it wins over
/// [`DEFAULT_WORKERS`].
pub const WORKERS_VARIABLE: &str = "TOKIO_WORKER_THREADS";

/// Worker threads when [`WORKERS_VARIABLE`] is unset.
pub const DEFAULT_WORKERS: usize = 1;

/// The number of workers `TOKIO_WORKER_THREADS` asks for (`value`), or the
/// default when it is unset or empty. Anything else is an error that names
/// the variable, so a typo stops the service instead of being ignored.
pub fn workers(value: Option<&str>) -> Result<usize, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(DEFAULT_WORKERS),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "{WORKERS_VARIABLE}={v:?}: expected a number of worker threads, at least 1"
            )),
        },
    }
}

/// The variable that sets the scheduler slice of every thread of a
/// service; it wins over the service's default ([`run_with_slice`]).
pub const SLICE_VARIABLE: &str = "SCHED_SLICE";

/// The range Linux takes for a custom slice (it clamps to it).
const SLICES: std::ops::RangeInclusive<Duration> =
    Duration::from_micros(100)..=Duration::from_millis(100);

/// The slice `SCHED_SLICE` asks for (`value`), else `default` when it is
/// unset or empty; `0` asks for none (the kernel's base slice). Anything
/// else is an error that names the variable.
pub fn slice(value: Option<&str>, default: Option<Duration>) -> Result<Option<Duration>, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(default),
        Some(v) => match humantime::parse_duration(v) {
            Ok(d) if d.is_zero() => Ok(None),
            Ok(d) if SLICES.contains(&d) => Ok(Some(d)),
            _ => Err(format!(
                "{SLICE_VARIABLE}={v:?}: expected a duration from 100us to 100ms, or 0 for the kernel's own"
            )),
        },
    }
}

/// What [`run_with_slice`] did, for [`crate::telemetry::init`] to log once
/// logging exists: the slice asked for, and the slice the kernel reports
/// afterwards or why it refused.
pub struct SliceOutcome {
    pub asked: Duration,
    pub result: std::io::Result<Duration>,
}

static SLICE: OnceLock<SliceOutcome> = OnceLock::new();

/// The slice this process asked for at start, if it asked for one.
pub fn slice_outcome() -> Option<&'static SliceOutcome> {
    SLICE.get()
}

/// Applies the allocator's settings ([`crate::memory::limit_arenas`]),
/// builds the runtime and runs `main` on it to completion.
pub fn run<F, T>(main: F) -> anyhow::Result<T>
where
    F: Future<Output = anyhow::Result<T>>,
{
    run_with_slice(None, main)
}

/// [`run`], with every thread of the service given a scheduler slice of
/// `default` (or what `SCHED_SLICE` says) first. On Linux 6.12 and later a
/// task with a shorter slice than the one running preempts it when it
/// wakes, where a CPU weight (nice, a cgroup's share) only sets how much
/// it gets over time (ADR 0014). The slice is set on the main thread before
/// the runtime starts, so the runtime's workers and the threads librdkafka
/// starts inherit it; the thread's policy and nice value are kept. A kernel
/// that refuses it (or ignores it, before 6.12) is logged, not fatal.
pub fn run_with_slice<F, T>(default: Option<Duration>, main: F) -> anyhow::Result<T>
where
    F: Future<Output = anyhow::Result<T>>,
{
    crate::memory::limit_arenas();
    ask_for_slice(default)?;
    run_with(std::env::var(WORKERS_VARIABLE).ok().as_deref(), main)
}

/// Gives the calling thread a scheduler slice of `default` (or what
/// `SCHED_SLICE` says), which the threads it starts afterwards inherit,
/// and returns what happened ([`slice_outcome`]): `None` when no slice was
/// asked for. A bad `SCHED_SLICE` is an error that names it; a kernel that
/// refuses is only recorded. [`run_with_slice`] calls it; a binary that
/// builds its own runtime (loadgen) calls it before doing so.
pub fn ask_for_slice(default: Option<Duration>) -> anyhow::Result<Option<&'static SliceOutcome>> {
    let variable = std::env::var(SLICE_VARIABLE).ok();
    let Some(asked) = slice(variable.as_deref(), default).map_err(anyhow::Error::msg)? else {
        return Ok(None);
    };
    let _ = SLICE.set(SliceOutcome {
        asked,
        result: set_thread_slice(asked),
    });
    Ok(SLICE.get())
}

/// Sets the calling thread's scheduler slice (`sched_setattr`'s
/// `sched_runtime` for a fair-class task), keeping its policy, flags and
/// nice value; the threads it starts afterwards inherit it. Returns the
/// slice the kernel reports afterwards: the base slice, not `slice`, on a
/// kernel without custom slices.
#[cfg(target_os = "linux")]
pub fn set_thread_slice(slice: Duration) -> std::io::Result<Duration> {
    let mut attr = thread_attr()?;
    // Only reset-on-fork is a flag to keep; the others select what else
    // sched_setattr would change.
    attr.sched_flags &= libc::SCHED_FLAG_RESET_ON_FORK as u64;
    attr.sched_runtime = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
    // SAFETY: `attr` is a whole `sched_attr` whose `size` field says so;
    // pid 0 is the calling thread.
    if unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &attr as *const libc::sched_attr,
            0,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Duration::from_nanos(thread_attr()?.sched_runtime))
}

#[cfg(not(target_os = "linux"))]
pub fn set_thread_slice(_: Duration) -> std::io::Result<Duration> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "custom scheduler slices are Linux's",
    ))
}

/// The calling thread's scheduling attributes (`sched_getattr`).
#[cfg(target_os = "linux")]
fn thread_attr() -> std::io::Result<libc::sched_attr> {
    let size = std::mem::size_of::<libc::sched_attr>();
    // SAFETY: a zeroed `sched_attr` is valid (plain integers), and the
    // kernel writes at most `size` bytes into it.
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut libc::sched_attr,
            size as libc::c_uint,
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    attr.size = size as u32;
    Ok(attr)
}

/// [`run`] with the variable's value given (`None`: unset), so a test can
/// check the runtime a service really gets without touching the process's
/// environment.
fn run_with<F, T>(variable: Option<&str>, main: F) -> anyhow::Result<T>
where
    F: Future<Output = anyhow::Result<T>>,
{
    let workers = workers(variable).map_err(anyhow::Error::msg)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(main)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_or_empty_is_one_worker() {
        assert_eq!(workers(None), Ok(1));
        assert_eq!(workers(Some(" ")), Ok(1));
    }

    /// The runtime's own count of its workers, not just the parser's answer.
    fn workers_of_a_runtime(variable: Option<&str>) -> anyhow::Result<usize> {
        run_with(variable, async {
            Ok(tokio::runtime::Handle::current().metrics().num_workers())
        })
    }

    #[test]
    fn a_service_runtime_has_one_worker_unless_the_variable_asks_for_more() {
        assert_eq!(workers_of_a_runtime(None).unwrap(), 1);
        assert_eq!(workers_of_a_runtime(Some("")).unwrap(), 1);
        assert_eq!(workers_of_a_runtime(Some("3")).unwrap(), 3);
        let e = workers_of_a_runtime(Some("zero")).unwrap_err().to_string();
        assert!(e.contains("TOKIO_WORKER_THREADS"), "{e}");
    }

    #[test]
    fn a_slice_is_a_duration_within_linux_range_or_zero() {
        let default = Some(Duration::from_micros(100));
        assert_eq!(slice(None, default), Ok(default));
        assert_eq!(slice(Some(" "), None), Ok(None));
        assert_eq!(slice(Some("0"), default), Ok(None));
        assert_eq!(
            slice(Some("250us"), default),
            Ok(Some(Duration::from_micros(250)))
        );
        assert_eq!(
            slice(Some("100ms"), None),
            Ok(Some(Duration::from_millis(100)))
        );
        for bad in ["50us", "1s", "fast", "-1ms"] {
            let e = slice(Some(bad), default).unwrap_err();
            assert!(e.contains("SCHED_SLICE") && e.contains(bad), "{e}");
        }
    }

    /// On this kernel (Linux 6.12 or later): the slice is set, the nice
    /// value a back-end process was started with stays, and a thread
    /// started afterwards has the slice too.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_slice_is_set_keeps_the_nice_value_and_is_inherited() {
        std::thread::spawn(|| {
            // SAFETY: plain system calls on the calling thread.
            let tid = unsafe { libc::gettid() } as libc::id_t;
            let nice = |tid| unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
            assert_eq!(unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 5) }, 0);
            let base = Duration::from_nanos(thread_attr().unwrap().sched_runtime);
            let asked = Duration::from_micros(200);
            assert_ne!(base, asked);
            assert_eq!(set_thread_slice(asked).unwrap(), asked);
            assert_eq!(nice(tid), 5, "the nice value is kept");
            let child = std::thread::spawn(move || {
                let tid = unsafe { libc::gettid() } as libc::id_t;
                (
                    Duration::from_nanos(thread_attr().unwrap().sched_runtime),
                    nice(tid),
                )
            })
            .join()
            .unwrap();
            assert_eq!(child, (asked, 5), "a new thread inherits both");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_count_is_taken_and_anything_else_is_refused() {
        assert_eq!(workers(Some("4")), Ok(4));
        for bad in ["0", "-1", "two", "1.5"] {
            let e = workers(Some(bad)).unwrap_err();
            assert!(e.contains("TOKIO_WORKER_THREADS") && e.contains(bad), "{e}");
        }
    }
}
