//! The simulated payment gateway's decision (SPEC §4): deterministic per
//! `orderId`, so a redelivered or replayed order gets the same answer and
//! tests can predict it.

use crate::Money;

pub const PAYMENT_DECLINED: &str = "payment_declined";

/// When the simulated gateway declines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeclineRule {
    /// Share of orders declined, 0.0–1.0, chosen by a hash of the order id.
    pub rate: f64,
    /// Orders above this amount are always declined.
    pub over: Option<Money>,
}

impl Default for DeclineRule {
    fn default() -> Self {
        DeclineRule {
            rate: 0.0,
            over: None,
        }
    }
}

/// `Some(detail)` when the gateway declines this order.
pub fn decline(rule: &DeclineRule, order_id: &str, amount: Money) -> Option<String> {
    if let Some(limit) = rule.over {
        if amount > limit {
            return Some(format!("amount {amount} is over the limit {limit}"));
        }
    }
    if rule.rate > 0.0 && unit_score(order_id) < rule.rate {
        return Some("declined by the issuer".to_owned());
    }
    None
}

/// A stable number in [0, 1) for an order id (FNV-1a, 64 bit, then the
/// splitmix64 finaliser so similar ids spread evenly): the same on every
/// machine and release, unlike `std`'s hasher.
fn unit_score(order_id: &str) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in order_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_limit_is_declined_and_at_the_limit_is_not() {
        let rule = DeclineRule {
            rate: 0.0,
            over: Some(Money::from_minor(10_000)),
        };
        assert!(decline(&rule, "o-1", Money::from_minor(10_001)).is_some());
        assert!(decline(&rule, "o-1", Money::from_minor(10_000)).is_none());
    }

    #[test]
    fn the_rate_is_deterministic_and_roughly_kept() {
        let rule = DeclineRule {
            rate: 0.2,
            over: None,
        };
        let amount = Money::from_minor(100);
        let declined = (0..10_000)
            .filter(|i| decline(&rule, &format!("o-{i}"), amount).is_some())
            .count();
        assert!((1_800..2_200).contains(&declined), "{declined}");
        for i in 0..100 {
            let id = format!("o-{i}");
            assert_eq!(decline(&rule, &id, amount), decline(&rule, &id, amount));
        }
        assert!(decline(&DeclineRule::default(), "o-1", amount).is_none());
        let all = DeclineRule {
            rate: 1.0,
            over: None,
        };
        assert!(decline(&all, "o-1", amount).is_some());
    }
}
