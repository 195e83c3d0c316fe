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

use std::future::Future;

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

/// Applies the allocator's settings ([`crate::memory::limit_arenas`]),
/// builds the runtime and runs `main` on it to completion.
pub fn run<F, T>(main: F) -> anyhow::Result<T>
where
    F: Future<Output = anyhow::Result<T>>,
{
    crate::memory::limit_arenas();
    run_with(std::env::var(WORKERS_VARIABLE).ok().as_deref(), main)
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
    fn a_count_is_taken_and_anything_else_is_refused() {
        assert_eq!(workers(Some("4")), Ok(4));
        for bad in ["0", "-1", "two", "1.5"] {
            let e = workers(Some(bad)).unwrap_err();
            assert!(e.contains("TOKIO_WORKER_THREADS") && e.contains(bad), "{e}");
        }
    }
}
