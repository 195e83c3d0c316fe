//! Turns the body of `POST /orders` into an [`OrderSubmission`].
//!
//! Four request shapes are accepted (SPEC §2): the canonical one and those of
//! the reference systems it replaces. Every field is read from its raw JSON
//! text, so money is exact and *all* violations are reported at once instead
//! of stopping at the first type error.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::money::{Money, MoneyError, MAX_UNIT_MINOR};

pub const MAX_ITEMS: usize = 100;
pub const MAX_QUANTITY: u64 = 10_000;
pub const DEFAULT_CURRENCY: &str = "USD";

/// A validated order as submitted by a client, before pricing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderSubmission {
    /// `None` when the client left it to the server.
    pub order_id: Option<String>,
    pub customer_id: String,
    pub currency: String,
    pub items: Vec<SubmittedItem>,
    /// `totalAmount` as submitted (already checked against the items).
    pub total_amount: Option<Money>,
    /// A total the client sent that could not be checked against item prices
    /// (the `price` of string-item orders): kept for audit only.
    pub client_total: Option<Money>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmittedItem {
    pub product_id: String,
    pub name: Option<String>,
    pub quantity: u32,
    pub unit_price: Option<Money>,
}

impl OrderSubmission {
    /// Σ quantity × unitPrice when every item carries a price.
    pub fn items_total(&self) -> Option<Money> {
        let lines: Option<Vec<Money>> = self
            .items
            .iter()
            .map(|i| i.unit_price.and_then(|p| p.checked_mul(i.quantity)))
            .collect();
        Money::sum(lines?)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntakeError {
    /// Not JSON at all (HTTP 400).
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// JSON, but with invalid fields (HTTP 422); every violation is listed.
    #[error("{} invalid field(s)", .0.len())]
    Invalid(Vec<FieldError>),
}

#[derive(Deserialize)]
struct RawOrder<'a> {
    #[serde(borrow, rename = "orderId")]
    order_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "customerId")]
    customer_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "userId")]
    user_id: Option<&'a RawValue>,
    #[serde(borrow)]
    currency: Option<&'a RawValue>,
    #[serde(borrow)]
    items: Option<&'a RawValue>,
    #[serde(borrow)]
    products: Option<&'a RawValue>,
    #[serde(borrow, rename = "productId")]
    product_id: Option<&'a RawValue>,
    #[serde(borrow)]
    quantity: Option<&'a RawValue>,
    #[serde(borrow)]
    price: Option<&'a RawValue>,
    #[serde(borrow, rename = "totalAmount")]
    total_amount: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawItem<'a> {
    #[serde(borrow, rename = "productId")]
    product_id: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    sku: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    quantity: Option<&'a RawValue>,
    #[serde(borrow, rename = "unitPrice")]
    unit_price: Option<&'a RawValue>,
    #[serde(borrow)]
    price: Option<&'a RawValue>,
}

/// Collects violations while fields are read.
#[derive(Default)]
struct Violations(Vec<FieldError>);

impl Violations {
    /// `field` is formatted only here, for a violation: a valid order's
    /// field paths are never built.
    fn add(&mut self, field: impl std::fmt::Display, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.to_string(),
            message: message.into(),
        });
    }
}

/// The path of a field of a list's entry, `items[2].quantity` (or of the
/// entry itself, `items[2]`, when `name` is empty).
#[derive(Clone, Copy)]
struct ItemField<'a> {
    list: &'a str,
    index: usize,
    name: &'static str,
}

impl ItemField<'_> {
    fn named(self, name: &'static str) -> Self {
        ItemField { name, ..self }
    }
}

impl std::fmt::Display for ItemField<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.list, self.index)?;
        if !self.name.is_empty() {
            write!(f, ".{}", self.name)?;
        }
        Ok(())
    }
}

fn present(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get() != "null")
}

fn read_string(
    raw: &RawValue,
    field: impl std::fmt::Display,
    v: &mut Violations,
) -> Option<String> {
    match serde_json::from_str::<String>(raw.get()) {
        Ok(s) => Some(s),
        Err(_) => {
            v.add(field, "must be a string");
            None
        }
    }
}

