//! loadgen: posts realistic orders to the producer at a target rate (or as
//! fast as it can) over N connections, prints progress, reports the achieved
//! rate, latency percentiles and errors, and can verify afterwards that every
//! accepted order reached MongoDB, or its final status through every stage
//! (end-to-end throughput). With `--get PATH` it measures a read endpoint
//! instead; with `--seed-orders N` it stores N synthetic orders directly in
//! MongoDB (the data set of the read benchmarks).

mod arrivals;
mod ceiling;
mod http;
mod seed;
mod synthetic;
mod verify;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;

/// Runs `work` on the database `url` names (`default` if it names none),
/// then shuts the client down, whatever `work` returned. Left to the
/// client's drop, ending its sessions runs in a task spawned as the runtime
/// shuts down, and it panicked once there (the driver's pool worker
/// already gone) after a bench ceiling.
async fn with_database<T>(
    url: &str,
    default: &str,
    work: impl AsyncFnOnce(&mongodb::Database) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    // The services' options (majority, journaled): the MongoDB ceiling
    // writes as the stages do.
    let opts = orderflow_platform::mongo::client_options(url, "loadgen").await?;
    let name = opts
        .default_database
        .clone()
        .unwrap_or_else(|| default.to_owned());
    let client = mongodb::Client::with_options(opts)?;
    let db = client.database(&name);
    let result = work(&db).await;
    orderflow_platform::mongo::close(&db).await;
    result
}

#[derive(Parser, Debug, Clone)]
#[command(name = "loadgen", about = "Load generator for the orderflow producer")]
struct Args {
    /// Producer base URL.
    #[arg(long, env = "LOADGEN_URL", default_value = "http://127.0.0.1:3000")]
    url: String,
    /// Target orders per second; 0 means as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Number of orders to send.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Concurrent connections (requests in flight).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// After the run, wait until every accepted order is in this MongoDB
    /// (URL with database) and report end-to-end throughput.
    #[arg(long)]
    verify_mongo: Option<String>,
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    verify_timeout: Duration,
    /// Prefix of generated order ids (default: a fresh one per run).
    #[arg(long)]
    prefix: Option<String>,
    /// With --verify-mongo: also wait until every order left placed /
    /// reserved (went through inventory and payment).
    #[arg(long)]
    verify_final: bool,
    /// Instead of posting orders: check that the `count` orders of an
    /// earlier run (--prefix) are in --verify-mongo (and, with
    /// --verify-final, past placed / reserved), then exit. scripts/bench
    /// waits for the stages by their metrics and checks MongoDB only
    /// afterwards: counting there while the run is measured takes the
    /// database's time from the pipeline it measures.
    #[arg(long, requires = "prefix", requires = "verify_mongo")]
    check_only: bool,
    /// Instead of posting orders: GET this path (e.g. `/orders?limit=50`)
    /// `count` times and report its latency.
    #[arg(long)]
    get: Option<String>,
    /// Instead of posting orders: store this many synthetic orders, spread
    /// over the last 30 days, straight into --seed-mongo, then exit.
    #[arg(long)]
    seed_orders: Option<u64>,
    #[arg(long, default_value = "mongodb://127.0.0.1:27017/orders")]
    seed_mongo: String,
    /// Instead of posting orders: the MongoDB ceiling (see ceiling.rs) —
    /// the stages' writes for this many orders, batched by
    /// --ceiling-batch, into --seed-mongo (its database is dropped first
    /// and afterwards), then exit.
    #[arg(long)]
    mongo_ceiling: Option<u64>,
    #[arg(long, default_value_t = 100)]
    ceiling_batch: usize,
    /// The channels notify delivers over: the ceiling writes one delivery
    /// record per channel and order.
    #[arg(long, default_value = "log,smtp", value_delimiter = ',')]
    ceiling_channels: Vec<String>,
    /// Delivery records per insert: notify's records writer takes those of
    /// the deliveries in flight together (its `records_per_write` metric).
    #[arg(long, default_value_t = 16)]
    ceiling_records_per_write: usize,
    /// Write one line per request to this file: Unix ms, orderId, outcome
    /// (the HTTP status, `timeout` or `connection-error`). scripts/chaos
    /// reads it.
    #[arg(long)]
    outcomes: Option<std::path::PathBuf>,
}

