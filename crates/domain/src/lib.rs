//! The orderflow domain: what an order is, how a submitted request becomes
//! one, how the catalogue prices it, and the events that carry it between
//! stages. Everything here is pure so it can be table-tested.

pub mod events;
pub mod intake;
pub mod money;
pub mod payment;
pub mod pricing;
pub mod status;
pub mod stock;

pub use money::Money;
pub use status::OrderStatus;