fn read_id(
    raw: &RawValue,
    field: impl std::fmt::Display + Copy,
    max: usize,
    v: &mut Violations,
) -> Option<String> {
    let s = read_string(raw, field, v)?;
    let len = s.chars().count();
    if len == 0 || len > max {
        v.add(field, format!("must be 1 to {max} characters"));
        return None;
    }
    if s.chars().any(char::is_control) {
        v.add(field, "must not contain control characters");
        return None;
    }
    Some(s)
}

fn read_money(raw: &RawValue, field: impl std::fmt::Display, v: &mut Violations) -> Option<Money> {
    match Money::parse(raw.get()) {
        Ok(m) if m.is_negative() => {
            v.add(field, "must be greater than or equal to 0");
            None
        }
        Ok(m) if m.minor() > MAX_UNIT_MINOR => {
            v.add(field, "is out of range");
            None
        }
        Ok(m) => Some(m),
        Err(e @ (MoneyError::NotANumber | MoneyError::TooPrecise | MoneyError::OutOfRange)) => {
            v.add(field, e.to_string());
            None
        }
    }
}

fn read_quantity(
    raw: Option<&RawValue>,
    field: impl std::fmt::Display,
    v: &mut Violations,
) -> Option<u32> {
    let Some(raw) = present(raw) else {
        return Some(1);
    };
    match raw.get().parse::<u64>() {
        Ok(q) if (1..=MAX_QUANTITY).contains(&q) => Some(q as u32),
        Ok(_) => {
            v.add(field, format!("must be between 1 and {MAX_QUANTITY}"));
            None
        }
        Err(_) if raw.get().starts_with('-') && raw.get()[1..].parse::<u64>().is_ok() => {
            v.add(field, format!("must be between 1 and {MAX_QUANTITY}"));
            None
        }
        Err(_) => {
            v.add(field, "must be an integer");
            None
        }
    }
}

/// The longest orderId (SPEC §2).
pub const ORDER_ID_MAX: usize = 64;

fn order_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

/// Whether `id` is an orderId SPEC §2 allows: 1–64 of `[A-Za-z0-9._:-]`.
pub fn is_order_id(id: &str) -> bool {
    (1..=ORDER_ID_MAX).contains(&id.len()) && id.chars().all(order_id_char)
}

fn read_order_id(raw: &RawValue, v: &mut Violations) -> Option<String> {
    let id = read_id(raw, "orderId", ORDER_ID_MAX, v)?;
    if id.chars().all(order_id_char) {
        Some(id)
    } else {
        v.add(
            "orderId",
            "may contain only A-Z, a-z, 0-9, '.', '_', ':' and '-'",
        );
        None
    }
}

fn read_currency(raw: Option<&RawValue>, v: &mut Violations) -> Option<String> {
    let Some(raw) = present(raw) else {
        return Some(DEFAULT_CURRENCY.to_owned());
    };
    let c = read_string(raw, "currency", v)?;
    if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) {
        Some(c)
    } else {
        v.add(
            "currency",
            "must be a three-letter ISO 4217 code such as USD",
        );
        None
    }
}

fn read_item(raw: &RawValue, path: ItemField<'_>, v: &mut Violations) -> Option<SubmittedItem> {
    let text = raw.get();
    let id_field = path.named("productId");
    if text.starts_with('"') {
        let product_id = read_id(raw, id_field, 128, v)?;
        return Some(SubmittedItem {
            product_id,
            name: None,
            quantity: 1,
            unit_price: None,
        });
    }
    let Ok(item) = serde_json::from_str::<RawItem>(text) else {
        v.add(path, "must be an object or a product id string");
        return None;
    };
    let product_id = match present(item.product_id)
        .or(present(item.id))
        .or(present(item.sku))
    {
        Some(raw) => read_id(raw, id_field, 128, v),
        None => {
            v.add(id_field, "is required");
            None
        }
    };
    let name = match present(item.name) {
        Some(raw) => read_id(raw, path.named("name"), 200, v).map(Some),
        None => Some(None),
    };
    let quantity = read_quantity(item.quantity, path.named("quantity"), v);
    let unit_price = match present(item.unit_price).or(present(item.price)) {
        Some(raw) => read_money(raw, path.named("unitPrice"), v).map(Some),
        None => Some(None),
    };
    Some(SubmittedItem {
        product_id: product_id?,
        name: name?,
        quantity: quantity?,
        unit_price: unit_price?,
    })
}

