//! `platform::mongo::close_when_stopped` against the real server: the
//! client stays open while the service runs and is shut down by the time
//! its task has ended, so nothing is left for the client's drop to spawn
//! while the runtime shuts down (mongodb 3.9 panicked there once, in
//! loadgen).

use bson::{doc, Document};
use orderflow_platform::config::MongoArgs;
use orderflow_platform::http::Running;
use orderflow_platform::mongo::{close_when_stopped, connect, ping};
use orderflow_platform::shutdown::CancellationToken;
use orderflow_testkit as kit;

#[tokio::test]
async fn a_stopped_service_has_closed_its_mongodb_client() {
    let name = kit::unique("close");
    let args = MongoArgs {
        url: kit::mongo_url(&name),
        database: None,
    };
    let db = connect(&args, "close-test").await.unwrap();
    let things = db.collection::<Document>("things");
    things.insert_one(doc! {"n": 1}).await.unwrap();

    // A service's task: it runs until its shutdown token is cancelled.
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let running = Running {
        addr: "127.0.0.1:0".parse().unwrap(),
        shutdown: shutdown.clone(),
        task: tokio::spawn(async move {
            token.cancelled().await;
            Ok(())
        }),
    };
    let running = close_when_stopped(running, db.clone());

    // Open while it runs.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    ping(&db)
        .await
        .expect("the client is open while the service runs");
    assert_eq!(things.count_documents(doc! {}).await.unwrap(), 1);

    running.shutdown.cancel();
    running.task.await.unwrap().unwrap();
    // Closed once the task has ended: every handle fails, with the
    // driver's shutdown error.
    let err = things.count_documents(doc! {}).await.unwrap_err();
    assert!(
        matches!(*err.kind, mongodb::error::ErrorKind::Shutdown),
        "{err}"
    );
    assert!(ping(&db).await.is_err());

    // A service whose task failed still closes its client, and the failure
    // is what its task returns.
    let db = connect(&args, "close-test").await.unwrap();
    let running = close_when_stopped(
        Running {
            addr: "127.0.0.1:0".parse().unwrap(),
            shutdown: CancellationToken::new(),
            task: tokio::spawn(async { anyhow::bail!("the worker failed") }),
        },
        db.clone(),
    );
    let failed = running.task.await.unwrap().unwrap_err();
    assert_eq!(failed.to_string(), "the worker failed");
    assert!(ping(&db).await.is_err());

    kit::mongo_db(&name).await.drop().await.unwrap();
}
