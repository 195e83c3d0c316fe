//! The orders loadgen makes up: the catalogue it orders from, a small
//! deterministic generator, the JSON it posts and the document persist
//! would have stored for one (the read benchmarks' data set, the MongoDB
//! ceiling's writes).

pub const PRODUCTS: [(&str, &str, &str); 8] = [
    ("coffee", "Coffee", "4.50"),
    ("mug", "Mug", "12.00"),
    ("tea", "Green Tea", "3.20"),
    ("beans-1kg", "Coffee Beans 1 kg", "24.90"),
    ("filter", "Paper Filters", "2.99"),
    ("grinder", "Hand Grinder", "49.00"),
    ("kettle", "Gooseneck Kettle", "39.95"),
    ("sticker", "Sticker", "0.10"),
];

/// Small deterministic PRNG (xorshift64*), enough for varied orders.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn order_body(id: &str, rng: &mut Rng) -> String {
    let lines = 1 + rng.below(4);
    let items: Vec<String> = (0..lines)
        .map(|_| {
            let (pid, name, price) = PRODUCTS[rng.below(PRODUCTS.len() as u64) as usize];
            let qty = 1 + rng.below(3);
            format!(
                r#"{{"productId":"{pid}","name":"{name}","quantity":{qty},"unitPrice":{price}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"orderId":"{id}","customerId":"cust-{}","currency":"USD","items":[{}]}}"#,
        rng.below(5000),
        items.join(",")
    )
}

/// A stored order as persist writes it: one item of a catalogue product.
pub fn synthetic_order(
    order_id: String,
    status: orderflow_domain::OrderStatus,
    at: bson::DateTime,
    offset: i64,
    lines: u64,
    rng: &mut Rng,
) -> orderflow_platform::mongo::documents::OrderDocument {
    use orderflow_platform::mongo::documents::{ItemDocument, OrderDocument, SourceRef};
    let items: Vec<ItemDocument> = (0..lines.max(1))
        .map(|_| {
            let (pid, name, price) = PRODUCTS[rng.below(PRODUCTS.len() as u64) as usize];
            let cents = orderflow_domain::Money::parse(price)
                .map(|m| m.minor())
                .unwrap_or(0);
            let qty = 1 + rng.below(3) as i64;
            ItemDocument {
                product_id: pid.into(),
                name: name.into(),
                quantity: qty,
                unit_price_cents: Some(cents),
                line_total_cents: Some(cents * qty),
                client_unit_price_cents: None,
                tracked: true,
            }
        })
        .collect();
    // The customer after the items: the generator's sequence, and so the
    // data set, stays what it was.
    let customer = format!("cust-{}", rng.below(5000));
    let topic =
        orderflow_platform::topology::topic(orderflow_platform::topology::TopicRole::Orders);
    OrderDocument::accepted(
        order_id,
        customer,
        "USD",
        items,
        status,
        at,
        SourceRef {
            topic: topic.name.into(),
            partition: 0,
            offset,
        },
    )
}
