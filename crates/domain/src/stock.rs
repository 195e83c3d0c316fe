//! Stock rules of the inventory stage (SPEC §4): what an order reserves and
//! when a reservation crosses a product's low-stock threshold.

use std::collections::BTreeMap;

use crate::events::{PricedItem, ReservedItem};

/// Percentage of capacity below which stock is low, unless a product says
/// otherwise.
pub const DEFAULT_LOW_STOCK_PERCENT: i64 = 50;

/// The largest stock, capacity or threshold a product may have (10^12
/// units): inputs beyond it are refused, and arithmetic on stock levels
/// stays far from `i64`'s range.
pub const MAX_STOCK: i64 = 1_000_000_000_000;

/// The stock level below which a product counts as low.
pub fn low_stock_threshold(capacity: i64, configured: Option<i64>) -> i64 {
    configured.unwrap_or_else(|| {
        // In i128: no capacity a stored document holds can overflow it.
        (i128::from(capacity.max(0)) * i128::from(DEFAULT_LOW_STOCK_PERCENT) / 100) as i64
    })
}

/// A reservation taking stock from `before` to `after` crossed the threshold
/// when it started at or above it and ended below it. Later reservations
/// while stock stays low are not new crossings; a restock above the
/// threshold arms it again.
pub fn crossed_low(before: i64, after: i64, threshold: i64) -> bool {
    before >= threshold && after < threshold
}

/// What an order takes from stock: tracked products only, quantities of a
/// product listed twice added up, in a stable order (so two orders lock
/// products in the same order).
pub fn reservation(items: &[PricedItem]) -> Vec<ReservedItem> {
    let mut by_product: BTreeMap<&str, i64> = BTreeMap::new();
    for item in items.iter().filter(|i| i.tracked) {
        *by_product.entry(item.product_id.as_str()).or_default() += i64::from(item.quantity);
    }
    by_product
        .into_iter()
        .map(|(product_id, quantity)| ReservedItem {
            product_id: product_id.to_owned(),
            quantity,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Money;

    #[test]
    fn thresholds_default_to_half_of_capacity() {
        assert_eq!(low_stock_threshold(100, None), 50);
        assert_eq!(low_stock_threshold(7, None), 3);
        assert_eq!(low_stock_threshold(100, Some(10)), 10);
        assert_eq!(low_stock_threshold(-5, None), 0);
        // A capacity written straight into MongoDB cannot make it panic.
        assert_eq!(low_stock_threshold(i64::MAX, None), i64::MAX / 2);
        assert_eq!(
            low_stock_threshold(4611686018427387903, None),
            2305843009213693951
        );
    }

    #[test]
    fn a_crossing_is_counted_once() {
        // (before, after, threshold, crossed)
        let table = [
            (60, 55, 50, false), // still above
            (55, 50, 50, false), // at the threshold is not low
            (50, 49, 50, true),  // from the threshold to below
            (80, 10, 50, true),  // one big order
            (49, 40, 50, false), // already low
            (0, 0, 0, false),    // zero threshold never fires
        ];
        for (before, after, threshold, expected) in table {
            assert_eq!(
                crossed_low(before, after, threshold),
                expected,
                "{before}→{after} / {threshold}"
            );
        }
    }

    #[test]
    fn reservation_merges_products_and_skips_untracked() {
        let item = |id: &str, q: u32, tracked: bool| PricedItem {
            product_id: id.into(),
            name: id.into(),
            quantity: q,
            unit_price: Money::from_minor(100),
            line_total: Money::from_minor(100 * i64::from(q)),
            client_unit_price: None,
            tracked,
        };
        let r = reservation(&[
            item("mug", 1, true),
            item("coffee", 2, true),
            item("gift", 1, false),
            item("mug", 3, true),
        ]);
        let got: Vec<(&str, i64)> = r
            .iter()
            .map(|i| (i.product_id.as_str(), i.quantity))
            .collect();
        assert_eq!(got, vec![("coffee", 2), ("mug", 4)]);
    }
}
