//! Drives the operator's real scaling decision ([`scaling::decide`]) through
//! a simulated sawtooth load and writes the result as CSV and an SVG plot
//! (`docs/autoscaling.svg`):
//!
//! `cargo run -p orderflow-operator --bin autoscale-sim -- docs/autoscaling.svg`
//!
//! Model: 6 partitions; the input rate ramps from 0 to 9 000 msg/s over ten
//! minutes, drops to 0, three times; each replica consumes 1 500 msg/s; a
//! poll every 15 s; stabilization 300 s; bounds 1–12, 1 000 lag per replica.
//! A new replica starts consuming one poll after it was asked for.

use orderflow_operator::scaling::{decide, Bounds, History, PartitionOffsets};

const PARTITIONS: usize = 6;
const POLL: i64 = 15;
const PER_REPLICA: f64 = 1_500.0;
const PEAK: f64 = 9_000.0;
const PERIOD: i64 = 600;
const RUN: i64 = 3 * PERIOD + 600;

struct Row {
    t: i64,
    rate: f64,
    lag: u64,
    replicas: u32,
}

fn simulate() -> Vec<Row> {
    let bounds = Bounds {
        min_replicas: 1,
        max_replicas: 12,
        lag_per_replica: 1000,
    };
    let mut history = History::default();
    let (mut high, mut committed) = ([0f64; PARTITIONS], [0f64; PARTITIONS]);
    let (mut replicas, mut running) = (1u32, 1u32);
    let mut rows = Vec::new();
    let mut t = 0;
    while t <= RUN {
        let rate = if t < 3 * PERIOD {
            PEAK * (t % PERIOD) as f64 / PERIOD as f64
        } else {
            0.0
        };
        // One poll interval of traffic, spread over the partitions; the
        // running replicas share the partitions (at most one each).
        let consumers = running.min(PARTITIONS as u32) as f64;
        for p in 0..PARTITIONS {
            high[p] += rate * POLL as f64 / PARTITIONS as f64;
            let capacity = PER_REPLICA * consumers * POLL as f64 / PARTITIONS as f64;
            committed[p] = (committed[p] + capacity).min(high[p]);
        }
        let offsets: Vec<PartitionOffsets> = (0..PARTITIONS)
            .map(|p| PartitionOffsets {
                partition: p as i32,
                low: 0,
                high: high[p] as i64,
                committed: Some(committed[p] as i64),
            })
            .collect();
        running = replicas; // asked for last poll, running now
        let d = decide(&offsets, replicas, &bounds, 300, t, &mut history);
        replicas = d.replicas;
        rows.push(Row {
            t,
            rate,
            lag: d.lag,
            replicas,
        });
        t += POLL;
    }
    rows
}

fn svg(rows: &[Row]) -> String {
    let (w, h, pad) = (900.0, 360.0, 50.0);
    let max_t = rows.last().map(|r| r.t).unwrap_or(1) as f64;
    let max_lag = rows.iter().map(|r| r.lag).max().unwrap_or(1).max(1) as f64;
    let x = |t: i64| pad + (w - 2.0 * pad) * t as f64 / max_t;
    let y_lag = |l: u64| h - pad - (h - 2.0 * pad) * l as f64 / max_lag;
    let y_rep = |r: u32| h - pad - (h - 2.0 * pad) * r as f64 / 12.0;
    let line = |points: Vec<(f64, f64)>| {
        points
            .iter()
            .map(|(a, b)| format!("{a:.1},{b:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let lag = line(rows.iter().map(|r| (x(r.t), y_lag(r.lag))).collect());
    // Replicas as steps.
    let mut steps = Vec::new();
    for pair in rows.windows(2) {
        steps.push((x(pair[0].t), y_rep(pair[0].replicas)));
        steps.push((x(pair[1].t), y_rep(pair[0].replicas)));
    }
    let replicas = line(steps);
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="#999"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="#999"/>
<line x1="{r}" y1="{pad}" x2="{r}" y2="{b}" stroke="#999"/>
<polyline points="{lag}" fill="none" stroke="#2f6fed" stroke-width="1.5"/>
<polyline points="{replicas}" fill="none" stroke="#d9480f" stroke-width="2"/>
<text x="{pad}" y="30" fill="#2f6fed">lag (max {max_lag:.0} messages)</text>
<text x="{rl}" y="30" fill="#d9480f" text-anchor="end">replicas (axis 0–12)</text>
<text x="{pad}" y="{tb}">0 s</text>
<text x="{r}" y="{tb}" text-anchor="end">{max_t:.0} s</text>
</svg>
"##,
        b = h - pad,
        r = w - pad,
        rl = w - pad,
        tb = h - pad + 18.0,
    )
}

fn main() -> std::io::Result<()> {
    let rows = simulate();
    println!("t_s,input_rate,lag,replicas");
    for r in &rows {
        println!("{},{:.0},{},{}", r.t, r.rate, r.lag, r.replicas);
    }
    if let Some(path) = std::env::args().nth(1) {
        std::fs::write(path, svg(&rows))?;
    }
    Ok(())
}
