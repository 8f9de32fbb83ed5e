//! A rendered view on its way to the sinks: the user's features and state as JSON
//! text, with the watermark it is complete at and, for a provisional view, the newest
//! pending event folded over it.

use compact_str::CompactString;

/// A rendered view on its way to the sinks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ViewRecord {
    /// The key.
    pub user_id: CompactString,
    /// The watermark (event-time seconds) the view is complete at.
    pub as_of: f64,
    /// For a provisional view (DESIGN.md section 6): the largest `event_time` of the
    /// pending events folded over the final state; `None` for a final view.
    pub provisional_through: Option<f64>,
    /// The `features` object.
    pub features: String,
    /// The `state` object.
    pub state: String,
    /// The user's state changed since its view was last written: online stores write it.
    pub changed: bool,
    /// Part of the end-of-run snapshot, which comes sorted by `user_id` per worker.
    pub snapshot: bool,
    /// The event time of the newest event this view makes readable for the first
    /// time, in streaming runs: online stores report wall clock minus it as freshness.
    pub fresh_from: Option<f64>,
}

impl ViewRecord {
    /// The view as one JSON object (a line of the JSONL snapshot, a Redis value).
    pub fn to_json(&self) -> String {
        let user = serde_json::to_string(self.user_id.as_str()).expect("a string serializes");
        let as_of = serde_json::to_string(&self.as_of).expect("a number serializes");
        let through = match self.provisional_through {
            Some(t) => format!(
                ",\"provisional_through\":{}",
                serde_json::to_string(&t).expect("a number serializes")
            ),
            None => String::new(),
        };
        format!(
            "{{\"user_id\":{user},\"as_of\":{as_of}{through},\"features\":{},\"state\":{}}}",
            self.features, self.state
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisional_views_carry_how_far_they_reach() {
        let mut view = ViewRecord {
            user_id: "u\"1".into(),
            as_of: 10.0,
            features: "{}".into(),
            state: "{}".into(),
            ..ViewRecord::default()
        };
        assert_eq!(
            view.to_json(),
            r#"{"user_id":"u\"1","as_of":10.0,"features":{},"state":{}}"#
        );
        view.provisional_through = Some(12.5);
        assert_eq!(
            view.to_json(),
            r#"{"user_id":"u\"1","as_of":10.0,"provisional_through":12.5,"features":{},"state":{}}"#
        );
    }
}
