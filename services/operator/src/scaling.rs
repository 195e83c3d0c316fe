//! The autoscaling decision of one stage (SPEC §5), as pure functions: the
//! reconcile loop gathers watermarks and committed offsets, this module says
//! how many replicas the stage should run and why.
//!
//! - lag = Σ over partitions of (high watermark − committed offset); a
//!   partition without a committed offset counts from its low watermark;
//! - desired = ⌈lag / lagPerReplica⌉, clamped to
//!   [minReplicas, min(maxReplicas, partitions)] — a replica beyond the
//!   partition count would idle — and to the partitions that have lag at all
//!   (one hot partition is served by one consumer, however many run);
//! - up at once, down only to the highest desired value seen during the
//!   stabilization window (as the HPA does);
//! - a partition whose committed offset has not moved for `STUCK_POLLS`
//!   polls while it has lag is stuck (a poison message, a wedged consumer):
//!   its lag does not add replicas, and it is reported.

use std::collections::BTreeMap;

/// Polls without progress after which a lagging partition counts as stuck.
pub const STUCK_POLLS: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub lag_per_replica: u64,
}

pub use orderflow_platform::kafka::offsets::PartitionOffsets;

/// Σ lag over the partitions.
pub fn total_lag(partitions: &[PartitionOffsets]) -> u64 {
    partitions.iter().map(PartitionOffsets::lag).sum()
}

/// What the autoscaler remembers between polls (kept in the pipeline's
/// status, so a restarted operator carries on).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// (time in seconds, desired replicas) of recent polls.
    pub recommendations: Vec<(i64, u32)>,
    /// Per partition: the last committed offset seen and for how many
    /// consecutive polls it has not moved while lagging.
    pub progress: BTreeMap<i32, (Option<i64>, u32)>,
    /// (time, Σ high watermarks, Σ consumed positions) of the last poll.
    pub last_totals: Option<(i64, i64, i64)>,
    /// The most messages per second one replica was seen to consume while
    /// it had lag to work on (i.e. at full speed).
    pub capacity_per_replica: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub lag: u64,
    /// The replicas the lag alone asks for (before stabilization).
    pub desired: u32,
    /// What to set now.
    pub replicas: u32,
    pub stuck_partitions: Vec<i32>,
    pub reason: String,
}

/// The replica count the lag asks for, within the bounds.
pub fn desired_replicas(
    lag: u64,
    lagging_partitions: u32,
    partitions: u32,
    bounds: &Bounds,
) -> u32 {
    let per = bounds.lag_per_replica.max(1);
    let wanted = lag.div_ceil(per).min(u64::from(u32::MAX)) as u32;
    let upper = bounds
        .max_replicas
        .min(partitions)
        .min(lagging_partitions.max(1))
        .max(bounds.min_replicas);
    wanted.clamp(bounds.min_replicas, upper)
}

/// Replicas the production rate needs, from the rates between this poll and
/// the last one; updates the learned per-replica capacity.
fn throughput_floor(
    partitions: &[PartitionOffsets],
    current: u32,
    lag: u64,
    now: i64,
    history: &mut History,
) -> u32 {
    let high: i64 = partitions.iter().map(|p| p.high).sum();
    let consumed: i64 = partitions
        .iter()
        .map(|p| p.committed.unwrap_or(p.low).max(p.low))
        .sum();
    let previous = history.last_totals.replace((now, high, consumed));
    let Some((then, high_then, consumed_then)) = previous else {
        return 0;
    };
    let dt = now - then;
    if dt <= 0 {
        return 0;
    }
    let produced_rate = (high - high_then).max(0) as u64 / dt as u64;
    let consumed_rate = (consumed - consumed_then).max(0) as u64 / dt as u64;
    if lag > 0 && current > 0 && consumed_rate > 0 {
        let per_replica = consumed_rate / u64::from(current);
        let known = history.capacity_per_replica.unwrap_or(0);
        history.capacity_per_replica = Some(known.max(per_replica));
    }
    match history.capacity_per_replica {
        Some(capacity) if capacity > 0 => {
            produced_rate.div_ceil(capacity).min(u64::from(u32::MAX)) as u32
        }
        _ => 0,
    }
}

