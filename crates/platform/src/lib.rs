//! Shared runtime plumbing for every orderflow binary: one configuration
//! loader, one telemetry init, one Kafka client setup.

pub mod coalesce;
pub mod config;
pub mod http;
pub mod kafka;
pub mod memory;
pub mod metrics;
pub mod mongo;
pub mod redis;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
pub mod topology;
