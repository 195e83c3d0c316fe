//! Pricing rules of the persist stage (SPEC §4): the catalogue is
//! authoritative for the products it knows; unknown products keep the
//! client's price unless the catalogue is strict.

use std::collections::HashMap;

use crate::events::{PlacedItem, PricedItem};
use crate::money::Money;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueEntry {
    pub product_id: String,
    pub name: String,
    pub unit_price: Money,
}

pub type Catalogue = HashMap<String, CatalogueEntry>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub detail: String,
}

pub const UNKNOWN_PRODUCT: &str = "unknown_product";
pub const AMOUNT_OUT_OF_RANGE: &str = "amount_out_of_range";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedOrder {
    pub items: Vec<PricedItem>,
    pub total: Money,
}

pub fn price_order(
    items: &[PlacedItem],
    catalogue: &Catalogue,
    strict_catalogue: bool,
) -> Result<PricedOrder, Rejection> {
    let mut priced = Vec::with_capacity(items.len());
    for item in items {
        let (name, unit_price, client_unit_price, tracked) =
            match (catalogue.get(&item.product_id), item.unit_price) {
                (Some(entry), client) => (
                    entry.name.clone(),
                    entry.unit_price,
                    client.filter(|p| *p != entry.unit_price),
                    true,
                ),
                (None, Some(client)) if !strict_catalogue => (
                    item.name.clone().unwrap_or_else(|| item.product_id.clone()),
                    client,
                    None,
                    false,
                ),
                (None, _) => {
                    return Err(Rejection {
                        reason: UNKNOWN_PRODUCT,
                        detail: format!("product '{}' is not in the catalogue", item.product_id),
                    })
                }
            };
        let line_total = unit_price.checked_mul(item.quantity).ok_or(Rejection {
            reason: AMOUNT_OUT_OF_RANGE,
            detail: format!("line total of '{}' is out of range", item.product_id),
        })?;
        priced.push(PricedItem {
            product_id: item.product_id.clone(),
            name,
            quantity: item.quantity,
            unit_price,
            line_total,
            client_unit_price,
            tracked,
        });
    }
    let total = Money::sum(priced.iter().map(|i| i.line_total)).ok_or(Rejection {
        reason: AMOUNT_OUT_OF_RANGE,
        detail: "order total is out of range".into(),
    })?;
    Ok(PricedOrder {
        items: priced,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, qty: u32, price: Option<i64>) -> PlacedItem {
        PlacedItem {
            product_id: id.into(),
            name: None,
            quantity: qty,
            unit_price: price.map(Money::from_minor),
        }
    }

    fn catalogue() -> Catalogue {
        [("coffee", "Coffee", 450), ("mug", "Mug", 1200)]
            .into_iter()
            .map(|(id, name, p)| {
                (
                    id.to_string(),
                    CatalogueEntry {
                        product_id: id.into(),
                        name: name.into(),
                        unit_price: Money::from_minor(p),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn catalogue_price_wins_and_client_price_is_kept_for_audit() {
        let p = price_order(&[item("coffee", 2, Some(400))], &catalogue(), false).unwrap();
        assert_eq!(p.items[0].unit_price, Money::from_minor(450));
        assert_eq!(p.items[0].client_unit_price, Some(Money::from_minor(400)));
        assert_eq!(p.total, Money::from_minor(900));
        assert!(p.items[0].tracked);
        assert_eq!(p.items[0].name, "Coffee");
    }

    #[test]
    fn equal_client_price_is_not_flagged() {
        let p = price_order(&[item("mug", 1, Some(1200))], &catalogue(), false).unwrap();
        assert_eq!(p.items[0].client_unit_price, None);
    }

    #[test]
    fn unknown_product_with_price_is_accepted_untracked() {
        let p = price_order(
            &[item("tea", 3, Some(10)), item("coffee", 1, None)],
            &catalogue(),
            false,
        )
        .unwrap();
        assert!(!p.items[0].tracked);
        assert_eq!(p.total, Money::from_minor(480));
    }

    #[test]
    fn strict_catalogue_rejects_unknown_products() {
        let r = price_order(&[item("tea", 1, Some(10))], &catalogue(), true).unwrap_err();
        assert_eq!(r.reason, UNKNOWN_PRODUCT);
    }

    #[test]
    fn unknown_product_without_price_is_always_rejected() {
        let r = price_order(&[item("tea", 1, None)], &catalogue(), false).unwrap_err();
        assert_eq!(r.reason, UNKNOWN_PRODUCT);
        assert!(r.detail.contains("tea"));
    }
}
