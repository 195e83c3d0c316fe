//! The life cycle of an order.

use serde::{Deserialize, Serialize};

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Placed,
    Reserved,
    Confirmed,
    Rejected,
    Shipped,
    Delivered,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 7] = [
        OrderStatus::Placed,
        OrderStatus::Reserved,
        OrderStatus::Confirmed,
        OrderStatus::Rejected,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Placed => "placed",
            OrderStatus::Reserved => "reserved",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Still being worked on by the pipeline (its stock may be reserved
    /// and its payment pending): the stages will move it on.
    pub fn in_flight(self) -> bool {
        matches!(self, OrderStatus::Placed | OrderStatus::Reserved)
    }

    /// A status no pipeline stage moves the order out of.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OrderStatus::Rejected | OrderStatus::Delivered | OrderStatus::Cancelled
        )
    }
}

/// Why a requested status change is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionError {
    /// Already in the requested status.
    Unchanged,
    /// Not a move anyone may make by hand.
    Illegal,
}

impl OrderStatus {
    /// Status changes a client may request through orders-api (SPEC §2):
    /// fulfilment moves forward (confirmed → shipped → delivered) and an
    /// order that has not been paid may be cancelled (placed/reserved →
    /// cancelled). Everything else belongs to the pipeline.
    pub fn check_manual_change(self, to: OrderStatus) -> Result<(), TransitionError> {
        use OrderStatus::*;
        if self == to {
            return Err(TransitionError::Unchanged);
        }
        match (self, to) {
            (Confirmed, Shipped) | (Shipped, Delivered) | (Placed | Reserved, Cancelled) => Ok(()),
            _ => Err(TransitionError::Illegal),
        }
    }

    /// Every status that can follow this one, by the pipeline or by hand.
    pub fn successors(self) -> &'static [OrderStatus] {
        use OrderStatus::*;
        match self {
            Placed => &[Reserved, Rejected, Cancelled],
            Reserved => &[Confirmed, Rejected, Cancelled],
            Confirmed => &[Shipped],
            Shipped => &[Delivered],
            Rejected | Delivered | Cancelled => &[],
        }
    }

    /// Whether the order may still get to `target` from here (itself
    /// included).
    pub fn can_reach(self, target: OrderStatus) -> bool {
        self == target || self.successors().iter().any(|s| s.can_reach(target))
    }

    /// The customer has paid: the order's total counts as revenue.
    pub fn is_paid(self) -> bool {
        matches!(
            self,
            OrderStatus::Confirmed | OrderStatus::Shipped | OrderStatus::Delivered
        )
    }

    /// The pipeline has decided: the order is past `placed` / `reserved`.
    pub fn is_settled(self) -> bool {
        !matches!(self, OrderStatus::Placed | OrderStatus::Reserved)
    }

    /// The statuses a client may request from this one.
    pub fn manual_successors(self) -> Vec<OrderStatus> {
        Self::ALL
            .into_iter()
            .filter(|to| self.check_manual_change(*to).is_ok())
            .collect()
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::*;
    use super::*;

    #[test]
    fn only_fulfilment_and_cancellation_are_manual() {
        let legal = [
            (Confirmed, Shipped),
            (Shipped, Delivered),
            (Placed, Cancelled),
            (Reserved, Cancelled),
        ];
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                let expected = if from == to {
                    Err(TransitionError::Unchanged)
                } else if legal.contains(&(from, to)) {
                    Ok(())
                } else {
                    Err(TransitionError::Illegal)
                };
                assert_eq!(from.check_manual_change(to), expected, "{from} → {to}");
            }
        }
        assert_eq!(Confirmed.manual_successors(), vec![Shipped]);
        assert!(Rejected.manual_successors().is_empty());
        assert!(Delivered.manual_successors().is_empty());
    }

    #[test]
    fn reachability_follows_the_life_cycle() {
        assert!(Placed.can_reach(Delivered));
        assert!(Reserved.can_reach(Confirmed));
        assert!(Placed.can_reach(Placed));
        assert!(!Confirmed.can_reach(Cancelled));
        assert!(!Rejected.can_reach(Confirmed));
        assert!(!Shipped.can_reach(Confirmed));
        for s in OrderStatus::ALL {
            for m in s.manual_successors() {
                assert!(s.successors().contains(&m), "{s} → {m}");
            }
        }
        assert!(!Reserved.is_settled() && Confirmed.is_settled() && Cancelled.is_settled());
    }
}
