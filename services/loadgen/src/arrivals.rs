//! When a paced run's requests are due: a Poisson process at the target
//! rate, the arrivals of many independent clients. A thread of its own
//! sleeps until each arrival and hands it out; a request waits for one,
//! and learns when it was due.
//!
//! It replaced a Tokio task that released the permits due every 5 ms at
//! once: at 5 700 orders/s that fired 28 requests together every 5 ms, a
//! burst no independent clients make, and the burst's last requests waited
//! for the first ones in every process on the path (docs/benchmarks.md,
//! 2026-12-07). Tokio's timer cannot do finer: it rounds to milliseconds.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::synthetic::Rng;

/// The arrivals of one paced run, `count` of them at `rate` a second.
pub struct Arrivals {
    due: Mutex<VecDeque<Instant>>,
    ready: Semaphore,
}

impl Arrivals {
    /// Starts the thread that hands out `count` arrivals, the first one
    /// an interval after now.
    pub fn start(rate: u64, count: u64, seed: u64) -> Arc<Self> {
        let arrivals = Arc::new(Arrivals {
            due: Mutex::new(VecDeque::new()),
            ready: Semaphore::new(0),
        });
        let handed = arrivals.clone();
        std::thread::Builder::new()
            .name("loadgen-arrivals".into())
            .spawn(move || {
                let mut gaps = Intervals::new(rate, seed);
                let mut next = Instant::now() + gaps.next();
                let mut left = count;
                while left > 0 {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    // Everything due by now, at once: a thread that woke
                    // late does not fall behind.
                    let now = Instant::now();
                    let mut handed_out = 0;
                    let mut due = handed.due.lock().unwrap();
                    while left > 0 && next <= now {
                        due.push_back(next);
                        next += gaps.next();
                        left -= 1;
                        handed_out += 1;
                    }
                    drop(due);
                    handed.ready.add_permits(handed_out);
                }
            })
            .expect("starting the arrivals thread");
        arrivals
    }

    /// Waits for the next arrival and returns when it was due.
    pub async fn next(&self) -> Instant {
        self.ready
            .acquire()
            .await
            .expect("the semaphore is never closed")
            .forget();
        self.due
            .lock()
            .unwrap()
            .pop_front()
            .expect("one arrival queued per permit")
    }
}

/// Exponentially distributed gaps with mean `1 / rate`: a Poisson process.
struct Intervals {
    rng: Rng,
    mean: f64,
}

impl Intervals {
    fn new(rate: u64, seed: u64) -> Self {
        Intervals {
            rng: Rng(seed | 1),
            mean: 1.0 / rate.max(1) as f64,
        }
    }

    fn next(&mut self) -> Duration {
        // Uniform in (0, 1]: 53 random bits, never zero.
        let u = ((self.rng.next() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        Duration::from_secs_f64(-u.ln() * self.mean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_exponential_with_the_rate_as_mean() {
        let mut gaps = Intervals::new(5_000, 7);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| gaps.next().as_secs_f64()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        assert!((mean * 5_000.0 - 1.0).abs() < 0.01, "mean {mean}");
        // An exponential's P(X > mean) is 1/e; evenly spaced gaps would
        // give 0 or 1, bursts a share far from it.
        let above = xs.iter().filter(|&&x| x > 1.0 / 5_000.0).count() as f64 / n as f64;
        assert!(
            (above - (-1f64).exp()).abs() < 0.01,
            "share above the mean {above}"
        );
        // The standard deviation of an exponential equals its mean.
        let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        assert!((sd / mean - 1.0).abs() < 0.02, "sd {sd}, mean {mean}");
    }

    #[tokio::test]
    async fn every_arrival_is_handed_out_once_in_order_near_its_time() {
        let rate = 2_000;
        let started = Instant::now();
        let arrivals = Arrivals::start(rate, 400, 11);
        let mut last = started;
        for _ in 0..400 {
            let due = arrivals.next().await;
            assert!(due >= last, "arrivals out of order");
            // Handed out after it was due, and not long after.
            let late = Instant::now().saturating_duration_since(due);
            assert!(due <= Instant::now());
            assert!(
                late < Duration::from_millis(200),
                "handed out {late:?} late"
            );
            last = due;
        }
        // 400 arrivals at 2 000/s take about 200 ms.
        let took = last - started;
        assert!(
            took > Duration::from_millis(120) && took < Duration::from_millis(300),
            "{took:?}"
        );
        assert_eq!(arrivals.ready.available_permits(), 0);
        assert!(arrivals.due.lock().unwrap().is_empty());
    }
}
