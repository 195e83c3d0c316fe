//! `POST /orders` bodies: the parser never panics. What it accepts
//! becomes an OrderPlaced whose JSON reads back as the same event (exact
//! money), whose total is the sum of its lines, and whose fields are within
//! SPEC's bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderflow_domain::events::OrderPlaced;
use orderflow_domain::intake::parse_submission;

fuzz_target!(|data: &[u8]| {
    let Ok(submission) = parse_submission(data) else {
        return;
    };
    let at = time::OffsetDateTime::UNIX_EPOCH;
    let id = submission
        .order_id
        .clone()
        .unwrap_or_else(|| "server-assigned".into());
    let event = OrderPlaced::from_submission(submission, id, at);
    assert!(!event.items.is_empty() && event.items.len() <= 100);
    assert!((1..=64).contains(&event.order_id.len()));
    assert!((1..=128).contains(&event.customer_id.chars().count()));
    for item in &event.items {
        assert!((1..=10_000).contains(&item.quantity), "{item:?}");
        if let Some(p) = item.unit_price {
            assert!(p.minor() >= 0, "{item:?}");
        }
    }
    let json = serde_json::to_vec(&event).expect("an accepted order encodes");
    let back: OrderPlaced = serde_json::from_slice(&json).expect("and decodes");
    assert_eq!(back, event);
});
