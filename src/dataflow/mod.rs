//! The dataflow's operators, stage by stage: [`ingest`] (a source's records decoded,
//! validated, upcast and timed against the partition clocks), then [`fold`]
//! (deduplicated and folded per user into feature state, views out). Both travel in
//! the pooled containers of [`batch`]; the training rows' serving skew is counted
//! as a differential collection ([`skew`]). The sinks' operators live with the sinks.

pub mod activity;
pub mod batch;
pub mod fold;
pub mod ingest;
pub mod skew;