/// Request latencies in microseconds, up to a minute.
fn microseconds() -> anyhow::Result<Arc<Mutex<Histogram<u64>>>> {
    Ok(Arc::new(Mutex::new(Histogram::new_with_bounds(
        1, 60_000_000, 3,
    )?)))
}

/// `p50 … ms  p90 … ms  p99 … ms  max … ms` of a histogram of microseconds.
fn percentiles(h: &Histogram<u64>) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.90)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    )
}

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    accepted: AtomicU64,
    failed: AtomicU64,
}

/// The scheduler slice of loadgen's threads unless `SCHED_SLICE` says
/// otherwise. loadgen stands for clients on other machines: its wake-up to
/// read an answer should not wait out a slice of the services it measures,
/// which would count the client's own queueing as the request's latency
/// (ADR 0018; the producer asks for the same, ADR 0014).
const SCHED_SLICE: Duration = Duration::from_micros(100);

fn main() -> anyhow::Result<()> {
    // Set before the runtime and the arrivals thread start: they inherit it.
    if let Some(outcome) = orderflow_platform::runtime::ask_for_slice(Some(SCHED_SLICE))? {
        if let Err(e) = &outcome.result {
            eprintln!("loadgen: the kernel kept its own scheduler slice ({e})");
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(n) = args.seed_orders {
        return with_database(&args.seed_mongo, "orders", async |db| {
            seed::seed(db, n).await
        })
        .await;
    }
    if let Some(n) = args.mongo_ceiling {
        let notify = ceiling::Notify {
            channels: args.ceiling_channels.clone(),
            records_per_write: args.ceiling_records_per_write.max(1),
        };
        let batch = args.ceiling_batch.max(1);
        return with_database(&args.seed_mongo, "ceiling", async |db| {
            ceiling::run(db, n, batch, &notify).await
        })
        .await;
    }
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("lg-{}", std::process::id()));
    if args.check_only {
        return verify::verify(&args, &prefix, args.count, None).await;
    }
    let url = match &args.get {
        Some(path) => format!("{}{path}", args.url.trim_end_matches('/')),
        None => format!("{}/orders", args.url.trim_end_matches('/')),
    };
    let target = http::Target::parse(&url)?;
    let reading = args.get.is_some();
    let stats = Arc::new(Stats::default());
    let latencies = microseconds()?;
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(0));
    // A paced run's requests arrive as a Poisson process (arrivals.rs).
    // `latency` times a request from when it is sent; `from due` from when
    // it arrived, which adds the wait for a free connection (all of them
    // busy in a stall) and this process's own lateness on a busy machine.
    let arrivals =
        (args.rate > 0).then(|| arrivals::Arrivals::start(args.rate, args.count, 0x5EED));
    let from_due = microseconds()?;
    println!(
        "loadgen: {} {} {url}, {} connections, rate {}",
        args.count,
        if reading { "GETs of" } else { "orders to" },
        args.connections,
        if args.rate == 0 {
            "max".to_string()
        } else {
            format!("{}/s", args.rate)
        }
    );
    let started = Instant::now();
    let progress = {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let done =
                    stats.accepted.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed);
                println!(
                    "  {:>6.1}s  {done} done ({} accepted, {} failed), {} /s",
                    started.elapsed().as_secs_f64(),
                    stats.accepted.load(Ordering::Relaxed),
                    stats.failed.load(Ordering::Relaxed),
                    done - last
                );
                last = done;
            }
        })
    };

    let outcomes: Option<Arc<Mutex<std::io::BufWriter<std::fs::File>>>> = match &args.outcomes {
        Some(path) => Some(Arc::new(Mutex::new(std::io::BufWriter::new(
            std::fs::File::create(path)?,
        )))),
        None => None,
    };
    let workers: Vec<_> = (0..args.connections)
        .map(|w| {
            let outcomes = outcomes.clone();
            let mut client = http::Client::new(target.clone(), Duration::from_secs(30));
            let (stats, latencies, errors, next, arrivals, prefix) = (
                stats.clone(),
                latencies.clone(),
                errors.clone(),
                next.clone(),
                arrivals.clone(),
                prefix.clone(),
            );
            let from_due = from_due.clone();
            let count = args.count;
            tokio::spawn(async move {
                let mut rng = synthetic::Rng(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1));
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let due = match &arrivals {
                        Some(a) => Some(a.next().await),
                        None => None,
                    };
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    let (result, expected) = if reading {
                        (client.send(None).await, hyper::StatusCode::OK)
                    } else {
                        let body = synthetic::order_body(&format!("{prefix}-{i}"), &mut rng);
                        (
                            client.send(Some(body.into())).await,
                            hyper::StatusCode::ACCEPTED,
                        )
                    };
                    let micros = t.elapsed().as_micros() as u64;
                    if let Some(out) = &outcomes {
                        use std::io::Write as _;
                        let what = match &result {
                            Ok(status) => status.as_u16().to_string(),
                            Err(http::Failure::Timeout) => "timeout".into(),
                            Err(http::Failure::Connection) => "connection-error".into(),
                        };
                        let at = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_millis();
                        let _ = writeln!(out.lock().unwrap(), "{at} {prefix}-{i} {what}");
                    }
                    let outcome = match result {
                        Ok(status) if status == expected => Ok(()),
                        Ok(status) => Err(format!("HTTP {}", status.as_u16())),
                        Err(http::Failure::Timeout) => Err("timeout".to_owned()),
                        Err(http::Failure::Connection) => Err("connection error".to_owned()),
                    };
                    match outcome {
                        Ok(()) => {
                            stats.accepted.fetch_add(1, Ordering::Relaxed);
                            latencies.lock().unwrap().record(micros.max(1)).ok();
                            if let Some(due) = due {
                                let micros = due.elapsed().as_micros() as u64;
                                from_due.lock().unwrap().record(micros.max(1)).ok();
                            }
                        }
                        Err(e) => {
                            stats.failed.fetch_add(1, Ordering::Relaxed);
                            *errors.lock().unwrap().entry(e).or_default() += 1;
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await?;
    }
    if let Some(out) = &outcomes {
        use std::io::Write as _;
        out.lock().unwrap().flush()?;
    }
    let elapsed = started.elapsed();
    progress.abort();

    let accepted = stats.accepted.load(Ordering::Relaxed);
    println!("\nresults");
    println!("  sent       {}", stats.sent.load(Ordering::Relaxed));
    println!("  accepted   {accepted}");
    println!("  failed     {}", stats.failed.load(Ordering::Relaxed));
    for (e, n) in errors.lock().unwrap().iter() {
        println!("    {e}: {n}");
    }
    println!("  duration   {:.2} s", elapsed.as_secs_f64());
    println!(
        "  rate       {:.0} {}/s",
        accepted as f64 / elapsed.as_secs_f64(),
        if reading {
            "answers"
        } else {
            "accepted orders"
        }
    );
    if accepted > 0 {
        println!("  latency    {}", percentiles(&latencies.lock().unwrap()));
        let d = from_due.lock().unwrap();
        if !d.is_empty() {
            println!(
                "  from due   {} (from each arrival's due time: also the wait for a free connection and loadgen's own lateness)",
                percentiles(&d)
            );
        }
    }

    verify::verify(&args, &prefix, accepted, Some(started)).await
}
