//! skewless: an append-only event log to per-user ML features, with no
//! training/serving skew.
//!
//! One timely dataflow serves archived logs (backfill) and live streams: a
//! [`source::Source`] hands out bytes, [`ingest`] decodes, validates and upcasts them
//! against the job's [`schema`], keeps partition clocks ([`watermark`]) and routes
//! rejections to the dead-letter queue ([`dead_letter`]); [`fold`] deduplicates
//! ([`dedup`]) and folds each user's events into the job's [`features`]; [`sinks`]
//! write the views. [`job`] loads the TOML that declares all of this, and [`run`]
//! puts it together.

pub mod checkpoint;
pub mod dataflow;
pub mod dlq;
pub mod job;
pub mod kafka;
pub mod metrics;
pub mod model;
pub mod replay;
pub mod run;
pub mod sinks;
pub mod skew;
pub mod source;
pub mod summary;
pub mod synthetic;

/// An error and its causes on one line, for errors that cross threads or end up in a
/// log as text.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}
