//! loadgen's threads run with a short scheduler slice (ADR 0018): it stands
//! for clients on other machines, whose wake-up to read an answer does not
//! wait out the measured services' slices. Read from /proc while a paced
//! run goes on against the real producer and broker: every thread of it,
//! the runtime's workers and the arrivals thread included; `SCHED_SLICE`
//! changes it, `0` leaves the kernel's own, and a bad value stops loadgen
//! with an error that names the variable. Needs Linux 6.12 or later.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use orderflow_testkit::{self as kit, stack::Stack};

/// A paced loadgen run against `url`, long enough to be read from /proc.
fn paced(url: &str, slice: Option<&str>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    cmd.args(["--url", url, "--rate", "200", "--count", "600"])
        .args(["--connections", "4", "--prefix", &kit::unique("slice")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(slice) = slice {
        cmd.env("SCHED_SLICE", slice);
    }
    cmd.spawn().unwrap()
}

/// The slices of `child`'s threads once the arrivals thread exists.
async fn slices_while_running(child: &Child) -> Vec<(String, u64)> {
    let mut threads = Vec::new();
    for _ in 0..100 {
        threads = kit::thread_slices(child.id());
        if threads.iter().any(|(name, _)| name == "loadgen-arrival") {
            return threads;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no arrivals thread: {threads:?}");
}

#[tokio::test]
async fn every_thread_of_loadgen_has_its_slice() {
    let (mut stack, _topics, url) = Stack::with_producer("lgslice").await;

    // The default: 100 µs on every thread, workers and arrivals included.
    let mut run = paced(&url, None);
    let threads = slices_while_running(&run).await;
    assert!(
        threads.iter().all(|(_, slice)| *slice == 100_000),
        "every thread at 100 µs: {threads:?}"
    );
    assert!(
        threads.iter().any(|(name, _)| name == "tokio-rt-worker"),
        "{threads:?}"
    );
    assert!(run.wait().unwrap().success());

    // Another slice, and the kernel's own.
    let mut run = paced(&url, Some("2ms"));
    let threads = slices_while_running(&run).await;
    assert!(
        threads.iter().all(|(_, slice)| *slice == 2_000_000),
        "{threads:?}"
    );
    assert!(run.wait().unwrap().success());
    let mut run = paced(&url, Some("0"));
    let threads = slices_while_running(&run).await;
    assert!(
        threads.iter().all(|(_, slice)| *slice != 100_000),
        "the kernel's own slice: {threads:?}"
    );
    assert!(run.wait().unwrap().success());

    // A value that is not a slice: no run, and an error naming the variable.
    let out = paced(&url, Some("fast")).wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SCHED_SLICE=\"fast\""), "{err}");
    stack.terminate().await;
}
