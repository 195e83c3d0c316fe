//! Kafka payloads as the stages decode them: no input panics a decoder,
//! and whatever decodes encodes back to an event that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderflow_domain::events::{
    LowStock, OrderConfirmed, OrderPlaced, OrderRejected, OrderValidated, PaymentProcessed,
    StockReserved,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(event) = serde_json::from_slice::<T>(data) {
        let json = serde_json::to_vec(&event).expect("a decoded event encodes");
        let back: T = serde_json::from_slice(&json).expect("and decodes");
        assert_eq!(back, event);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<OrderPlaced>(data);
    round_trip::<OrderValidated>(data);
    round_trip::<OrderRejected>(data);
    round_trip::<StockReserved>(data);
    round_trip::<LowStock>(data);
    round_trip::<PaymentProcessed>(data);
    round_trip::<OrderConfirmed>(data);
});
