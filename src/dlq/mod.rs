//! The dead-letter queue: the letter a rejected record becomes ([`letter`]), and the
//! operator's tools over a queue: read it back, summarise it, re-publish part of it
//! ([`read`], [`tools`]). The sinks that write letters are sinks (`sinks::dlq_file`, `sinks::dlq_kafka`).

pub mod letter;
pub mod read;
pub mod tools;

pub use read::{DlqError, DlqLocation, Letters, read};
pub use tools::{Inspection, Requeued, inspect, requeue};
