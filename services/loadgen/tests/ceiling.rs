//! The bench's MongoDB ceiling (`loadgen --mongo-ceiling`) against the real
//! test server: it reports every order it wrote, leaves nothing behind and
//! exits without a panic. (The driver's end-of-sessions task panicked once
//! in three bench ceilings as the runtime shut down, when the client was
//! only dropped; that race did not recur in nine runs of this test without
//! the explicit shutdown, so this test guards the exit, it does not
//! reproduce the race.)

use std::process::Command;

use orderflow_testkit as kit;

#[tokio::test]
async fn the_mongodb_ceiling_writes_every_order_and_exits_cleanly() {
    let db = kit::unique("ceiling");
    for run in 1..=3 {
        let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(["--mongo-ceiling", "600", "--ceiling-batch", "100"])
            .args(["--ceiling-channels", "log,smtp"])
            .args(["--seed-mongo", &kit::mongo_url(&db)])
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "run {run}: {}\n{stdout}\n{stderr}",
            out.status
        );
        assert!(
            stdout.contains("orders   600 through the four stages' writes, in batches of 100"),
            "run {run}:\n{stdout}"
        );
        assert!(!stderr.contains("panicked"), "run {run}:\n{stderr}");
    }
    // The database is dropped after the run.
    let names = kit::mongo_db(&db)
        .await
        .list_collection_names()
        .await
        .unwrap();
    assert!(names.is_empty(), "left behind: {names:?}");
}
