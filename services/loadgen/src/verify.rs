//! `--verify-mongo`: waits until a run's accepted orders are stored (and
//! with `--verify-final`, settled by every stage) and reports the rates.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bson::doc;

use crate::Args;

/// This run's orders (`{prefix}-{n}`) as a range of `orderId`: every
/// string that starts with `{prefix}-` and nothing else (`.` follows `-`,
/// and MongoDB compares strings bytewise). The index answers it; the
/// `$regex` it replaces cost the server half a second a count over 30 000
/// orders, five times a second, while the run was being measured.
pub fn of_run(prefix: &str) -> bson::Document {
    doc! {"$gte": format!("{prefix}-"), "$lt": format!("{prefix}.")}
}

/// How long to wait before asking MongoDB again, given how long it took to
/// answer: at least 200 ms, and never more than a fifth of the server's
/// time, so checking does not slow what it checks.
pub fn poll_pause(took: Duration) -> Duration {
    (took * 4).max(Duration::from_millis(200))
}

/// Without --verify-mongo, nothing. Otherwise waits until the `accepted`
/// orders of run `prefix` are in --verify-mongo
/// (and with --verify-final, past placed / reserved), failing past
/// --verify-timeout; with `started` (the first request), reports the rates
/// since.
pub async fn verify(
    args: &Args,
    prefix: &str,
    accepted: u64,
    started: Option<Instant>,
) -> anyhow::Result<()> {
    let Some(mongo) = &args.verify_mongo else {
        return Ok(());
    };
    crate::with_database(mongo, "orders", async |db| {
        check(args, prefix, accepted, started, db).await
    })
    .await
}

async fn check(
    args: &Args,
    prefix: &str,
    accepted: u64,
    started: Option<Instant>,
    db: &mongodb::Database,
) -> anyhow::Result<()> {
    let orders = db.collection::<bson::Document>("orders");
    let filter = doc! {"orderId": of_run(prefix)};
    let deadline = Instant::now() + args.verify_timeout;
    let stored = loop {
        let asked = Instant::now();
        let n = orders.count_documents(filter.clone()).await?;
        if n >= accepted || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(poll_pause(asked.elapsed())).await;
    };
    println!("\nverification against MongoDB");
    println!("  stored     {stored} of {accepted} accepted");
    if let Some(started) = started {
        let e2e = started.elapsed();
        println!(
            "  end-to-end {:.0} orders/s into MongoDB ({:.2} s from first request)",
            stored as f64 / e2e.as_secs_f64(),
            e2e.as_secs_f64()
        );
    }
    if stored != accepted {
        anyhow::bail!(
            "{} accepted orders are missing from MongoDB",
            accepted - stored
        );
    }
    if args.verify_final {
        let open = doc! {"orderId": of_run(prefix),
        "status": {"$in": ["placed", "reserved"]}};
        let settled_at = loop {
            let asked = Instant::now();
            let n = orders.count_documents(open.clone()).await?;
            if n == 0 {
                break started.map(|s| s.elapsed());
            }
            if Instant::now() > deadline {
                anyhow::bail!("{n} orders still placed or reserved");
            }
            tokio::time::sleep(poll_pause(asked.elapsed())).await;
        };
        let mut by_status = BTreeMap::new();
        for s in ["confirmed", "rejected"] {
            let f = doc! {"orderId": of_run(prefix), "status": s};
            by_status.insert(s, orders.count_documents(f).await?);
        }
        match settled_at {
            Some(at) => println!(
                "  through all stages {:.0} orders/s ({:.2} s from first request; {by_status:?})",
                accepted as f64 / at.as_secs_f64(),
                at.as_secs_f64()
            ),
            None => println!("  final      {accepted} of {accepted} ({by_status:?})"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_the_ids_with_its_prefix_and_a_dash() {
        let range = of_run("lg-42");
        let (from, to) = (
            range.get_str("$gte").unwrap(),
            range.get_str("$lt").unwrap(),
        );
        let within = |id: &str| from <= id && id < to;
        for id in ["lg-42-0", "lg-42-19999", "lg-42-", "lg-42-z"] {
            assert!(within(id), "{id}");
        }
        for id in [
            "lg-42", "lg-420-1", "lg-42.1", "lg-41-1", "lg-43-1", "lg-42_1",
        ] {
            assert!(!within(id), "{id}");
        }
    }

    #[test]
    fn polling_takes_at_most_a_fifth_of_the_server() {
        assert_eq!(
            poll_pause(Duration::from_millis(1)),
            Duration::from_millis(200)
        );
        assert_eq!(
            poll_pause(Duration::from_millis(100)),
            Duration::from_millis(400)
        );
    }
}
