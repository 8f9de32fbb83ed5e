//! Features: the per-user state a job declares (`[[state]]`) and the features derived
//! from it (`[[features]]`), compiled into a [`FeatureSpec`] that folds events.
//!
//! Every aggregation is a monoid over the user's events in (event time, event id)
//! order: a distinct set, the last k values, a sum, a count, the latest value, and a
//! decayed score per group (`x -> decay * x + increment`, affine maps that compose).

mod intern;
mod last_ids;
mod state;
mod value;
mod view;

pub use intern::Interner;
pub use state::{Agg, GroupScore, Scalar, UserState};
pub use value::{AsJson, FeatureValue, feature_value, feature_values, render_features};
pub use view::render_state;

use crate::model::schema::FieldRef;
use serde::Deserialize;

/// How a state aggregation folds events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggKind {
    /// The set of distinct values of a string field.
    Distinct,
    /// The last `k` values of a string field, oldest first.
    LastK,
    /// The sum of a number field.
    Sum,
    /// The number of events.
    Count,
    /// The value from the latest event (by event time, then event id).
    Latest,
    /// Per group, `score = score * decay + increment`, with per-event-type weights.
    DecayedScore,
}

impl AggKind {
    /// The name job files use for this aggregation.
    pub fn name(self) -> &'static str {
        match self {
            AggKind::Distinct => "distinct",
            AggKind::LastK => "last_k",
            AggKind::Sum => "sum",
            AggKind::Count => "count",
            AggKind::Latest => "latest",
            AggKind::DecayedScore => "decayed_score",
        }
    }
}

/// What a feature computes from a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureFn {
    /// Size of a set, list or score map; value of a count.
    Count,
    /// The state's value (sum, count, latest).
    Value,
    /// The `k` highest `[group, score]` pairs, score descending, ties by group ascending.
    TopK,
    /// Whether the state holds anything (latest set, count above zero, non-empty).
    Present,
}

/// A compiled state aggregation.
#[derive(Debug, Clone, PartialEq)]
pub struct StateSpec {
    /// Its name in the view's `state`.
    pub name: String,
    /// How it folds.
    pub kind: StateKind,
}

/// The fold of a state aggregation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StateKind {
    /// Distinct strings.
    Distinct,
    /// The last `k` strings.
    LastK(usize),
    /// Sum of numbers.
    Sum,
    /// Number of events.
    Count,
    /// Latest value.
    Latest,
    /// Decayed score per group.
    Decayed,
}

/// What one event type does to one state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Update {
    /// Which state.
    pub state: usize,
    /// The field it reads (the group field for decayed scores).
    pub field: Option<FieldRef>,
    /// `(decay, increment)` for decayed scores.
    pub weight: (f64, f64),
}

/// A compiled output feature.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureOut {
    /// Its name in the view's `features`.
    pub name: String,
    /// What it computes.
    pub func: FeatureFn,
    /// The state it reads.
    pub state: usize,
    /// `top_k`'s k.
    pub k: usize,
}

/// A job's compiled state and features.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSpec {
    /// State aggregations, in declaration order.
    pub states: Vec<StateSpec>,
    /// Output features, in declaration order.
    pub features: Vec<FeatureOut>,
    /// For each event type: what it updates. Empty when no state reads the type.
    pub per_type: Vec<Vec<Update>>,
}

impl FeatureSpec {
    /// Whether events of this type are read by any state (so they create a view).
    pub fn reads(&self, event_type: u16) -> bool {
        !self.per_type[event_type as usize].is_empty()
    }
}