/// One poll: updates `history` and decides.
pub fn decide(
    partitions: &[PartitionOffsets],
    current: u32,
    bounds: &Bounds,
    stabilization_secs: i64,
    now: i64,
    history: &mut History,
) -> Decision {
    // Stuck detection.
    let mut stuck = Vec::new();
    for p in partitions {
        let entry = history
            .progress
            .entry(p.partition)
            .or_insert((p.committed, 0));
        if p.lag() > 0 && entry.0 == p.committed && p.committed.is_some() {
            entry.1 += 1;
        } else {
            *entry = (p.committed, 0);
        }
        if entry.1 >= STUCK_POLLS {
            stuck.push(p.partition);
        }
    }
    history
        .progress
        .retain(|id, _| partitions.iter().any(|p| p.partition == *id));

    let lag = total_lag(partitions);
    let moving: Vec<&PartitionOffsets> = partitions
        .iter()
        .filter(|p| !stuck.contains(&p.partition))
        .collect();
    let moving_lag: u64 = moving.iter().map(|p| p.lag()).sum();
    let lagging = moving.iter().filter(|p| p.lag() > 0).count() as u32;
    let mut desired = desired_replicas(moving_lag, lagging, partitions.len() as u32, bounds);
    // Throughput floor: lag alone reads 0 while the replicas keep up, and
    // would scale a busy stage down (docs/autoscaling.md). Never go below
    // what the production rate needs at the capacity a replica has shown.
    let floor = throughput_floor(partitions, current, lag, now, history);
    let upper = bounds
        .max_replicas
        .min(partitions.len() as u32)
        .max(bounds.min_replicas);
    desired = desired.max(floor.min(upper));
    if !stuck.is_empty() {
        // A stuck partition still needs its consumer: do not take replicas
        // away because its lag is ignored, and do not add any for it.
        desired = desired
            .max(current.min(bounds.max_replicas))
            .max(bounds.min_replicas);
    }

    if history.recommendations.is_empty() {
        // A fresh start (no history): what runs now counts as the last
        // recommendation, so a restart never scales down at once.
        history.recommendations.push((now, current));
    }
    history.recommendations.push((now, desired));
    history
        .recommendations
        .retain(|(at, _)| *at > now - stabilization_secs.max(0));
    let stabilized = history
        .recommendations
        .iter()
        .map(|(_, d)| *d)
        .max()
        .unwrap_or(desired);

    let (replicas, reason) = if desired > current {
        (
            desired,
            format!("lag {lag} needs {desired} replicas: scaling up"),
        )
    } else if stabilized < current {
        (
            stabilized,
            format!("lag {lag} stayed low for {stabilization_secs}s: scaling down to {stabilized}"),
        )
    } else if desired < current {
        (
            current,
            format!("lag {lag} would allow {desired}; holding {current} during stabilization"),
        )
    } else {
        (current, format!("lag {lag}: {current} replicas are right"))
    };
    let reason = if stuck.is_empty() {
        reason
    } else {
        format!("{reason}; partitions {stuck:?} are stuck (no progress for {STUCK_POLLS} polls)")
    };
    Decision {
        lag,
        desired,
        replicas,
        stuck_partitions: stuck,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        min_replicas: 1,
        max_replicas: 12,
        lag_per_replica: 1000,
    };

    fn parts(lags: &[(i64, Option<i64>)]) -> Vec<PartitionOffsets> {
        lags.iter()
            .enumerate()
            .map(|(i, (high, committed))| PartitionOffsets {
                partition: i as i32,
                low: 0,
                high: *high,
                committed: *committed,
            })
            .collect()
    }

    #[test]
    fn lag_counts_uncommitted_partitions_from_the_low_watermark() {
        let p = PartitionOffsets {
            partition: 0,
            low: 100,
            high: 250,
            committed: None,
        };
        assert_eq!(p.lag(), 150);
        let p = PartitionOffsets {
            partition: 0,
            low: 100,
            high: 250,
            committed: Some(50),
        };
        assert_eq!(
            p.lag(),
            150,
            "a committed offset below the low watermark (retention) counts from low"
        );
        let p = PartitionOffsets {
            partition: 0,
            low: 0,
            high: 250,
            committed: Some(250),
        };
        assert_eq!(p.lag(), 0);
    }

    #[test]
    fn desired_replicas_table() {
        // (lag, lagging partitions, partitions, expected)
        let table = [
            (0, 0, 6, 1),         // idle: the minimum
            (1, 1, 6, 1),         // a little lag: one
            (2_500, 6, 6, 3),     // ⌈2500/1000⌉
            (50_000, 6, 6, 6),    // capped at the partition count, not 12
            (50_000, 24, 24, 12), // capped at maxReplicas
            (50_000, 1, 6, 1),    // one hot partition: one consumer can take it
            (3_000, 2, 6, 2),     // two lagging partitions
        ];
        for (lag, lagging, partitions, expected) in table {
            assert_eq!(
                desired_replicas(lag, lagging, partitions, &BOUNDS),
                expected,
                "lag {lag}, {lagging} lagging of {partitions}"
            );
        }
        // minReplicas wins over a smaller partition count.
        let b = Bounds {
            min_replicas: 3,
            ..BOUNDS
        };
        assert_eq!(desired_replicas(0, 0, 2, &b), 3);
    }

    #[test]
    fn scales_up_at_once_and_down_after_the_window() {
        let mut h = History::default();
        let busy = parts(&[(5000, Some(0)), (5000, Some(0)), (5000, Some(0))]);
        let d = decide(&busy, 1, &BOUNDS, 300, 0, &mut h);
        assert_eq!((d.desired, d.replicas), (3, 3));
        // Drained 30 s later: stabilization holds 3.
        let idle = parts(&[(5000, Some(5000)), (5000, Some(5000)), (5000, Some(5000))]);
        let d = decide(&idle, 3, &BOUNDS, 300, 30, &mut h);
        assert_eq!((d.desired, d.replicas), (1, 3));
        assert!(d.reason.contains("holding"), "{}", d.reason);
        // Just inside the window the 3 of t=0 still counts …
        let d = decide(&idle, 3, &BOUNDS, 300, 299, &mut h);
        assert_eq!(d.replicas, 3);
        // … and once it has left the window, down to what remains.
        let d = decide(&idle, 3, &BOUNDS, 300, 301, &mut h);
        assert_eq!(d.replicas, 1);
        assert!(d.reason.contains("scaling down"), "{}", d.reason);
    }

    #[test]
    fn a_partition_cap_does_not_flap_around_the_tolerance() {
        // KEDA #2908-like: lag asks for more than the partitions; the answer
        // stays at the cap poll after poll instead of oscillating.
        let mut h = History::default();
        let p = parts(&[(90_000, Some(0)), (90_000, Some(10)), (90_000, Some(20))]);
        let mut current = 1;
        for t in 0..5 {
            let mut p = p.clone();
            for (i, part) in p.iter_mut().enumerate() {
                part.committed = Some(t * 100 + i as i64); // progressing
            }
            let d = decide(&p, current, &BOUNDS, 300, t * 15, &mut h);
            assert_eq!(d.replicas, 3);
            current = d.replicas;
        }
    }

    #[test]
    fn sustained_load_that_the_replicas_keep_up_with_keeps_them() {
        // 4 replicas at full speed (1 000 msg/s each) with lag, then the
        // input settles at 3 500 msg/s, which they keep up with: lag reads
        // 0 at every poll, yet the stage keeps ⌈3 500 / 1 000⌉ = 4.
        let mut h = History::default();
        let mut current = 4;
        let (mut high, mut done) = (0i64, 0i64);
        for t in 0..40 {
            let now = t * 15;
            let rate = if t < 4 { 6_000 } else { 3_500 };
            high += rate * 15;
            done = (done + 4_000 * 15).min(high);
            // All the traffic on partition 0 of 6.
            let many: Vec<PartitionOffsets> = (0..6)
                .map(|i| PartitionOffsets {
                    partition: i,
                    low: 0,
                    high: if i == 0 { high } else { 0 },
                    committed: Some(if i == 0 { done } else { 0 }),
                })
                .collect();
            let d = decide(&many, current, &BOUNDS, 300, now, &mut h);
            current = d.replicas;
        }
        assert_eq!(h.capacity_per_replica, Some(1_000));
        assert_eq!(current, 4, "no dip while the load lasts");
    }

    #[test]
    fn no_committed_offset_yet_still_scales() {
        let mut h = History::default();
        let p = parts(&[(4000, None), (4000, None)]);
        let d = decide(&p, 1, &BOUNDS, 300, 0, &mut h);
        assert_eq!(d.lag, 8000);
        assert_eq!(d.replicas, 2);
        assert!(d.stuck_partitions.is_empty(), "no offset is not 'stuck'");
    }

    #[test]
    fn a_poison_message_holding_lag_does_not_keep_adding_replicas() {
        let mut h = History::default();
        let mut current = 2;
        let mut last = None;
        for t in 0..8 {
            // Partition 0 is stuck at offset 10 with 9 990 behind it;
            // partition 1 progresses and keeps up.
            let p = vec![
                PartitionOffsets {
                    partition: 0,
                    low: 0,
                    high: 10_000,
                    committed: Some(10),
                },
                PartitionOffsets {
                    partition: 1,
                    low: 0,
                    high: 100 + t * 10,
                    committed: Some(100 + t * 10),
                },
            ];
            let d = decide(&p, current, &BOUNDS, 300, t * 15, &mut h);
            current = d.replicas;
            last = Some(d);
        }
        let d = last.unwrap();
        assert_eq!(d.stuck_partitions, vec![0]);
        assert_eq!(
            d.replicas, 2,
            "neither more replicas for the stuck lag nor fewer"
        );
        assert!(d.reason.contains("stuck"), "{}", d.reason);
        // It starts moving again: no longer stuck.
        let p = vec![
            PartitionOffsets {
                partition: 0,
                low: 0,
                high: 10_000,
                committed: Some(11),
            },
            PartitionOffsets {
                partition: 1,
                low: 0,
                high: 200,
                committed: Some(200),
            },
        ];
        let d = decide(&p, current, &BOUNDS, 300, 200, &mut h);
        assert!(d.stuck_partitions.is_empty());
        assert_eq!(d.desired, 1, "one lagging partition, one consumer");
    }
}
