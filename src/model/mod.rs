//! The runtime model a job compiles into: the canonical [`event::Event`] and its
//! values, the schema registry with its field types ([`schema`]), the per-user feature
//! state and how it renders into a view ([`features`], [`view`]), training examples
//! ([`training`]), the served feature values they are compared with ([`served`]),
//! and typed durations ([`span`]).
//!
//! It depends on nothing else in the crate: the job front end compiles into it, the
//! dataflow folds with it, and the sinks write what it renders.

pub mod event;
pub mod features;
pub mod schema;
pub mod served;
pub mod span;
pub mod training;
pub mod view;
