//! The dead-letter queue: the letter a rejected record becomes ([`letter`]), and the
//! operator's tools over a queue: read it back, summarise it, re-publish part of it
//! ([`tools`]). The sinks that write letters are sinks (`sinks::dlq_file`, `sinks::dlq_kafka`).

pub mod letter;
pub mod tools;

pub use tools::{DlqError, DlqLocation, Inspection, Letters, Requeued, inspect, read, requeue};