fn read_items(list: &RawValue, field: &str, v: &mut Violations) -> Option<Vec<SubmittedItem>> {
    let Ok(entries) = serde_json::from_str::<Vec<&RawValue>>(list.get()) else {
        v.add(field, "must be an array");
        return None;
    };
    if entries.is_empty() || entries.len() > MAX_ITEMS {
        v.add(field, format!("must have 1 to {MAX_ITEMS} entries"));
        return None;
    }
    let before = v.0.len();
    let items: Vec<SubmittedItem> = entries
        .iter()
        .enumerate()
        .filter_map(|(index, raw)| {
            let path = ItemField {
                list: field,
                index,
                name: "",
            };
            read_item(raw, path, v)
        })
        .collect();
    (v.0.len() == before).then_some(items)
}

/// Parses and validates a `POST /orders` body.
pub fn parse_submission(body: &[u8]) -> Result<OrderSubmission, IntakeError> {
    let raw: RawOrder = match serde_json::from_slice(body) {
        Ok(raw) => raw,
        Err(e) if e.is_data() => {
            return Err(IntakeError::Invalid(vec![FieldError {
                field: String::new(),
                message: "the body must be a JSON object".into(),
            }]))
        }
        Err(e) => return Err(IntakeError::Malformed(e.to_string())),
    };
    let mut v = Violations::default();

    let order_id = present(raw.order_id).and_then(|r| read_order_id(r, &mut v));
    let customer_id = match present(raw.customer_id).or(present(raw.user_id)) {
        Some(r) => read_id(r, "customerId", 128, &mut v),
        None => {
            v.add("customerId", "is required");
            None
        }
    };
    let currency = read_currency(raw.currency, &mut v);

    let items = if let Some(list) = present(raw.items) {
        read_items(list, "items", &mut v)
    } else if let Some(list) = present(raw.products) {
        read_items(list, "products", &mut v)
    } else if let Some(pid) = present(raw.product_id) {
        let product_id = read_id(pid, "productId", 128, &mut v);
        let quantity = read_quantity(raw.quantity, "quantity", &mut v);
        match (product_id, quantity) {
            (Some(product_id), Some(quantity)) => Some(vec![SubmittedItem {
                product_id,
                name: None,
                quantity,
                unit_price: None,
            }]),
            _ => None,
        }
    } else {
        v.add("items", "is required");
        None
    };

    let total_amount = present(raw.total_amount).and_then(|r| read_money(r, "totalAmount", &mut v));
    let client_total = present(raw.price).and_then(|r| read_money(r, "price", &mut v));
    if !v.0.is_empty() {
        return Err(IntakeError::Invalid(v.0));
    }
    let mut submission = OrderSubmission {
        order_id,
        customer_id: customer_id.expect("checked"),
        currency: currency.expect("checked"),
        items: items.expect("checked"),
        total_amount,
        client_total,
    };
    match (submission.total_amount, submission.items_total()) {
        (Some(given), Some(sum)) if given != sum => {
            return Err(IntakeError::Invalid(vec![FieldError {
                field: "totalAmount".into(),
                message: format!("must equal the sum of quantity × unitPrice ({sum})"),
            }]))
        }
        // A total that cannot be checked against unpriced items is kept for audit.
        (Some(given), None) => {
            submission.total_amount = None;
            submission.client_total.get_or_insert(given);
        }
        _ => {}
    }
    Ok(submission)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> OrderSubmission {
        parse_submission(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e:?}"))
    }

    fn invalid(body: &str) -> Vec<String> {
        match parse_submission(body.as_bytes()) {
            Err(IntakeError::Invalid(errs)) => errs.into_iter().map(|e| e.field).collect(),
            other => panic!("{body}: expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn canonical_shape() {
        let s = ok(r#"{"orderId":"o-1001","customerId":"u-42","currency":"EUR",
            "items":[{"productId":"coffee","name":"Coffee","quantity":2,"unitPrice":4.50}],
            "totalAmount":9.00}"#);
        assert_eq!(s.order_id.as_deref(), Some("o-1001"));
        assert_eq!(s.currency, "EUR");
        assert_eq!(s.items[0].unit_price, Some(Money::from_minor(450)));
        assert_eq!(s.total_amount, Some(Money::from_minor(900)));
    }

    #[test]
    fn reference_shapes_are_normalised() {
        let s = ok(r#"{"orderId":"o-1","userId":"u-42","price":29.99,"items":["coffee","mug"]}"#);
        assert_eq!(s.customer_id, "u-42");
        assert_eq!(s.items.len(), 2);
        assert_eq!(s.items[1].product_id, "mug");
        assert_eq!(s.items[1].unit_price, None);
        assert_eq!(s.total_amount, None);
        assert_eq!(s.client_total, Some(Money::from_minor(2999)));

        let s = ok(
            r#"{"userId":"user123","products":[{"id":"prod-1","name":"Product 1","price":19.99,"quantity":2}],"totalAmount":39.98}"#,
        );
        assert_eq!(s.items[0].product_id, "prod-1");
        assert_eq!(s.total_amount, Some(Money::from_minor(3998)));

        let s = ok(r#"{"customerId":"c-123","productId":"product-A","quantity":2}"#);
        assert_eq!(s.items[0].quantity, 2);
        assert_eq!(s.order_id, None);
        assert_eq!(s.currency, "USD");
    }

    #[test]
    fn sku_alias_and_default_quantity() {
        let s = ok(r#"{"customerId":"c","items":[{"sku":"x","unitPrice":0.1}]}"#);
        assert_eq!(s.items[0].product_id, "x");
        assert_eq!(s.items[0].quantity, 1);
    }

    #[test]
    fn exact_total_check() {
        ok(r#"{"customerId":"c","items":[{"id":"a","quantity":3,"price":0.1}],"totalAmount":0.3}"#);
        assert_eq!(
            invalid(
                r#"{"customerId":"c","items":[{"id":"a","quantity":3,"price":0.1}],"totalAmount":0.31}"#
            ),
            ["totalAmount"]
        );
    }

    #[test]
    fn every_violation_is_listed() {
        let fields = invalid(
            r#"{"orderId":"bad id!","customerId":"","currency":"usd",
               "items":[{"quantity":0,"unitPrice":1.234},{"id":"b","quantity":"two","price":-1},42],
               "totalAmount":"x"}"#,
        );
        assert_eq!(
            fields,
            [
                "orderId",
                "customerId",
                "currency",
                "items[0].productId",
                "items[0].quantity",
                "items[0].unitPrice",
                "items[1].quantity",
                "items[1].unitPrice",
                "items[2]",
                "totalAmount"
            ]
        );
    }

    #[test]
    fn limits() {
        assert_eq!(invalid(r#"{"customerId":"c","items":[]}"#), ["items"]);
        let many = format!(
            r#"{{"customerId":"c","items":[{}]}}"#,
            vec![r#""p""#; 101].join(",")
        );
        assert_eq!(invalid(&many), ["items"]);
        assert_eq!(
            invalid(r#"{"customerId":"c","items":[{"id":"a","quantity":10001}]}"#),
            ["items[0].quantity"]
        );
        assert_eq!(
            invalid(r#"{"customerId":"c","items":[{"id":"a","quantity":2.5}]}"#),
            ["items[0].quantity"]
        );
        let long = "x".repeat(65);
        assert_eq!(
            invalid(&format!(
                r#"{{"orderId":"{long}","customerId":"c","productId":"p"}}"#
            )),
            ["orderId"]
        );
        assert_eq!(invalid(r#"{"items":["p"]}"#), ["customerId"]);
        assert_eq!(invalid(r#"{"customerId":"c"}"#), ["items"]);
        assert_eq!(invalid(r#"[1,2]"#), [""]);
    }

    #[test]
    fn malformed_json_is_not_a_validation_error() {
        assert!(matches!(
            parse_submission(b"{\"customerId\":"),
            Err(IntakeError::Malformed(_))
        ));
        assert!(matches!(
            parse_submission(b"not json"),
            Err(IntakeError::Malformed(_))
        ));
    }
}
