//! Helpers shared by the consumer's end-to-end tests.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};

/// The consumer binary as a child process, killed if the test ends first.
pub struct Stage(pub Child);

impl Stage {
    /// SIGKILL: no goodbye, no commit.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, then waits for the exit; true when it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.0.wait().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `consumer` with `argv` (argv[0] is the program name), appending
/// its log lines to `log`.
pub fn spawn_stage(argv: &[String], log: &std::path::Path) -> Stage {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Stage(
        Command::new(env!("CARGO_BIN_EXE_consumer"))
            .args(&argv[1..])
            .env("RUST_LOG", "info")
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the consumer binary"),
    )
}

/// These tests each push thousands of messages through one broker and one
/// MongoDB; on a 2-core machine running them at once starves them all, so
/// they take turns.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
