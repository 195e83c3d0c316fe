//! The OrderPipeline operator (SPEC §5). Its decisions are pure functions
//! with table tests — how many replicas a stage needs ([`scaling`]) and what
//! to do to the topics ([`topics`]); the reconcile loop gathers the facts and
//! applies them.

pub mod broker;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod rbac;
pub mod resources;
pub mod scaling;
pub mod topics;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod scenarios;
